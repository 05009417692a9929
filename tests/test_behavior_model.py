"""behavior_model: examples from reviews, the time split, class weights, fine-tuning, saving, publishing."""

import json
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from assets.behavior_model import (
    CHECK_NAME,
    LABELS,
    MODEL_NAME,
    BehaviorModelConfig,
    Split,
    beats_baseline,
    behavior_model,
    class_weights,
    data_hash,
    evaluate,
    fine_tune,
    frozen_baseline,
    label_mix,
    predict_logits,
    publish_if_passed,
    save_model,
    sentiment_examples,
    time_split,
)
from assets.events import EVENTS_DDL
from resources.encoder import TextEncoder
from resources.model_store import ModelStore
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse

START = datetime(2024, 3, 1, 12, 0, 0)
PHRASES = {1: "Broke after a week, awful.", 2: "Poor quality, disappointed.", 3: "It's okay, nothing special.",
           4: "Good strings, nice tone.", 5: "Excellent, love it, would buy again!"}


def review_row(n: int, rating: float | None, text: str | None, summary: str | None = None,
               event_type: str = "review", ts: datetime | None = None) -> tuple:
    attributes = json.dumps({"summary": summary} if summary is not None else {})
    when = ts or START + timedelta(hours=n)
    return (f"E{n:04d}", when.date(), f"U{n % 7}", event_type, when, f"I{n % 5}", text, rating, None, None,
            f"S{n}", attributes, "synthetic.jsonl", n)


def make_warehouse(path: Path, rows: list[tuple]) -> Path:
    con = duckdb.connect(str(path))
    try:
        con.execute(EVENTS_DDL)
        con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::JSON, ?, ?)", rows)
    finally:
        con.close()
    return path


def synthetic_reviews(count: int) -> list[tuple]:
    """Reviews whose words follow their stars, the stars cycling so every split gets every label."""
    rows = []
    for n in range(count):
        rating = (1, 5, 3, 4, 2, 5)[n % 6]
        rows.append(review_row(n, float(rating), f"{PHRASES[rating]} Review number {n}."))
    return rows


def examples_frame(ts: list[datetime], labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"event_id": [f"E{i:04d}" for i in range(len(ts))], "ts": pd.to_datetime(ts),
                         "text": [PHRASES[(1, 3, 5)[label]] for label in labels], "label": labels})


def test_sentiment_examples_follow_the_label_and_text_rules(tmp_path):
    rows = [
        review_row(1, 5.0, "Great tone.", summary="Love it"),
        review_row(2, 1.0, None, summary="Broke at once"),
        review_row(3, 3.0, "Average strings.", summary=""),
        review_row(4, 2.0, "Thin sound."),
        review_row(5, 4.0, "Solid stand."),
        review_row(6, None, "No stars given."),  # a review without a rating is not labelled
        review_row(7, 5.0, None),  # neither text nor summary
        review_row(8, None, "cheap guitar strings", event_type="search"),
        review_row(9, 4.0, "  ", summary="Nice"),
    ]
    path = make_warehouse(tmp_path / "w.duckdb", rows[::-1])  # stored out of order: read back in time order
    with duckdb.connect(str(path)) as con:
        examples = sentiment_examples(con)
    assert examples["event_id"].tolist() == ["E0001", "E0002", "E0003", "E0004", "E0005", "E0009"]
    assert examples["text"].tolist() == ["Love it. Great tone.", "Broke at once", "Average strings.", "Thin sound.",
                                         "Solid stand.", "Nice"]
    assert examples["label"].tolist() == [2, 0, 1, 0, 2, 2]
    assert examples["ts"].is_monotonic_increasing


@pytest.mark.parametrize("seed", range(5))
def test_time_split_never_puts_a_later_example_before_an_earlier_one(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    days = rng.integers(0, 30, size=n)  # many ties, as with day-stamped Amazon reviews
    frame = examples_frame([START + timedelta(days=int(d)) for d in days], rng.integers(0, 3, size=n).tolist())
    split = time_split(frame.sample(frac=1.0, random_state=seed), (0.75, 0.10, 0.15))
    train, validation, test = split.train, split.validation, split.test
    assert len(train) + len(validation) + len(test) == n
    assert sorted(pd.concat([train, validation, test])["event_id"]) == sorted(frame["event_id"])
    assert len(train) == round(0.75 * n) and len(train) + len(validation) == round(0.85 * n)
    for earlier, later in ((train, validation), (validation, test), (train, test)):
        if len(earlier) and len(later):
            assert earlier["ts"].max() <= later["ts"].min()
    for part in (train, validation, test):
        assert part["ts"].is_monotonic_increasing


def test_time_split_is_deterministic_and_newest_train_keeps_the_latest():
    frame = examples_frame([START] * 20 + [START + timedelta(days=1)] * 20, [0, 1, 2, 2] * 10)
    first, second = time_split(frame), time_split(frame.iloc[::-1])
    assert first.train["event_id"].tolist() == second.train["event_id"].tolist()
    limited = first.newest_train(5)
    assert limited.train["event_id"].tolist() == first.train["event_id"].tolist()[-5:]
    assert limited.test is first.test and first.newest_train(None) is first
    with pytest.raises(ValueError, match="three positive shares"):
        time_split(frame, (0.8, 0.3, 0.1))


def test_class_weights_are_inverse_frequency():
    labels = [0] * 6 + [1] * 2 + [2] * 12
    weights = class_weights(labels)
    counts = np.bincount(labels)
    assert np.allclose(weights * counts, len(labels) / 3)  # weight x count is the same for every class
    assert np.allclose(weights, [20 / 18, 20 / 6, 20 / 36])
    assert np.allclose(class_weights([0, 1, 2]), 1.0)
    assert class_weights([2, 2, 0]).tolist() == [1.5, 0.0, 0.75]  # an absent class weighs nothing


def test_evaluate_reports_macro_f1_per_class_and_the_confusion_matrix():
    evaluation = evaluate([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0])
    assert evaluation.confusion == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert set(LABELS) <= set(evaluation.report)
    assert evaluation.macro_f1 == pytest.approx(np.mean([evaluation.report[label]["f1-score"] for label in LABELS]))


def test_the_check_rule_and_publishing_only_a_passing_model(tmp_path):
    assert beats_baseline(0.66, 0.51) and beats_baseline(0.56, 0.51)
    assert not beats_baseline(0.55, 0.51) and not beats_baseline(1.0, 1.0)
    store = ModelStore(root=str(tmp_path))
    good = store.new_version(MODEL_NAME)
    assert publish_if_passed(store, MODEL_NAME, good, beats_baseline(0.66, 0.51))
    assert store.latest(MODEL_NAME) == good
    bad = store.new_version(MODEL_NAME)
    assert not publish_if_passed(store, MODEL_NAME, bad, beats_baseline(0.52, 0.51))
    assert store.latest(MODEL_NAME) == good and bad.exists()


def test_two_steps_of_fine_tuning_save_a_model_that_reloads_with_identical_logits(tmp_path):
    frame = sentiment_frame(tmp_path, 16)
    split = time_split(frame, (0.5, 0.25, 0.25))  # 8 train examples: two steps of 4
    config = BehaviorModelConfig(epochs=1, batch_size=4, max_length=32, seed=3)
    device = TorchDevice()
    result = fine_tune(split, TextEncoder().path(), config, device)
    assert result.steps == 2 and result.epochs_run == 1 and result.best_epoch == 1
    assert result.model.config.id2label == dict(enumerate(LABELS))

    folder = ModelStore(root=str(tmp_path / "models")).new_version(MODEL_NAME)
    save_model(result, folder)
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(folder)).to(device.torch_device())
    texts = split.test["text"].tolist() + ["A much longer review that needs more tokens than the others do here."]
    target = device.torch_device()
    before = predict_logits(result.model, result.tokenizer, texts, target, batch_size=2, max_length=32)
    after = predict_logits(reloaded, result.tokenizer, texts, target, batch_size=2, max_length=32)
    assert before.shape == (len(texts), len(LABELS))
    assert torch.allclose(torch.from_numpy(before), torch.from_numpy(after))
    one_by_one = np.vstack([predict_logits(reloaded, result.tokenizer, [t], target, batch_size=1, max_length=32)
                            for t in texts])
    assert np.allclose(after, one_by_one, atol=1e-5)  # per-batch padding does not change a text's logits


def test_fine_tuning_is_seeded(tmp_path):
    split = time_split(sentiment_frame(tmp_path, 12), (0.5, 0.25, 0.25))
    config = BehaviorModelConfig(epochs=1, batch_size=3, max_length=24, seed=5)
    texts = split.test["text"].tolist()
    runs = [fine_tune(split, TextEncoder().path(), config, TorchDevice()) for _ in range(2)]
    target = TorchDevice().torch_device()
    logits = [predict_logits(r.model, r.tokenizer, texts, target, batch_size=4, max_length=24) for r in runs]
    assert np.allclose(logits[0], logits[1], atol=1e-5)


def test_frozen_baseline_scores_the_test_slice(tmp_path):
    split = time_split(sentiment_frame(tmp_path, 60))
    baseline = frozen_baseline(TextEncoder().load(TorchDevice()), split, seed=0)
    assert len(baseline.test.predictions) == len(split.test)
    assert 0.0 <= baseline.test.macro_f1 <= 1.0 and baseline.c > 0
    mix = label_mix(split)
    assert [row["examples"] for row in mix] == [len(split.train), len(split.validation), len(split.test)]
    assert data_hash(split.train) != data_hash(split.test)


def test_too_few_reviews_fail_with_a_message(tmp_path, instance):
    path = make_warehouse(tmp_path / "w.duckdb", synthetic_reviews(5))
    with pytest.raises(dg.Failure, match="load more reviews"):
        dg.materialize([behavior_model], instance=instance, resources=asset_resources(path, tmp_path / "models"))


@pytest.mark.slow
def test_materialize_on_the_demo_shop_saves_a_model_with_its_card(home, instance):
    from orchestration.cli import main

    assert main(["--home", str(home), "import", "demo"]) == 0
    assert main(["--home", str(home), "run"]) == 0
    config = {"epochs": 1, "max_train_examples": 64, "batch_size": 32, "max_length": 64}
    result = dg.materialize([behavior_model], instance=instance, raise_on_error=False,
                            resources=asset_resources(home / "warehouse.duckdb", home / "models"),
                            run_config={"ops": {MODEL_NAME: {"config": config}}})
    [materialization] = result.asset_materializations_for_node(MODEL_NAME)
    metadata = materialization.metadata
    for key in ("version_folder", "published", "fine_tuned_macro_f1", "baseline_macro_f1", "label_mix",
                "per_class_f1_chart", "confusion_matrix", "epochs_run", "best_epoch", "seconds_per_epoch",
                "peak_memory_mb", "data_hash", "base_model_id", "device", "precision"):
        assert key in metadata, key
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == CHECK_NAME
    assert {"fine_tuned_macro_f1", "baseline_macro_f1", "fine_tuned_report", "baseline_report"} <= set(check.metadata)
    assert result.success == check.passed  # a blocking check that fails fails the run

    folder = Path(metadata["version_folder"].value)
    store = ModelStore(root=str(home / "models"))
    card = store.read_card(folder)
    assert card["hyperparameters"]["max_train_examples"] == 64 and card["label_mix"][0]["examples"] == 64
    assert card["published"] == check.passed == metadata["published"].value
    assert store.latest(MODEL_NAME) == (folder if check.passed else None)
    assert set(card["test"]) == {"fine_tuned", "frozen_baseline"} and card["epochs_run"] == 1
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    assert model.config.num_labels == len(LABELS)


def sentiment_frame(tmp_path: Path, count: int) -> pd.DataFrame:
    path = make_warehouse(tmp_path / f"reviews-{count}.duckdb", synthetic_reviews(count))
    with duckdb.connect(str(path)) as con:
        return sentiment_examples(con)


def asset_resources(warehouse: Path, models: Path) -> dict:
    return {"warehouse": Warehouse(path=str(warehouse), lock_timeout_s=5), "device": TorchDevice(),
            "encoder": TextEncoder(), "model_store": ModelStore(root=str(models))}


def test_split_parts_are_named_in_order():
    frame = examples_frame([START + timedelta(hours=i) for i in range(20)], [0, 1, 2, 2] * 5)
    split = time_split(frame)
    assert isinstance(split, Split) and list(split.parts()) == ["train", "validation", "test"]

"""`behavior_model`: the text encoder fine-tuned on labels that behaviour gives for free.

Star ratings label their reviews' sentiment (1-2 negative, 3 neutral, 4-5 positive). The
encoder (the `encoder` resource's model folder) gets a classification head and is
fine-tuned on the oldest 75 % of the reviews, early-stopped on the next 10 % (macro-F1)
and scored on the newest 15 %, so the model is always judged on reviews written after
everything it learnt from. The loss is class-weighted cross-entropy (inverse label
frequency): real shops are mostly five-star, and an unweighted model learns to say
"positive" to everything.

The blocking check `behavior_model_beats_baseline` asks whether fine-tuning was worth it:
a logistic regression on the frozen encoder's mean-pooled embeddings, fitted on the same
training reviews, is scored on the same test reviews, and the fine-tuned model must beat
its macro-F1 by `REQUIRED_GAIN`. Every version is saved with its model card; only a
version that passes is published, so readers keep the previous model otherwise.

The functions beside the asset need neither Dagster nor a warehouse file of any size:
`sentiment_examples` (SQL -> examples), `time_split`, `class_weights`, `fine_tune`,
`predict_logits`, `evaluate`, `frozen_baseline`, `beats_baseline`, `publish_if_passed`.
"""

import contextlib
import copy
import hashlib
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import torch
from pydantic import Field
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import classification_report, confusion_matrix, f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from assets.automation import GPU_POOL, TORCH_OP_TAGS
from assets.metadata import bar_chart_markdown, markdown_table
from resources.encoder import LoadedEncoder, TextEncoder
from resources.model_store import ModelStore
from resources.torch_device import DTYPES, TorchDevice
from resources.warehouse import Warehouse

MODEL_NAME = "behavior_model"
CHECK_NAME = "behavior_model_beats_baseline"
LABELS = ("negative", "neutral", "positive")
SPLIT_NAMES = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.75, 0.10, 0.15)
REQUIRED_GAIN = 0.05  # fine-tuned macro-F1 must reach the frozen baseline's + this
BASELINE_C_GRID = (0.1, 1.0, 10.0, 100.0)  # the baseline's C is chosen on the validation split
MIN_EXAMPLES_PER_SPLIT = 2

# A configuration small enough for the demo shop to finish in a few minutes on two cores.
DEMO_RUN_CONFIG = {"ops": {MODEL_NAME: {"config": {"epochs": 2, "max_train_examples": 300}}}}

SENTIMENT_SQL = """
SELECT event_id, ts, rating,
       nullif(trim(text), '') AS text,
       nullif(trim(attributes->>'summary'), '') AS summary
FROM events
WHERE event_type = 'review' AND rating IS NOT NULL
  AND (nullif(trim(text), '') IS NOT NULL OR nullif(trim(attributes->>'summary'), '') IS NOT NULL)
ORDER BY ts, event_id
"""


class BehaviorModelConfig(dg.Config):
    """How `behavior_model` trains; set it in the launchpad or a run's config."""

    epochs: int = Field(default=3, description="most passes over the training reviews")
    learning_rate: float = Field(default=5e-5, description="AdamW peak learning rate (linear warm-up, then linear decay)")
    batch_size: int = Field(default=32, description="reviews per step; each batch is padded to its own longest text")
    max_length: int = Field(default=128, description="tokens per review; longer reviews are cut")
    patience: int = Field(default=1, description="epochs without a better validation macro-F1 before stopping")
    seed: int = Field(default=13, description="seeds torch, numpy and random: the same data gives the same model")
    max_train_examples: int | None = Field(
        default=None, description="keep only the newest N training reviews (None = all); validation and test stay whole")
    warmup_fraction: float = Field(default=0.1, description="share of the steps spent warming the learning rate up")
    weight_decay: float = Field(default=0.01, description="AdamW weight decay")


# --- examples ----------------------------------------------------------------------------------------------------


def sentiment_label(rating: float) -> int:
    """0 negative (1-2 stars), 1 neutral (3), 2 positive (4-5); half stars round towards neutral."""
    if rating <= 2:
        return 0
    if rating >= 4:
        return 2
    return 1


def review_text(summary: str | None, text: str | None) -> str:
    """The summary, a full stop, and the review text; whichever exists when one is missing."""
    if summary and text:
        return f"{summary}. {text}"
    return summary or text or ""


def sentiment_examples(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every rated review with a text or a summary: `event_id, ts, text, label`, in time order."""
    rows = con.execute(SENTIMENT_SQL).df()
    texts = [review_text(s, t) for s, t in zip(_nullable(rows["summary"]), _nullable(rows["text"]))]
    return pd.DataFrame({
        "event_id": rows["event_id"].astype(str),
        "ts": pd.to_datetime(rows["ts"]),
        "text": texts,
        "label": np.array([sentiment_label(r) for r in rows["rating"]], dtype=np.int64),
    })


def _nullable(column: pd.Series) -> list[str | None]:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in column]


@dataclass(frozen=True)
class Split:
    """Examples cut by time: every train `ts` <= every validation `ts` <= every test `ts`."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def parts(self) -> dict[str, pd.DataFrame]:
        return dict(zip(SPLIT_NAMES, (self.train, self.validation, self.test)))

    def newest_train(self, limit: int | None) -> "Split":
        """Keep only the `limit` newest training examples (the ones closest in time to the test)."""
        if limit is None or limit >= len(self.train):
            return self
        return Split(self.train.iloc[len(self.train) - limit:].reset_index(drop=True), self.validation, self.test)


def time_split(examples: pd.DataFrame, fractions: Sequence[float] = SPLIT_FRACTIONS) -> Split:
    """Oldest `fractions[0]` for training, the next `fractions[1]` for validation, the rest for test.

    Sorted by `ts` (then `event_id`, so ties always fall the same way); examples with the
    same timestamp may straddle a boundary, but no later example ever precedes an earlier one.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive shares adding up to 1, got {tuple(fractions)}")
    ordered = examples.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    n = len(ordered)
    first = int(round(n * fractions[0]))
    second = int(round(n * (fractions[0] + fractions[1])))
    return Split(ordered.iloc[:first].reset_index(drop=True), ordered.iloc[first:second].reset_index(drop=True),
                 ordered.iloc[second:].reset_index(drop=True))


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int = len(LABELS)) -> np.ndarray:
    """Inverse label frequency, scaled so that a balanced set gets 1.0 each (n / (k * count)).

    A class absent from `labels` gets 0: it contributes no loss term anyway.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def label_mix(split: Split) -> list[dict[str, object]]:
    """Rows of (split, examples, count per label, first and last day) for tables and the card."""
    rows = []
    for name, part in split.parts().items():
        counts = np.bincount(part["label"].to_numpy(dtype=np.int64), minlength=len(LABELS))
        row: dict[str, object] = {"split": name, "examples": len(part)}
        row.update({label: int(c) for label, c in zip(LABELS, counts)})
        row["from"] = part["ts"].min().strftime("%Y-%m-%d") if len(part) else ""
        row["to"] = part["ts"].max().strftime("%Y-%m-%d") if len(part) else ""
        rows.append(row)
    return rows


def data_hash(examples: pd.DataFrame) -> str:
    """SHA-256 of the examples' ids, labels and texts, in order: names the data a model saw."""
    digest = hashlib.sha256()
    for event_id, label, text in zip(examples["event_id"], examples["label"], examples["text"]):
        digest.update(f"{event_id}\x1f{int(label)}\x1f{text}\x1e".encode())
    return digest.hexdigest()


# --- fine-tuning -------------------------------------------------------------------------------------------------


@dataclass
class FineTuneResult:
    """The fine-tuned model (best validation epoch restored), its tokenizer and how training went."""

    model: torch.nn.Module
    tokenizer: object
    class_weights: list[float]
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, validation_macro_f1, train_seconds, epoch_seconds
    best_epoch: int
    best_validation_macro_f1: float
    steps: int
    precision: str

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean([h["epoch_seconds"] for h in self.history])) if self.history else 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA with fp16/bf16; full precision everywhere else."""
    if device.type == "cuda" and precision in ("fp16", "bf16"):
        return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
    return contextlib.nullcontext()


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, cut at `max_length`, unpadded (batches are padded on their own)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def _batch(tokenizer, ids: Sequence[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    padded = tokenizer.pad({"input_ids": list(ids)}, return_tensors="pt")
    return {"input_ids": padded["input_ids"].to(device), "attention_mask": padded["attention_mask"].to(device)}


def predict_logits(model: torch.nn.Module, tokenizer, texts: Sequence[str], device: torch.device, *,
                   batch_size: int, max_length: int, precision: str = "fp32") -> np.ndarray:
    """float32 logits, one row per text in the order given; batches are formed by length."""
    ids = tokenize(tokenizer, texts, max_length)
    order = np.argsort([len(i) for i in ids], kind="stable")
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            logits = model(**_batch(tokenizer, [ids[i] for i in chosen], device)).logits
            out[chosen] = logits.float().cpu().numpy()
    return out


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    return float(f1_score(y_true, y_pred, labels=list(range(len(LABELS))), average="macro", zero_division=0))


def fine_tune(split: Split, base_path: Path | str, config: BehaviorModelConfig, device: TorchDevice,
              log: Callable[[str], None] | None = None) -> FineTuneResult:
    """Fine-tune `base_path` with a fresh 3-way head on `split.train`, early-stopped on `split.validation`.

    Class-weighted cross-entropy, AdamW with linear warm-up and decay, shuffled batches
    padded per batch. After every epoch the validation macro-F1 decides: a better one keeps
    a copy of the weights, `config.patience` epochs without one stop training. The best
    epoch's weights are restored before returning.
    """
    say = log or (lambda message: None)
    seed_everything(config.seed)
    device.apply_threads()
    target = device.torch_device()
    precision = device.resolved_precision()
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_path), num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)}, problem_type="single_label_classification",
    ).to(target)

    train_ids = tokenize(tokenizer, split.train["text"].tolist(), config.max_length)
    train_labels = torch.tensor(split.train["label"].to_numpy(dtype=np.int64))
    weights = class_weights(train_labels.numpy())
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=target))
    steps_per_epoch = -(-len(train_ids) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_fraction * steps_per_epoch * config.epochs),
                                                steps_per_epoch * config.epochs)
    scaler = torch.amp.GradScaler(target.type, enabled=target.type == "cuda" and precision == "fp16")
    shuffler = torch.Generator().manual_seed(config.seed)

    history: list[dict[str, float]] = []
    best_f1, best_epoch, best_state, stale, steps = -1.0, 0, None, 0, 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        total_loss = 0.0
        order = torch.randperm(len(train_ids), generator=shuffler)
        for batch_number, start in enumerate(range(0, len(train_ids), config.batch_size), start=1):
            rows = order[start:start + config.batch_size]
            inputs = _batch(tokenizer, [train_ids[i] for i in rows.tolist()], target)
            optimizer.zero_grad(set_to_none=True)
            with autocast(target, precision):
                logits = model(**inputs).logits
            loss = loss_fn(logits.float(), train_labels[rows].to(target))
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            total_loss += float(loss.detach())
            if batch_number % 50 == 0:
                say(f"epoch {epoch}: step {batch_number}/{steps_per_epoch}, mean loss {total_loss / batch_number:.4f}")
        train_seconds = time.perf_counter() - started
        validation_logits = predict_logits(model, tokenizer, split.validation["text"].tolist(), target,
                                           batch_size=config.batch_size * 2, max_length=config.max_length,
                                           precision=precision)
        validation_f1 = macro_f1(split.validation["label"].to_numpy(), validation_logits.argmax(axis=1))
        history.append({"epoch": epoch, "train_loss": total_loss / max(steps_per_epoch, 1),
                        "validation_macro_f1": validation_f1, "train_seconds": train_seconds,
                        "epoch_seconds": time.perf_counter() - started})
        say(f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, validation macro-F1 {validation_f1:.4f}, "
            f"{train_seconds:.0f} s training")
        if validation_f1 > best_f1:
            best_f1, best_epoch, stale = validation_f1, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                say(f"early stop after epoch {epoch}: no better validation macro-F1 for {stale} epoch(s)")
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FineTuneResult(model, tokenizer, [float(w) for w in weights], history, best_epoch, best_f1, steps, precision)


# --- evaluation and the baseline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    macro_f1: float
    report: dict  # sklearn classification_report, output_dict=True
    confusion: list[list[int]]  # rows: true label, columns: predicted, in LABELS order
    predictions: list[int] = field(repr=False, default_factory=list)


def evaluate(y_true: Sequence[int], y_pred: Sequence[int]) -> Evaluation:
    """Macro-F1 over the three labels, the per-class report and the confusion matrix."""
    labels = list(range(len(LABELS)))
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(LABELS), output_dict=True,
                                   zero_division=0)
    return Evaluation(macro_f1(y_true, y_pred), report, confusion_matrix(y_true, y_pred, labels=labels).tolist(),
                      y_pred.tolist())


@dataclass(frozen=True)
class BaselineResult:
    test: Evaluation
    c: float
    validation_macro_f1: float
    encode_seconds: float


def frozen_baseline(encoder: LoadedEncoder, split: Split, seed: int) -> BaselineResult:
    """Logistic regression (balanced class weights) on the frozen encoder's mean-pooled embeddings.

    Fitted on the same training examples as the fine-tuned model; its C is chosen from
    `BASELINE_C_GRID` on the validation split, as the fine-tuned model's epoch is.
    """
    started = time.perf_counter()
    texts = pd.concat([split.train["text"], split.validation["text"], split.test["text"]]).tolist()
    vectors = encoder.encode(texts)
    encode_seconds = time.perf_counter() - started
    a, b = len(split.train), len(split.train) + len(split.validation)
    x_train, x_val, x_test = vectors[:a], vectors[a:b], vectors[b:]
    y_train, y_val = split.train["label"].to_numpy(), split.validation["label"].to_numpy()
    best: tuple[float, float, LogisticRegression] | None = None
    for c in BASELINE_C_GRID:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed).fit(x_train, y_train)
        score = macro_f1(y_val, model.predict(x_val))
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    return BaselineResult(evaluate(split.test["label"].to_numpy(), model.predict(x_test)), c, score, encode_seconds)


def beats_baseline(fine_tuned_f1: float, baseline_f1: float, gain: float = REQUIRED_GAIN) -> bool:
    """The check's rule: fine-tuning must add at least `gain` macro-F1 over the frozen baseline."""
    return fine_tuned_f1 >= baseline_f1 + gain - 1e-12


def publish_if_passed(store: ModelStore, name: str, folder: Path, passed: bool) -> bool:
    """Publish `folder` only when the check passed; a failing version stays saved but unpublished."""
    if passed:
        store.publish(name, folder)
    return passed


def peak_memory_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_model(result: FineTuneResult, folder: Path) -> None:
    result.model.save_pretrained(str(folder))
    result.tokenizer.save_pretrained(str(folder))


# --- the asset ---------------------------------------------------------------------------------------------------


@dg.asset(
    pool=GPU_POOL,
    op_tags=TORCH_OP_TAGS,
    name=MODEL_NAME,
    group_name="language_model",
    kinds={"torch", "duckdb"},
    owners=["team:portrait"],
    deps=["events"],
    description="The text encoder fine-tuned to read a review's sentiment, with star ratings as labels "
                "(1-2 negative, 3 neutral, 4-5 positive), split by time. Saved as a versioned model folder "
                "with a model card; published only when it beats a frozen-embedding baseline.",
    check_specs=[dg.AssetCheckSpec(
        CHECK_NAME, asset=MODEL_NAME, blocking=True,
        description=f"On the newest {SPLIT_FRACTIONS[2]:.0%} of reviews, the fine-tuned model's macro-F1 is at least "
                    f"{REQUIRED_GAIN} above a logistic regression on the frozen encoder's embeddings fitted on the "
                    "same training reviews. A failing version is saved but not published.",
    )],
)
def behavior_model(context: dg.AssetExecutionContext, config: BehaviorModelConfig, warehouse: Warehouse,
                   device: TorchDevice, encoder: TextEncoder, model_store: ModelStore) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        examples = sentiment_examples(con)
    full = time_split(examples)
    split = full.newest_train(config.max_train_examples)
    short = [name for name, part in split.parts().items() if len(part) < MIN_EXAMPLES_PER_SPLIT]
    if short:
        raise dg.Failure(f"only {len(examples)} rated reviews with a text: the {', '.join(short)} split(s) would get "
                         f"fewer than {MIN_EXAMPLES_PER_SPLIT}; load more reviews before training {MODEL_NAME}")
    context.log.info(f"{len(examples):,} rated reviews; training on {len(split.train):,}, validating on "
                     f"{len(split.validation):,}, testing on {len(split.test):,}")

    started = time.perf_counter()
    tuned = fine_tune(split, encoder.path(), config, device, log=context.log.info)
    target = device.torch_device()
    test_texts, test_labels = split.test["text"].tolist(), split.test["label"].to_numpy()
    tuned_test = evaluate(test_labels, predict_logits(
        tuned.model, tuned.tokenizer, test_texts, target, batch_size=config.batch_size * 2,
        max_length=config.max_length, precision=tuned.precision).argmax(axis=1))
    fine_tune_seconds = time.perf_counter() - started
    baseline = frozen_baseline(encoder.load(device), split, config.seed)
    passed = beats_baseline(tuned_test.macro_f1, baseline.test.macro_f1)

    folder = model_store.new_version(MODEL_NAME)
    save_model(tuned, folder)
    mix = label_mix(split)
    card = _model_card(config, device, encoder, split, full, mix, tuned, tuned_test, baseline, passed,
                       fine_tune_seconds, context.run.run_id)
    model_store.write_card(folder, card)
    published = publish_if_passed(model_store, MODEL_NAME, folder, passed)
    context.log.info(f"fine-tuned macro-F1 {tuned_test.macro_f1:.4f} vs frozen baseline {baseline.test.macro_f1:.4f}: "
                     f"{'published' if published else 'saved, not published'} ({folder})")

    described = device.describe()
    per_class = [(f"{label} ({who})", evaluation.report[label]["f1-score"])
                 for label in LABELS for who, evaluation in (("fine-tuned", tuned_test), ("frozen LR", baseline.test))]
    metadata = {
        "version_folder": dg.MetadataValue.path(str(folder)),
        "published": published,
        "fine_tuned_macro_f1": round(tuned_test.macro_f1, 4),
        "baseline_macro_f1": round(baseline.test.macro_f1, 4),
        "gain_over_baseline": round(tuned_test.macro_f1 - baseline.test.macro_f1, 4),
        "label_mix": dg.MetadataValue.md(markdown_table(mix)),
        "per_class_f1_chart": bar_chart_markdown([p[0] for p in per_class], [p[1] for p in per_class],
                                                 "Test F1 per class"),
        "confusion_matrix": dg.MetadataValue.md(_confusion_markdown(tuned_test.confusion)),
        "epochs_run": tuned.epochs_run,
        "best_epoch": tuned.best_epoch,
        "seconds_per_epoch": round(tuned.seconds_per_epoch, 1),
        "peak_memory_mb": round(card["peak_memory_mb"], 1),
        "data_hash": card["data_hash"]["train"],
        "base_model_id": encoder.model_id(),
        "device": str(described["device"]),
        "device_name": str(described["device_name"]),
        "precision": str(described["precision"]),
    }
    check = dg.AssetCheckResult(
        check_name=CHECK_NAME, asset_key=MODEL_NAME, passed=passed, metadata=_check_metadata(tuned_test, baseline),
        description=None if passed else "saved but not published: the fine-tuned model does not beat the frozen "
                                        f"baseline by {REQUIRED_GAIN} macro-F1",
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _model_card(config: BehaviorModelConfig, device: TorchDevice, encoder: TextEncoder, split: Split, full: Split,
                mix: list[dict], tuned: FineTuneResult, tuned_test: Evaluation, baseline: BaselineResult, passed: bool,
                fine_tune_seconds: float, run_id: str) -> dict:
    return {
        "model": MODEL_NAME,
        "task": "review sentiment from star ratings",
        "labels": list(LABELS),
        "label_rule": "1-2 stars negative, 3 neutral, 4-5 positive",
        "text_rule": "summary + '. ' + text when both exist, else whichever exists",
        "base_model_id": encoder.model_id(),
        "base_model_path": str(encoder.path()),
        "device": device.describe(),
        "hyperparameters": config.model_dump(),
        "split_fractions": dict(zip(SPLIT_NAMES, SPLIT_FRACTIONS)),
        "training_examples_available": len(full.train),
        "data_hash": {name: data_hash(part) for name, part in split.parts().items()},
        "label_mix": mix,
        "class_weights": dict(zip(LABELS, tuned.class_weights)),
        "epochs_run": tuned.epochs_run,
        "best_epoch": tuned.best_epoch,
        "best_validation_macro_f1": tuned.best_validation_macro_f1,
        "steps": tuned.steps,
        "history": tuned.history,
        "seconds_per_epoch": tuned.seconds_per_epoch,
        "fine_tune_seconds": fine_tune_seconds,
        "peak_memory_mb": peak_memory_mb(),
        "test": {
            "fine_tuned": {"macro_f1": tuned_test.macro_f1, "report": tuned_test.report,
                           "confusion_matrix": tuned_test.confusion},
            "frozen_baseline": {"macro_f1": baseline.test.macro_f1, "report": baseline.test.report,
                                "confusion_matrix": baseline.test.confusion, "model": "LogisticRegression",
                                "class_weight": "balanced", "C": baseline.c,
                                "validation_macro_f1": baseline.validation_macro_f1,
                                "encode_seconds": baseline.encode_seconds},
        },
        "check": {"name": CHECK_NAME, "required_gain": REQUIRED_GAIN, "passed": passed},
        "published": passed,
        "run_id": run_id,
    }


def _confusion_markdown(confusion: list[list[int]]) -> str:
    rows = [{"true \\ predicted": label, **{p: n for p, n in zip(LABELS, row)}} for label, row in zip(LABELS, confusion)]
    return markdown_table(rows)


def _report_rows(evaluation: Evaluation) -> list[dict]:
    return [{"class": label, **{k: round(v, 4) if isinstance(v, float) else v
                                for k, v in evaluation.report[label].items()}}
            for label in (*LABELS, "macro avg", "weighted avg")]


def _check_metadata(tuned: Evaluation, baseline: BaselineResult) -> dict:
    return {
        "fine_tuned_macro_f1": round(tuned.macro_f1, 4),
        "baseline_macro_f1": round(baseline.test.macro_f1, 4),
        "required_macro_f1": round(baseline.test.macro_f1 + REQUIRED_GAIN, 4),
        "gain_over_baseline": round(tuned.macro_f1 - baseline.test.macro_f1, 4),
        "baseline_c": baseline.c,
        "fine_tuned_report": dg.MetadataValue.md(markdown_table(_report_rows(tuned))),
        "baseline_report": dg.MetadataValue.md(markdown_table(_report_rows(baseline.test))),
        "fine_tuned_report_json": dg.MetadataValue.json(tuned.report),
        "baseline_report_json": dg.MetadataValue.json(baseline.test.report),
    }

"""The LightFM candidate: batched scores equal LightFM's own predict, epochs chosen on validation."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from assets.lightfm_model import LightFMRecommender, LightFMSettings, feature_matrix
from assets.recsys_eval import evaluate_candidate, last_days_split, recommend


def _shop(users: int = 60, items: int = 40, days: int = 10, seed: int = 3) -> pd.DataFrame:
    """Two tastes: even users like even items, odd users odd items; some repeats."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for _ in range(12):
            item = 2 * rng.integers(items // 2) + (u % 2)
            day = rng.integers(days)
            rows.append((f"U{u}", f"I{item}", pd.Timestamp("2026-01-01") + pd.Timedelta(days=int(day), hours=12), 1.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "weight"])


def test_scores_are_the_models_predict_by_matrix_product():
    frame = _shop()
    model = LightFMRecommender(LightFMSettings(components=8, seeds=(1,), num_threads=1), epochs=5).fit(frame)
    users = ["U0", "U1", "U7"]
    scores = model.scores(users)
    lightfm = model.models[0]
    for row, user in enumerate(users):
        u = model.user_index.get_loc(user)
        expected = lightfm.predict(np.full(len(model.items), u, dtype=np.int32), np.arange(len(model.items), dtype=np.int32),
                                   user_features=model.user_features, item_features=model.item_features)
        assert np.allclose(scores[row], expected, atol=1e-4)
    # an unknown user gets the item biases; several seeds average
    assert model.scores(["nobody"]).shape == (1, len(model.items))
    averaged = LightFMRecommender(LightFMSettings(components=8, seeds=(1, 2), num_threads=1), epochs=5).fit(frame)
    assert averaged.scores(users).shape == scores.shape


def test_epochs_chosen_on_an_inner_split_and_tastes_learned():
    frame = _shop()
    split = last_days_split(frame, days=2)
    model = LightFMRecommender(LightFMSettings(components=8, learning_rate=0.05, max_epochs=15, patience=3, num_threads=1),
                               validation=lambda train: last_days_split(train, days=2))
    result = evaluate_candidate(model, split, 10)
    assert 1 <= model.epochs <= 15 and len(model.validation_curve) >= min(model.epochs, 15)
    top = recommend(model, ["U0", "U1"], 5)
    assert sum(int(i[1:]) % 2 == 0 for i in top["U0"]) >= 4 and sum(int(i[1:]) % 2 == 1 for i in top["U1"]) >= 4
    assert result["recall@10"] > 0.2


def test_the_curve_is_the_mean_over_folds_and_its_best_epoch_wins():
    frame = _shop()
    folds = lambda train: [last_days_split(train, days=2), last_days_split(train, days=4)]  # noqa: E731
    settings = LightFMSettings(components=8, learning_rate=0.025, max_epochs=12, patience=12, num_threads=1,
                               seeds=(1,))
    model = LightFMRecommender(settings, validation=folds).fit(frame)
    curves = []
    for split in folds(frame):
        single = LightFMRecommender(settings, validation=lambda train, split=split: split)
        single._choose_epochs(frame)
        curves.append(single.validation_curve)
    assert model.validation_curve == pytest.approx(np.mean(curves, axis=0).round(5).tolist(), abs=2e-5)
    assert model.epochs == int(np.argmax(model.validation_curve)) + 1
    assert len(set(model.validation_curve)) > 1  # a curve that moves, so the argmax means something


def test_one_thread_trains_the_same_model_twice():
    frame = _shop()
    settings = LightFMSettings(components=8, seeds=(3, 4), num_threads=1)
    first, second = (LightFMRecommender(settings, epochs=4).fit(frame) for _ in range(2))
    assert np.array_equal(first.scores(["U0", "U5"]), second.scores(["U0", "U5"]))


def test_event_weights_count_only_when_sample_weights_is_on():
    frame = _shop()
    weighted = frame.assign(weight=np.where(np.arange(len(frame)) % 3 == 0, 4.0, 1.0))
    weights_off = LightFMSettings(components=8, seeds=(2,), num_threads=1, sample_weights=False)
    fitted = [LightFMRecommender(settings, epochs=3).fit(data).scores(["U0", "U3"])
              for settings in (weights_off, replace(weights_off, sample_weights=True)) for data in (frame, weighted)]
    assert np.array_equal(fitted[0], fitted[1])  # off: a weight-4 interaction counts as 1
    assert not np.allclose(fitted[2], fitted[3])  # on: it counts 4 times


def test_the_ids_baseline_is_plain_lightfm_and_production_is_tuned():
    from assets.recommender_recipe import RecommenderConfig, baselines, lightfm_settings

    config = RecommenderConfig(seed=5, seeds=3)
    plain = next(c for c in baselines(config, None) if c.name == "lightfm_ids")
    assert plain.settings == LightFMSettings(loss="warp", components=10, learning_rate=0.05, item_alpha=0.0,
                                             user_alpha=0.0, max_sampled=10, seeds=(5,), sample_weights=False,
                                             num_threads=plain.settings.num_threads)
    assert plain.validation is not None and plain.item_side is None and plain.user_side is None
    tuned = lightfm_settings(config)
    assert (tuned.components, tuned.learning_rate, tuned.max_sampled, tuned.seeds) == (64, 0.005, 30, (5, 6, 7))
    assert tuned.sample_weights


def test_side_features_and_settings_are_checked():
    matrix, names = feature_matrix(["a", "b"], {"a": ["Guitars"], "b": ["Guitars", "Strings"]}, 0.25)
    assert names == ["a", "b", "Guitars", "Strings"] and matrix.shape == (2, 4)
    assert matrix.toarray().tolist() == [[1, 0, 0.25, 0], [0, 1, 0.25, 0.25]]
    with pytest.raises(ValueError, match="loss"):
        LightFMSettings(loss="hinge")
    with pytest.raises(ValueError, match="epochs or a validation"):
        LightFMRecommender().fit(_shop())


def test_item_knn_and_a_validated_blend():
    from assets.blend import Blend, ItemKNN, standardized
    from assets.recsys_eval import Popularity

    frame = _shop()
    split = last_days_split(frame, days=2)
    knn = ItemKNN(half_life_days=30).fit(split.train)
    top = recommend(knn, ["U0", "U1"], 5)
    assert all(int(i[1:]) % 2 == 0 for i in top["U0"]) and all(int(i[1:]) % 2 == 1 for i in top["U1"])
    assert np.allclose(standardized(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))[1], 0.0)

    blend = Blend([lambda: Popularity(), lambda: ItemKNN(half_life_days=30)],
                  validation=lambda train: last_days_split(train, days=2))
    result = evaluate_candidate(blend, split, 10)
    # co-occurrence carries the tastes here: the weights chosen on the inner split must use it
    assert blend.weights["item_knn"] > 0 and blend.search
    assert result["recall@10"] >= evaluate_candidate(Popularity(), split, 10)["recall@10"]


def test_a_blends_split_members_train_for_the_epochs_its_full_fit_chose():
    from assets.blend import Blend

    curves = []

    class Counted(LightFMRecommender):
        def _choose_epochs(self, train: pd.DataFrame) -> int:
            curves.append(len(train))
            return super()._choose_epochs(train)

    frame = _shop()
    folds = lambda train: [last_days_split(train, days=2), last_days_split(train, days=4)]  # noqa: E731
    settings = LightFMSettings(components=8, learning_rate=0.05, max_epochs=8, patience=3, num_threads=1, seeds=(1,))
    blend = Blend([lambda: Counted(settings, validation=folds)], validation=folds).fit(frame)
    assert curves == [len(frame)]  # one early-stopping curve, on the full training data; none per split
    fitted = blend.members[0]
    assert fitted.epochs == int(np.argmax(fitted.validation_curve)) + 1
    scorer_member = Counted(settings, validation=folds)
    scorer_member.settle_like(fitted)
    assert scorer_member.fit(folds(frame)[0].train).epochs_done == fitted.epochs and curves == [len(frame)]

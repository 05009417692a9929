"""The recommender recipe: the fixed baselines, the production blend, and one config for both.

The same function builds the production blend for the evaluation (fitted on the training
side of a split) and for the published model (fitted on everything), so what is measured is
what ships. The config travels with each evaluation row and model card for the same reason.

Baselines are what a team gets in an afternoon and never change: popularity, recent
popularity, the user's own items in recency order, content similarity, and plain LightFM on
ids alone (the library's default hyperparameters, with the same epoch selection as the
production LightFM). The production blend may
use anything: popularity priors, the user's own history decayed and weighted by behaviour,
item co-occurrence, content similarity and the LightFM hybrid with side features; its
weights are chosen on a split inside the training data.
"""

from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sparse
from pydantic import Field

from assets.blend import Blend, ItemKNN
from assets.lightfm_model import LightFMRecommender, LightFMSettings
from assets.recsys_dataset import Features, UserFeatures, item_vectors
from assets.recsys_eval import (
    Candidate,
    ContentSimilarity,
    OwnRecentItems,
    Popularity,
    RecentPopularity,
    Split,
    category_vectors,
    last_days_split,
    stratified_random_split,
    time_split,
)

Vectors = tuple[list[str], np.ndarray | sparse.csr_matrix]

PRODUCTION = "production_blend"
#: Reported next to the baselines but not one of them: the blend's own LightFM member.
HYBRID = "lightfm_hybrid"
#: LightFM's own defaults (10 components, learning rate 0.05, no regularisation, `max_sampled`
#: 10, every interaction counting 1): the model a team fits in an afternoon. Only the loss (the
#: recipe's) and the number of epochs (chosen on the same folds as production's) are set.
PLAIN_LIGHTFM = {"components": 10, "learning_rate": 0.05, "item_alpha": 0.0, "user_alpha": 0.0, "max_sampled": 10,
                 "sample_weights": False}
#: A second own-history member with a short memory: the blend weighs "what they did today"
#: against the configured half-life on its validation split.
SHORT_HALF_LIFE_DAYS = 1.0


class RecommenderConfig(dg.Config):
    protocol: Literal["time", "last_days", "stratified"] = Field(
        default="time", description="time: a global cut at `quantile`; last_days: the last `days` as test; "
                                    "stratified: a per-user random 75/25 split")
    quantile: float = Field(default=0.9, description="time protocol: where the cut falls in event time")
    new_items_only: bool = Field(default=True, description="time protocol: relevant = items new to the user")
    days: int = Field(default=1, description="last_days protocol: days held out")
    utc_offset_hours: float = Field(default=0.0, description="last_days protocol: the shop's day boundary")
    recent_days: int = Field(default=30, description="window of recent popularity")
    half_life_days: float = Field(default=7.0, description="decay of own-history, co-occurrence and content interest")
    k: int = Field(default=10, description="metrics at k")
    seeds: int = Field(default=3, description="LightFM models averaged, seeds `seed`, `seed` + 1, ...")
    seed: int = Field(default=1, description="the first LightFM seed; the baseline uses it alone")
    threads: int = Field(default=0, description="LightFM training threads (0: every core); 1 makes training "
                                                "reproducible bit for bit, more threads are faster but not")
    loss: Literal["warp", "bpr", "logistic"] = Field(default="warp", description="LightFM loss")
    components: int = Field(default=64, description="LightFM latent dimensions")
    learning_rate: float = Field(default=0.005, description="LightFM learning rate (low: the validation curve "
                                                                "rises slowly to a broad top, so the chosen epoch "
                                                                "is not a noisy early peak)")
    max_epochs: int = Field(default=60, description="LightFM epochs at most (early stopping on validation)")
    validation_folds: int = Field(default=4, description="rolling-origin splits inside training the blend "
                                                         "weights and LightFM's epochs are chosen on (their "
                                                         "mean metric); fewer folds choose more noisily")
    validation_users: int = Field(default=2000, description="users scored per validation split at most (a "
                                                            "seeded sample), so that the weight search and early "
                                                            "stopping do not grow with the number of users")


def make_split(df: pd.DataFrame, config: RecommenderConfig) -> Split:
    """The configured protocol; used for the test split and, inside training, for validation."""
    if config.protocol == "time":
        return time_split(df, config.quantile, config.new_items_only)
    if config.protocol == "last_days":
        return last_days_split(df, config.days, repeats=True, utc_offset_hours=config.utc_offset_hours)
    return stratified_random_split(df)


def validation_folds(train: pd.DataFrame, config: RecommenderConfig) -> list[Split]:
    """Rolling-origin splits inside the training data: the protocol applied to it, then to that
    split's own training side, and so on. Weights chosen on the mean of several folds move less
    from run to run than weights fitted to one small split."""
    folds = []
    for _ in range(max(config.validation_folds, 1)):
        fold = make_split(train, config)
        if not fold.users:
            break
        folds.append(_sampled(fold, config.validation_users))
        train = fold.train
    if not folds:
        raise ValueError("too little training data for a validation split: no user has held-out interactions")
    return folds


def validation(config: RecommenderConfig) -> Callable[[pd.DataFrame], list[Split]]:
    """`validation_folds` for this config, as the function LightFM's early stopping and the
    blend's weight search call on whatever training data they are fitted on."""
    return lambda train: validation_folds(train, config)


def _sampled(split: Split, users: int) -> Split:
    """The split scored on at most `users` of its users, drawn with a fixed seed; training stays whole."""
    if len(split.users) <= users:
        return split
    kept = sorted(np.random.default_rng(0).choice(split.users, size=users, replace=False).tolist())
    return replace(split, users=kept, test={u: split.test[u] for u in kept})


def content_vectors(con: duckdb.DuckDBPyConnection, as_of: pd.Timestamp | None = None) -> Vectors | None:
    """Item text vectors as of `as_of` where the shop has texts, else one-hot categories, else None."""
    ids, vectors = item_vectors(con, as_of)
    if ids:
        return ids, vectors
    ids, categories = category_vectors(con)
    return (ids, categories) if ids else None


def lightfm_settings(config: RecommenderConfig) -> LightFMSettings:
    threads = {"num_threads": config.threads} if config.threads > 0 else {}
    return LightFMSettings(loss=config.loss, components=config.components, learning_rate=config.learning_rate,
                           max_epochs=config.max_epochs, seeds=tuple(range(config.seed, config.seed + config.seeds)),
                           **threads)


def baselines(config: RecommenderConfig, vectors: Vectors | None) -> list[Candidate]:
    """The fixed baselines, unfitted."""
    folds = validation(config)
    found: list[Candidate] = [
        Popularity(),
        RecentPopularity(days=config.recent_days),
        OwnRecentItems(recency_only=True),
        LightFMRecommender(replace(lightfm_settings(config), seeds=(config.seed,), **PLAIN_LIGHTFM),
                           validation=folds, name="lightfm_ids"),
    ]
    if vectors is not None:
        found.append(ContentSimilarity(vectors, half_life_days=config.half_life_days))
    return found


def production(config: RecommenderConfig, item_features: Features, user_features: Features | UserFeatures,
               vectors: Vectors | None, catalogue: list[str] | None = None) -> Blend:
    """The production blend, unfitted. `user_features`: fixed, or `UserFeatures` computed from each
    fit's own training interactions. `catalogue`: items LightFM may recommend beyond those with
    interactions (new items, scored from their features)."""
    folds = validation(config)
    settings = lightfm_settings(config)
    members: list[Callable[[], Candidate]] = [
        lambda: Popularity(),
        lambda: RecentPopularity(days=config.recent_days),
        lambda: OwnRecentItems(half_life_days=config.half_life_days),
        lambda: ItemKNN(half_life_days=config.half_life_days),
        lambda: LightFMRecommender(settings, item_features=item_features or None,
                                   user_features=user_features or None, catalogue=catalogue,
                                   validation=folds, name=HYBRID),
    ]
    if config.half_life_days != SHORT_HALF_LIFE_DAYS:
        members.append(lambda: OwnRecentItems(half_life_days=SHORT_HALF_LIFE_DAYS))
    if vectors is not None:
        members.append(lambda: ContentSimilarity(vectors, half_life_days=config.half_life_days))
    return Blend(members, validation=folds, name=PRODUCTION)

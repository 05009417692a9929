"""LightFM as a recommender candidate: hybrid (identity plus side features) or ids only.

Scores for many users come from one matrix product of the learned representations
(`get_user_representations` / `get_item_representations`), never a per-user `predict`
loop. The number of epochs is chosen on a validation split carved out of the training
data (never the test split), with early stopping; several seeds can be averaged.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sparse
from lightfm import LightFM

from assets.recsys_eval import Candidate, Split, evaluate, recommend


@dataclass(frozen=True)
class LightFMSettings:
    loss: str = "warp"                   # warp, bpr or logistic
    components: int = 64
    learning_rate: float = 0.005
    item_alpha: float = 1e-5
    user_alpha: float = 1e-5
    max_sampled: int = 30
    max_epochs: int = 60
    patience: int = 10                   # epochs without a better validation score before stopping
    seeds: tuple[int, ...] = (7,)
    feature_weight: float = 0.25         # weight of a side feature next to the identity feature
    sample_weights: bool = True          # each interaction weighted by its event weight (else all count 1)
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.loss not in ("warp", "bpr", "logistic", "warp-kos"):
            raise ValueError(f"loss {self.loss!r} is not one of warp, bpr, logistic, warp-kos")


def feature_matrix(ids: list[str], features: dict[str, list[str]] | None, weight: float
                   ) -> tuple[sparse.csr_matrix, list[str]]:
    """Identity features plus the named side features (weighted, rows not normalised)."""
    n = len(ids)
    identity = sparse.identity(n, format="csr", dtype=np.float32)
    if not features:
        return identity, list(ids)
    names = sorted({f for values in features.values() for f in values})
    column = {name: i for i, name in enumerate(names)}
    rows, cols = [], []
    for row, entity in enumerate(ids):
        for name in features.get(entity, ()):
            rows.append(row)
            cols.append(column[name])
    side = sparse.csr_matrix((np.full(len(rows), weight, dtype=np.float32), (rows, cols)), shape=(n, len(names)))
    return sparse.hstack([identity, side], format="csr"), list(ids) + names


class LightFMRecommender(Candidate):
    """LightFM with the harness's candidate interface (`fit`, `scores`, `seen`, `items`).

    `item_features` / `user_features` (id -> feature names, e.g. categories or embedding
    clusters) make it hybrid; without them it learns from ids alone. `user_features` may be a
    function of the training interactions (features drawn from a user's history must come
    from the interactions the model is fitted on, or validation splits leak). With `validation` (a
    function turning training interactions into an inner `Split`, the same protocol as the
    test), the epoch count is chosen on that split by `metric` with early stopping, then the
    model is refitted on all training interactions for that many epochs.
    """

    def __init__(self, settings: LightFMSettings | None = None, item_features: dict[str, list[str]] | None = None,
                 user_features: dict[str, list[str]] | Callable[[pd.DataFrame], dict[str, list[str]]] | None = None,
                 name: str | None = None,
                 catalogue: Sequence[str] | None = None, epochs: int | None = None,
                 validation: Callable[[pd.DataFrame], Split | list[Split]] | None = None,
                 metric: str = "ndcg@10") -> None:
        self.settings = settings or LightFMSettings()
        self.item_side = item_features
        self.user_side = user_features
        self.name = name or ("lightfm_hybrid" if item_features or user_features else "lightfm_ids")
        self.catalogue = np.sort(np.asarray(list(catalogue), dtype=object)) if catalogue is not None else None
        self.epochs = epochs
        self.validation = validation
        self.metric = metric
        self.validation_curve: list[float] = []

    def __getstate__(self) -> dict:
        """A fitted model pickles without its validation function and training matrices."""
        return {k: v for k, v in self.__dict__.items() if k not in ("validation", "_interactions")}

    def _catalogue(self, train: pd.DataFrame) -> np.ndarray:
        return self.catalogue if self.catalogue is not None else super()._catalogue(train)

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        if self.epochs is None:
            if self.validation is None:
                raise ValueError("give LightFMRecommender either epochs or a validation split function")
            self.epochs = self._choose_epochs(train)
        # writable copies: LightFM's Cython code rejects read-only buffers
        weights = np.array(train["weight"], dtype=np.float32)
        interactions = sparse.coo_matrix((weights, (np.array(rows, dtype=np.int32), np.array(cols, dtype=np.int32))),
                                         shape=(len(self.user_index), len(self.items)))
        interactions.sum_duplicates()
        self.item_features, _ = feature_matrix(list(self.items), self.item_side, self.settings.feature_weight)
        users = self.user_side(train) if callable(self.user_side) else self.user_side
        self.user_features, _ = feature_matrix(list(self.user_index), users, self.settings.feature_weight)
        binary = interactions.copy()
        binary.data = np.ones_like(binary.data)
        s = self.settings
        self.models = [LightFM(no_components=s.components, loss=s.loss, learning_rate=s.learning_rate,
                               item_alpha=s.item_alpha, user_alpha=s.user_alpha, max_sampled=s.max_sampled,
                               random_state=seed) for seed in s.seeds]
        self.epochs_done = 0
        self._interactions = (binary, interactions if s.sample_weights else None)
        self.train_epochs(self.epochs)

    def settle_like(self, fitted: Candidate) -> None:
        """Train for the epochs `fitted` chose instead of running early stopping again."""
        self.epochs = fitted.epochs

    def train_epochs(self, epochs: int) -> None:
        binary, weights = self._interactions
        for model in self.models:
            model.fit_partial(binary, user_features=self.user_features, item_features=self.item_features,
                              sample_weight=weights, epochs=epochs, num_threads=self.settings.num_threads)
        self.epochs_done += epochs

    def _choose_epochs(self, train: pd.DataFrame) -> int:
        """Epochs by early stopping on the inner validation split(s) (never the test split): the
        best epoch of the mean curve over the splits (one split's curve is noisier than their mean)."""
        inner = self.validation(train)
        splits = inner if isinstance(inner, list) else [inner]
        k = int(self.metric.split("@")[1])
        probes = [LightFMRecommender(self.settings, self.item_side, self.user_side, self.name, self.catalogue,
                                     epochs=1).fit(split.train) for split in splits]
        curve: list[float] = []
        for epoch in range(1, self.settings.max_epochs + 1):
            if epoch > 1:
                for probe in probes:
                    probe.train_epochs(1)
            curve.append(float(np.mean([evaluate(recommend(probe, split.users, k, split.exclude), split, k)[self.metric]
                                        for probe, split in zip(probes, splits)])))
            if epoch - int(np.argmax(curve)) - 1 >= self.settings.patience:
                break
        self.validation_curve = [round(score, 5) for score in curve]
        return int(np.argmax(curve)) + 1

    def representations(self) -> tuple[np.ndarray, np.ndarray]:
        """(user matrix, item matrix), each with two bias columns and averaged over the seeds, so that
        `user_matrix @ item_matrix.T` is the mean of the seeds' `predict` scores."""
        users, items = [], []
        for model in self.models:
            user_bias, user_vectors = model.get_user_representations(self.user_features)
            item_bias, item_vectors = model.get_item_representations(self.item_features)
            users.append(np.hstack([user_vectors, user_bias[:, None], np.ones((len(user_bias), 1))]))
            items.append(np.hstack([item_vectors, np.ones((len(item_bias), 1)), item_bias[:, None]]))
        return np.hstack(users) / len(users), np.hstack(items)

    def scores(self, users: Sequence[str]) -> np.ndarray:
        """users x catalogue scores by one matrix product; users unknown to the model get the item biases."""
        user_matrix, item_matrix = self.representations()
        index = self.user_index.get_indexer(list(users))
        result = np.empty((len(index), len(self.items)), dtype=np.float32)
        result[index >= 0] = user_matrix[index[index >= 0]] @ item_matrix.T
        result[index < 0] = item_matrix[:, -1] if len(self.models) == 1 else np.mean(
            [m.get_item_representations(self.item_features)[0] for m in self.models], axis=0)
        return result

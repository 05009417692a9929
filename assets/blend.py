"""The production recommender: a validated blend of candidates, plus item-to-item co-occurrence.

`Blend` standardizes each member's scores per user (so a LightFM score and a popularity
count can be added) and sums them with weights chosen by coordinate ascent on an inner
validation split carved out of the training data, never the test split. The members are
then refitted on all training interactions with those weights.
"""

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sparse

from assets.recsys_eval import Candidate, Split, _decayed, evaluate, top_k

WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


class ItemKNN(Candidate):
    """Items that co-occur with the user's items: cosine similarity of item columns of the
    training user-item matrix, applied to the user's decayed, behaviour-weighted history."""

    def __init__(self, half_life_days: float = 30.0, neighbours: int = 50, name: str = "item_knn"):
        self.half_life_days = half_life_days
        self.neighbours = neighbours
        self.name = name

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        shape = (len(self.user_index), len(self.items))
        binary = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
        binary.data[:] = 1.0
        norms = np.sqrt(np.asarray(binary.multiply(binary).sum(axis=0)).ravel())
        normalized = binary @ sparse.diags(1.0 / np.where(norms > 0, norms, 1.0))
        similarity = (normalized.T @ normalized).tocsr()
        similarity.setdiag(0.0)
        similarity.eliminate_zeros()
        self.similarity = _keep_top(similarity, self.neighbours)
        self.history = sparse.csr_matrix((_decayed(train, self.half_life_days), (rows, cols)), shape=shape)

    def scores(self, users: Sequence[str]) -> np.ndarray:
        return np.asarray((self._rows(self.history, users) @ self.similarity).todense())


def _keep_top(matrix: sparse.csr_matrix, k: int) -> sparse.csr_matrix:
    """Each row's k largest entries (the item's nearest neighbours)."""
    rows, cols, values = [], [], []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        if end - start > k:
            keep = np.argpartition(-matrix.data[start:end], k)[:k] + start
        else:
            keep = np.arange(start, end)
        rows.append(np.full(len(keep), row))
        cols.append(matrix.indices[keep])
        values.append(matrix.data[keep])
    if not rows:
        return matrix
    return sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                             shape=matrix.shape)


def standardized(scores: np.ndarray) -> np.ndarray:
    """Per user (row): zero mean, unit spread; a constant row becomes zeros."""
    scores = np.asarray(scores, dtype=np.float32)
    mean = scores.mean(axis=1, keepdims=True)
    spread = scores.std(axis=1, keepdims=True)
    return (scores - mean) / np.where(spread > 0, spread, 1.0)


class Blend(Candidate):
    """Sum of standardized member scores with validation-chosen weights."""

    def __init__(self, members: Sequence[Callable[[], Candidate]],
                 validation: Callable[[pd.DataFrame], Split | list[Split]],
                 metric: str = "ndcg@10", rounds: int = 2, min_gain: float = 0.01, name: str = "production_blend"):
        """`members`: factories making fresh, unfitted candidates (fitted on each inner split, then on all).
        `validation` turns training interactions into one inner split or several (their mean is maximised)."""
        self.factories = list(members)
        self.validation = validation
        self.metric = metric
        self.rounds = rounds
        self.min_gain = min_gain
        self.name = name
        self.weights: dict[str, float] = {}
        self.search: list[dict] = []

    def __getstate__(self) -> dict:
        """A fitted blend pickles without its factories and validation (functions made at
        training time); it can score but not be refitted after loading."""
        return {k: v for k, v in self.__dict__.items() if k not in ("factories", "validation")}

    def _catalogue(self, train: pd.DataFrame) -> np.ndarray:
        """The members, fitted on all training interactions; the blend scores the union of their items."""
        self.members = [factory() for factory in self.factories]
        for member in self.members:
            member.fit(train)
        return np.sort(np.unique(np.concatenate([np.asarray(m.items, dtype=object) for m in self.members])))

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        self.weights = self._choose_weights(train)

    def _aligned(self, members: Sequence[Candidate], items: np.ndarray, users: Sequence[str]) -> list[np.ndarray]:
        """Each member's standardized scores on `items` (an item a member cannot score gets its row minimum)."""
        index = pd.Index(items)
        matrices = []
        for member in members:
            scores = standardized(member.scores(users))
            full = np.repeat(scores.min(axis=1, keepdims=True), len(items), axis=1)
            full[:, index.get_indexer(member.items)] = scores
            matrices.append(full)
        return matrices

    def _choose_weights(self, train: pd.DataFrame) -> dict[str, float]:
        """Coordinate ascent over `WEIGHT_GRID` from the best single member, on the inner split(s).

        A change is kept only if it raises the mean metric by `min_gain` (relative) and lowers
        no split's metric: small validation splits reward weights that fit their noise, and
        those cost accuracy on the test split more often than they add to it.
        """
        inner_splits = self.validation(train)
        inner_splits = inner_splits if isinstance(inner_splits, list) else [inner_splits]
        scorers = [self._scorer(inner) for inner in inner_splits]
        names = self._member_names

        def score(weights: np.ndarray) -> np.ndarray:
            return np.array([scorer(weights) for scorer in scorers])

        count = len(names)
        singles = [score(np.eye(count)[i]) for i in range(count)]
        first = int(np.argmax([s.mean() for s in singles]))
        weights, best = np.eye(count)[first], singles[first]
        self.search = [{"weights": dict(zip(names, np.eye(count)[i].tolist())), self.metric: float(s.mean())}
                       for i, s in enumerate(singles)]
        for _ in range(self.rounds):
            for i in range(count):
                for value in WEIGHT_GRID:
                    trial = weights.copy()
                    trial[i] = value
                    if not trial.any():
                        continue
                    result = score(trial)
                    if result.mean() > best.mean() * (1 + self.min_gain) and np.all(result >= best - 1e-12):
                        best, weights = result, trial
                        self.search.append({"weights": dict(zip(names, trial.tolist())),
                                            self.metric: float(result.mean())})
        self.validation_score = float(best.mean())
        return {name: float(w) for name, w in zip(names, weights)}

    def _scorer(self, inner: Split) -> Callable[[np.ndarray], float]:
        """Fit fresh members on one inner split; return weights -> the metric on it.

        The members take what the full fit's members chose on these same splits (LightFM's
        epochs) instead of choosing again on splits of the split: nested early stopping cost
        as many curves as splits squared. It tilts the search a little towards LightFM, whose
        epochs were picked on the very splits the weights are scored on."""
        members = [factory() for factory in self.factories]
        for member, fitted in zip(members, self.members):
            member.settle_like(fitted)
            member.fit(inner.train)
        self._member_names = [m.name for m in members]
        items = np.sort(np.unique(np.concatenate([np.asarray(m.items, dtype=object) for m in members])))
        matrices = self._aligned(members, items, inner.users)
        seen = None
        if inner.exclude == "train":
            user_rows = pd.Index(inner.users)
            known = inner.train[inner.train["user_id"].isin(user_rows)]
            seen = (user_rows.get_indexer(known["user_id"]), pd.Index(items).get_indexer(known["item_id"]))
        k = int(self.metric.split("@")[1])

        def score(weights: np.ndarray) -> float:
            combined = sum(w * m for w, m in zip(weights, matrices) if w)
            if seen is not None:
                combined = combined.copy()
                combined[seen[0], seen[1]] = -np.inf
            recommended = {u: items[p].tolist() for u, p in zip(inner.users, top_k(combined, k))}
            return float(evaluate(recommended, inner, k)[self.metric])

        return score

    def scores(self, users: Sequence[str]) -> np.ndarray:
        matrices = self._aligned(self.members, self.items, users)
        return sum(self.weights[m.name] * s for m, s in zip(self.members, matrices) if self.weights[m.name])

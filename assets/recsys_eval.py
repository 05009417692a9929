"""The one evaluation harness for recommender candidates: interactions, splits, metrics, baselines.

A recommender's number only means something beside the baselines' numbers on the same
split, scored by the same code. So the splits (time cut, last days, per-user random) and
the metrics (precision, recall, NDCG, MAP, hit rate at k; coverage, novelty, AUC; the same
on cold users and cold items) are defined here once, and every candidate, the LightFM
model included, goes through `evaluate_candidate`.

A candidate is anything with `name`, `items` (its item index), `fit(train)`,
`scores(users) -> users x items` and `seen(users)` (training interactions on the same
index). `recommend` turns score matrices into top-k lists a batch of users at a time, with
exclusions applied inside the matrix, never by a per-user pass over the catalogue.

Pure numpy/pandas/scipy over a DuckDB connection; no Dagster (see docs/recommender.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sparse

from assets.profile_state import DEFAULT_EVENT_WEIGHTS, EVENT_TYPES, matrix
from resources.warehouse import vector_dimension

#: Weight of each event type in `interactions`: the portraits' weights (a purchase says more
#: about taste than a view, a cart or review nearly as much); `search` and `chat` carry no
#: item and are left out.
DEFAULT_WEIGHTS: dict[str, float] = {t: w for t, w in DEFAULT_EVENT_WEIGHTS.items() if t not in ("search", "chat")}
#: A cold user has fewer than this many training interactions.
COLD_USER_INTERACTIONS = 3
#: Score cells computed at once by `recommend` and the AUC (32 MB of float64).
BATCH_CELLS = 4_000_000
EXCLUDE_RULES = ("none", "train")
SECONDS_PER_DAY = 86_400.0

ACCURACY_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate")


# --------------------------------------------------------------------------- interactions

def interactions(con: duckdb.DuckDBPyConnection, weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The `events` that name an item, as `user_id, item_id, ts, event_type, rating, weight`
    (ordered by time).

    `weights` maps event types to their weight (default `DEFAULT_WEIGHTS`); event types it
    does not name are left out, so `{"purchase": 1}` evaluates on purchases only.
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"weights name unknown event types {sorted(unknown)}; known: {', '.join(EVENT_TYPES)}")
    if not weights:
        raise ValueError("weights names no event type: nothing to evaluate")
    cases = " ".join(f"WHEN '{t}' THEN {float(w)!r}" for t, w in weights.items())
    frame = con.execute(f"""
        SELECT user_id::VARCHAR AS user_id, item_id::VARCHAR AS item_id, ts, event_type, rating::DOUBLE AS rating,
               CASE event_type {cases} END AS weight
        FROM events
        WHERE item_id IS NOT NULL AND event_type IN ({", ".join("?" for _ in weights)})
        ORDER BY ts, user_id, item_id
    """, list(weights)).df()
    frame["ts"] = frame["ts"].astype("datetime64[ns]")
    return frame


# --------------------------------------------------------------------------- splits

@dataclass
class Split:
    """Training interactions, and per evaluated user the set of relevant item ids.

    `users` are the users evaluated: seen in training, with at least one relevant item.
    `items` is every item of the interactions the split was cut from (the catalogue for
    coverage and AUC). `exclude` is the exclusion rule the protocol needs: "train" when
    relevant items can never be training items, "none" when repeats count.
    """

    name: str
    train: pd.DataFrame
    test: dict[str, set[str]]
    users: list[str]
    items: np.ndarray
    exclude: str
    cut: pd.Timestamp | None = None
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        cut = f", cut {self.cut}" if self.cut is not None else ""
        relevant = sum(len(r) for r in self.test.values())
        return (f"{self.name}{cut}: {len(self.train):,} training interactions of {self.train['user_id'].nunique():,} "
                f"users; {len(self.users):,} users evaluated, {relevant:,} relevant (user, item) pairs; "
                f"catalogue {len(self.items):,} items; exclude {self.exclude}")

    @cached_property
    def item_index(self) -> pd.Index:
        return pd.Index(self.items)

    @cached_property
    def train_counts(self) -> pd.Series:
        """Training interactions per user."""
        return self.train["user_id"].value_counts()

    @cached_property
    def train_items(self) -> frozenset[str]:
        return frozenset(self.train["item_id"].unique())

    @cached_property
    def train_positions(self) -> dict[str, np.ndarray]:
        """Per evaluated user, the catalogue positions of the items touched in training."""
        wanted = self.train[self.train["user_id"].isin(set(self.users))]
        pairs = wanted[["user_id", "item_id"]].drop_duplicates()
        positions = self.item_index.get_indexer(pairs["item_id"])
        return {u: np.asarray(p) for u, p in pd.Series(positions, index=pairs["user_id"].to_numpy()).groupby(level=0)}


def _ids(values: pd.Series) -> np.ndarray:
    """The distinct ids of a column, sorted, as a plain object array."""
    return np.sort(np.asarray(values.unique(), dtype=object))


def _as_frame(df: pd.DataFrame) -> pd.DataFrame:
    missing = {"user_id", "item_id", "ts"} - set(df.columns)
    if missing:
        raise ValueError(f"interactions lack the columns {sorted(missing)}")
    frame = df.copy()
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[ns]")
    if "weight" not in frame.columns:
        frame["weight"] = 1.0
    return frame


def _relevant(train: pd.DataFrame, test_rows: pd.DataFrame, new_items_only: bool) -> dict[str, set[str]]:
    """Per user seen in training, the items of their test rows (minus their training items if asked)."""
    pairs = test_rows[["user_id", "item_id"]].drop_duplicates()
    pairs = pairs[pairs["user_id"].isin(set(train["user_id"]))]
    if new_items_only:
        known = train[["user_id", "item_id"]].drop_duplicates().assign(_known=True)
        pairs = pairs.merge(known, on=["user_id", "item_id"], how="left")
        pairs = pairs[pairs["_known"].isna()]
    return {u: set(g) for u, g in pairs.groupby("user_id")["item_id"]}


def _split(name: str, frame: pd.DataFrame, train_mask: np.ndarray, new_items_only: bool, exclude: str,
           cut: pd.Timestamp | None, params: dict) -> Split:
    train = frame[train_mask].reset_index(drop=True)
    test = _relevant(train, frame[~train_mask], new_items_only)
    return Split(name=name, train=train, test=test, users=sorted(test), items=_ids(frame["item_id"]),
                 exclude=exclude, cut=cut, params=params)


def time_split(df: pd.DataFrame, quantile: float = 0.9, new_items_only: bool = True) -> Split:
    """One global cut at the `quantile` of event time: training is everything at or before
    it, the test users are the users seen before it, and their relevant items are the items
    they touch after it (only items new to them with `new_items_only`, the Amazon protocol,
    which then needs training items excluded from recommendations).
    """
    if not 0 < quantile < 1:
        raise ValueError("quantile must lie strictly between 0 and 1")
    frame = _as_frame(df)
    ns = frame["ts"].to_numpy().astype("int64")
    cut = pd.Timestamp(int(np.quantile(ns, quantile)))
    return _split("time", frame, (frame["ts"] <= cut).to_numpy(), new_items_only,
                  "train" if new_items_only else "none", cut, {"quantile": quantile, "new_items_only": new_items_only})


def last_days_split(df: pd.DataFrame, days: int = 1, repeats: bool = True, utc_offset_hours: float = 0.0) -> Split:
    """The last `days` calendar days as the test window, days counted in local time
    (`utc_offset_hours`: Taobao is UTC+8, so its last day is 2017-12-03 China time).

    With `repeats` any item a user touches in the window is relevant, including items
    touched before (repeat engagement), and nothing is excluded; without, only items new
    to the user are relevant and training items are excluded.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    frame = _as_frame(df)
    offset = pd.Timedelta(hours=utc_offset_hours)
    last_local_day = (frame["ts"].max() + offset).normalize()
    cut = last_local_day - pd.Timedelta(days=days - 1) - offset  # the window's first instant, in UTC
    return _split("last_days", frame, (frame["ts"] < cut).to_numpy(), not repeats, "none" if repeats else "train",
                  cut, {"days": days, "repeats": repeats, "utc_offset_hours": utc_offset_hours})


def stratified_random_split(df: pd.DataFrame, test_share: float = 0.25, seed: int = 42) -> Split:
    """Per user, a random `test_share` of their distinct items goes to test (rounded, the
    rest, at least one item, to training), all of the item's interactions with it: the
    Microsoft Recommenders stratified split, for comparing with public benchmarks.
    """
    if not 0 < test_share < 1:
        raise ValueError("test_share must lie strictly between 0 and 1")
    frame = _as_frame(df)
    pairs = frame[["user_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    pairs["_key"] = np.random.default_rng(seed).random(len(pairs))
    pairs = pairs.sort_values(["user_id", "_key"], kind="stable")
    n = pairs.groupby("user_id")["item_id"].transform("size").to_numpy()
    position = pairs.groupby("user_id").cumcount().to_numpy()
    pairs["_train"] = position < np.floor(n * (1 - test_share) + 0.5)
    side = frame.merge(pairs[["user_id", "item_id", "_train"]], on=["user_id", "item_id"], how="left")
    return _split("stratified_random", frame, side["_train"].to_numpy(bool), True, "train", None,
                  {"test_share": test_share, "seed": seed})


# --------------------------------------------------------------------------- metrics

def _ks(k: int | Sequence[int]) -> list[int]:
    ks = sorted({int(k)} if isinstance(k, (int, np.integer)) else {int(x) for x in k})
    if not ks or ks[0] < 1:
        raise ValueError("k must be a positive number or a list of them")
    return ks


def _accuracy(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user precision, recall, NDCG, MAP and hit at k from a users x k hit matrix."""
    h = hits[:, :k].astype(float)
    n_hits = h.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(k, n_relevant) - 1]
    precision_at = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    return {
        "precision": n_hits / k,
        "recall": n_hits / n_relevant,
        "ndcg": (h @ discounts) / ideal,
        "map": (precision_at * h).sum(axis=1) / np.minimum(k, n_relevant),
        "hit_rate": (n_hits > 0).astype(float),
    }


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def evaluate(recommended: Mapping[str, Sequence[str]], split: Split, k: int | Sequence[int] = 10,
             train_popularity: Mapping[str, float] | pd.Series | None = None,
             catalogue_size: int | None = None) -> dict:
    """Metrics of top-k lists against the split, averaged over `split.users` (a user without
    a list scores zero).

    For each k: precision, recall, NDCG (binary relevance, log2 discount, ideal DCG over
    min(k, |relevant|)), MAP (average precision cut at k over min(k, |relevant|)), hit
    rate; coverage (distinct recommended items / `catalogue_size`, default the split's
    catalogue) and novelty (mean -log2 of a recommended item's share of training
    interactions, `train_popularity` by default counted from `split.train`; an item never
    seen counts as seen once). The accuracy metrics again over cold users (fewer than 3
    training interactions), and recall over relevant cold items (no training interaction).
    """
    ks = _ks(k)
    top = ks[-1]
    users = split.users
    n_relevant = np.array([len(split.test[u]) for u in users], dtype=int)
    if (n_relevant == 0).any():
        raise ValueError("every evaluated user needs at least one relevant item")
    lists = [list(dict.fromkeys(recommended.get(u, ())))[:top] for u in users]
    hits = np.zeros((len(users), top), dtype=bool)
    cold_item_hits = np.zeros((len(users), top), dtype=bool)
    cold_relevant = np.zeros(len(users), dtype=int)
    known = split.train_items
    for i, (u, items) in enumerate(zip(users, lists)):
        relevant = split.test[u]
        cold = {x for x in relevant if x not in known}
        cold_relevant[i] = len(cold)
        for j, item in enumerate(items):
            hits[i, j] = item in relevant
            cold_item_hits[i, j] = item in cold
    cold_users = np.array([split.train_counts.get(u, 0) < COLD_USER_INTERACTIONS for u in users], dtype=bool)
    with_cold_items = cold_relevant > 0

    if train_popularity is None:
        train_popularity = split.train["item_id"].value_counts()
    popularity = pd.Series(train_popularity, dtype=float)
    total = float(popularity.sum()) or 1.0
    catalogue_size = len(split.items) if catalogue_size is None else catalogue_size

    result: dict = {"users": len(users), "cold_users": int(cold_users.sum()),
                    "cold_item_users": int(with_cold_items.sum())}
    for kk in ks:
        per_user = _accuracy(hits, n_relevant, kk)
        for metric in ACCURACY_METRICS:
            result[f"{metric}@{kk}"] = _mean(per_user[metric])
        shown = [x for items in lists for x in items[:kk]]
        result[f"coverage@{kk}"] = len(set(shown)) / catalogue_size if catalogue_size else None
        counts = popularity.reindex(shown).fillna(0.0).clip(lower=1.0).to_numpy()
        result[f"novelty@{kk}"] = float(np.mean(-np.log2(counts / total))) if len(shown) else None
        for metric in ACCURACY_METRICS:
            result[f"cold_user_{metric}@{kk}"] = _mean(per_user[metric][cold_users])
        cold_recall = cold_item_hits[with_cold_items, :kk].sum(axis=1) / cold_relevant[with_cold_items]
        result[f"cold_item_recall@{kk}"] = _mean(cold_recall)
    result["auc"] = None
    return result


def _user_auc(row: np.ndarray, positives: np.ndarray, excluded: np.ndarray) -> float | None:
    """P(a relevant item outscores a non-relevant, non-training one), ties counting half."""
    mask = np.ones(len(row), dtype=bool)
    mask[positives] = False
    mask[excluded] = False
    negatives = np.sort(row[mask])
    if not len(negatives) or not len(positives):
        return None
    scores = row[positives]
    below = np.searchsorted(negatives, scores, side="left")
    tied = np.searchsorted(negatives, scores, side="right") - below
    return float(np.mean((below + 0.5 * tied) / len(negatives)))


def _mean_auc(rows: Sequence[tuple[str, np.ndarray]], split: Split) -> list[float]:
    out = []
    none = np.empty(0, dtype=int)
    for user, row in rows:
        positives = split.item_index.get_indexer(sorted(split.test[user]))
        excluded = split.train_positions.get(user, none) if split.exclude == "train" else none
        value = _user_auc(row, positives[positives >= 0], excluded)
        if value is not None:
            out.append(value)
    return out


def auc(scores_by_user: Mapping[str, pd.Series], split: Split) -> float | None:
    """Mean per-user AUC of the relevant items against every other catalogue item the user
    did not touch in training, from full score vectors (item id -> score). Catalogue items
    a vector lacks score below all others. None when no evaluated user has a vector.

    Training items are left out of the negatives only where the split excludes them from
    recommendations (`split.exclude == "train"`); where repeats are relevant, a training
    item the user did not come back to is a negative like any other.
    """
    rows = []
    for user in split.users:
        if user in scores_by_user:
            vector = pd.Series(scores_by_user[user], dtype=float).reindex(split.items)
            rows.append((user, vector.fillna(-np.inf).to_numpy()))
    values = _mean_auc(rows, split)
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- candidates and recommend

def _decayed(train: pd.DataFrame, half_life_days: float) -> np.ndarray:
    """Each interaction's weight halved per `half_life_days` before its user's last
    training interaction (a per-user reference: no underflow on long histories, same order)."""
    last = train.groupby("user_id")["ts"].transform("max")
    age_days = (last - train["ts"]).dt.total_seconds().to_numpy() / SECONDS_PER_DAY
    return train["weight"].to_numpy(float) * np.power(2.0, -age_days / half_life_days)


class Candidate:
    """Base of the baselines: the item and user index, and training interactions as a matrix.

    Subclasses set `name`, implement `_fit(train, rows, cols)` and `scores(users)`. A
    candidate whose `scores` are real full score vectors sets `full_scores` (it reports AUC).
    """

    name = "candidate"
    full_scores = True

    def fit(self, train: pd.DataFrame) -> Candidate:
        train = _as_frame(train)
        self.items = self._catalogue(train)
        self.item_index = pd.Index(self.items)
        self.user_index = pd.Index(_ids(train["user_id"]))
        rows = self.user_index.get_indexer(train["user_id"])
        cols = self.item_index.get_indexer(train["item_id"])
        keep = cols >= 0
        self._seen = sparse.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])),
                                       shape=(len(self.user_index), len(self.items)))
        self._fit(train[keep].reset_index(drop=True), rows[keep], cols[keep])
        return self

    def _catalogue(self, train: pd.DataFrame) -> np.ndarray:
        return _ids(train["item_id"])

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        raise NotImplementedError

    def settle_like(self, fitted: Candidate) -> None:
        """Take the settings `fitted` (the same candidate, already fitted) chose on validation,
        instead of choosing them again; a candidate that chooses nothing has nothing to take."""

    def scores(self, users: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def _rows(self, matrix: sparse.csr_matrix, users: Sequence[str]) -> sparse.csr_matrix:
        """Rows of a users x items matrix for `users`; empty rows for users unseen in training."""
        index = self.user_index.get_indexer(list(users))
        picked = matrix[np.maximum(index, 0)]
        return sparse.diags((index >= 0).astype(float)) @ picked

    def seen(self, users: Sequence[str]) -> sparse.csr_matrix:
        """users x items: nonzero where the user interacted with the item in training."""
        return self._rows(self._seen, users)

    def _popularity(self, cols: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(cols, weights=weights, minlength=len(self.items)).astype(float)


class Popularity(Candidate):
    """Every user gets the items with the most training interactions (or summed weight)."""

    def __init__(self, weighted: bool = False, name: str | None = None):
        self.weighted = weighted
        self.name = name or ("popularity_weighted" if weighted else "popularity")

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        self.popularity = self._popularity(cols, train["weight"].to_numpy(float) if self.weighted else None)

    def scores(self, users: Sequence[str]) -> np.ndarray:
        return np.tile(self.popularity, (len(users), 1))


class RecentPopularity(Popularity):
    """Popularity over the last `days` of training only (what is hot now)."""

    def __init__(self, days: float = 7, weighted: bool = False, name: str | None = None):
        super().__init__(weighted, name or f"recent_popularity_{days:g}d")
        self.days = days

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        recent = (train["ts"] >= train["ts"].max() - pd.Timedelta(days=self.days)).to_numpy()
        weights = train["weight"].to_numpy(float) if self.weighted else np.ones(len(train))
        self.popularity = self._popularity(cols, weights * recent)


class OwnRecentItems(Candidate):
    """The user's own items first, scored by a time-decayed, behaviour-weighted sum of their
    interactions (repeat engagement); popularity breaks ties and fills the list.

    With `recency_only` the own items are ordered by their last interaction instead (the
    plain "recently viewed" list). Own scores are scaled per user into (1, 2]; the popularity
    prior stays below `prior`, so own items always come first.
    """

    def __init__(self, half_life_days: float = 2.0, recency_only: bool = False, prior: float = 1e-9,
                 name: str | None = None):
        if half_life_days <= 0:
            raise ValueError("half_life_days must be positive")
        self.half_life_days = half_life_days
        self.recency_only = recency_only
        self.prior = prior
        self.name = name or ("own_items_by_recency" if recency_only else f"own_items_decayed_{half_life_days:g}d")

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        shape = (len(self.user_index), len(self.items))
        if self.recency_only:
            pairs = pd.DataFrame({"r": rows, "c": cols, "t": train["ts"].to_numpy()})
            last = pairs.groupby(["r", "c"], as_index=False)["t"].max()
            value = last.groupby("r")["t"].rank(method="dense", pct=True).to_numpy()
            own = sparse.csr_matrix((value, (last["r"].to_numpy(), last["c"].to_numpy())), shape=shape)
        else:
            own = sparse.csr_matrix((_decayed(train, self.half_life_days), (rows, cols)), shape=shape)
            own.sum_duplicates()
            top = own.max(axis=1).toarray().ravel()
            own = sparse.diags(1.0 / np.where(top > 0, top, 1.0)) @ own
        own.data = 1.0 + own.data
        self.own = own.tocsr()
        popularity = self._popularity(cols)
        self.prior_scores = self.prior * popularity / max(popularity.max(initial=0.0), 1.0)

    def scores(self, users: Sequence[str]) -> np.ndarray:
        return self._rows(self.own, users).toarray() + self.prior_scores


def _vector_matrix(vectors: Mapping[str, Sequence[float]] | tuple[Sequence[str], np.ndarray | sparse.spmatrix]
                   ) -> tuple[np.ndarray, np.ndarray | sparse.csr_matrix]:
    if isinstance(vectors, Mapping):
        ids = np.array([str(i) for i in vectors], dtype=object)
        matrix = np.vstack([np.asarray(v, dtype=float) for v in vectors.values()]) if len(ids) else np.zeros((0, 1))
    else:
        ids, matrix = np.array([str(i) for i in vectors[0]], dtype=object), vectors[1]
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix, dtype=float)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        return ids, sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ matrix
    matrix = np.asarray(matrix, dtype=float)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return ids, matrix / np.where(norms > 0, norms, 1.0)


class ContentSimilarity(Candidate):
    """Cosine between the user's interest, the decayed, behaviour-weighted mean of the
    vectors of items they touched, and every item vector; popularity breaks ties (users
    with no vectored item get popularity). The catalogue is the items with a vector, so
    items never interacted with can be recommended.

    `vectors`: a dict item id -> vector, or (item ids, matrix), dense or scipy sparse
    (e.g. `item_embedding_vectors` or `category_vectors`).
    """

    def __init__(self, vectors: Mapping[str, Sequence[float]] | tuple[Sequence[str], np.ndarray | sparse.spmatrix],
                 half_life_days: float = 30.0, prior: float = 1e-9, name: str = "content_similarity"):
        ids, matrix = _vector_matrix(vectors)
        order = np.argsort(ids, kind="stable")
        self.vector_ids, self.vectors = ids[order], matrix[order]
        self.half_life_days = half_life_days
        self.prior = prior
        self.name = name

    def _catalogue(self, train: pd.DataFrame) -> np.ndarray:
        return self.vector_ids

    def _fit(self, train: pd.DataFrame, rows: np.ndarray, cols: np.ndarray) -> None:
        weights = sparse.csr_matrix((_decayed(train, self.half_life_days), (rows, cols)),
                                    shape=(len(self.user_index), len(self.items)))
        interest = weights @ self.vectors
        interest = interest.toarray() if sparse.issparse(interest) else np.asarray(interest)
        norms = np.linalg.norm(interest, axis=1, keepdims=True)
        self.interest = interest / np.where(norms > 0, norms, 1.0)
        popularity = self._popularity(cols)
        self.prior_scores = self.prior * popularity / max(popularity.max(initial=0.0), 1.0)

    def scores(self, users: Sequence[str]) -> np.ndarray:
        index = self.user_index.get_indexer(list(users))
        interest = np.where((index >= 0)[:, None], self.interest[np.maximum(index, 0)], 0.0)
        similarity = (self.vectors @ interest.T).T if sparse.issparse(self.vectors) else interest @ self.vectors.T
        return np.asarray(similarity) + self.prior_scores


def item_embedding_vectors(con: duckdb.DuckDBPyConnection) -> tuple[list[str], np.ndarray]:
    """Item ids and vectors of the warehouse's `item_embeddings` (made from review texts
    where the shop has no catalogue text: on a time split, texts written after the cut
    leak into them; build training-only vectors for an honest number)."""
    table = con.sql("SELECT item_id, vector FROM item_embeddings ORDER BY item_id").to_arrow_table()
    return table.column(0).to_pylist(), matrix(table.column(1), vector_dimension(con, "item_embeddings"))


def category_vectors(con: duckdb.DuckDBPyConnection) -> tuple[list[str], sparse.csr_matrix]:
    """Item ids and a sparse one-hot matrix of their categories (`items.categories`)."""
    rows = con.execute("""
        SELECT item_id, c FROM items, unnest(categories) AS t(c) WHERE c IS NOT NULL ORDER BY item_id
    """).df()
    ids, item_pos = np.unique(rows["item_id"].to_numpy(), return_inverse=True)
    _, category_pos = np.unique(rows["c"].to_numpy(), return_inverse=True)
    matrix = sparse.csr_matrix((np.ones(len(rows)), (item_pos, category_pos)),
                               shape=(len(ids), int(category_pos.max(initial=-1)) + 1))
    return list(ids), matrix


def top_k(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the column indices of the k highest finite-or-+inf scores, best first; ties
    go to the lower column. Scores of -inf (excluded) and NaN are never returned."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0 or n_rows == 0:
        return [np.empty(0, dtype=int) for _ in range(n_rows)]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)[:, None]
    above = scores > kth
    at = scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    chosen = (above | (at & (np.cumsum(at, axis=1) <= need))) & (scores > -np.inf)
    rows, cols = np.nonzero(chosen)
    order = np.lexsort((cols, -scores[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    return np.split(cols, np.cumsum(np.bincount(rows, minlength=n_rows))[:-1])


def _batches(users: Sequence[str], n_items: int, batch_cells: int) -> list[list[str]]:
    step = max(1, batch_cells // max(n_items, 1))
    users = list(users)
    return [users[i:i + step] for i in range(0, len(users), step)]


def recommend(candidate: Candidate, users: Sequence[str], k: int = 10, exclude: str = "none",
              batch_cells: int = BATCH_CELLS) -> dict[str, list[str]]:
    """Top-k item ids per user from the candidate's score matrix, a batch of users at a time;
    with exclude="train" the user's training items are set to -inf in the matrix first."""
    if exclude not in EXCLUDE_RULES:
        raise ValueError(f"exclude must be one of {EXCLUDE_RULES}, not {exclude!r}")
    out: dict[str, list[str]] = {}
    for batch in _batches(users, len(candidate.items), batch_cells):
        scores = np.array(candidate.scores(batch), dtype=float)
        if exclude == "train":
            rows, cols = candidate.seen(batch).nonzero()
            scores[rows, cols] = -np.inf
        for user, picked in zip(batch, top_k(scores, k)):
            out[user] = candidate.items[picked].tolist()
    return out


def candidate_auc(candidate: Candidate, split: Split, batch_cells: int = BATCH_CELLS) -> float | None:
    """`auc` of a fitted candidate's full score vectors, computed a batch of users at a time;
    catalogue items outside the candidate's index score below all others."""
    positions = split.item_index.get_indexer(candidate.items)
    inside = positions >= 0
    values: list[float] = []
    for batch in _batches(split.users, len(split.items), batch_cells):
        scores = np.asarray(candidate.scores(batch), dtype=float)
        full = np.full((len(batch), len(split.items)), -np.inf)
        full[:, positions[inside]] = np.where(np.isnan(scores[:, inside]), -np.inf, scores[:, inside])
        values += _mean_auc(list(zip(batch, full)), split)
    return float(np.mean(values)) if values else None


def evaluate_candidate(candidate: Candidate, split: Split, k: int | Sequence[int] = 10, exclude: str | None = None,
                       catalogue_size: int | None = None) -> dict:
    """Fit on the split's training interactions, recommend (with the split's exclusion rule
    unless `exclude` says otherwise), and score: `evaluate`'s metrics, AUC for candidates
    with full score vectors, and the seconds taken."""
    started = time.perf_counter()
    candidate.fit(split.train)
    return evaluate_fitted(candidate, split, k, exclude, catalogue_size, started)


def evaluate_fitted(candidate: Candidate, split: Split, k: int | Sequence[int] = 10, exclude: str | None = None,
                    catalogue_size: int | None = None, started: float | None = None) -> dict:
    """`evaluate_candidate` for a candidate already fitted on `split.train` (a blend's member);
    `seconds` counts from `started`, or from now."""
    started = time.perf_counter() if started is None else started
    recommended = recommend(candidate, split.users, _ks(k)[-1], exclude or split.exclude)
    result = evaluate(recommended, split, k, catalogue_size=catalogue_size)
    result["auc"] = candidate_auc(candidate, split) if getattr(candidate, "full_scores", False) else None
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def evaluate_candidates(candidates: Sequence[Candidate], split: Split, k: int | Sequence[int] = 10,
                        exclude: str | None = None) -> dict[str, dict]:
    """`evaluate_candidate` for each, keyed by candidate name."""
    return {c.name: evaluate_candidate(c, split, k, exclude) for c in candidates}


# --------------------------------------------------------------------------- report

def results_table(results: Mapping[str, Mapping], digits: int = 4) -> list[dict]:
    """One row per candidate (`candidate` first, then the metrics in a stable order, numbers
    rounded), ready for `assets.metadata.markdown_table`."""
    columns: list[str] = []
    for metrics in results.values():
        columns += [c for c in metrics if c not in columns]
    rows = []
    for name, metrics in results.items():
        row: dict = {"candidate": name}
        for column in columns:
            value = metrics.get(column)
            row[column] = round(value, digits) if isinstance(value, float) and math.isfinite(value) else value
        rows.append(row)
    return rows


def best_baseline(results: Mapping[str, Mapping], metric: str) -> tuple[str, float]:
    """The candidate with the highest `metric` (those without a value left out) and that value."""
    scored = {name: m[metric] for name, m in results.items() if m.get(metric) is not None}
    if not scored:
        raise ValueError(f"no candidate reports {metric!r}")
    name = max(scored, key=lambda n: scored[n])
    return name, float(scored[name])

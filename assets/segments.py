"""`user_segments`: every user in exactly one behavioural segment, named for what sets it apart.

The features are two blocks, each scaled to the same total variance so that neither
dominates the distances:

* **behaviour**: `log1p` of the activity counts, monetary value and engagement; `log1p`
  of recency, tenure and purchase recency in days; sentiment; price index; one-hot
  lifecycle and price band; flags for what is missing. Every column is standardized.
* **interest**: the user's interest vector reduced by PCA (8 components by default),
  fitted on the users that have one; users without one sit at its centre (zeros).

Clustering is k-means with k chosen by silhouette (on a fixed sample for large
populations) or HDBSCAN (noise goes to `other`). A privacy floor merges every cluster
smaller than `min_segment_size` into `other`, so no small group is ever shown alone.
Each segment is named and described from what differs most from the whole population.

The functions beside the asset need neither Dagster nor a warehouse: `build_features`,
`kmeans_by_silhouette`, `hdbscan_clusters`, `apply_privacy_floor`, `describe_segments`
and `segment_users`, which runs them all on a profiles frame.
"""

import time
from dataclasses import dataclass, field
from typing import Literal

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier

from assets.automation import AUTOMATION, WAREHOUSE_POOL
from assets.metadata import bar_chart_markdown, markdown_table, query_rows, scatter_markdown
from assets.profile_state import matrix
from resources.warehouse import Warehouse, vector_dimension

OTHER = "other"
OTHER_ID = 0
CHECK_NAME = "segments_cover_every_user"
PROFILES = "user_profiles"

#: Counts, read as 0 when NULL (nothing recorded), then log1p.
COUNT_COLUMNS = ("events", "active_days", "n_view", "n_click", "n_favorite", "n_add_to_cart", "n_purchase",
                 "n_review", "n_rating", "n_search", "n_chat", "frequency")
#: Amounts, read as 0 when NULL, then a signed log1p (refunds can make them negative).
AMOUNT_COLUMNS = ("monetary", "engagement")
#: Durations in days, then log1p. NULL recency: the population's longest; NULL tenure: 0;
#: NULL purchase recency (never bought): the user's tenure, flagged `never_bought`.
DAY_COLUMNS = ("recency_days", "tenure_days", "purchase_recency_days")
LIFECYCLES = ("new", "active", "at_risk", "churned")
PRICE_BANDS = ("budget", "mid", "premium")
SENTIMENT_LABELS = ("negative", "neutral", "positive")

#: The columns of `user_profiles` that segmentation reads (`interest` is read apart).
PROFILE_COLUMNS = ("user_id", *COUNT_COLUMNS, *AMOUNT_COLUMNS, *DAY_COLUMNS, "sentiment", "sentiment_label",
                   "price_index", "price_band", "lifecycle", "top_category")

#: How a distinguishing feature reads in a description: above average, below, and when the
#: segment has none of it. `{x}` is the ratio of the segment's mean to the population's.
PHRASES: dict[str, tuple[str, str, str | None]] = {
    "frequency": ("buy {x} more often than average", "buy {x} less often than average", "never buy"),
    "monetary": ("spend {x} more than average", "spend {x} less than average", "spend nothing"),
    "events": ("have {x} more events than average", "have {x} fewer events than average", None),
    "active_days": ("are active on {x} more days than average", "are active on {x} fewer days than average", None),
    "engagement": ("engage {x} more than average", "engage {x} less than average", None),
    "n_view": ("view {x} more items than average", "view {x} fewer items than average", "never view items"),
    "n_click": ("click {x} more than average", "click {x} less than average", "never click"),
    "n_favorite": ("favourite {x} more than average", "favourite {x} less than average", "never favourite"),
    "n_add_to_cart": ("add to cart {x} more than average", "add to cart {x} less than average", "never add to cart"),
    "n_review": ("review {x} more than average", "review {x} less than average", "never review"),
    "n_rating": ("rate {x} more than average", "rate {x} less than average", "never rate"),
    "n_search": ("search {x} more than average", "search {x} less than average", "never search"),
    "n_chat": ("chat {x} more than average", "chat {x} less than average", "never chat"),
    "recency_days": ("were last seen {x} longer ago than average", "were last seen {x} more recently than average",
                     None),
    "tenure_days": ("have been customers {x} longer than average", "have been customers {x} shorter than average",
                    None),
    "purchase_recency_days": ("last bought {x} longer ago than average", "last bought {x} more recently than average",
                              None),
}
#: Short name words for a distinguishing feature (above average, below), for names.
SHORT_NAMES = {
    "frequency": ("frequent buyers", "rare buyers"), "monetary": ("big spenders", "small spenders"),
    "events": ("very active", "barely active"), "active_days": ("regulars", "occasional"),
    "engagement": ("engaged", "disengaged"), "n_view": ("browsers", "few views"), "n_click": ("clickers", "few clicks"),
    "n_favorite": ("favouriters", "few favourites"), "n_add_to_cart": ("cart fillers", "few carts"),
    "n_review": ("reviewers", "silent"), "n_rating": ("raters", "unrated"), "n_search": ("searchers", "few searches"),
    "n_chat": ("chatty", "no chat"), "recency_days": ("long gone", "recent"), "tenure_days": ("long-standing", "newcomers"),
    "purchase_recency_days": ("lapsed buyers", "recent buyers"),
}
#: A standardized difference below this is not "what sets a segment apart".
MIN_DIFFERENCE = 0.5
#: A ratio this close to 1 says nothing, whatever the standardized difference.
MIN_RATIO = 1.25


class SegmentsConfig(dg.Config):
    """How `user_segments` clusters; set it in the launchpad or a run's config."""

    method: Literal["kmeans", "hdbscan"] = Field(
        default="kmeans", description="kmeans (k chosen by silhouette) or hdbscan (noise goes to 'other')")
    k_min: int = Field(default=3, description="smallest k tried by kmeans")
    k_max: int = Field(default=10, description="largest k tried by kmeans")
    min_segment_size: int = Field(
        default=20, description="privacy floor: smaller clusters are merged into 'other' and never shown alone")
    seed: int = Field(default=7, description="seeds k-means, the silhouette sample, PCA and the map sample")
    silhouette_sample: int = Field(default=5_000, description="users the silhouette is computed on (all if fewer)")
    hdbscan_sample: int = Field(
        default=10_000, description="hdbscan fits on at most this many users; the rest join their nearest neighbour's")
    interest_components: int = Field(default=8, description="PCA components kept of the interest vector")
    interest_weight: float = Field(
        default=1.0, description="total variance of the interest block relative to the behaviour block (1 = equal)")


# --- features ----------------------------------------------------------------------------------------------------


@dataclass
class Features:
    matrix: np.ndarray  # users x columns, both blocks weighted; what is clustered
    behaviour: pd.DataFrame  # the standardized behaviour block (mean 0, sd 1 per non-constant column)
    columns: list[str]  # names of `matrix`'s columns
    interest_users: int = 0
    interest_components: int = 0
    interest_explained: float = 0.0  # share of the interest vectors' variance the components keep


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(None, index=frame.index, dtype=object)
    return frame[column].astype(object).where(frame[column].notna(), None)


def _signed_log1p(values: pd.Series) -> pd.Series:
    return np.sign(values) * np.log1p(values.abs())


def behaviour_frame(profiles: pd.DataFrame, has_interest: np.ndarray | None = None) -> pd.DataFrame:
    """The behaviour features before standardization, NULLs imputed as the module docstring says."""
    out: dict[str, pd.Series] = {}
    for column in COUNT_COLUMNS + AMOUNT_COLUMNS:
        out[column] = _signed_log1p(_numeric(profiles, column).fillna(0.0))
    tenure = _numeric(profiles, "tenure_days").clip(lower=0)
    recency = _numeric(profiles, "recency_days").clip(lower=0)
    longest = recency.max() if recency.notna().any() else 0.0
    bought = _numeric(profiles, "purchase_recency_days").clip(lower=0)
    out["recency_days"] = np.log1p(recency.fillna(longest))
    out["tenure_days"] = np.log1p(tenure.fillna(0.0))
    out["purchase_recency_days"] = np.log1p(bought.fillna(tenure.fillna(0.0)))
    out["never_bought"] = bought.isna().astype(float)
    sentiment = _numeric(profiles, "sentiment")
    out["sentiment"] = sentiment.fillna(0.0)  # no reviews reads as neutral ...
    out["no_sentiment"] = sentiment.isna().astype(float)  # ... and is flagged
    price = _numeric(profiles, "price_index")
    out["price_index"] = np.log(price.clip(lower=0.01)).fillna(0.0)  # log: 2x and 0.5x the median are symmetric
    out["no_price"] = price.isna().astype(float)
    lifecycle, band = _text(profiles, "lifecycle"), _text(profiles, "price_band")
    for value in LIFECYCLES:
        out[f"lifecycle_{value}"] = (lifecycle == value).astype(float)
    for value in PRICE_BANDS:
        out[f"price_band_{value}"] = (band == value).astype(float)
    if has_interest is not None:
        out["no_interest"] = pd.Series(~np.asarray(has_interest, dtype=bool), index=profiles.index).astype(float)
    return pd.DataFrame(out, index=profiles.index)


def _standardize(frame: pd.DataFrame) -> pd.DataFrame:
    std = frame.std(ddof=0)
    return ((frame - frame.mean()) / std.where(std > 1e-12, 1.0)).fillna(0.0)


def _unit_variance(block: np.ndarray) -> np.ndarray:
    """Scale a block so that the variances of its columns sum to 1 (a constant block stays zeros)."""
    total = float(block.var(axis=0).sum()) if block.size else 0.0
    return block / np.sqrt(total) if total > 1e-12 else np.zeros_like(block)


def build_features(profiles: pd.DataFrame, interest: np.ndarray | None = None, has_interest: np.ndarray | None = None,
                   components: int = 8, interest_weight: float = 1.0, seed: int = 7) -> Features:
    """The matrix to cluster: standardized behaviour plus PCA-reduced interest, each block of equal total
    variance (times `interest_weight` for interest). `interest` is users x dimension, rows without a vector
    marked False in `has_interest` (their values are ignored)."""
    n = len(profiles)
    if interest is not None and has_interest is None:
        has_interest = ~np.isnan(interest).any(axis=1)
    use_interest = interest is not None and has_interest is not None and int(np.sum(has_interest)) >= 2
    behaviour = _standardize(behaviour_frame(profiles, has_interest if use_interest else None))
    blocks = [_unit_variance(behaviour.to_numpy(dtype=np.float64))]
    columns = list(behaviour.columns)
    features = Features(matrix=blocks[0], behaviour=behaviour, columns=columns)
    if use_interest:
        mask = np.asarray(has_interest, dtype=bool)
        vectors = np.asarray(interest, dtype=np.float64)[mask]
        keep = int(min(components, vectors.shape[0] - 1, vectors.shape[1]))
        if keep >= 1:
            pca = PCA(n_components=keep, random_state=seed, svd_solver="auto").fit(vectors)
            scores = np.zeros((n, keep))
            scores[mask] = pca.transform(vectors)
            blocks.append(_unit_variance(scores) * np.sqrt(max(interest_weight, 0.0)))
            columns += [f"interest_pc{i + 1}" for i in range(keep)]
            features.interest_components = keep
            features.interest_explained = float(pca.explained_variance_ratio_.sum())
        features.interest_users = int(mask.sum())
    features.matrix = np.hstack(blocks) if len(blocks) > 1 else blocks[0]
    features.columns = columns
    return features


# --- clustering --------------------------------------------------------------------------------------------------


@dataclass
class Clustering:
    labels: np.ndarray  # a cluster number per user; -1 = noise
    method: str
    k: int | None = None
    silhouette: float | None = None
    silhouettes: dict[int, float] = field(default_factory=dict)  # kmeans: silhouette per k tried


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _silhouette(matrix: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float | None:
    rows = rows[labels[rows] >= 0]
    if len(np.unique(labels[rows])) < 2 or len(rows) <= len(np.unique(labels[rows])):
        return None
    return float(silhouette_score(matrix[rows], labels[rows]))


def kmeans_by_silhouette(matrix: np.ndarray, k_min: int = 3, k_max: int = 10, seed: int = 7,
                         sample: int = 5_000) -> Clustering:
    """k-means for every k in k_min..k_max (fewer than the users); the k with the best silhouette wins, the
    smaller on a tie. The silhouette of every k is computed on the same sample of at most `sample` users."""
    n = len(matrix)
    ks = [k for k in range(max(2, k_min), max(k_max, k_min) + 1) if k < n]
    if not ks:
        return Clustering(labels=np.zeros(n, dtype=int), method="kmeans", k=1 if n else 0)
    rows = _sample(n, sample, seed)
    best: tuple[float, np.ndarray, int] | None = None
    scores: dict[int, float] = {}
    for k in ks:
        labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(matrix)
        score = _silhouette(matrix, labels, rows)
        scores[k] = score if score is not None else float("nan")
        if score is not None and (best is None or score > best[0] + 1e-9):
            best = (score, labels, k)
    if best is None:
        return Clustering(labels=np.zeros(n, dtype=int), method="kmeans", k=1, silhouettes=scores)
    return Clustering(labels=best[1], method="kmeans", k=best[2], silhouette=best[0], silhouettes=scores)


def hdbscan_clusters(matrix: np.ndarray, min_cluster_size: int = 20, seed: int = 7, sample: int = 10_000,
                     silhouette_sample: int = 5_000) -> Clustering:
    """HDBSCAN (noise = -1). Above `sample` users it fits on a seeded sample and every other user takes the
    label of its nearest sampled neighbour (noise included), so large shops stay fast."""
    n = len(matrix)
    if n < 2:
        return Clustering(labels=-np.ones(n, dtype=int), method="hdbscan")
    rows = _sample(n, sample, seed)
    fitted = HDBSCAN(min_cluster_size=max(2, min(min_cluster_size, len(rows))), copy=True).fit_predict(matrix[rows])
    labels = np.empty(n, dtype=int)
    labels[rows] = fitted
    if len(rows) < n:
        rest = np.setdiff1d(np.arange(n), rows)
        labels[rest] = KNeighborsClassifier(n_neighbors=1).fit(matrix[rows], fitted).predict(matrix[rest])
    found = len(set(labels.tolist()) - {-1})
    score = _silhouette(matrix, labels, _sample(n, silhouette_sample, seed))
    return Clustering(labels=labels, method="hdbscan", k=found, silhouette=score)


def apply_privacy_floor(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Segment ids: 1..m for clusters of at least `min_size` users, largest first (ties by cluster number);
    0 (`other`) for noise and every smaller cluster."""
    labels = np.asarray(labels)
    clusters, counts = np.unique(labels[labels >= 0], return_counts=True)
    kept = sorted(((c, k) for k, c in zip(clusters.tolist(), counts.tolist()) if c >= min_size),
                  key=lambda pair: (-pair[0], pair[1]))
    ids = np.full(len(labels), OTHER_ID, dtype=int)
    for segment_id, (_, cluster) in enumerate(kept, start=1):
        ids[labels == cluster] = segment_id
    return ids


# --- names and descriptions --------------------------------------------------------------------------------------


@dataclass
class Segment:
    segment_id: int
    segment: str
    size: int
    description: str
    figures: dict  # the distinguishing figures stored in `segments` (None where withheld)


def _mode(values: pd.Series) -> tuple[str | None, float]:
    """The most common non-null value and its share of all rows (nulls count in the denominator)."""
    present = values.dropna()
    if present.empty:
        return None, 0.0
    counts = present.astype(str).value_counts()
    top = sorted(counts.index[counts == counts.iloc[0]])[0]  # ties: alphabetical, so names are stable
    return top, float(counts[top] / len(values))


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 1 else f"{1 / ratio:.1f}x"


def size_bucket(size: int, floor: int) -> str:
    return f"fewer than {floor} users" if size < floor else f"{size:,} users"


def _differences(behaviour: pd.DataFrame, members: np.ndarray, raw: pd.DataFrame) -> list[dict]:
    """Describable features of a segment, the largest standardized difference from the population first."""
    rows = []
    for column in PHRASES:
        if column not in behaviour:
            continue
        difference = float(behaviour[column].to_numpy()[members].mean())
        values = raw[column].to_numpy(dtype=float)
        if np.isnan(values[members]).all():
            continue
        population, mean = float(np.nanmean(values)), float(np.nanmean(values[members]))
        if not np.isfinite(population) or population <= 0 or not np.isfinite(mean) or mean < 0:
            continue
        rows.append({"feature": column, "difference": difference, "mean": mean, "ratio": mean / population})
    return sorted(rows, key=lambda r: (-abs(r["difference"]), r["feature"]))


def _phrase(row: dict) -> str | None:
    above, below, none = PHRASES[row["feature"]]
    ratio = row["ratio"]
    if ratio == 0:
        return none
    if 1 / MIN_RATIO < ratio < MIN_RATIO:
        return None
    return (above if ratio > 1 else below).format(x=_ratio_text(ratio))


def _raw_figures(profiles: pd.DataFrame) -> pd.DataFrame:
    """The describable features in their own units (counts and amounts with NULL as 0)."""
    raw = {}
    for column in PHRASES:
        values = _numeric(profiles, column)
        raw[column] = values.fillna(0.0) if column in COUNT_COLUMNS + AMOUNT_COLUMNS else values
    return pd.DataFrame(raw, index=profiles.index)


def describe_segments(profiles: pd.DataFrame, behaviour: pd.DataFrame, segment_ids: np.ndarray,
                      min_size: int) -> list[Segment]:
    """A unique short name and a one-sentence description per segment (`other` last), from its dominant
    lifecycle, top category, price band and sentiment and its largest standardized differences."""
    segment_ids = np.asarray(segment_ids)
    raw = _raw_figures(profiles)
    total = len(profiles)
    lifecycle, category = _text(profiles, "lifecycle"), _text(profiles, "top_category")
    band, sentiment_label = _text(profiles, "price_band"), _text(profiles, "sentiment_label")
    sentiment, price = _numeric(profiles, "sentiment"), _numeric(profiles, "price_index")
    drafts = []
    for segment_id in sorted(set(segment_ids.tolist()) - {OTHER_ID}) + ([OTHER_ID] if OTHER_ID in segment_ids else []):
        members = np.flatnonzero(segment_ids == segment_id)
        size = len(members)
        if segment_id == OTHER_ID and size < min_size:
            drafts.append({"id": segment_id, "size": size, "tokens": [], "alternatives": [],
                           "description": size_bucket(size, min_size), "figures": _withheld(size, total)})
            continue
        life, life_share = _mode(lifecycle.iloc[members])
        top, top_share = _mode(category.iloc[members])
        price_band, band_share = _mode(band.iloc[members])
        rated = sentiment_label.iloc[members].dropna()
        feeling, feeling_share = _mode(rated) if len(rated) >= max(1, 0.2 * size) else (None, 0.0)
        differences = [d for d in _differences(behaviour, members, raw) if abs(d["difference"]) >= MIN_DIFFERENCE]
        phrases = [p for p in (_phrase(d) for d in differences) if p][:2]
        parts = [f"{size:,} users" + (" that no segment fits (noise or clusters under the privacy floor)"
                                      if segment_id == OTHER_ID else "")]
        parts += phrases
        if life:
            parts.append(f"mostly {life}" if life_share >= 0.5 else f"mixed lifecycle ({life_share:.0%} {life})")
        if top:
            parts.append(f"top category {top} ({top_share:.0%})")
        if price_band and band_share >= 0.5:
            parts.append(f"{price_band} prices")
        if feeling and feeling_share >= 0.5:
            parts.append(f"{feeling} reviews")
        tokens = [t for t, share, floor in ((life, life_share, 0.5), (top, top_share, 0.3), (price_band, band_share, 0.5))
                  if t and share >= floor]
        alternatives = [SHORT_NAMES[d["feature"]][0 if d["difference"] > 0 else 1] for d in differences]
        figures = {
            "share": size / total if total else 0.0,
            "top_category": top, "top_category_share": top_share,
            "lifecycle": life, "lifecycle_share": life_share,
            "price_band": price_band, "price_band_share": band_share,
            "sentiment_label": feeling,
            "mean_frequency": _mean(raw["frequency"], members), "mean_monetary": _mean(raw["monetary"], members),
            "mean_events": _mean(raw["events"], members), "mean_recency_days": _mean(raw["recency_days"], members),
            "mean_sentiment": _mean(sentiment, members), "mean_price_index": _mean(price, members),
            "distinguishing": "; ".join(f"{d['feature']} {d['difference']:+.1f} sd" for d in differences[:4]) or None,
        }
        drafts.append({"id": segment_id, "size": size, "tokens": tokens, "alternatives": alternatives,
                       "description": "; ".join(parts), "figures": figures})
    names = _unique_names(drafts)
    return [Segment(d["id"], names[d["id"]], d["size"], d["description"], d["figures"]) for d in drafts]


def _mean(values: pd.Series, members: np.ndarray) -> float | None:
    picked = values.iloc[members]
    return float(picked.mean()) if picked.notna().any() else None


def _withheld(size: int, total: int) -> dict:
    keys = ("top_category", "top_category_share", "lifecycle", "lifecycle_share", "price_band", "price_band_share",
            "sentiment_label", "mean_frequency", "mean_monetary", "mean_events", "mean_recency_days", "mean_sentiment",
            "mean_price_index", "distinguishing")
    return {"share": size / total if total else 0.0, **dict.fromkeys(keys)}


def _unique_names(drafts: list[dict]) -> dict[int, str]:
    """Names from the tokens; where two segments would share one, each adds its next distinguishing word,
    and a number as the last resort. `other` is reserved for the segment of that name."""
    names: dict[int, str] = {d["id"]: OTHER for d in drafts if d["id"] == OTHER_ID}
    regular = [d for d in drafts if d["id"] != OTHER_ID]
    words = {d["id"]: list(d["tokens"]) or d["alternatives"][:1] or ["segment"] for d in regular}
    spare = {d["id"]: [a for a in d["alternatives"] if a not in words[d["id"]]] for d in regular}
    for _ in range(4):
        proposed = {d["id"]: " · ".join(words[d["id"]]) for d in regular}
        clashing = {i for i, name in proposed.items()
                    if name.lower() == OTHER or sum(n.lower() == name.lower() for n in proposed.values()) > 1}
        if not clashing:
            break
        for i in clashing:
            if spare[i]:
                words[i].append(spare[i].pop(0))
    taken = {OTHER}
    for d in regular:  # largest first: the largest keeps the plain name
        base = " · ".join(words[d["id"]])
        name, suffix = base, 2
        while name.lower() in taken or name.lower() == OTHER:
            name, suffix = f"{base} {suffix}", suffix + 1
        taken.add(name.lower())
        names[d["id"]] = name
    return names


# --- everything together -----------------------------------------------------------------------------------------


@dataclass
class Segmentation:
    user_ids: list[str]
    segment_ids: np.ndarray
    segments: list[Segment]
    clustering: Clustering
    features: Features
    min_segment_size: int

    def names(self) -> np.ndarray:
        by_id = {s.segment_id: s.segment for s in self.segments}
        return np.array([by_id[i] for i in self.segment_ids.tolist()], dtype=object)


def k_range(users: int, k_min: int, k_max: int, min_segment_size: int) -> tuple[int, int]:
    """The k tried: k_min..k_max, but never more clusters than the floor lets an average one clear
    (users // min_segment_size), and at least 2."""
    upper = max(2, min(k_max, users // max(1, min_segment_size)))
    return max(2, min(k_min, upper)), upper


def segment_users(profiles: pd.DataFrame, interest: np.ndarray | None = None, has_interest: np.ndarray | None = None,
                  config: SegmentsConfig | None = None) -> Segmentation:
    """Features, clustering, privacy floor, names: every user of `profiles` in exactly one segment."""
    config = config or SegmentsConfig()
    features = build_features(profiles, interest, has_interest, config.interest_components, config.interest_weight,
                              config.seed)
    if config.method == "hdbscan":
        clustering = hdbscan_clusters(features.matrix, config.min_segment_size, config.seed, config.hdbscan_sample,
                                      config.silhouette_sample)
    else:
        k_min, k_max = k_range(len(profiles), config.k_min, config.k_max, config.min_segment_size)
        clustering = kmeans_by_silhouette(features.matrix, k_min, k_max, config.seed, config.silhouette_sample)
    segment_ids = apply_privacy_floor(clustering.labels, config.min_segment_size)
    segments = describe_segments(profiles, features.behaviour, segment_ids, config.min_segment_size)
    return Segmentation(profiles["user_id"].astype(str).tolist(), segment_ids, segments, clustering, features,
                        config.min_segment_size)


# --- the warehouse -----------------------------------------------------------------------------------------------


def read_profiles(con: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, np.ndarray | None, np.ndarray | None]:
    """`user_profiles` ordered by user_id: the scalar columns segmentation reads (a column the view lacks
    reads as NULL), the interest vectors (users x dimension, zeros where NULL) and which users have one.
    One query: `user_profiles` is a view, computed afresh by every read."""
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?",
                             [PROFILES]).fetchall())
    if not types:
        raise dg.Failure(f"table {PROFILES} not found in the warehouse: materialize {PROFILES} first")
    dimension = vector_dimension(con, PROFILES, "interest") if "interest" in types else None
    if "interest" in types and not dimension:
        raise dg.Failure(f"{PROFILES}.interest is {types['interest']}, not a fixed-size vector such as FLOAT[384]")
    select = ", ".join(f'"{c}"' if c in types else f'NULL AS "{c}"' for c in PROFILE_COLUMNS)
    table = con.sql(f"SELECT {select}{', interest' if dimension else ''} FROM {PROFILES} ORDER BY user_id") \
        .to_arrow_table()
    if not dimension:
        return table.to_pandas(), None, None
    column = table.column("interest")
    profiles = table.drop_columns(["interest"]).to_pandas()
    has = column.is_valid().to_numpy(zero_copy_only=False)
    if not has.any():
        return profiles, None, None
    return profiles, matrix(column, dimension).astype(np.float32), has


def write_segments(con: duckdb.DuckDBPyConnection, result: Segmentation) -> None:
    """Replace `user_segments` and `segments` (call inside one transaction)."""
    by_id = {s.segment_id: s.segment for s in result.segments}
    con.register("_user_segments", pa.table({
        "user_id": pa.array(result.user_ids, pa.string()),
        "segment_id": pa.array(result.segment_ids.astype(np.int32)),
        "segment": pa.array([by_id[i] for i in result.segment_ids.tolist()], pa.string()),
    }))
    try:
        con.execute("CREATE OR REPLACE TABLE user_segments (user_id VARCHAR NOT NULL, segment_id INTEGER NOT NULL, "
                    "segment VARCHAR NOT NULL)")
        con.execute("INSERT INTO user_segments SELECT user_id, segment_id, segment FROM _user_segments ORDER BY user_id")
    finally:
        con.unregister("_user_segments")
    con.execute("""
        CREATE OR REPLACE TABLE segments (
            segment_id INTEGER NOT NULL, segment VARCHAR NOT NULL, size BIGINT NOT NULL, share DOUBLE,
            description VARCHAR NOT NULL, method VARCHAR NOT NULL, k INTEGER, silhouette DOUBLE,
            min_segment_size INTEGER,
            top_category VARCHAR, top_category_share DOUBLE, lifecycle VARCHAR, lifecycle_share DOUBLE,
            price_band VARCHAR, price_band_share DOUBLE, sentiment_label VARCHAR,
            mean_frequency DOUBLE, mean_monetary DOUBLE, mean_events DOUBLE, mean_recency_days DOUBLE,
            mean_sentiment DOUBLE, mean_price_index DOUBLE, distinguishing VARCHAR, built_at TIMESTAMP
        )""")
    clustering = result.clustering
    for s in result.segments:
        f = s.figures
        con.execute(
            "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "current_timestamp::TIMESTAMP)",
            [s.segment_id, s.segment, s.size, f["share"], s.description, clustering.method, clustering.k,
             clustering.silhouette, result.min_segment_size, f["top_category"], f["top_category_share"], f["lifecycle"],
             f["lifecycle_share"], f["price_band"], f["price_band_share"], f["sentiment_label"], f["mean_frequency"],
             f["mean_monetary"], f["mean_events"], f["mean_recency_days"], f["mean_sentiment"], f["mean_price_index"],
             f["distinguishing"]])


def coverage_check(con: duckdb.DuckDBPyConnection, min_size: int) -> dg.AssetCheckResult:
    """Every user of `user_profiles` is in `user_segments` exactly once, nobody else is, and no segment but
    `other` is under the privacy floor."""
    missing, duplicates, extra = con.execute(f"""
        SELECT (SELECT count(*) FROM {PROFILES} p WHERE p.user_id NOT IN (SELECT user_id FROM user_segments)),
               (SELECT count(*) - count(DISTINCT user_id) FROM user_segments),
               (SELECT count(*) FROM user_segments s WHERE s.user_id NOT IN (SELECT user_id FROM {PROFILES}))
    """).fetchone()
    small = query_rows(con, "SELECT segment, count(*) AS users FROM user_segments GROUP BY segment "
                            "HAVING count(*) < ? AND segment <> ? ORDER BY segment", [min_size, OTHER])
    passed = missing == 0 and duplicates == 0 and extra == 0 and not small
    return dg.AssetCheckResult(
        asset_key="user_segments", check_name=CHECK_NAME, passed=passed,
        metadata={"users_missing": missing, "users_duplicated": duplicates, "users_not_in_profiles": extra,
                  "min_segment_size": min_size, "segments_under_floor": len(small),
                  "under_floor": dg.MetadataValue.md(markdown_table(small))},
    )


def map_points(matrix: np.ndarray, limit: int = 5_000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The rows drawn for the map (at most `limit`) and their 2-D PCA coordinates."""
    rows = _sample(len(matrix), limit, seed)
    if len(rows) < 3:
        return rows, np.zeros((len(rows), 2))
    keep = min(2, matrix.shape[1], len(rows))
    coords = PCA(n_components=keep, random_state=seed).fit_transform(matrix[rows]) if keep else np.zeros((len(rows), 0))
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((len(rows), 2 - coords.shape[1]))])
    return rows, coords


# --- the asset ---------------------------------------------------------------------------------------------------


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="portraits",
    kinds={"scikit-learn", "duckdb"},
    owners=["team:portrait"],
    deps=[PROFILES],
    description="Every user in exactly one behavioural segment (k-means with k chosen by silhouette, or "
                "HDBSCAN) over standardized profile features and PCA-reduced interests. Segments smaller than "
                "min_segment_size are merged into 'other'; each segment gets a generated name and description. "
                "Writes user_segments and segments.",
    check_specs=[dg.AssetCheckSpec(
        CHECK_NAME, asset="user_segments",
        description="Every user of user_profiles appears exactly once in user_segments, and no segment but "
                    "'other' is smaller than min_segment_size.",
    )],
)
def user_segments(context: dg.AssetExecutionContext, config: SegmentsConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    started = time.perf_counter()
    with warehouse.connect() as con:
        profiles, interest, has_interest = read_profiles(con)
    context.log.info(f"{len(profiles):,} profiles, {0 if has_interest is None else int(has_interest.sum()):,} "
                     f"with an interest vector; clustering with {config.method}")
    result = segment_users(profiles, interest, has_interest, config)
    with warehouse.transaction() as con:
        write_segments(con, result)
    with warehouse.connect() as con:
        check = coverage_check(con, config.min_segment_size)
        table = query_rows(con, "SELECT segment_id, segment, size, description FROM segments ORDER BY segment_id = 0, "
                                "segment_id")
    seconds = time.perf_counter() - started
    clustering = result.clustering
    rows, coords = map_points(result.features.matrix, seed=config.seed)
    names = result.names()
    order = [s.segment for s in result.segments]
    silhouettes = [{"k": k, "silhouette": None if np.isnan(v) else round(v, 4), "chosen": "yes" if k == clustering.k
                    else ""} for k, v in clustering.silhouettes.items()]
    context.log.info(f"{len(result.segments)} segments ({clustering.method}, k={clustering.k}, silhouette="
                     f"{clustering.silhouette}) in {seconds:.1f} s")
    metadata = {
        "dagster/row_count": len(result.user_ids),
        "segment_count": len(result.segments),
        "method": clustering.method,
        "chosen_k": clustering.k if clustering.k is not None else 0,
        **({"silhouette": round(clustering.silhouette, 4)} if clustering.silhouette is not None else {}),
        "silhouette_by_k": dg.MetadataValue.md(markdown_table(silhouettes, max_rows=50)),
        "min_segment_size": config.min_segment_size,
        "users_in_other": int(np.sum(result.segment_ids == OTHER_ID)),
        "sizes": dg.MetadataValue.json({s.segment: s.size for s in result.segments}),
        "sizes_chart": bar_chart_markdown(order, [s.size for s in result.segments], "Users per segment"),
        "segments": dg.MetadataValue.md(markdown_table(table, max_rows=50)),
        "map": scatter_markdown(coords[:, 0], coords[:, 1], names[rows], f"Users by segment ({len(rows):,} shown, "
                                "PCA of the features)", order=order),
        "features": dg.MetadataValue.json(result.features.columns),
        "users_with_interest": result.features.interest_users,
        "interest_components": result.features.interest_components,
        "interest_variance_kept": round(result.features.interest_explained, 4),
        "seconds": round(seconds, 2),
    }
    return dg.MaterializeResult(metadata=metadata, check_results=[check])

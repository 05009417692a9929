"""A synthetic `user_profiles` population with planted behavioural groups, for segment and audience tests."""

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa


@dataclass(frozen=True)
class Group:
    name: str
    size: int
    lifecycle: str
    category: str
    price_band: str | None  # None: never bought, so no price figures either
    frequency: float  # mean purchases
    events: float
    n_search: float
    n_chat: float
    n_review: float
    sentiment: float | None  # None: writes no reviews
    recency_days: float
    tenure_days: float
    region: str
    has_interest: bool = True


#: Four groups that differ in behaviour, category, price and interest.
GROUPS = (
    Group("loyal", 90, "active", "Guitars", "premium", 8, 220, 8, 1, 6, 0.6, 3, 300, "north"),
    Group("bargain", 80, "churned", "Books", "budget", 1, 40, 2, 0, 1, 0.0, 120, 420, "south"),
    Group("browsers", 70, "new", "Garden", None, 0, 60, 40, 0, 0, None, 2, 12, "east"),
    Group("unhappy", 60, "at_risk", "Phones", "mid", 2, 90, 5, 25, 4, -0.6, 35, 200, "west", has_interest=False),
)
#: A handful of users unlike anyone, for the privacy floor.
TINY = Group("tiny", 8, "active", "Yachts", "premium", 40, 900, 0, 60, 20, 0.9, 1, 900, "north")
BANDS = {"budget": 0.6, "mid": 1.0, "premium": 1.8}
OTHER_CATEGORIES = ("Books", "Garden", "Guitars", "Phones", "Toys")


def population(groups=GROUPS, seed: int = 3, dimension: int = 384) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Profiles (every column of `user_profiles` but `interest`), interest vectors (zeros where missing)
    and which users have one; `frame["planted"]` is the group a user was drawn from."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(groups), dimension))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows, vectors, has = [], [], []
    number = 0
    for g_index, g in enumerate(groups):
        for _ in range(g.size):
            number += 1
            frequency = int(rng.poisson(g.frequency)) if g.frequency else 0
            events = int(max(1, rng.normal(g.events, g.events * 0.2)))
            tenure = float(max(1.0, rng.normal(g.tenure_days, g.tenure_days * 0.15)))
            recency = float(min(tenure, max(0.0, rng.normal(g.recency_days, g.recency_days * 0.2 + 0.5))))
            bought = frequency > 0 and g.price_band is not None
            price_index = float(BANDS[g.price_band] * np.exp(rng.normal(0, 0.1))) if bought else None
            sentiment = None if g.sentiment is None else float(np.clip(rng.normal(g.sentiment, 0.15), -1, 1))
            category = g.category if rng.random() < 0.8 else str(rng.choice(OTHER_CATEGORIES))
            lifecycle = g.lifecycle if rng.random() < 0.9 else str(rng.choice(["new", "active", "at_risk", "churned"]))
            rows.append({
                "user_id": f"u{number:04d}",
                "planted": g.name,
                "tenure_days": tenure, "recency_days": recency,
                "active_days": int(max(1, min(tenure, events / 6))), "events": events,
                "n_view": int(events * 0.6), "n_click": int(events * 0.2), "n_favorite": int(rng.poisson(2)),
                "n_add_to_cart": int(frequency * 1.5 + rng.poisson(1)), "n_purchase": frequency,
                "n_review": int(rng.poisson(g.n_review)), "n_rating": int(rng.poisson(g.n_review)),
                "n_search": int(rng.poisson(g.n_search)), "n_chat": int(rng.poisson(g.n_chat)),
                "engagement": float(events * 0.1 + frequency),
                "frequency": frequency,
                "monetary": float(frequency * 30 * (BANDS[g.price_band] if bought else 0) * np.exp(rng.normal(0, 0.2))),
                "purchase_recency_days": float(recency + rng.uniform(0, 5)) if bought else None,
                "lifecycle": lifecycle,
                "top_category": category,
                "top_brand": f"{category[:3]}-brand",
                "sentiment": sentiment,
                "sentiment_label": None if sentiment is None else
                ("negative" if sentiment < -0.2 else "positive" if sentiment > 0.2 else "neutral"),
                "sentiment_trend": 0.0 if sentiment is not None else None,
                "top_intent": "buy" if bought else "browse",
                "price_index": price_index,
                "price_band": g.price_band if bought else None,
                "price_sensitivity": float(rng.uniform(0, 1)),
                "age": str(rng.choice(["18-24", "25-34", "35-44"])),
                "gender": str(rng.choice(["f", "m"])),
                "region": g.region,
            })
            vector = centres[g_index] + rng.normal(scale=0.6 / np.sqrt(dimension), size=dimension)
            vectors.append(vector / np.linalg.norm(vector) if g.has_interest else np.zeros(dimension))
            has.append(g.has_interest)
    return pd.DataFrame(rows), np.asarray(vectors, dtype=np.float32), np.asarray(has, dtype=bool)


def write_profiles(path: Path, frame: pd.DataFrame, interest: np.ndarray, has_interest: np.ndarray) -> None:
    """`user_profiles` in a DuckDB file, with the real view's column types."""
    dimension = interest.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(interest.ravel(), pa.float32()), dimension,
                                                mask=pa.array(~has_interest))
    scalars = pa.Table.from_pandas(frame.drop(columns=["planted"]), preserve_index=False)
    con = duckdb.connect(str(path))
    try:
        con.register("_scalars", scalars)
        con.register("_vectors", pa.table({"user_id": frame["user_id"].tolist(), "interest": vectors}))
        con.execute(f"""
            CREATE OR REPLACE TABLE user_profiles AS
            SELECT s.user_id::VARCHAR AS user_id, TIMESTAMP '2026-10-01' AS as_of,
                   TIMESTAMP '2026-10-01' - to_days(tenure_days::INTEGER) AS first_seen,
                   TIMESTAMP '2026-10-01' - to_days(recency_days::INTEGER) AS last_seen,
                   tenure_days::DOUBLE AS tenure_days, recency_days::DOUBLE AS recency_days,
                   active_days::BIGINT AS active_days, events::BIGINT AS events,
                   n_view::BIGINT AS n_view, n_click::BIGINT AS n_click, n_favorite::BIGINT AS n_favorite,
                   n_add_to_cart::BIGINT AS n_add_to_cart, n_purchase::BIGINT AS n_purchase,
                   n_review::BIGINT AS n_review, n_rating::BIGINT AS n_rating, n_search::BIGINT AS n_search,
                   n_chat::BIGINT AS n_chat, engagement::DOUBLE AS engagement, frequency::BIGINT AS frequency,
                   monetary::DOUBLE AS monetary, purchase_recency_days::DOUBLE AS purchase_recency_days,
                   lifecycle::VARCHAR AS lifecycle, top_category::VARCHAR AS top_category,
                   [{{'name': top_category, 'share': 0.6}}]::STRUCT(name VARCHAR, share DOUBLE)[] AS top_categories,
                   top_brand::VARCHAR AS top_brand,
                   [{{'name': top_brand, 'share': 0.5}}]::STRUCT(name VARCHAR, share DOUBLE)[] AS top_brands,
                   [lower(top_category)]::VARCHAR[] AS top_keywords,
                   sentiment::DOUBLE AS sentiment, sentiment_label::VARCHAR AS sentiment_label,
                   sentiment_trend::DOUBLE AS sentiment_trend, top_intent::VARCHAR AS top_intent,
                   [{{'name': top_intent, 'share': 1.0}}]::STRUCT(name VARCHAR, share DOUBLE)[] AS intents,
                   price_index::DOUBLE AS price_index, price_band::VARCHAR AS price_band,
                   price_sensitivity::DOUBLE AS price_sensitivity, age::VARCHAR AS age, gender::VARCHAR AS gender,
                   region::VARCHAR AS region, v.interest::FLOAT[{dimension}] AS interest
            FROM _scalars s JOIN _vectors v USING (user_id)
            ORDER BY user_id
        """)
    finally:
        con.close()

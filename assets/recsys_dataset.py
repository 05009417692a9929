"""`recsys_dataset`: what the recommender learns from, as tables and as LightFM inputs.

Interactions are the item events weighted by type (`recsys_eval.DEFAULT_WEIGHTS`, the
portraits' weights). Side features, each a name like `category:strings`:

- items: categories, brand, a price band (quartile of the catalogue's prices) and the
  cluster of the item's text embedding (k-means), so an item nobody touched yet still has
  something LightFM can score;
- users: their top categories by weighted interactions (computed from the interactions each
  model is fitted on) and the demographics the `users` table has (age band, gender, region).

Features are computed **as of** a time where an evaluation needs it: an item's review
vector then averages only reviews written by then, and a user's top categories count only
the training interactions. Features from the portraits (segment, lifecycle, price band) are
left out on purpose: they summarise every event, the held-out ones included, so a time-split
evaluation of a model using them would be optimistic; the top categories carry the same
interest signal without that leak.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.cluster import KMeans

from assets.automation import AUTOMATION, WAREHOUSE_POOL
from assets.metadata import counts_metadata, markdown_table, query_rows
from assets.profile_state import matrix
from assets.recsys_eval import interactions
from resources.warehouse import Warehouse, table_exists, vector_dimension

Features = dict[str, list[str]]

DEMOGRAPHICS = ("gender", "region")
#: Item features a user's interest is summarised by (their top ones become user features).
#: Text-embedding clusters are left out: as user features they lowered LightFM's accuracy on
#: the Amazon reviews (recall@10 0.095 against 0.103-0.108 without).
INTEREST_FEATURES = ("category:",)


class DatasetConfig(dg.Config):
    embedding_clusters: int = Field(default=40, description="k-means clusters of item text embeddings (0: none)")
    user_top_categories: int = Field(default=3, description="a user's top categories kept as features")


def item_vectors(con: duckdb.DuckDBPyConnection, as_of: pd.Timestamp | None = None) -> tuple[list[str], np.ndarray]:
    """Item ids and text vectors: the catalogue text's vector where the item has one, else the
    normalised mean of its review vectors, counting only reviews written at or before `as_of`
    (every review when None, i.e. the `item_embeddings` table as it stands)."""
    if not table_exists(con, "item_embeddings"):
        return [], np.zeros((0, 0), dtype=np.float32)
    dimension = vector_dimension(con, "item_embeddings")
    if as_of is None:
        table = con.sql("SELECT item_id, vector FROM item_embeddings ORDER BY item_id").to_arrow_table()
        return table.column(0).to_pylist(), matrix(table.column(1), dimension)
    catalog = con.sql("SELECT item_id, vector FROM item_embeddings WHERE source = 'catalog'").to_arrow_table()
    reviews = con.sql("""
        SELECT r.item_id, e.vector
        FROM (SELECT DISTINCT item_id, text FROM events
              WHERE event_type = 'review' AND text IS NOT NULL AND item_id IS NOT NULL AND ts <= ?) r
        JOIN text_embeddings e ON e.text_hash = md5(r.text)
        WHERE r.item_id NOT IN (SELECT item_id FROM item_embeddings WHERE source = 'catalog')
    """, params=[as_of.to_pydatetime()]).to_arrow_table()
    ids = catalog.column(0).to_pylist()
    vectors = [matrix(catalog.column(1), dimension)]
    if reviews.num_rows:
        review_ids, position = np.unique(np.asarray(reviews.column(0).to_pylist(), dtype=object), return_inverse=True)
        sums = np.zeros((len(review_ids), dimension), dtype=np.float64)
        np.add.at(sums, position, matrix(reviews.column(1), dimension))
        sums /= np.clip(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12, None)
        ids += review_ids.tolist()
        vectors.append(sums.astype(np.float32))
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    return [ids[i] for i in order], np.vstack(vectors)[order]


def embedding_clusters(ids: list[str], vectors: np.ndarray, clusters: int, seed: int = 0) -> Features:
    """Each item's k-means cluster of its text vector, as a feature `embedding:N`."""
    k = min(clusters, len(ids))
    if k < 2:
        return {}
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(vectors)
    return {item: [f"embedding:{label}"] for item, label in zip(ids, labels)}


def catalogue_features(con: duckdb.DuckDBPyConnection) -> Features:
    """Categories, brand and price band (catalogue price quartile) per item of `items`."""
    rows = con.execute("""
        WITH bands AS (SELECT item_id, categories, brand,
                              CASE WHEN price IS NULL THEN NULL ELSE ntile(4) OVER (ORDER BY price) END AS band
                       FROM items)
        SELECT item_id,
               list_distinct(list_filter(
                   list_transform(coalesce(categories, []), lambda c: 'category:' || c)
                   || [CASE WHEN brand IS NOT NULL THEN 'brand:' || brand END,
                       CASE WHEN band IS NOT NULL THEN 'price_band:' || band END],
                   lambda f: f IS NOT NULL))
        FROM bands ORDER BY item_id
    """).fetchall()
    return {item: sorted(features) for item, features in rows if features}


def item_features(con: duckdb.DuckDBPyConnection, clusters: int, as_of: pd.Timestamp | None = None) -> Features:
    """Catalogue features plus text-embedding clusters (vectors as of `as_of`)."""
    features = catalogue_features(con)
    if clusters:
        ids, vectors = item_vectors(con, as_of)
        for item, names in embedding_clusters(ids, vectors, clusters).items():
            features[item] = features.get(item, []) + names
    return features


def demographics(con: duckdb.DuckDBPyConnection) -> Features:
    """Age band, gender and region per user of the `users` table, where known."""
    if not table_exists(con, "users"):
        return {}
    found = {}
    for user, age, *others in con.execute(f"""
        SELECT user_id, try_cast(attributes->>'age' AS INTEGER),
               {", ".join(f"attributes->>'{name}'" for name in DEMOGRAPHICS)}
        FROM users""").fetchall():
        values = ([f"age:{min(age // 10 * 10, 70)}s"] if age is not None and age > 0 else [])
        values += [f"{name}:{value}" for name, value in zip(DEMOGRAPHICS, others) if value]
        if values:
            found[user] = values
    return found


@dataclass(frozen=True)
class UserFeatures:
    """User features from the interactions a model is fitted on: each user's `top` categories by
    summed weight (from `items`' `category:` features), plus demographics. A callable, so that
    a model fitted on a validation split's training side never gets features drawn from its
    held-out side."""
    items: Mapping[str, list[str]]
    demographics: Features
    top: int

    def __call__(self, train: pd.DataFrame) -> Features:
        pairs = [(item, name) for item, names in self.items.items() for name in names
                 if name.startswith(INTEREST_FEATURES)]
        features: dict[str, list[str]] = {}
        if pairs and len(train):
            interests = pd.DataFrame(pairs, columns=["item_id", "feature"])
            interests["kind"] = interests["feature"].str.split(":").str[0]
            weighted = train[["user_id", "item_id", "weight"]].merge(interests, on="item_id")
            totals = weighted.groupby(["user_id", "kind", "feature"], as_index=False)["weight"].sum()
            totals = totals.sort_values(["user_id", "kind", "weight", "feature"], ascending=[True, True, False, True])
            top = totals.groupby(["user_id", "kind"]).head(self.top)
            features = top.groupby("user_id")["feature"].agg(list).to_dict()
        for user, values in self.demographics.items():
            features[user] = features.get(user, []) + values
        return features


def user_features(con: duckdb.DuckDBPyConnection, train: pd.DataFrame, items: Mapping[str, list[str]],
                  top: int) -> Features:
    """`UserFeatures` of the warehouse's users, computed from `train`."""
    return UserFeatures(items, demographics(con), top)(train)


def _feature_frame(features: Features, key: str) -> pd.DataFrame:
    rows = [(entity, name) for entity, names in features.items() for name in names]
    return pd.DataFrame(rows, columns=[key, "feature"])


def write_dataset(con: duckdb.DuckDBPyConnection, config: DatasetConfig) -> dict:
    """Rebuild `recsys_interactions`, `recsys_item_features` and `recsys_user_features`; return counts."""
    df = interactions(con)
    items = item_features(con, config.embedding_clusters)
    users = user_features(con, df, items, config.user_top_categories)
    tables = {"recsys_interactions": df[["user_id", "item_id", "ts", "event_type", "weight"]],
              "recsys_item_features": _feature_frame(items, "item_id"),
              "recsys_user_features": _feature_frame(users, "user_id")}
    con.execute("CREATE OR REPLACE TABLE recsys_meta AS SELECT ?::JSON AS config, now()::TIMESTAMP AS built_at",
                [config.model_dump_json()])
    for table, frame in tables.items():
        con.register("_frame", frame)
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _frame")
        con.unregister("_frame")
    n_users, n_items = df["user_id"].nunique(), df["item_id"].nunique()
    pairs = len(df[["user_id", "item_id"]].drop_duplicates())
    return {"interactions": len(df), "users": n_users, "items": n_items,
            "density": round(pairs / max(n_users * n_items, 1), 6),
            "item_features": len(tables["recsys_item_features"]),
            "user_features": len(tables["recsys_user_features"]),
            "items_with_features": len(items), "users_with_features": len(users)}


def dataset_config(con: duckdb.DuckDBPyConnection) -> DatasetConfig:
    """The settings `recsys_dataset` was last built with (an evaluation builds its as-of features alike)."""
    return DatasetConfig.model_validate_json(con.execute("SELECT config FROM recsys_meta").fetchall()[0][0])


def read_dataset(con: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, Features, Features]:
    """Interactions and the item and user features `recsys_dataset` wrote."""
    if not table_exists(con, "recsys_interactions"):
        raise RuntimeError("the warehouse has no recsys_interactions: materialize recsys_dataset first")
    df = con.execute("SELECT * FROM recsys_interactions ORDER BY ts, user_id, item_id").df()
    features = []
    for table, key in (("recsys_item_features", "item_id"), ("recsys_user_features", "user_id")):
        rows = con.execute(f"SELECT {key}, list(feature ORDER BY feature) FROM {table} GROUP BY 1").fetchall()
        features.append(dict(rows))
    return df, features[0], features[1]


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="recommender",
    kinds={"duckdb", "lightfm"},
    owners=["team:portrait"],
    deps=["events", "items", "users", "item_embeddings"],
    automation_condition=AUTOMATION,
)
def recsys_dataset(config: DatasetConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """Weighted interactions with item and user side features, the recommender's training data."""
    with warehouse.transaction() as con:
        counts = write_dataset(con, config)
        features = query_rows(con, """
            SELECT 'item' AS side, split_part(feature, ':', 1) AS kind, count(DISTINCT feature) AS features,
                   count(*) AS assignments FROM recsys_item_features GROUP BY ALL
            UNION ALL
            SELECT 'user', split_part(feature, ':', 1), count(DISTINCT feature), count(*)
            FROM recsys_user_features GROUP BY ALL ORDER BY 1, 2""")
        preview = query_rows(con, "SELECT event_type, count(*) AS interactions, any_value(weight) AS weight "
                                  "FROM recsys_interactions GROUP BY 1 ORDER BY 2 DESC")
    return dg.MaterializeResult(metadata={
        **counts_metadata(counts),
        "features": dg.MetadataValue.md(markdown_table(features, max_rows=30)),
        "interactions_by_type": dg.MetadataValue.md(markdown_table(preview)),
    })

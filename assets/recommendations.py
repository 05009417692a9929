"""`recommendations`: the top N items per user, with a score, a rank and a reason a person reads.

Scores come from the published production model (`lightfm_model`), a batch of users at a
time, by matrix products of the members' learned representations and histories, never a
per-user `predict` loop. Until a model was ever published, the best baseline of the newest
evaluation scores instead (fitted on every interaction; popularity before any evaluation),
and each row says so in `source`.

Users the model never saw (only a few events after it was trained, or only searches and
messages) are scored from their portrait's interest vector against the item text vectors, so
their texts count; without one they get the most popular items. Items nobody touched yet are
in the model's catalogue and scored from their features and text (LightFM hybrid, content).

Exclusions are config: by default what a user bought is not recommended again, while items
they viewed or carted may come back (repeat engagement is often the strongest signal).
The reason names the blend member that contributed most to the item's score.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sparse
from pydantic import Field

from assets.automation import AUTOMATION, WAREHOUSE_POOL
from assets.blend import Blend, ItemKNN, standardized
from assets.metadata import bar_chart_markdown, counts_metadata, markdown_table, query_rows
from assets.profile_state import matrix
from assets.recommender_evaluation import EVALUATIONS
from assets.recommender_model import MODEL_NAME, latest_evaluation, load_model
from assets.recommender_recipe import baselines, content_vectors
from assets.recsys_dataset import read_dataset
from assets.recsys_eval import BATCH_CELLS, EVENT_TYPES, Candidate, Popularity, top_k
from resources.model_store import ModelStore
from resources.warehouse import Warehouse, table_exists, vector_dimension

VERBS = {"purchase": "bought", "add_to_cart": "added to your cart", "favorite": "saved", "review": "reviewed",
         "rating": "rated", "view": "viewed", "click": "looked at"}
#: Items per segment counted as "popular with" that segment in a reason.
SEGMENT_TOP_ITEMS = 100


class RecommendationsConfig(dg.Config):
    n: int = Field(default=50, description="recommendations kept per user")
    exclude_event_types: list[str] = Field(default=["purchase", "review", "rating"],
                                           description="items a user had these events on are not recommended "
                                                       "(a review or a rating means the user has the item)")


@dataclass
class Context:
    """What the reasons need besides the scores: titles, histories, categories, segments."""
    titles: dict[str, str]
    last_event: dict[tuple[str, str], str]          # (user, item) -> the user's strongest event type on it
    user_categories: dict[str, list[str]]
    item_categories: dict[str, list[str]]
    segment_of: dict[str, str]
    segment_top: dict[str, set[str]]

    def title(self, item: str) -> str:
        return self.titles.get(item) or item

    def verb(self, user: str, item: str) -> str:
        return VERBS.get(self.last_event.get((user, item), "view"), "viewed")


def load_context(con: duckdb.DuckDBPyConnection, df: pd.DataFrame, items: dict[str, list[str]],
                 users: dict[str, list[str]]) -> Context:
    titles = dict(con.execute("SELECT item_id, title FROM items WHERE title IS NOT NULL").fetchall()) \
        if table_exists(con, "items") else {}
    strongest = df.sort_values("weight").drop_duplicates(["user_id", "item_id"], keep="last")
    last_event = dict(zip(zip(strongest["user_id"], strongest["item_id"]), strongest["event_type"]))
    segment_of: dict[str, str] = {}
    segment_top: dict[str, set[str]] = {}
    if table_exists(con, "user_segments"):
        segment_of = dict(con.execute("SELECT user_id, segment FROM user_segments WHERE segment_id <> 0").fetchall())
        with_segment = df[df["user_id"].isin(segment_of)].assign(segment=lambda f: f["user_id"].map(segment_of))
        counts = with_segment.groupby(["segment", "item_id"]).size().rename("n").reset_index()
        top = counts.sort_values(["segment", "n"], ascending=[True, False]).groupby("segment").head(SEGMENT_TOP_ITEMS)
        segment_top = top.groupby("segment")["item_id"].agg(set).to_dict()
    strip = lambda names: [n.split(":", 1)[1] for n in names if n.startswith("category:")]  # noqa: E731
    return Context(titles, last_event, {u: strip(f) for u, f in users.items()},
                   {i: strip(f) for i, f in items.items()}, segment_of, segment_top)


def reason(member: str, user: str, item: str, context: Context, anchor: str | None = None) -> str:
    """One sentence saying why `item` is recommended to `user`, from the member that ranked it."""
    if member == "item_knn" and anchor:
        return f"because you {context.verb(user, anchor)} {context.title(anchor)}"
    if member.startswith("own_items"):
        return f"you {context.verb(user, item)} it recently"
    if member.startswith("recent_popularity"):
        return "popular in the shop right now"
    if member.startswith("popularity"):
        segment = context.segment_of.get(user)
        if segment and item in context.segment_top.get(segment, ()):
            return f"popular with '{segment}'"
        return "popular in the shop"
    shared = [c for c in context.item_categories.get(item, []) if c in context.user_categories.get(user, [])]
    if shared:
        return f"matches your interest in {shared[0]}"
    if member == "cold_content":
        return "matches what you searched for and wrote"
    return "similar to what you like"


def _anchors(knn: ItemKNN, users: Sequence[str], chosen: list[np.ndarray], items: np.ndarray
             ) -> list[list[str | None]]:
    """Per user and recommended item (positions in `items`), the user's history item most
    similar to it by co-occurrence, or None (no history, or an item co-occurrence never saw)."""
    history = knn._rows(knn.history, users).tocsr()
    out = []
    for row, picked in enumerate(chosen):
        owned = history.indices[history.indptr[row]:history.indptr[row + 1]]
        found: list[str | None] = [None] * len(picked)
        columns = knn.item_index.get_indexer(items[picked])
        known = np.flatnonzero(columns >= 0)
        if len(owned) and len(known):
            similarity = knn.similarity[owned][:, columns[known]].toarray()
            best = similarity.argmax(axis=0)
            for column, (j, b) in enumerate(zip(known, best)):
                if similarity[b, column] > 0:
                    found[j] = knn.items[owned[b]]
        out.append(found)
    return out


def contributions(model: Candidate, users: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Per member with a weight, its weighted, standardized scores (users x the model's items);
    their sum is the blend's score. A single candidate is its own one member."""
    if isinstance(model, Blend):
        used = [m for m in model.members if model.weights[m.name]]
        aligned = model._aligned(used, np.asarray(model.items, dtype=object), users)
        return [m.name for m in used], [model.weights[m.name] * s for m, s in zip(used, aligned)]
    return [model.name], [standardized(model.scores(users))]


def score_known(model: Candidate, users: Sequence[str], excluded: dict[str, set[str]], n: int,
                context: Context) -> list[tuple]:
    """Rows (user, rank, item, score, reason, member) for users the model knows, one batch."""
    items = np.asarray(model.items, dtype=object)
    names, parts = contributions(model, users)
    combined = np.sum(parts, axis=0, dtype=float)
    index = pd.Index(items)
    for row, user in enumerate(users):
        positions = index.get_indexer(list(excluded.get(user, ())))
        combined[row, positions[positions >= 0]] = -np.inf
    chosen = top_k(combined, n)
    stacked = np.stack(parts)
    knn = next((m for m in getattr(model, "members", []) if isinstance(m, ItemKNN) and model.weights[m.name]), None)
    anchors = _anchors(knn, users, chosen, items) if knn is not None else None
    rows = []
    for row, (user, picked) in enumerate(zip(users, chosen)):
        leaders = stacked[:, row, picked].argmax(axis=0)
        for rank, (position, leader) in enumerate(zip(picked, leaders), start=1):
            member, item = names[leader], items[position]
            anchor = anchors[row][rank - 1] if anchors is not None and member == "item_knn" else None
            rows.append((user, rank, item, float(combined[row, position]), reason(member, user, item, context, anchor),
                         member))
    return rows


def score_cold(con: duckdb.DuckDBPyConnection, users: Sequence[str], popularity: pd.Series,
               excluded: dict[str, set[str]], n: int, context: Context) -> list[tuple]:
    """Users the model never saw: their portrait's interest against item text vectors, else popularity."""
    vectors = content_vectors(con)
    interest: dict[str, np.ndarray] = {}
    dense = vectors is not None and not sparse.issparse(vectors[1])
    if dense and users and table_exists(con, "user_profiles", views=True):
        con.register("_cold", pd.DataFrame({"user_id": list(users)}))
        table = con.sql("SELECT p.user_id, p.interest FROM user_profiles p JOIN _cold USING (user_id) "
                        "WHERE p.interest IS NOT NULL").to_arrow_table()
        con.unregister("_cold")
        if table.num_rows:
            found = matrix(table.column(1), vector_dimension(con, "item_embeddings"))
            interest = dict(zip(table.column(0).to_pylist(), found))
    prior = popularity / max(popularity.max(), 1.0)
    if interest:
        ids, item_matrix = vectors
        item_norms = np.linalg.norm(item_matrix, axis=1)  # once, not per user
    rows = []
    for user in users:
        if user in interest:
            norms = item_norms * max(np.linalg.norm(interest[user]), 1e-12)
            scores = pd.Series(item_matrix @ interest[user] / np.where(norms > 0, norms, 1.0), index=ids)
            scores = scores.add(1e-6 * prior, fill_value=0.0)
            member = "cold_content"
        else:
            scores, member = prior.astype(float), "popularity"
        scores = scores.drop(list(excluded.get(user, ())), errors="ignore").sort_values(ascending=False, kind="stable")
        for rank, (item, value) in enumerate(scores.head(n).items(), start=1):
            rows.append((user, rank, item, float(value), reason(member, user, item, context), member))
    return rows


def fallback_model(con: duckdb.DuckDBPyConnection, df: pd.DataFrame) -> Candidate:
    """The best baseline (by NDCG) of the newest evaluation, fitted on every interaction; popularity
    when the recommender was never evaluated."""
    if not table_exists(con, EVALUATIONS):
        return Popularity().fit(df)
    config, outcome = latest_evaluation(con)
    name = outcome[f"ndcg@{config.k}"]["best_baseline"]
    model = next(c for c in baselines(config, content_vectors(con)) if c.name == name)
    return model.fit(df)


def build_recommendations(con: duckdb.DuckDBPyConnection, store: ModelStore, config: RecommendationsConfig,
                          log=print) -> dict:
    """Score every user, write `recommendations`; return counts and where the scores came from."""
    unknown = set(config.exclude_event_types) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"exclude_event_types names unknown event types {sorted(unknown)}; known: {EVENT_TYPES}")
    df, items, users = read_dataset(con)
    loaded = load_model(store)
    if loaded is None:
        model = fallback_model(con, df)
        source, version = f"baseline:{model.name}", "none"
        log(f"no {MODEL_NAME} model has been published yet: recommending with the best baseline, {model.name}")
    else:
        model, _ = loaded
        source, version = "model", str(store.latest(MODEL_NAME).name)
    context = load_context(con, df, items, users)
    excluded_rows = df[df["event_type"].isin(config.exclude_event_types)]
    excluded = excluded_rows.groupby("user_id")["item_id"].agg(set).to_dict()
    everyone = set(df["user_id"])
    if table_exists(con, "user_profiles", views=True):
        everyone |= {u for (u,) in con.execute("SELECT user_id FROM user_profiles").fetchall()}
    known_index = pd.Index(model.user_index)
    known = sorted(u for u in everyone if u in known_index)
    cold = sorted(everyone - set(known))
    step = max(1, BATCH_CELLS // max(len(model.items), 1))
    rows: list[tuple] = []
    for start in range(0, len(known), step):
        rows += score_known(model, known[start:start + step], excluded, config.n, context)
    rows += score_cold(con, cold, df["item_id"].value_counts(), excluded, config.n, context)
    frame = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "reason", "member"])
    frame["source"] = source
    frame["model_version"] = version
    con.register("_recommendations", frame)
    con.execute("""
        CREATE OR REPLACE TABLE recommendations AS
        SELECT user_id, rank::INTEGER AS rank, item_id, score, reason, member, source, model_version,
               now()::TIMESTAMP AS generated_at
        FROM _recommendations ORDER BY user_id, rank""")
    con.unregister("_recommendations")
    return {"users": len(everyone), "known_users": len(known), "cold_users": len(cold), "rows": len(frame),
            "source": source, "model_version": version}


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="recommender",
    kinds={"lightfm", "duckdb"},
    owners=["team:portrait"],
    deps=["lightfm_model", "recsys_dataset", "user_profiles", "user_segments"],
    automation_condition=AUTOMATION,
)
def recommendations(context: dg.AssetExecutionContext, config: RecommendationsConfig, warehouse: Warehouse,
                    model_store: ModelStore) -> dg.MaterializeResult:
    """Top N items per user with score, rank and a reason, from the published production model."""
    with warehouse.transaction() as con:
        counts = build_recommendations(con, model_store, config, log=context.log.warning)
        by_member = query_rows(con, "SELECT member, count(*) AS items, count(DISTINCT user_id) AS users "
                                    "FROM recommendations GROUP BY 1 ORDER BY 2 DESC")
        preview = query_rows(con, """
            SELECT r.user_id, r.rank, r.item_id, i.title, round(r.score, 3) AS score, r.reason
            FROM recommendations r LEFT JOIN items i USING (item_id)
            WHERE r.user_id = (SELECT min(user_id) FROM recommendations) AND r.rank <= 10 ORDER BY r.rank""")
        coverage = con.execute("SELECT count(DISTINCT item_id) FROM recommendations").fetchall()[0][0]
    return dg.MaterializeResult(metadata={
        **counts_metadata(counts),
        "items_recommended": dg.MetadataValue.int(coverage),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
        "by_member": dg.MetadataValue.md(markdown_table(by_member)),
        "member_chart": bar_chart_markdown([r["member"] for r in by_member], [r["items"] for r in by_member],
                                           "Recommended items by the member that ranked them"),
    })

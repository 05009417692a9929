"""`recommender_evaluation`: every candidate through the one harness, on the shop's own data.

The baselines (popularity, recent popularity, the user's own items, item co-occurrence),
LightFM on ids and hybrid (item categories as side features), and the validated blend are
fitted on the same split and scored by the same metrics (assets/recsys_eval.py). Each run
appends its rows to `recommender_evaluations`, so a regression shows next to earlier runs.
"""

from typing import Literal

import dagster as dg
import duckdb
import pandas as pd
from pydantic import Field

from assets.automation import WAREHOUSE_POOL
from assets.blend import Blend, ItemKNN
from assets.lightfm_model import LightFMRecommender, LightFMSettings
from assets.metadata import bar_chart_markdown, markdown_table
from assets.recsys_eval import (
    OwnRecentItems,
    Popularity,
    RecentPopularity,
    Split,
    best_baseline,
    evaluate_candidates,
    interactions,
    last_days_split,
    results_table,
    stratified_random_split,
    time_split,
)
from resources.warehouse import Warehouse

BASELINES = ("popularity", "recent_popularity", "own_items", "item_knn")


class EvaluationConfig(dg.Config):
    protocol: Literal["time", "last_days", "stratified"] = Field(
        default="time", description="time: a global cut at `quantile`; last_days: the last `days` as test; "
                                    "stratified: a per-user random 75/25 split")
    quantile: float = Field(default=0.9, description="time protocol: where the cut falls in event time")
    new_items_only: bool = Field(default=True, description="time protocol: relevant = items new to the user")
    days: int = Field(default=1, description="last_days protocol: days held out")
    utc_offset_hours: float = Field(default=0.0, description="last_days protocol: the shop's day boundary")
    recent_days: int = Field(default=30, description="window of the recent-popularity baseline")
    half_life_days: float = Field(default=7.0, description="decay of own-items and co-occurrence histories")
    k: int = Field(default=10, description="metrics at k")
    seeds: int = Field(default=3, description="LightFM seeds averaged")


def make_split(df: pd.DataFrame, config: EvaluationConfig) -> Split:
    if config.protocol == "time":
        return time_split(df, config.quantile, config.new_items_only)
    if config.protocol == "last_days":
        return last_days_split(df, config.days, repeats=True, utc_offset_hours=config.utc_offset_hours)
    return stratified_random_split(df)


def item_categories(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    rows = con.execute("SELECT item_id, list(DISTINCT 'category:' || c) FROM items, unnest(categories) AS t(c) "
                       "WHERE c IS NOT NULL GROUP BY item_id").fetchall()
    return {item: features for item, features in rows}


def candidates(config: EvaluationConfig, categories: dict[str, list[str]]) -> list:
    """Factories of every candidate, the blend last (it refits the others on inner splits)."""
    inner = lambda train: make_split(train, config)  # noqa: E731 - the same protocol inside training
    settings = LightFMSettings(seeds=tuple(range(1, config.seeds + 1)))
    members = [
        lambda: Popularity(),
        lambda: RecentPopularity(days=config.recent_days),
        lambda: OwnRecentItems(half_life_days=config.half_life_days),
        lambda: ItemKNN(half_life_days=config.half_life_days),
        lambda: LightFMRecommender(settings, validation=inner, name="lightfm_ids"),
    ]
    if categories:
        members.append(lambda: LightFMRecommender(settings, item_features=categories, validation=inner,
                                                  name="lightfm_hybrid"))
    return [factory() for factory in members] + [Blend(members, validation=inner)]


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="recommender",
    kinds={"lightfm", "duckdb"},
    owners=["team:portrait"],
    deps=["events", "items"],
)
def recommender_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig,
                           warehouse: Warehouse) -> dg.MaterializeResult:
    """Baselines, LightFM (ids and hybrid) and the validated blend on one split with one set of
    metrics; appended to `recommender_evaluations` so earlier runs stay visible."""
    with warehouse.connect() as con:
        df = interactions(con)
        categories = item_categories(con)
    split = make_split(df, config)
    context.log.info(split.describe())
    results = evaluate_candidates(candidates(config, categories), split, config.k)
    rows = results_table(results)
    recall, ndcg = f"recall@{config.k}", f"ndcg@{config.k}"
    baselines = {name: r for name, r in results.items() if name.startswith(BASELINES)}
    best_recall = best_baseline(baselines, recall)
    best_ndcg = best_baseline(baselines, ndcg)
    production = results["production_blend"]
    frame = pd.DataFrame([{"candidate": name, "protocol": split.name, "k": config.k, **{
        m: r.get(m) for m in (recall, ndcg, f"precision@{config.k}", f"map@{config.k}", f"hit_rate@{config.k}",
                              "auc", "coverage", "novelty", "seconds")}} for name, r in results.items()])
    frame.columns = [c.split("@")[0] for c in frame.columns]
    with warehouse.transaction() as con:
        con.register("_results", frame)
        con.execute("CREATE TABLE IF NOT EXISTS recommender_evaluations AS SELECT now()::TIMESTAMP AS evaluated_at, "
                    "* FROM _results WHERE false")
        con.execute("INSERT INTO recommender_evaluations SELECT now()::TIMESTAMP, * FROM _results")
        con.unregister("_results")
    names = list(results)
    return dg.MaterializeResult(metadata={
        "split": split.describe(),
        "results": dg.MetadataValue.md(markdown_table(rows, max_rows=20)),
        "recall_chart": bar_chart_markdown(names, [results[n][recall] or 0.0 for n in names], f"Recall@{config.k}"),
        "ndcg_chart": bar_chart_markdown(names, [results[n][ndcg] or 0.0 for n in names], f"NDCG@{config.k}"),
        "best_baseline_recall": f"{best_recall[0]} {best_recall[1]:.4f}",
        "best_baseline_ndcg": f"{best_ndcg[0]} {best_ndcg[1]:.4f}",
        "production_recall": production[recall],
        "production_ndcg": production[ndcg],
        "production_vs_best_recall": round(production[recall] / best_recall[1], 3) if best_recall[1] else None,
        "production_vs_best_ndcg": round(production[ndcg] / best_ndcg[1], 3) if best_ndcg[1] else None,
    })

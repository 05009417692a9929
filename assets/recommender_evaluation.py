"""`recommender_evaluation`: every candidate through the one harness, on the shop's own data.

The fixed baselines and the production blend (assets/recommender_recipe.py) are fitted on
the same split and scored by the same metrics (assets/recsys_eval.py). Side features and
content vectors are computed as of the split's cut, so nothing written after it leaks in.
Each run appends its rows, with the config, to `recommender_evaluations`: a regression
shows next to earlier runs, and `lightfm_model` trains exactly the recipe evaluated last.
"""

import json

import dagster as dg
import duckdb
import pandas as pd

from assets.automation import WAREHOUSE_POOL
from assets.blend import Blend
from assets.metadata import bar_chart_markdown, markdown_table
from assets.recommender_recipe import (
    HYBRID,
    PRODUCTION,
    RecommenderConfig,
    baselines,
    content_vectors,
    make_split,
    production,
)
from assets.recsys_dataset import UserFeatures, dataset_config, demographics, item_features, read_dataset
from assets.recsys_eval import Split, best_baseline, evaluate_candidates, evaluate_fitted, results_table
from resources.warehouse import Warehouse

EVALUATIONS = "recommender_evaluations"


def evaluate_recipe(con: duckdb.DuckDBPyConnection, config: RecommenderConfig
                    ) -> tuple[Split, dict[str, dict], Blend]:
    """Split the dataset, build features as of the cut (with the dataset's settings), and
    evaluate the baselines, the blend and, on its own, the blend's LightFM hybrid member;
    return the split, the results and the fitted blend."""
    df, _, _ = read_dataset(con)
    settings = dataset_config(con)
    split = make_split(df, config)
    items = item_features(con, settings.embedding_clusters, split.cut)
    users = UserFeatures(items, demographics(con), settings.user_top_categories)
    vectors = content_vectors(con, split.cut)
    catalogue = sorted(set(items) | set(split.train["item_id"]))
    blend = production(config, items, users, vectors, catalogue)
    results = evaluate_candidates(baselines(config, vectors) + [blend], split, config.k)
    hybrid = next(m for m in blend.members if m.name == HYBRID)
    results[HYBRID] = evaluate_fitted(hybrid, split, config.k)
    return split, results, blend


def is_baseline(name: str) -> bool:
    return name not in (PRODUCTION, HYBRID)


def append_results(con: duckdb.DuckDBPyConnection, results: dict[str, dict], split: Split, config: RecommenderConfig) -> None:
    """Append one row per candidate (metrics at k, the protocol and the config as JSON)."""
    k = config.k
    metrics = (f"recall@{k}", f"ndcg@{k}", f"precision@{k}", f"map@{k}", f"hit_rate@{k}", "auc", "coverage",
               "novelty", "seconds")
    frame = pd.DataFrame([{"candidate": name, "protocol": split.name, "k": k, **{m: r.get(m) for m in metrics},
                           "baseline": is_baseline(name), "recipe": json.dumps(config.model_dump())}
                          for name, r in results.items()])
    frame.columns = [c.split("@")[0] for c in frame.columns]
    con.register("_results", frame)
    con.execute(f"CREATE TABLE IF NOT EXISTS {EVALUATIONS} AS SELECT now()::TIMESTAMP AS evaluated_at, "
                "* FROM _results WHERE false")
    # tables from before the recipe was recorded get the new columns
    con.execute(f"ALTER TABLE {EVALUATIONS} ADD COLUMN IF NOT EXISTS baseline BOOLEAN")
    con.execute(f"ALTER TABLE {EVALUATIONS} ADD COLUMN IF NOT EXISTS recipe VARCHAR")
    con.execute(f"INSERT INTO {EVALUATIONS} BY NAME SELECT now()::TIMESTAMP AS evaluated_at, * FROM _results")
    con.unregister("_results")


def verdict(results: dict[str, dict], k: int) -> dict:
    """The production blend against the best baseline on recall and NDCG at k."""
    found = {}
    base = {name: r for name, r in results.items() if is_baseline(name)}
    for metric in (f"recall@{k}", f"ndcg@{k}"):
        name, value = best_baseline(base, metric)
        ours = float(results[PRODUCTION][metric])
        found[metric] = {"production": ours, "best_baseline": name, "baseline": value,
                         "ratio": round(ours / value, 3) if value else None}
    found["passed"] = all(found[m]["production"] > found[m]["baseline"] for m in (f"recall@{k}", f"ndcg@{k}"))
    return found


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="recommender",
    kinds={"lightfm", "duckdb"},
    owners=["team:portrait"],
    deps=["recsys_dataset"],
)
def recommender_evaluation(context: dg.AssetExecutionContext, config: RecommenderConfig,
                           warehouse: Warehouse) -> dg.MaterializeResult:
    """The fixed baselines and the production blend on one split with one set of metrics;
    appended to `recommender_evaluations` so earlier runs stay visible."""
    with warehouse.connect() as con:
        split, results, blend = evaluate_recipe(con, config)
    context.log.info(split.describe())
    with warehouse.transaction() as con:
        append_results(con, results, split, config)
    k = config.k
    recall, ndcg = f"recall@{k}", f"ndcg@{k}"
    outcome = verdict(results, k)
    names = list(results)
    return dg.MaterializeResult(metadata={
        "split": split.describe(),
        "results": dg.MetadataValue.md(markdown_table(results_table(results), max_rows=20)),
        "recall_chart": bar_chart_markdown(names, [results[n][recall] or 0.0 for n in names], f"Recall@{k}"),
        "ndcg_chart": bar_chart_markdown(names, [results[n][ndcg] or 0.0 for n in names], f"NDCG@{k}"),
        "best_baseline_recall": f"{outcome[recall]['best_baseline']} {outcome[recall]['baseline']:.4f}",
        "best_baseline_ndcg": f"{outcome[ndcg]['best_baseline']} {outcome[ndcg]['baseline']:.4f}",
        "production_recall": outcome[recall]["production"],
        "production_ndcg": outcome[ndcg]["production"],
        "production_vs_best_recall": outcome[recall]["ratio"],
        "production_vs_best_ndcg": outcome[ndcg]["ratio"],
        "production_beats_baselines": outcome["passed"],
        "blend_weights": dg.MetadataValue.json(blend.weights),
    })

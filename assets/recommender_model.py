"""`lightfm_model`: the production recommender, trained on everything and published only if it
beat the baselines.

The recipe is the one `recommender_evaluation` measured last (its config is read back from
`recommender_evaluations`): the blend of the LightFM hybrid with popularity priors, the
user's decayed own history, item co-occurrence and content similarity. It is refitted on all
interactions (LightFM's epochs and the blend weights again chosen on a split inside them),
saved with a model card through the model store, and published only when the blocking check
`recommender_beats_baselines` passes: the evaluated blend beat the best baseline of that same
evaluation on recall@k and NDCG@k. Otherwise the version is kept but readers keep the
previous one.
"""

import json
import pickle
import time
from pathlib import Path

import dagster as dg
import duckdb

from assets.automation import WAREHOUSE_POOL
from assets.behavior_model import peak_memory_mb, publish_if_passed
from assets.blend import Blend
from assets.lightfm_model import LightFMRecommender
from assets.metadata import markdown_table
from assets.recommender_evaluation import EVALUATIONS, verdict
from assets.recommender_recipe import PRODUCTION, RecommenderConfig, content_vectors, production
from assets.recsys_dataset import UserFeatures, dataset_config, demographics, read_dataset
from resources.model_store import ModelStore
from resources.warehouse import Warehouse, table_exists

MODEL_NAME = "recommender"
CHECK_NAME = "recommender_beats_baselines"
MODEL_FILE = "model.pkl"


def latest_evaluation(con: duckdb.DuckDBPyConnection) -> tuple[RecommenderConfig, dict]:
    """The config and the verdict of the newest `recommender_evaluation` run."""
    if not table_exists(con, EVALUATIONS):
        raise dg.Failure(f"no {EVALUATIONS} table: materialize recommender_evaluation before lightfm_model")
    rows = con.execute(f"""
        SELECT candidate, recall, ndcg, recipe, evaluated_at, k
        FROM {EVALUATIONS} WHERE evaluated_at = (SELECT max(evaluated_at) FROM {EVALUATIONS})
    """).fetchall()
    recipe = next((r[3] for r in rows if r[0] == PRODUCTION), None)
    if recipe is None:
        raise dg.Failure("the newest recommender evaluation has no production blend or no recorded recipe: "
                         "materialize recommender_evaluation again")
    k = rows[0][5]
    found = verdict({r[0]: {f"recall@{k}": r[1], f"ndcg@{k}": r[2]} for r in rows}, k)
    found.update(evaluated_at=str(rows[0][4]), k=k)
    return RecommenderConfig.model_validate_json(recipe), found


def train_production(con: duckdb.DuckDBPyConnection, config: RecommenderConfig) -> tuple[Blend, dict]:
    """The production blend fitted on every interaction; and figures for the card."""
    df, items, _ = read_dataset(con)
    users = UserFeatures(items, demographics(con), dataset_config(con).user_top_categories)
    catalogue = sorted(set(items) | set(df["item_id"]))
    blend = production(config, items, users, content_vectors(con), catalogue)
    started = time.perf_counter()
    blend.fit(df)
    lightfm = [m for m in blend.members if isinstance(m, LightFMRecommender)]
    return blend, {"interactions": len(df), "users": len(blend.user_index), "items": len(blend.items),
                   "weights": blend.weights, "validation_score": round(blend.validation_score, 5),
                   "lightfm_epochs": {m.name: m.epochs for m in lightfm},
                   "train_seconds": round(time.perf_counter() - started, 1)}


def save_model(blend: Blend, folder: Path) -> Path:
    path = folder / MODEL_FILE
    with open(path, "wb") as handle:
        pickle.dump(blend, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_model(store: ModelStore) -> tuple[Blend, dict] | None:
    """The published production model and its card, or None if none was ever published."""
    folder = store.latest(MODEL_NAME)
    if folder is None:
        return None
    with open(folder / MODEL_FILE, "rb") as handle:
        return pickle.load(handle), store.read_card(folder)


@dg.asset(
    pool=WAREHOUSE_POOL,
    name="lightfm_model",
    group_name="recommender",
    kinds={"lightfm", "duckdb"},
    owners=["team:portrait"],
    deps=["recsys_dataset", "recommender_evaluation"],
    description="The production recommender (LightFM hybrid blended with popularity priors, the user's own "
                "history, item co-occurrence and content similarity), trained on every interaction with the "
                "recipe evaluated last; saved with a model card, published only if it beat the baselines.",
    check_specs=[dg.AssetCheckSpec(
        CHECK_NAME, asset="lightfm_model", blocking=True,
        description="In the newest recommender evaluation, the production blend's recall@k and NDCG@k are above "
                    "the best baseline's (popularity, recent popularity, own items by recency, content similarity, "
                    "LightFM on ids). A failing version is saved but not published.",
    )],
)
def lightfm_model(context: dg.AssetExecutionContext, warehouse: Warehouse,
                  model_store: ModelStore) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        config, outcome = latest_evaluation(con)
        blend, figures = train_production(con, config)
    folder = model_store.new_version(MODEL_NAME)
    save_model(blend, folder)
    passed = outcome["passed"]
    model_store.write_card(folder, {
        "model": MODEL_NAME, "kind": "blend", "members": [m.name for m in blend.members], "recipe": config.model_dump(),
        "evaluation": outcome, "passed": passed, "run_id": context.run.run_id,
        "peak_memory_mb": round(peak_memory_mb(), 1), **figures})
    published = publish_if_passed(model_store, MODEL_NAME, folder, passed)
    context.log.info(f"production blend {'published' if published else 'saved, not published'} ({folder})")
    metrics = [f"{m}@{outcome['k']}" for m in ("recall", "ndcg")]
    rows = [{"metric": m, "production": round(outcome[m]["production"], 4), "best baseline": outcome[m]["best_baseline"],
             "baseline": round(outcome[m]["baseline"], 4), "ratio": outcome[m]["ratio"]} for m in metrics]
    check = dg.AssetCheckResult(
        check_name=CHECK_NAME, asset_key="lightfm_model", passed=passed,
        metadata={"evaluated_at": outcome["evaluated_at"],
                  **{f"{row['metric']}_ratio": row["ratio"] for row in rows},
                  "comparison": dg.MetadataValue.md(markdown_table(rows))},
        description=None if passed else "saved but not published: the blend did not beat the best baseline on "
                                        "both recall and NDCG in the newest evaluation")
    return dg.MaterializeResult(metadata={
        "version_folder": dg.MetadataValue.path(str(folder)),
        "published": published,
        "comparison": dg.MetadataValue.md(markdown_table(rows)),
        "blend_weights": dg.MetadataValue.json(figures["weights"]),
        "lightfm_epochs": dg.MetadataValue.json(figures["lightfm_epochs"]),
        "recipe": dg.MetadataValue.json(json.loads(config.model_dump_json())),
        **{name: figures[name] for name in ("interactions", "users", "items", "train_seconds")},
    }, check_results=[check])

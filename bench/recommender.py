"""The production recommender against the fixed baselines on real data, and batch scoring speed.

For each real data set in `../shared/data/` (Amazon Musical Instruments 5-core, Taobao
UserBehavior head) the warehouse is built once into `bench/.cache/<name>/` (ingestion, and
for Amazon the review embeddings), then `recommender_evaluation`'s own code evaluates the
baselines and the production blend on the data set's protocol. LightFM trains on one thread,
so each evaluation is reproducible bit for bit; it is repeated over several seed sets (the
baseline's LightFM seed and the blend's ensemble change together), because on a small test
split the seed moves the ratio by several percent: the mean and the minimum over seed sets are
the result, not one lucky run.

Amazon also reports `lightfm_ids_tuned`, an ablation that is not a baseline: the production
LightFM's hyperparameters and seeds on ids alone, which shows how much of the blend's lead
over plain LightFM comes from tuning and how much from side features and blending.

Scoring: every user against every item by one matrix product of LightFM's learned
representations (what `recommendations` does) against LightFM's own `predict` called once
per user, the usual loop; same model, same scores.

    python -m bench.recommender [--seed-sets N] [--only amazon|taobao]
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np

from assets.embeddings import item_embeddings, text_embeddings
from assets.lightfm_model import LightFMRecommender, LightFMSettings
from assets.recommender_evaluation import evaluate_recipe, verdict
from assets.recommender_recipe import PRODUCTION, RecommenderConfig, lightfm_settings, validation
from assets.recsys_dataset import DatasetConfig, read_dataset, write_dataset
from assets.recsys_eval import evaluate_candidate
from bench.machine import record
from orchestration.cli import main as portrait
from resources.encoder import TextEncoder
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE = Path(__file__).resolve().parent / ".cache"
DATASETS = {
    "amazon": {"importer": "amazon-reviews", "file": "amazon-musical-instruments-5core/reviews_Musical_Instruments_5.json.gz",
               "embed": True, "seed_sets": 5, "ablation": True,
               "config": RecommenderConfig(protocol="time", quantile=0.9, new_items_only=True, threads=1)},
    "taobao": {"importer": "taobao", "file": "taobao-userbehavior-head/UserBehavior.csv.gz", "embed": False,
               "seed_sets": 1, "ablation": False,  # one evaluation takes about 25 minutes here
               "config": RecommenderConfig(protocol="last_days", days=1, utc_offset_hours=8, threads=1)},
}


def warehouse_for(name: str) -> Path:
    """The data set's warehouse, built on first use (import, ingest, embeddings where it has texts)."""
    spec = DATASETS[name]
    home = CACHE / name
    path = home / "warehouse.duckdb"
    if (home / "ready").exists():
        return path
    source = SHARED / spec["file"]
    if not source.exists():
        raise SystemExit(f"{source} is missing: the real data sets live in ../shared/data (see its README)")
    os.environ["PORTRAIT_HOME"] = str(home)
    assert portrait(["--home", str(home), "import", spec["importer"], str(source)]) == 0
    assert portrait(["--home", str(home), "run", "--ingest-only"]) == 0
    if spec["embed"]:
        result = dg.materialize([text_embeddings, item_embeddings], resources={
            "warehouse": Warehouse(path=str(path)), "encoder": TextEncoder(), "device": TorchDevice()})
        assert result.success
    (home / "ready").write_text("ok\n")
    return path


def evaluate(name: str, seed_sets: int | None) -> dict:
    path = warehouse_for(name)
    base = DATASETS[name]["config"]
    with duckdb.connect(str(path)) as con:
        write_dataset(con, DatasetConfig())
    runs = []
    for seed in range(1, 10 * (seed_sets or DATASETS[name]["seed_sets"]), 10):
        config = base.model_copy(update={"seed": seed})
        started = time.perf_counter()
        with duckdb.connect(str(path), read_only=True) as con:
            split, results, blend = evaluate_recipe(con, config)
        outcome = verdict(results, config.k)
        if DATASETS[name]["ablation"]:
            tuned = LightFMRecommender(lightfm_settings(config), validation=validation(config),
                                       name="lightfm_ids_tuned")
            results[tuned.name] = evaluate_candidate(tuned, split, config.k)
        runs.append({"seed": seed,
                     "results": {c: {m: r[m] for m in ("recall@10", "ndcg@10", "auc") if r.get(m) is not None}
                                 for c, r in results.items()},
                     "verdict": outcome, "weights": blend.weights, "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name} seed {seed}: {outcome}", flush=True)
    summary = {"split": split.describe(), "config": base.model_dump(exclude={"seed"}), "runs": runs}
    for metric in ("recall@10", "ndcg@10"):
        ratios = [r["verdict"][metric]["ratio"] for r in runs]
        summary[f"production_{metric.split('@')[0]}"] = round(statistics.mean(
            r["results"][PRODUCTION][metric] for r in runs), 4)
        summary[f"best_baseline_{metric.split('@')[0]}"] = round(statistics.mean(
            r["verdict"][metric]["baseline"] for r in runs), 4)
        summary[f"ratio_{metric.split('@')[0]}"] = round(statistics.mean(ratios), 3)
        summary[f"ratio_{metric.split('@')[0]}_min"] = min(ratios)
    summary["passed_every_run"] = all(r["verdict"]["passed"] for r in runs)
    return summary


def scoring(name: str) -> dict:
    """All users x all items: representation product against a per-user `predict` loop."""
    with duckdb.connect(str(warehouse_for(name)), read_only=True) as con:
        df, _, _ = read_dataset(con)
    model = LightFMRecommender(LightFMSettings(seeds=(1,)), epochs=5).fit(df)
    users = list(model.user_index)
    started = time.perf_counter()
    batched = model.scores(users)
    batch_s = time.perf_counter() - started
    lightfm = model.models[0]
    item_ids = np.arange(len(model.items), dtype=np.int32)
    started = time.perf_counter()
    looped = np.vstack([lightfm.predict(u, item_ids, user_features=model.user_features,
                                        item_features=model.item_features, num_threads=model.settings.num_threads)
                        for u in range(len(users))])
    loop_s = time.perf_counter() - started
    assert np.allclose(batched, looped, atol=1e-3), "batched scores differ from LightFM's predict"
    return {"dataset": name, "users": len(users), "items": len(model.items), "batch_s": round(batch_s, 3),
            "predict_loop_s": round(loop_s, 3), "scoring_speedup": round(loop_s / batch_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-sets", type=int, help="evaluations per data set (default: 5 Amazon, 1 Taobao)")
    parser.add_argument("--only", choices=sorted(DATASETS))
    args = parser.parse_args()
    names = [args.only] if args.only else sorted(DATASETS)
    result = {name: evaluate(name, args.seed_sets) for name in names}
    result["scoring"] = scoring("taobao" if "taobao" in names else names[0])
    result["scoring_speedup"] = result["scoring"]["scoring_speedup"]
    record("recommender", result)


if __name__ == "__main__":
    main()

"""`recommender_evaluation` on a generated shop: every candidate scored on one split, history kept."""

import json

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from assets.recommender_evaluation import recommender_evaluation
from assets.recommender_recipe import RecommenderConfig, validation_folds
from assets.recsys_dataset import recsys_dataset
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.landing import LandingZone
from resources.warehouse import Warehouse


def test_every_candidate_on_one_split_with_history(home):
    generate_demo(LandingZone(root=str(home / "landing")), users=120, items=60, days=12, seed=5)
    assert main(["run", "--ingest-only"]) == 0
    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    config = {"ops": {"recommender_evaluation": {"config": RecommenderConfig(seeds=1, max_epochs=10).model_dump()}}}
    for _ in range(2):
        result = dg.materialize([recsys_dataset, recommender_evaluation], resources={"warehouse": warehouse},
                                run_config=config)
        assert result.success
    metadata = result.asset_materializations_for_node("recommender_evaluation")[0].metadata
    assert "data:image/png;base64" in metadata["recall_chart"].value
    assert 0 <= metadata["production_recall"].value <= 1
    assert metadata["production_beats_baselines"].value in (True, False)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT candidate, count(*), bool_and(baseline), any_value(recipe) "
                           "FROM recommender_evaluations GROUP BY 1 ORDER BY 1").fetchall()
    baselines = {name for name, _, baseline, _ in rows if baseline}
    # no item texts were embedded here, so content similarity uses the one-hot categories
    assert baselines == {"popularity", "recent_popularity_30d", "own_items_by_recency", "lightfm_ids",
                         "content_similarity"}
    assert {name for name, _, baseline, _ in rows if not baseline} == {"production_blend", "lightfm_hybrid"}
    assert all(runs == 2 for _, runs, _, _ in rows)  # each run appended, the earlier one kept
    assert json.loads(rows[0][3])["seeds"] == 1  # the recipe travels with the results


def test_validation_folds_score_a_fixed_sample_of_users_and_train_on_everything():
    rng = np.random.default_rng(1)
    n = 20_000
    df = pd.DataFrame({"user_id": rng.integers(0, 3000, n).astype(str), "item_id": rng.integers(0, 200, n).astype(str),
                       "ts": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 86400 * 60, n), unit="s"),
                       "weight": 1.0})
    whole = validation_folds(df, RecommenderConfig())
    capped = validation_folds(df, RecommenderConfig(validation_users=100))
    assert all(len(f.users) > 100 for f in whole) and [len(f.users) for f in capped] == [100] * 4
    for small, full in zip(capped, whole):
        assert set(small.users) <= set(full.users) and set(small.test) == set(small.users)
        assert all(small.test[u] == full.test[u] for u in small.users)
        assert small.train.equals(full.train)  # the next fold and the members still see every interaction
    assert [f.users for f in capped] == [f.users for f in validation_folds(df, RecommenderConfig(validation_users=100))]

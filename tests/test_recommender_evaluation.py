"""`recommender_evaluation` on a generated shop: every candidate scored, history kept."""

import dagster as dg
import duckdb

from assets.recommender_evaluation import EvaluationConfig, recommender_evaluation
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.landing import LandingZone
from resources.warehouse import Warehouse


def test_every_candidate_on_one_split_with_history(home):
    generate_demo(LandingZone(root=str(home / "landing")), users=120, items=60, days=12, seed=5)
    assert main(["run", "--ingest-only"]) == 0
    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    config = {"ops": {"recommender_evaluation": {"config": EvaluationConfig(seeds=1).model_dump()}}}
    for _ in range(2):
        result = dg.materialize([recommender_evaluation], resources={"warehouse": warehouse}, run_config=config)
        assert result.success
    metadata = result.asset_materializations_for_node("recommender_evaluation")[0].metadata
    assert "data:image/png;base64" in metadata["recall_chart"].value
    assert 0 <= metadata["production_recall"].value <= 1
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT candidate, count(*) FROM recommender_evaluations GROUP BY 1 ORDER BY 1").fetchall()
    names = {name for name, _ in rows}
    assert {"popularity", "item_knn", "lightfm_ids", "lightfm_hybrid", "production_blend"} <= names
    assert all(runs == 2 for _, runs in rows)  # each run appended, the earlier one kept

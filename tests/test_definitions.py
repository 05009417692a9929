"""The code location loads, and every asset is described the way the UI needs it."""

import re
from pathlib import Path

import dagster as dg

from assets.validation import REASONS
from orchestration.definitions import build_defs

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load_with_jobs_and_every_asset_described():
    defs = build_defs()
    repository = defs.get_repository_def()
    assert {"ingest_events", "ingest_dimensions", "build_language_model", "build_portraits",
            "train_recommender", "recommend", "publish_serving"} <= set(repository.job_names)
    graph = repository.asset_graph
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_events", "events", "quarantine", "items", "users"} <= keys
    groups = {"ingest": {"raw_events", "events", "quarantine", "items", "users"},
              "language_model": {"text_embeddings", "item_embeddings", "behavior_model", "text_signals"},
              "portraits": {"user_profiles", "purchase_propensity", "user_segments", "user_summaries"},
              "recommender": {"recsys_dataset", "recommender_evaluation", "lightfm_model", "recommendations", "serving_snapshot",
                              "search_index"}}
    assert set().union(*groups.values()) == keys
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert key.to_user_string() in groups[node.group_name], key
        assert node.description, key
        assert node.owners == ["team:portrait"], key
        assert node.kinds & {"duckdb", "torch", "lightfm"}, key
        references = node.metadata["dagster/code_references"].code_references
        assert references and Path(references[0].file_path).is_file(), key
        # one writer per DuckDB file: everything that writes the warehouse queues on one pool
        assert node.pools == ({"gpu"} if key.to_user_string() == "behavior_model" else {"duckdb"}), key
    assert graph.get(dg.AssetKey("events")).partitions_def.name == "event_days"
    # steps reading the landing zone retry with back-off
    for asset in defs.assets:
        if isinstance(asset, dg.AssetsDefinition) and {k.to_user_string() for k in asset.keys} & {"raw_events", "items", "users"}:
            assert asset.op.retry_policy.max_retries == 2 and asset.op.retry_policy.backoff == dg.Backoff.EXPONENTIAL


def test_every_quarantine_reason_is_documented():
    contract = (ROOT / "docs" / "data-contract.md").read_text()
    contract = contract.split("## Quarantine reasons")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", contract, flags=re.MULTILINE))
    assert documented == set(REASONS)


def test_readme_set_up_commands_exist_in_the_makefile_and_ci_runs_make_test():
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    for target in ("demo", "test", "ui"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()

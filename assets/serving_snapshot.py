"""`serving_snapshot`: publish the tables the API reads as a new read-only DuckDB file.

The API (`portrait serve`) never opens the live warehouse: DuckDB admits one writing
process per file, so a server reading it would hold pipeline runs back. This asset copies
the serving tables that exist into `PORTRAIT_HOME/serving/<UTC stamp>/serving.duckdb`,
records the published search index and the row counts in `manifest.json`, and points
`serving/CURRENT` at it; the server switches on its next request (see
resources/snapshots.py and docs/recommender.md, "Serving").
"""

import time

import dagster as dg

from assets.automation import AUTOMATION, WAREHOUSE_POOL
from assets.metadata import markdown_table
from resources.model_store import ModelStore
from resources.snapshots import SnapshotStore
from resources.warehouse import Warehouse

SEARCH_INDEX = "search_index"


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="recommender",
    kinds={"duckdb"},
    owners=["team:portrait"],
    # keys, not imports: the serving tables are read back from the warehouse, whichever exist
    deps=["user_profiles", "recommendations", "search_index", "user_segments", "user_summaries", "purchase_propensity"],
    description="Copies the serving tables (user_profiles as a table, recommendations, items, item_embeddings, "
                "user_segments, segments, user_summaries, user_propensity; those that exist) into a new read-only "
                "DuckDB file under serving/, records the published search index, and points serving/CURRENT at "
                "it. Keeps the current and the previous snapshot.",
)
def serving_snapshot(context: dg.AssetExecutionContext, warehouse: Warehouse, model_store: ModelStore,
                     snapshots: SnapshotStore) -> dg.MaterializeResult:
    started = time.perf_counter()
    search_index = model_store.latest(SEARCH_INDEX)
    with warehouse.connect(read_only=True) as con:
        published = snapshots.publish(con, search_index, context.run.run_id, published_by="serving_snapshot")
    snapshot = published.snapshot
    seconds = time.perf_counter() - started
    missing = snapshot.manifest["missing_tables"]
    context.log.info(f"published serving snapshot {snapshot.stamp} ({len(snapshot.tables)} tables) in {seconds:.1f} s"
                     + (f"; not in the warehouse: {', '.join(missing)}" if missing else ""))
    return dg.MaterializeResult(metadata={
        "snapshot": snapshot.stamp,
        "path": dg.MetadataValue.path(str(snapshot.database)),
        "tables": dg.MetadataValue.md(markdown_table([{"table": t, "rows": n} for t, n in snapshot.tables.items()])),
        "missing_tables": ", ".join(missing) or "none",
        "search_index": str(search_index) if search_index else "none published",
        "previous": published.previous or "none",
        "deleted": ", ".join(published.deleted) or "none",
        "seconds": round(seconds, 2),
    })

"""Helpers for tests that ingest landing files through real Dagster runs."""

from pathlib import Path

import dagster as dg
import duckdb

from assets.dimensions import items, users
from assets.events import validate_events
from assets.raw_events import raw_events
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG
from resources.landing import LandingZone
from resources.warehouse import Warehouse


def resources(home: Path) -> dict:
    return {"warehouse": Warehouse(path=str(home / "warehouse.duckdb")), "landing": LandingZone(root=str(home / "landing"))}


def ingest_events(home: Path, instance: dg.DagsterInstance, days: list[str]) -> dg.ExecuteInProcessResult:
    """Materialize raw_events, events and quarantine for `days` (one run for the whole range)."""
    known = set(instance.get_dynamic_partitions("event_days"))
    instance.add_dynamic_partitions("event_days", [d for d in sorted(days) if d not in known])
    ordered = [d for d in instance.get_dynamic_partitions("event_days") if d in set(days)]
    return dg.materialize(
        [raw_events, validate_events], instance=instance, resources=resources(home),
        tags={RANGE_START_TAG: ordered[0], RANGE_END_TAG: ordered[-1]},
    )


def ingest_dimensions(home: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize([items, users], instance=instance, resources=resources(home))


def query(home: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def check_results(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}

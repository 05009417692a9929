"""`portrait backfill`: a range of event days as a Dagster backfill, run by the daemon.

Unlike `portrait run`, which executes in this process and waits, a backfill is queued in the
instance exactly as the UI's "Materialize..." dialog queues one: the daemon (started by
`make ui`) launches it as one run per range (the event assets' single-run backfill policy),
the run queue holds it while another run has the `duckdb` pool, and it shows on the UI's
Backfills page. Two overlapping backfills therefore wait for each other instead of meeting
on DuckDB's lock.
"""

import time
from collections.abc import Callable

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from orchestration.runs import register_event_days
from resources.landing import LandingZone

EVENT_ASSETS = ("raw_events", "events", "quarantine")
FINISHED = {BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED,
            BulkActionStatus.FAILED, BulkActionStatus.CANCELED}


def launch_backfill(defs: dg.Definitions, instance: dg.DagsterInstance, landing: LandingZone, start: str,
                    end: str) -> str:
    """Queue a backfill of the event assets over the landed days in [start, end]; return its id."""
    days = register_event_days(instance, landing, start, end)
    if not days:
        raise ValueError(f"no landed event days between {start} and {end}: see `ls {landing.path}/events`")
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(), asset_graph=defs.resolve_asset_graph(), partition_names=days,
        asset_selection=[dg.AssetKey(name) for name in EVENT_ASSETS], backfill_timestamp=time.time(),
        tags={"portrait/launched_by": "portrait backfill"}, dynamic_partitions_store=instance, all_partitions=False,
        title=f"event days {days[0]}..{days[-1]}", description=None, run_config=None)
    instance.add_backfill(backfill)
    return backfill.backfill_id


def wait_for_backfill(instance: dg.DagsterInstance, backfill_id: str, timeout_s: float,
                      report: Callable[[str], None] = print) -> BulkActionStatus:
    """Poll until the backfill finishes (or `timeout_s` passes); report each status change."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        status = instance.get_backfill(backfill_id).status
        if status != last:
            report(f"  backfill {backfill_id}: {status.value.lower()}")
            last = status
        if status in FINISHED or time.monotonic() > deadline:
            return status
        time.sleep(1.0)

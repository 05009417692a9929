"""Launch Portrait's jobs as Dagster runs recorded in the instance (used by the command line)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg

from assets.partitions import event_days
from resources.landing import LandingZone

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
#: The command line prints its own progress; the full run logs are in the instance (UI, Runs).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class RunOutcome:
    job: str
    run_id: str
    success: bool
    seconds: float
    partitions: str = ""
    error: str = ""
    failed_checks: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """The run stopped only because a blocking check failed: nothing broke, and the
        previous published version stays in use."""
        return not self.success and bool(self.failed_checks) and "check" in self.error.lower()


def contiguous_ranges(ordered_keys: list[str], wanted: Iterable[str]) -> list[tuple[str, str]]:
    """Split `wanted` into runs of keys that are adjacent in the partitions' own order.

    A dynamic partition range runs in one run (single-run backfill); keys added out of
    date order would otherwise drag unwanted days into the range.
    """
    wanted = set(wanted)
    ranges: list[tuple[str, str]] = []
    start = previous = None
    for key in ordered_keys:
        if key in wanted:
            start = start or key
            previous = key
        elif start is not None:
            ranges.append((start, previous))
            start = None
    if start is not None:
        ranges.append((start, previous))
    return ranges


def register_event_days(instance: dg.DagsterInstance, landing: LandingZone, start: str | None = None,
                        end: str | None = None) -> list[str]:
    """Add a partition for every landed day in [start, end]; return those days."""
    days = [d for d in landing.event_days() if (start is None or d >= start) and (end is None or d <= end)]
    known = set(instance.get_dynamic_partitions(event_days.name))
    new = [d for d in days if d not in known]
    if new:
        instance.add_dynamic_partitions(event_days.name, new)
    return days


def run_job(defs: dg.Definitions, name: str, instance: dg.DagsterInstance, tags: dict[str, str] | None = None,
            label: str = "", run_config: dict | None = None) -> RunOutcome:
    started = time.monotonic()
    result = defs.resolve_job_def(name).execute_in_process(
        run_config={**QUIET, **(run_config or {})}, instance=instance, tags=tags or {}, raise_on_error=False
    )
    error = ""
    failed_checks = [f"{e.asset_key.to_user_string()}: {e.check_name}"
                     + (" (a warning)" if e.severity == dg.AssetCheckSeverity.WARN else "")
                     for e in result.get_asset_check_evaluations()
                     if not e.passed]
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = "; ".join(str(e.step_failure_data.error.message).strip() for e in failures) or "run failed"
    return RunOutcome(name, result.run_id, result.success, time.monotonic() - started, label, error, failed_checks)


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, landing: LandingZone, start: str | None,
           end: str | None, report: Callable[[str], None] = print) -> list[RunOutcome]:
    """Rebuild items and users, then ingest every landed day in [start, end] in as few runs as possible."""
    days = register_event_days(instance, landing, start, end)
    for entry in landing.misnamed_event_folders():
        report(f"  skipped landing/events/{entry}: not a date=YYYY-MM-DD folder")
    outcomes = [_reported(run_job(defs, "ingest_dimensions", instance), report)]
    ranges = contiguous_ranges(instance.get_dynamic_partitions(event_days.name), days)
    for first, last in ranges:
        tags = {RANGE_START_TAG: first, RANGE_END_TAG: last}
        label = first if first == last else f"{first}..{last}"
        outcomes.append(_reported(run_job(defs, "ingest_events", instance, tags, label), report))
    if not days:
        report("  no event days landed yet: put files under landing/events/date=YYYY-MM-DD/ or run `portrait import`")
    return outcomes


def _reported(outcome: RunOutcome, report: Callable[[str], None]) -> RunOutcome:
    status = "ok" if outcome.success else "check failed, not published" if outcome.refused else "FAILED"
    where = f" [{outcome.partitions}]" if outcome.partitions else ""
    report(f"  {outcome.job}{where}: {status} in {outcome.seconds:.1f} s (run {outcome.run_id[:8]})")
    for check in outcome.failed_checks:
        report(f"    failed check {check} (numbers in the UI: Assets, then the asset's Checks tab)")
    if outcome.error and not outcome.refused:
        report(f"    {outcome.error}")
    return outcome


def build_downstream(defs: dg.Definitions, instance: dg.DagsterInstance, training: dict | None,
                     train_recommender: bool = False, report: Callable[[str], None] = print) -> list[RunOutcome]:
    """Train the behaviour model when `training` (its config) is given, then embed texts,
    rebuild item vectors and text signals, update the portraits, retrain the recommender
    when asked (it is heavy: the nightly schedule does it otherwise), rewrite recommendations
    with the published model, and publish the serving snapshot."""
    outcomes = []
    if training is not None:
        config = {"ops": {"behavior_model": {"config": training}}}
        outcomes.append(_reported(run_job(defs, "train_behavior_model", instance, run_config=config), report))
    outcomes.append(_reported(run_job(defs, "build_language_model", instance), report))
    if outcomes[-1].success:
        outcomes.append(_reported(run_job(defs, "build_portraits", instance), report))
    if train_recommender and outcomes[-1].success:
        outcomes.append(_reported(run_job(defs, "train_recommender", instance), report))
    if outcomes[-1].success or outcomes[-1].refused:
        outcomes.append(_reported(run_job(defs, "recommend", instance), report))
    # last, so the API switches to everything built above at once; after a failure it keeps the previous snapshot
    if all(o.success or o.refused for o in outcomes):
        outcomes.append(_reported(run_job(defs, "publish_serving", instance), report))
    return outcomes

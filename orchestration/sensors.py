"""Automation: the landing sensor, declarative automation downstream, schedules for training.

- `landing_sensor` watches the landing zone. For every event day whose files are new or
  changed (by path, size and modification time) it adds the day's partition if needed and
  requests one `ingest_events` run per contiguous range of changed days; a change under
  `items/` or `users/` requests `ingest_dimensions`. Its cursor (the files' fingerprints)
  lives in the instance, so it survives restarts; run keys carry the fingerprints, so a
  file is processed once and a rewritten file again.
- Everything after ingestion follows by declarative automation (`assets.automation.AUTOMATION`,
  an eager condition on each downstream asset) evaluated by `portrait_automation`.
- Fine-tuning the behaviour model and retraining the recommender are heavy: they run on
  schedules (weekly and nightly), and their blocking checks still decide whether a new
  model is published.
"""

import hashlib
import json
import os

import dagster as dg

from assets.partitions import event_days
from orchestration.jobs import dimensions_job, events_job, recommender_job, training_job
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG, contiguous_ranges
from resources.landing import LandingZone, is_readable

LANDING_INTERVAL_S = 30
AUTOMATION_INTERVAL_S = 10  # cheap to evaluate; each tick saved is felt in land-to-portrait latency
FINE_TUNE_CRON = os.environ.get("PORTRAIT_FINE_TUNE_CRON", "0 3 * * 0")  # Sundays, 03:00 UTC
RETRAIN_CRON = os.environ.get("PORTRAIT_RETRAIN_CRON", "0 2 * * *")  # nightly, 02:00 UTC


def fingerprints(landing: LandingZone) -> dict[str, str]:
    """`relative path -> size:mtime_ns` of every readable landed file (events, items, users)."""
    files = [p for day in landing.event_days() for p in landing.event_files(day)]
    files += landing.dimension_files("items") + landing.dimension_files("users")
    found = {}
    for path in files:
        if not is_readable(path):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed between listing and reading: the next tick sees the truth
            continue
        found[landing.relative(path)] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return found


def _day_of(relative: str) -> str | None:
    parts = relative.split("/")
    return parts[1][len("date="):] if parts[0] == "events" and len(parts) == 3 else None


def changes(previous: dict[str, str], current: dict[str, str]) -> tuple[set[str], bool]:
    """(event days whose files were added, changed or removed; whether items/users changed)."""
    touched = {path for path in previous.keys() | current.keys() if previous.get(path) != current.get(path)}
    days = {day for path in touched if (day := _day_of(path))}
    return days, any(_day_of(path) is None for path in touched)


def _digest(current: dict[str, str], keep) -> str:
    chosen = sorted((path, print_) for path, print_ in current.items() if keep(path))
    return hashlib.md5(json.dumps(chosen).encode()).hexdigest()[:12]


@dg.sensor(
    name="landing_sensor",
    jobs=[events_job, dimensions_job],
    minimum_interval_seconds=LANDING_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Ingests new or changed landing files: one run per contiguous range of changed days, "
                "and the dimensions when items/ or users/ change.",
)
def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingZone) -> dg.SensorResult:
    current = fingerprints(landing)
    known = context.instance.get_dynamic_partitions(event_days.name)
    if context.cursor:
        days, dimensions = changes(json.loads(context.cursor), current)
    else:
        # First tick: days never loaded are new; loaded ones are taken as they stand
        # (`portrait run` reloads everything on demand).
        loaded = context.instance.get_materialized_partitions(dg.AssetKey("events"))
        days = {d for path in current if (d := _day_of(path)) and d not in loaded}
        dimensions = not context.instance.get_latest_materialization_event(dg.AssetKey("items"))
    landed = set(landing.event_days())
    new_days = sorted(d for d in days & landed if d not in known)
    requests = []
    if dimensions:
        digest = _digest(current, lambda p: _day_of(p) is None)
        requests.append(dg.RunRequest(run_key=f"dimensions:{digest}", job_name=dimensions_job.name))
    for first, last in contiguous_ranges(list(known) + new_days, days & landed):
        digest = _digest(current, lambda p, a=first, b=last: (d := _day_of(p)) is not None and a <= d <= b)
        requests.append(dg.RunRequest(run_key=f"events:{first}:{last}:{digest}", job_name=events_job.name,
                                      tags={RANGE_START_TAG: first, RANGE_END_TAG: last}))
    if requests:
        context.log.info(f"{len(days)} day(s) changed, dimensions {'changed' if dimensions else 'unchanged'}: "
                         f"{len(requests)} run(s) requested")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[event_days.build_add_request(new_days)] if new_days else [],
        cursor=json.dumps(current, sort_keys=True),
    )


automation_sensor = dg.AutomationConditionSensorDefinition(
    "portrait_automation",
    target=dg.AssetSelection.all(),
    minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Materializes the language-model and portrait assets after new data lands.",
)

fine_tune_schedule = dg.ScheduleDefinition(
    name="weekly_fine_tune",
    job=training_job,
    cron_schedule=FINE_TUNE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Fine-tunes the behaviour model (cron from PORTRAIT_FINE_TUNE_CRON); the new version is "
                "published only if its blocking check passes.",
)

retrain_schedule = dg.ScheduleDefinition(
    name="nightly_recommender",
    job=recommender_job,
    cron_schedule=RETRAIN_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-evaluates and retrains the recommender and rewrites recommendations (cron from "
                "PORTRAIT_RETRAIN_CRON); the new model is published only if its blocking check passes.",
)

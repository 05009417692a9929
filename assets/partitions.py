"""Event days as dynamic partitions.

The partition set follows the landed data, not a start date fixed in code: a shop's
history may start in 2004 (the Amazon reviews do) or last week. `portrait run` adds a
partition for every `landing/events/date=YYYY-MM-DD/` folder before it runs.
Keys are UTC days, `YYYY-MM-DD`, so they sort as dates.
"""

import warnings
from datetime import date

import dagster as dg

event_days = dg.DynamicPartitionsDefinition(name="event_days")

# A range of days runs as one run: the Amazon reviews alone span thousands of days.
# Dagster marks `backfill_policy` as beta; the choice is deliberate, the notice is noise.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
SINGLE_RUN = dg.BackfillPolicy.single_run()


def day_keys(context: dg.AssetExecutionContext) -> list[str]:
    """The run's partition keys, each checked to be a `YYYY-MM-DD` day."""
    keys = list(context.partition_keys)
    bad = [k for k in keys if not _is_day(k)]
    if bad:
        raise dg.Failure(
            f"partition keys {bad[:5]} are not YYYY-MM-DD days; remove them from the '{event_days.name}' "
            "partitions in the UI (or with `dagster instance`) and land files under landing/events/date=YYYY-MM-DD/"
        )
    return keys


def _is_day(key: str) -> bool:
    try:
        return date.fromisoformat(key).isoformat() == key
    except ValueError:
        return False

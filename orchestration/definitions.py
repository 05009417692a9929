"""The Portrait code location: every asset, check, job and resource, in one Definitions."""

from __future__ import annotations

import dagster as dg

from assets.dimensions import items, users
from assets.events import validate_events
from assets.raw_events import raw_events
from orchestration.jobs import dimensions_job, events_job
from resources.home import landing_path, warehouse_path
from resources.landing import LandingZone
from resources.warehouse import Warehouse


def build_defs() -> dg.Definitions:
    """Definitions whose resources are rooted at `PORTRAIT_HOME` as it is now."""
    return dg.Definitions(
        assets=[raw_events, validate_events, items, users],
        jobs=[events_job, dimensions_job],
        resources={
            "warehouse": Warehouse(path=str(warehouse_path())),
            "landing": LandingZone(root=str(landing_path())),
        },
    )


defs = build_defs()

"""The Portrait code location: every asset, check, job and resource, in one Definitions."""

from __future__ import annotations

import os
import warnings

import dagster as dg

from assets.behavior_model import behavior_model
from assets.dimensions import items, users
from assets.embeddings import item_embeddings, text_embeddings
from assets.events import validate_events
from assets.profiles import user_profiles
from assets.propensity import purchase_propensity
from assets.raw_events import raw_events
from assets.recommendations import recommendations
from assets.recommender_evaluation import recommender_evaluation
from assets.recommender_model import lightfm_model
from assets.recsys_dataset import recsys_dataset
from assets.search import search_index
from assets.segments import user_segments
from assets.serving_snapshot import serving_snapshot
from assets.summaries import user_summaries
from assets.text_signals import text_signals
from orchestration.jobs import (
    dimensions_job,
    events_job,
    language_job,
    portraits_job,
    recommendations_job,
    recommender_job,
    serving_job,
    training_job,
)
from orchestration.sensors import automation_sensor, fine_tune_schedule, landing_sensor, retrain_schedule
from resources.encoder import TextEncoder
from resources.home import landing_path, models_path, serving_path, warehouse_path
from resources.landing import LandingZone
from resources.model_store import ModelStore
from resources.snapshots import SnapshotStore
from resources.text_generator import TextGenerator
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse


def _with_code_references() -> list[dg.AssetsDefinition]:
    """Every asset, each linked to the file and line that defines it (the UI's "Code" link).
    Dagster 1.13 marks code references beta; the warning says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.with_source_code_references([
            raw_events, validate_events, items, users, text_embeddings, item_embeddings, behavior_model,
            text_signals, user_profiles, purchase_propensity, user_summaries, user_segments, recsys_dataset,
            recommender_evaluation, lightfm_model, recommendations, serving_snapshot, search_index])


def build_defs(executor: dg.ExecutorDefinition = dg.in_process_executor) -> dg.Definitions:
    """Definitions whose resources are rooted at `PORTRAIT_HOME` as it is now.

    The torch device comes from `PORTRAIT_DEVICE` / `PORTRAIT_PRECISION` (default auto);
    run config in the launchpad overrides any resource setting for one run. `executor` is
    replaced only by the scale-out configuration (orchestration/celery.py).
    """
    return dg.Definitions(
        assets=_with_code_references(),
        jobs=[events_job, dimensions_job, language_job, training_job, portraits_job, recommender_job, recommendations_job,
              serving_job],
        sensors=[landing_sensor, automation_sensor],
        # Steps run one after another in the run's own process: the warehouse takes one writer
        # at a time, so step processes would only queue on its lock, each after ~5 s of imports.
        executor=executor,
        schedules=[fine_tune_schedule, retrain_schedule],
        resources={
            "warehouse": Warehouse(path=str(warehouse_path())),
            "landing": LandingZone(root=str(landing_path())),
            "device": TorchDevice(device=os.environ.get("PORTRAIT_DEVICE", "auto"),
                                  precision=os.environ.get("PORTRAIT_PRECISION", "auto")),
            "encoder": TextEncoder(),
            "model_store": ModelStore(root=str(models_path())),
            "snapshots": SnapshotStore(root=str(serving_path())),
            "generator": TextGenerator(model_path=os.environ.get("PORTRAIT_GENERATOR", "")),
        },
    )


defs = build_defs()

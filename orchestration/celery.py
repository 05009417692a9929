"""The scale-out configuration: Portrait's Definitions with every step run as a Celery task.

The assets, jobs, sensors and resources are those of `orchestration.definitions`; only the
executor differs, so a run behaves the same wherever its steps land. The assets that take the
`device` resource carry the op tag `dagster-celery/queue: gpu` (assets/automation.py), so
their steps wait on the `gpu` queue for GPU workers and every other step goes to the default
`dagster` queue.

Workers do not load this module by name: each Celery task carries a pointer to the run's job
(this module's `defs`), and the worker imports it from there. Start them with
`dagster-celery worker start -A dagster_celery.app -y celery.yaml -q dagster` (or `-q gpu`),
with the same code, `PORTRAIT_HOME` and Dagster instance as the process that launches runs.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_celery import celery_executor

from orchestration.definitions import build_defs

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def celery_config(_: object) -> dict[str, str]:
    """Broker and result backend: `PORTRAIT_CELERY_BROKER` and `PORTRAIT_CELERY_BACKEND`.

    Read when a run's config is resolved, not at import, so the environment of the process
    that starts the run decides. The backend defaults to the broker's URL: Redis keeps
    results apart from queued tasks by key prefix.
    """
    broker = os.environ.get("PORTRAIT_CELERY_BROKER", DEFAULT_BROKER)
    return {"broker": broker, "backend": os.environ.get("PORTRAIT_CELERY_BACKEND", broker)}


def build_celery_defs() -> dg.Definitions:
    """`build_defs()` with the Celery executor in place of the in-process one."""
    return build_defs(executor=celery_executor.configured(celery_config))


defs = build_celery_defs()

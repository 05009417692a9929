"""Where Portrait keeps its state: one folder, `PORTRAIT_HOME`, holds everything."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_HOME = ".portrait"
INSTANCE_TEMPLATE = Path(__file__).resolve().parent.parent / "orchestration" / "dagster.yaml"


def portrait_home() -> Path:
    """`PORTRAIT_HOME`, or `.portrait/` in the working directory."""
    return Path(os.environ.get("PORTRAIT_HOME", DEFAULT_HOME)).resolve()


def warehouse_path(home: Path | None = None) -> Path:
    return (home or portrait_home()) / "warehouse.duckdb"


def landing_path(home: Path | None = None) -> Path:
    return (home or portrait_home()) / "landing"


def models_path(home: Path | None = None) -> Path:
    return (home or portrait_home()) / "models"


def serving_path(home: Path | None = None) -> Path:
    """Published snapshots for the API (see resources/snapshots.py)."""
    return (home or portrait_home()) / "serving"


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Point `DAGSTER_HOME` at `PORTRAIT_HOME/dagster` unless the user set it.

    Runs launched from the command line and from `make ui` then share one instance,
    so every run shows up in the UI. The project's `dagster.yaml` is copied in once;
    edits made in the instance folder afterwards are kept.
    """
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    dagster_home = (home or portrait_home()) / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home

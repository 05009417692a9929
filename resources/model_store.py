"""Versioned model folders under `PORTRAIT_HOME/models/<name>/<version>/`, with a model card.

A version is written whole into its own folder; `publish` then points `<name>/LATEST`
at it with an atomic rename. A model whose blocking check fails is saved but never
published, so readers keep getting the previous one.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

LATEST = "LATEST"
CARD = "model_card.json"


class ModelStore(dg.ConfigurableResource):
    root: str

    def new_version(self, name: str) -> Path:
        """An empty folder for a new version, named by UTC time (sortable, unique per second)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        folder = Path(self.root) / name / stamp
        suffix = 1
        while folder.exists():
            suffix += 1
            folder = Path(self.root) / name / f"{stamp}-{suffix}"
        folder.mkdir(parents=True)
        return folder

    def write_card(self, folder: Path, card: dict) -> Path:
        path = folder / CARD
        path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def read_card(self, folder: Path) -> dict:
        return json.loads((folder / CARD).read_text())

    def publish(self, name: str, folder: Path) -> None:
        """Make `folder` the version readers get."""
        base = Path(self.root) / name
        fd, tmp = tempfile.mkstemp(prefix=".latest", dir=base)
        with os.fdopen(fd, "w") as handle:
            handle.write(folder.name + "\n")
        os.replace(tmp, base / LATEST)

    def latest(self, name: str) -> Path | None:
        """The published version of `name`, or None if none was ever published."""
        pointer = Path(self.root) / name / LATEST
        if not pointer.exists():
            return None
        return Path(self.root) / name / pointer.read_text().strip()

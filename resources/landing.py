"""The landing zone: the folder other tools write raw files into (see docs/data-contract.md)."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import IO, Iterator

import dagster as dg

DAY_FOLDER = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
READABLE_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet", ".jsonl.gz", ".ndjson.gz", ".csv.gz")


def is_landing_file(path: Path) -> bool:
    """Files whose name starts with `.` or `_` are in-progress writes or markers, never data."""
    return path.is_file() and not path.name.startswith((".", "_"))


def is_readable(path: Path) -> bool:
    return path.name.lower().endswith(READABLE_SUFFIXES)


class LandingZone(dg.ConfigurableResource):
    """`landing/events/date=YYYY-MM-DD/*`, `landing/items/*`, `landing/users/*`."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)

    def event_days(self) -> list[str]:
        """Day keys of every well-named `events/date=YYYY-MM-DD` folder, sorted."""
        events = self.path / "events"
        if not events.is_dir():
            return []
        days = []
        for folder in events.iterdir():
            match = DAY_FOLDER.match(folder.name)
            if folder.is_dir() and match and _is_calendar_day(match.group(1)):
                days.append(match.group(1))
        return sorted(days)

    def misnamed_event_folders(self) -> list[str]:
        """Entries under `events/` that are not `date=YYYY-MM-DD` folders: never read, always reported."""
        events = self.path / "events"
        if not events.is_dir():
            return []
        return sorted(
            entry.name
            for entry in events.iterdir()
            if not (entry.is_dir() and (m := DAY_FOLDER.match(entry.name)) and _is_calendar_day(m.group(1)))
        )

    def day_folder(self, day: str) -> Path:
        return self.path / "events" / f"date={day}"

    def event_files(self, day: str) -> list[Path]:
        return _files_in(self.day_folder(day))

    def dimension_files(self, table: str) -> list[Path]:
        """Files of `items/` or `users/`, in name order: later files override earlier rows."""
        return _files_in(self.path / table)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    @contextmanager
    def open_for_write(self, relative_path: str) -> Iterator[IO[str]]:
        """Write a landing file atomically: readers never see half of it.

        The text goes to a hidden temporary file beside the target, then is renamed.
        """
        target = self.path / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                yield handle
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _files_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_landing_file(p))


def _is_calendar_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True

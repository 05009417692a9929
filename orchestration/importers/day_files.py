"""Buffer converted source rows per UTC day and write them as landing files."""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from resources.landing import LandingZone


@dataclass
class ImportSummary:
    """What an import read and wrote; `malformed` rows were carried over as they were."""

    source: str
    rows_read: int = 0
    rows_written: int = 0
    malformed: int = 0
    days: int = 0
    items: int = 0
    files: list[str] = field(default_factory=list)


class DayFiles:
    """Lines grouped by the UTC day folder they belong in.

    A source row that cannot be converted has no trustworthy day; it goes, unchanged,
    into the day of the row before it (or the first good row's day), so ingestion reads
    it and quarantines it with a reason instead of it vanishing here.
    """

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = defaultdict(list)
        self._orphans: list[str] = []
        self._last_day: str | None = None

    def add(self, day: str, line: str) -> None:
        self._lines[day].append(line)
        self._last_day = day
        if self._orphans:
            self._lines[day][:0] = self._orphans
            self._orphans = []

    def add_malformed(self, line: str) -> None:
        if self._last_day is None:
            self._orphans.append(line)
        else:
            self._lines[self._last_day].append(line)

    def write(self, landing: LandingZone, file_name: str, header: str | None = None) -> list[str]:
        """Write one file per day; returns the paths written, relative to the landing zone."""
        if self._orphans:  # no good row at all: keep the rows where an operator will find them
            self._lines["1970-01-01"].extend(self._orphans)
            self._orphans = []
        written = []
        for day in sorted(self._lines):
            relative = f"events/date={day}/{file_name}"
            with landing.open_for_write(relative) as handle:
                if header is not None:
                    handle.write(header + "\n")
                for line in self._lines[day]:
                    handle.write(line + "\n")
            written.append(relative)
        return written

    @property
    def days(self) -> int:
        return len(self._lines)


def utc_day(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).date().isoformat()


def source_stem(path: Path) -> str:
    """`reviews_Musical_Instruments_5.json.gz` -> `reviews_Musical_Instruments_5`, safe as a file name."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "import"


def source_lines(path: Path) -> Iterator[str]:
    """The non-blank lines of a source file, gzip or not, without their line ends.

    Bytes that are not UTF-8 are escaped (`\\xff`): the line can then be written to a
    landing file, where ingestion quarantines it.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
            if line.strip():
                yield line

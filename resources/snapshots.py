"""Serving snapshots under `PORTRAIT_HOME/serving/<UTC stamp>/`: read-only copies for the API.

DuckDB admits one writing process per file, and a reader of the live warehouse would
hold pipeline runs back (or be refused by them). The serving tables are therefore copied
into a brand-new DuckDB file per publication; `serving/CURRENT` names the folder readers
should open and is replaced atomically (temp file + rename), so a reader sees the old
snapshot or the new one, never half of one. The current and the previous snapshot are
kept: a reader that read the pointer just before a publication can still open what it
named. Everything older goes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb

CURRENT = "CURRENT"
DATABASE = "serving.duckdb"
MANIFEST = "manifest.json"
LOCK = ".publish.lock"
#: The tables the API reads, each with the column it is looked up by (ordered and indexed on it).
SERVING_TABLES = {
    "user_profiles": "user_id",  # a view in the warehouse, a table in the snapshot
    "recommendations": "user_id",
    "items": "item_id",
    "item_embeddings": "item_id",
    "user_segments": "user_id",
    "segments": "segment_id",
    "user_summaries": "user_id",
    "user_propensity": "user_id",
}
_ATTACHED = "serving_snapshot"


@dataclass(frozen=True)
class Snapshot:
    """One published snapshot: its folder and what its manifest says."""

    folder: Path
    manifest: dict

    @property
    def stamp(self) -> str:
        return self.folder.name

    @property
    def database(self) -> Path:
        return self.folder / DATABASE

    @property
    def tables(self) -> dict[str, int]:
        """Table -> rows, for the serving tables the warehouse had when it was published."""
        return self.manifest["tables"]

    @property
    def search_index(self) -> Path | None:
        """The published `search_index` model-store version at publication time, if there was one."""
        path = self.manifest.get("search_index")
        return Path(path) if path else None


@dataclass(frozen=True)
class Publication:
    snapshot: Snapshot
    previous: str | None  # the snapshot CURRENT named before, kept unless asked otherwise
    deleted: list[str]  # snapshot folders removed


class SnapshotStore(dg.ConfigurableResource):
    """The serving folder: snapshots, the `CURRENT` pointer, and the lock publishers share."""

    root: str

    def publish(self, con: duckdb.DuckDBPyConnection, search_index: Path | None, source_run: str | None,
                published_by: str, keep_previous: bool = True) -> Publication:
        """Copy the serving tables `con` (a warehouse connection, read-only is enough) holds into a
        new snapshot, point `CURRENT` at it, then delete every other snapshot but the previous one
        (or that one too, with `keep_previous=False`: an erasure must leave no copy behind).

        Publishers take a file lock, so one never deletes a folder another is still writing.
        """
        root = Path(self.root)
        with _exclusive(root / LOCK):
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            folder = root / stamp
            folder.mkdir()
            tables = copy_tables(con, folder / DATABASE)
            manifest = {
                "stamp": stamp,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "published_by": published_by,
                "source_run": source_run,
                "tables": tables,
                "missing_tables": [t for t in SERVING_TABLES if t not in tables],
                "search_index": str(search_index) if search_index else None,
            }
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            previous = self.current_name()
            _write_atomically(root / CURRENT, stamp + "\n")
            keep = {stamp} | ({previous} if keep_previous and previous else set())
            deleted = []
            for entry in sorted(self.folders()):
                if entry.name not in keep:
                    shutil.rmtree(entry)
                    deleted.append(entry.name)
        return Publication(Snapshot(folder, manifest), previous, deleted)

    def folders(self) -> list[Path]:
        """Every snapshot folder, published or left half-written by a publisher that died."""
        root = Path(self.root)
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []

    def current_name(self) -> str | None:
        pointer = Path(self.root) / CURRENT
        return pointer.read_text().strip() if pointer.exists() else None

    def current(self) -> Snapshot | None:
        """The snapshot `CURRENT` names, or None if nothing was ever published."""
        name = self.current_name()
        if name is None:
            return None
        folder = Path(self.root) / name
        return Snapshot(folder, json.loads((folder / MANIFEST).read_text()))

    def pointer_version(self) -> tuple[int, int, int] | None:
        """Changes whenever `CURRENT` is replaced (one `stat`), so readers can poll it per request."""
        try:
            stat = (Path(self.root) / CURRENT).stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size


def copy_tables(con: duckdb.DuckDBPyConnection, target: Path) -> dict[str, int]:
    """CREATE TABLE ... AS SELECT each serving table `con` has (views become tables) into a new
    DuckDB file, ordered by and indexed on its lookup column; returns table -> rows."""
    present = {name for (name,) in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_catalog = current_database()").fetchall()}
    columns = {(t, c) for t, c in con.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
        "AND table_catalog = current_database()").fetchall()}
    escaped = str(target).replace("'", "''")
    con.execute(f"ATTACH '{escaped}' AS {_ATTACHED} (READ_WRITE)")  # writable even beside a read-only warehouse
    rows = {}
    try:
        for table, key in SERVING_TABLES.items():
            if table not in present:
                continue
            keyed = (table, key) in columns
            order = f' ORDER BY "{key}"' if keyed else ""
            con.execute(f'CREATE TABLE {_ATTACHED}."{table}" AS SELECT * FROM main."{table}"{order}')
            if keyed:  # point lookups by id then cost well under a millisecond on 100,000 rows
                con.execute(f'CREATE INDEX "{table}_{key}" ON {_ATTACHED}."{table}" ("{key}")')
            rows[table] = con.execute(f'SELECT count(*) FROM {_ATTACHED}."{table}"').fetchall()[0][0]
    finally:
        con.execute(f"DETACH {_ATTACHED}")
    with open(target, "rb") as handle:  # on disk before any pointer names it
        os.fsync(handle.fileno())
    return rows


def user_rows(snapshot: Snapshot, user_id: str) -> dict[str, int]:
    """Rows of one user per table of a snapshot (tables with a `user_id` column)."""
    with duckdb.connect(str(snapshot.database), read_only=True) as con:
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.columns WHERE column_name = 'user_id' "
            "AND table_catalog = current_database() ORDER BY table_name").fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM "{t}" WHERE user_id = ?', [user_id]).fetchall()[0][0]
                for t in tables}


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".current", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the snapshots beside it are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

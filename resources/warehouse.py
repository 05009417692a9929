"""The DuckDB warehouse as a Dagster resource."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb


class Warehouse(dg.ConfigurableResource):
    """One DuckDB file holding every Portrait table.

    DuckDB lets one process write a file at a time; a second process gets a lock
    error when it connects. Connections therefore retry for `lock_timeout_s` before
    giving up, so overlapping runs wait for each other instead of failing.
    Sessions run in UTC: every timestamp in the warehouse is UTC.
    """

    path: str
    lock_timeout_s: float = 300.0
    threads: int = 0  # 0 lets DuckDB use every core

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = self._connect_with_retry(read_only)
        try:
            con.execute("SET TimeZone = 'UTC'")
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: all of its writes land, or none do."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _connect_with_retry(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only)
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)


def table_exists(con: duckdb.DuckDBPyConnection, name: str, views: bool = False) -> bool:
    """Whether a table of that name exists, temporary tables included (and views, with `views`)."""
    sql = "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?"
    if views:
        sql = f"SELECT ({sql}) + (SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal)"
    return bool(con.execute(sql, [name, name] if views else [name]).fetchall()[0][0])


def vector_dimension(con: duckdb.DuckDBPyConnection, table: str, column: str = "vector") -> int | None:
    """The size of a fixed-size array column (`FLOAT[384]` -> 384), or None when there is none."""
    rows = con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                       [table, column]).fetchall()
    if not rows or not rows[0][0].endswith("]"):
        return None
    return int(rows[0][0].rsplit("[", 1)[1].rstrip("]"))

"""`raw_events`: every row of a day's landing files, as read, before any validation."""

from dataclasses import dataclass, field

import dagster as dg
import duckdb

from assets.automation import LANDING_RETRY, WAREHOUSE_POOL
from assets.landing_files import LandingFileError, insert_landing_file
from assets.metadata import markdown_table
from assets.partitions import SINGLE_RUN, day_keys, event_days
from assets.table_checks import RECONCILES, shape_checks, table_check_specs
from resources.landing import LandingZone, is_readable
from resources.warehouse import Warehouse

RAW_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS raw_events (
    event_date DATE NOT NULL,        -- the partition: the day folder the file landed in
    source_file VARCHAR NOT NULL,    -- path under landing/
    line_no BIGINT NOT NULL,         -- 1-based line (CSV: the row's first line)
    -- the row as a JSON object text, or its text if unreadable. Stored uncompressed: DuckDB's
    -- string compression halves ingest speed on this column, which is read once per load.
    record VARCHAR NOT NULL USING COMPRESSION uncompressed,
    read_error VARCHAR,              -- invalid_utf8, wrong_field_count, bad_csv
    ingested_at TIMESTAMP NOT NULL
)
"""

RAW_EVENTS_COLUMNS = {"event_date": "DATE", "source_file": "VARCHAR", "line_no": "BIGINT", "record": "VARCHAR",
                      "read_error": "VARCHAR", "ingested_at": "TIMESTAMP"}


@dataclass
class RawLoad:
    """What one load read: rows per file, and what it skipped and why."""

    rows_by_file: dict[str, int] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)
    vanished_files: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_file.values())


def load_raw_events(con: duckdb.DuckDBPyConnection, landing: LandingZone, days: list[str]) -> RawLoad:
    """Replace the raw rows of `days` with what their landing folders hold now.

    Runs inside the caller's transaction, so a failure leaves the previous rows.
    """
    con.execute(RAW_EVENTS_DDL)
    con.execute("DELETE FROM raw_events WHERE event_date IN (SELECT unnest(?::DATE[]))", [days])
    load = RawLoad()
    for day in days:
        for path in landing.event_files(day):
            name = landing.relative(path)
            if not is_readable(path):
                load.ignored_files.append(name)
                continue
            try:
                rows = _insert_file(con, path, name, day)
            except FileNotFoundError:
                load.vanished_files.append(name)  # removed after listing: nothing of it is in the warehouse
                continue
            load.rows_by_file[name] = rows
    return load


def _insert_file(con: duckdb.DuckDBPyConnection, path, name: str, day: str) -> int:
    return insert_landing_file(
        con, path,
        "INSERT INTO raw_events SELECT ?::DATE, ?, line_no, record, read_error, current_timestamp::TIMESTAMP FROM {rows}",
        [day, name],
    )


@dg.asset(
    pool=WAREHOUSE_POOL,
    retry_policy=LANDING_RETRY,
    partitions_def=event_days,
    backfill_policy=SINGLE_RUN,
    group_name="ingest",
    kinds={"duckdb"},
    owners=["team:portrait"],
    check_specs=table_check_specs("raw_events", key="source_file, line_no",
                                  reconcile="Rows stored for the run's days equal the rows read from their files."),
)
def raw_events(context: dg.AssetExecutionContext, warehouse: Warehouse, landing: LandingZone) -> dg.MaterializeResult:
    """Every row of each day's landing files, read as it is: the lossless copy that
    validation works from. A re-run of a day replaces that day. Texts here are not yet
    masked; only ingestion reads this table."""
    days = day_keys(context)
    try:
        with warehouse.transaction() as con:
            load = load_raw_events(con, landing, days)
            stored = _stored_rows(con, days)
            checks = shape_checks(con, "raw_events", "raw_events", RAW_EVENTS_COLUMNS,
                                  {"record": "record IS NULL", "line_no": "line_no IS NULL"}, key="source_file, line_no",
                                  scope="event_date IN (SELECT unnest(?::DATE[]))", scope_params=[days])
    except LandingFileError as error:
        raise dg.Failure(str(error), allow_retries=error.transient) from error
    for name in load.ignored_files:
        context.log.warning(f"ignored {name}: not a .jsonl, .ndjson, .csv or .parquet file (optionally .gz)")
    for name in load.vanished_files:
        context.log.warning(f"{name} disappeared between listing and reading; it was not loaded")
    files = [{"file": name, "rows": rows} for name, rows in load.rows_by_file.items()]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stored,
            "days": len(days),
            "files": len(files),
            "files_read": dg.MetadataValue.md(markdown_table(files, max_rows=20)),
            "ignored_files": load.ignored_files[:50],
            "vanished_files": load.vanished_files[:50],
        },
        check_results=[*checks, dg.AssetCheckResult(
            check_name=RECONCILES, passed=stored == load.rows, metadata={"rows_read": load.rows, "rows_stored": stored},
        )],
    )


def _stored_rows(con: duckdb.DuckDBPyConnection, days: list[str]) -> int:
    return con.execute(
        "SELECT count(*) FROM raw_events WHERE event_date IN (SELECT unnest(?::DATE[]))", [days]
    ).fetchone()[0]

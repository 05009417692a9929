"""`raw_events`: every row of a day's landing files, as read, before any validation."""

from dataclasses import dataclass, field

import dagster as dg
import duckdb

from assets.automation import LANDING_RETRY, WAREHOUSE_POOL
from assets.erasure import ErasedRows, LandingRewrite, erase_rows, rewrite_landing_files
from assets.landing_files import UNREADABLE_FILE, LandingFileError, insert_landing_file
from assets.metadata import markdown_table
from assets.partitions import SINGLE_RUN, day_keys, event_days
from assets.table_checks import RECONCILES, shape_checks, table_check_specs
from resources.landing import LandingZone, is_readable
from resources.warehouse import Warehouse

RAW_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS raw_events (
    event_date DATE NOT NULL,        -- the partition: the day folder the file landed in
    source_file VARCHAR NOT NULL,    -- path under landing/
    line_no BIGINT NOT NULL,         -- 1-based line (CSV: the row's first line); 0: the whole file
    -- the row as a JSON object text, or its text if unreadable; for a file that cannot be read
    -- at all (line 0), what is wrong with it. Stored uncompressed: DuckDB's string compression
    -- halves ingest speed on this column, which is read once per load.
    record VARCHAR NOT NULL USING COMPRESSION uncompressed,
    -- invalid_utf8, wrong_field_count, bad_csv, unreadable_file; erased: a row of a user erased by
    -- `portrait forget`, kept without its record so the counts reconcile (assets/erasure.py)
    read_error VARCHAR,
    ingested_at TIMESTAMP NOT NULL
)
"""

RAW_EVENTS_COLUMNS = {"event_date": "DATE", "source_file": "VARCHAR", "line_no": "BIGINT", "record": "VARCHAR",
                      "read_error": "VARCHAR", "ingested_at": "TIMESTAMP"}


@dataclass
class RawLoad:
    """What one load read: rows per file, and what it skipped or could not read, and why.

    `unreadable_files` (file -> what is wrong) are stored as one `unreadable_file` row each.
    `erased` are the rows of erased users, stored empty; `landing_rewrite` the files rewritten without them."""

    rows_by_file: dict[str, int] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)
    vanished_files: list[str] = field(default_factory=list)
    unreadable_files: dict[str, str] = field(default_factory=dict)
    erased: ErasedRows = field(default_factory=ErasedRows)
    landing_rewrite: LandingRewrite = field(default_factory=LandingRewrite)

    @property
    def rows(self) -> int:
        """Raw rows stored: every row read, and one per unreadable file."""
        return sum(self.rows_by_file.values()) + len(self.unreadable_files)


def load_raw_events(con: duckdb.DuckDBPyConnection, landing: LandingZone, days: list[str]) -> RawLoad:
    """Replace the raw rows of `days` with what their landing folders hold now.

    Runs inside the caller's transaction, so a failure leaves the previous rows. A file that
    cannot be read at all is all or nothing: whatever of it was inserted is deleted, and one
    row (line 0, `read_error` `unreadable_file`, the problem as its record) stands for it, so
    that validation quarantines it and the day's other files still load. A transient
    operating-system error still raises, for the retry policy.

    Rows of users erased by `portrait forget` (a file delivered again, a backfill) keep their
    place but lose their record (`read_error` `erased`), and their landing files are rewritten
    without them.
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
            except LandingFileError as error:
                if error.transient:
                    raise
                _replace_with_unreadable_row(con, name, day, error.problem)
                load.unreadable_files[name] = error.problem
                continue
            load.rows_by_file[name] = rows
    load.erased = erase_rows(con, "raw_events", "event_date IN (SELECT unnest(?::DATE[]))", [days], keep_empty_rows=True)
    if load.erased.rows:
        load.landing_rewrite = rewrite_landing_files(landing.path, load.erased)
    return load


def _replace_with_unreadable_row(con: duckdb.DuckDBPyConnection, name: str, day: str, problem: str) -> None:
    """Drop the rows of `name` inserted before its read failed; store the one row that stands for it."""
    con.execute("DELETE FROM raw_events WHERE event_date = ?::DATE AND source_file = ?", [day, name])
    con.execute("INSERT INTO raw_events (event_date, source_file, line_no, record, read_error, ingested_at) "
                "VALUES (?::DATE, ?, 0, ?, ?, current_timestamp::TIMESTAMP)",
                [day, name, problem, UNREADABLE_FILE])


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
                                  reconcile="Rows stored for the run's days equal the rows read from their files "
                                            "(one for each file that cannot be read at all)."),
)
def raw_events(context: dg.AssetExecutionContext, warehouse: Warehouse, landing: LandingZone) -> dg.MaterializeResult:
    """Every row of each day's landing files, read as it is: the lossless copy that
    validation works from. A re-run of a day replaces that day. A file that cannot be read
    at all is one `unreadable_file` row (line 0), which validation quarantines; the day's
    other files still load. Texts here are not yet masked; only ingestion reads this table."""
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
    for name, problem in load.unreadable_files.items():
        context.log.warning(f"{name} cannot be read at all ({problem}); none of its rows were loaded and it is "
                            "quarantined as unreadable_file. Re-deliver the file: the day is re-ingested when it changes")
    for name, rows in load.erased.rows_by_file.items():
        if name in load.landing_rewrite.rows_by_file:
            done = f"the landing file was rewritten without them ({load.landing_rewrite.rows_by_file[name]:,} row(s) removed)"
        elif name in load.landing_rewrite.failed:
            done = f"the landing file could not be rewritten ({load.landing_rewrite.failed[name]}): remove them by hand"
        else:
            done = "the landing file is gone"
        context.log.warning(f"{name} holds {rows:,} row(s) of user(s) erased by `portrait forget` (delivered again?): "
                            f"none of them were loaded, {done}")
    files = [{"file": name, "rows": rows} for name, rows in load.rows_by_file.items()]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stored,
            "days": len(days),
            "files": len(files),
            "files_read": dg.MetadataValue.md(markdown_table(files, max_rows=20)),
            "ignored_files": load.ignored_files[:50],
            "vanished_files": load.vanished_files[:50],
            "unreadable_files": list(load.unreadable_files)[:50],
            "rows_erased": load.erased.rows,
            "landing_files_rewritten": dg.MetadataValue.md(markdown_table(
                [{"file": name, "rows_removed": rows} for name, rows in load.landing_rewrite.rows_by_file.items()]
                + [{"file": name, "rows_removed": f"failed: {why}"} for name, why in load.landing_rewrite.failed.items()],
                max_rows=20)),
        },
        check_results=[*checks, dg.AssetCheckResult(
            check_name=RECONCILES, passed=stored == load.rows,
            metadata={"rows_read": load.rows, "rows_stored": stored, "unreadable_files": len(load.unreadable_files),
                      "rows_erased": load.erased.rows},
        )],
    )


def _stored_rows(con: duckdb.DuckDBPyConnection, days: list[str]) -> int:
    return con.execute(
        "SELECT count(*) FROM raw_events WHERE event_date IN (SELECT unnest(?::DATE[]))", [days]
    ).fetchone()[0]

"""`portrait forget USER`: erase one user from the landing zone and the warehouse.

The landing zone is the source of truth, so erasure starts there: every data file that
holds rows of the user is rewritten without them. The warehouse then follows the files
the way it always does, by re-ingesting the affected days (and the dimensions) as real
Dagster runs; ingestion replaces a day whole, so raw_events, events, quarantine and
ingest_stats end exactly as if the user had never existed. Derived tables are not
re-derived: their rows of the user are deleted, in one transaction with the audit row.
Where the API has a published snapshot, a fresh one is published from the cleaned
warehouse and every older one deleted. See docs/privacy.md.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from assets.erasure import (
    AUDIT_TABLE,
    SALT_FILE,
    UserMatcher,
    count_user_rows,
    rewrite_without_user,
    user_hash,
)
from resources.home import ensure_dagster_home, landing_path, models_path, portrait_home, serving_path, warehouse_path
from resources.landing import DAY_FOLDER, LandingZone, is_readable
from resources.model_store import ModelStore
from resources.snapshots import DATABASE, Snapshot, SnapshotStore, user_rows
from resources.warehouse import Warehouse

if TYPE_CHECKING:
    from orchestration.runs import RunOutcome

ERASURE_AUDIT_DDL = f"""
CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
    erased_at TIMESTAMP NOT NULL,
    user_hash VARCHAR NOT NULL,        -- HMAC-SHA256 of the user id under $PORTRAIT_HOME/{SALT_FILE}
    reason VARCHAR,                    -- the operator's words, e-mails, phones and the id masked
    landing_rows_removed BIGINT NOT NULL,
    rows_by_table JSON NOT NULL,       -- table -> rows of the user deleted or no longer present
    runs VARCHAR[] NOT NULL,           -- the Dagster runs that re-ingested the cleaned files
    serving JSON                       -- the serving snapshot republished without the user; NULL if none existed
)
"""
#: Tables that hold user ids in a column not named `user_id` (table -> column). Every table
#: with a `user_id` column is found on its own, so new tables need no entry here.
OTHER_USER_COLUMNS: dict[str, str] = {}
#: Rebuilt from the landing files by re-ingestion; measured before and after, not deleted from.
#: Their raw rows carry the id inside a record text, which is why they are counted by mention.
RECORD_TABLES = ("raw_events", "quarantine")
#: Tagged on the re-ingest runs, so the UI links them to the audit row.
ERASURE_TAG = "portrait/erasure"


# --- the landing zone ----------------------------------------------------------------------------------------------


@dataclass
class FileErasure:
    """One landing file that holds rows of the user, and how many."""

    path: Path
    relative: str
    rows: int

    @property
    def day(self) -> str | None:
        """The event day the file belongs to, if it is one that ingestion reads."""
        parts = self.relative.split("/")
        if len(parts) == 3 and parts[0] == "events" and (match := DAY_FOLDER.match(parts[1])):
            return match.group(1)
        return None

    @property
    def dimension(self) -> bool:
        parts = self.relative.split("/")
        return len(parts) == 2 and parts[0] in ("items", "users")


@dataclass
class LandingScan:
    files: list[FileErasure] = field(default_factory=list)
    unreadable_mentions: list[str] = field(default_factory=list)  # files Portrait cannot rewrite that name the id
    broken: list[str] = field(default_factory=list)  # data files that cannot be read at all (corrupt gzip, Parquet)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


def scan_landing(landing: LandingZone, matcher: UserMatcher) -> LandingScan:
    """Count the user's rows in every data file under the landing zone, changing nothing.

    Every folder is searched, not only the ones ingestion reads: a copy under a misnamed
    day folder is personal data all the same. Files being written (`.`/`_` names) and
    files of unknown formats cannot be rewritten; those that name the id are reported.
    """
    scan = LandingScan()
    if not landing.path.is_dir():
        return scan
    for path in sorted(p for p in landing.path.rglob("*") if p.is_file()):
        relative = landing.relative(path)
        if path.name.startswith((".", "_")) or not is_readable(path):
            if _bytes_mention(path, matcher):
                scan.unreadable_mentions.append(relative)
            continue
        try:
            rows = count_user_rows(path, matcher)
        except (OSError, EOFError, ValueError, zlib.error) as error:  # ArrowInvalid is a ValueError
            scan.broken.append(f"{relative} ({type(error).__name__}: {error})")
            continue
        if rows:
            scan.files.append(FileErasure(path, relative, rows))
    return scan


def _bytes_mention(path: Path, matcher: UserMatcher) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return matcher.needle in data and matcher.mentions(data.decode("utf-8", "replace"))


# --- the warehouse -------------------------------------------------------------------------------------------------


def user_tables(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Every base table with a `user_id` column, plus `OTHER_USER_COLUMNS`: table -> column."""
    found = dict(con.execute("""
        SELECT table_name, column_name FROM information_schema.columns
        WHERE column_name = 'user_id' AND table_schema = 'main' AND table_catalog = current_database()
          AND table_name IN (SELECT table_name FROM information_schema.tables
                             WHERE table_type = 'BASE TABLE' AND table_schema = 'main'
                               AND table_catalog = current_database())
        ORDER BY table_name""").fetchall())
    existing = _tables(con)
    found.update({t: c for t, c in OTHER_USER_COLUMNS.items() if t in existing})
    return found


def footprint(con: duckdb.DuckDBPyConnection, matcher: UserMatcher) -> dict[str, int]:
    """Rows of the user per table: by id in user tables, by whole-token mention in raw records."""
    counts = {table: con.execute(f'SELECT count(*) FROM "{table}" WHERE trim(CAST("{column}" AS VARCHAR)) = ?',
                                 [matcher.user_id]).fetchone()[0]
              for table, column in user_tables(con).items()}
    existing = _tables(con)
    for table in RECORD_TABLES:
        if table in existing:
            counts[table] = con.execute(f"SELECT count(*) FROM {table} WHERE regexp_matches(record, ?)",
                                        [matcher.sql_pattern()]).fetchone()[0]
    return counts


def warehouse_days(con: duckdb.DuckDBPyConnection, matcher: UserMatcher) -> tuple[set[str], set[str]]:
    """(days already ingested, days whose warehouse rows still hold the user)."""
    existing = _tables(con)
    ingested: set[str] = set()
    holding: set[str] = set()
    pattern = matcher.sql_pattern()
    if "ingest_stats" in existing:
        ingested |= {d for (d,) in con.execute(
            "SELECT DISTINCT partition_key FROM ingest_stats WHERE source = 'events' AND partition_key IS NOT NULL")
            .fetchall()}
    if "raw_events" in existing:
        ingested |= {str(d) for (d,) in con.execute("SELECT DISTINCT event_date FROM raw_events").fetchall()}
        holding |= {str(d) for (d,) in con.execute(
            "SELECT DISTINCT event_date FROM raw_events WHERE regexp_matches(record, ?)", [pattern]).fetchall()}
    if "events" in existing:
        holding |= {str(d) for (d,) in con.execute(
            "SELECT DISTINCT event_date FROM events WHERE user_id = ?", [matcher.user_id]).fetchall()}
    if "quarantine" in existing:
        holding |= {d for (d,) in con.execute(
            "SELECT DISTINCT partition_key FROM quarantine WHERE source = 'events' AND regexp_matches(record, ?)",
            [pattern]).fetchall()}
    return ingested, holding


def dimensions_hold_user(con: duckdb.DuckDBPyConnection, matcher: UserMatcher) -> bool:
    existing = _tables(con)
    held = "users" in existing and con.execute("SELECT count(*) FROM users WHERE user_id = ?",
                                               [matcher.user_id]).fetchone()[0]
    if not held and "quarantine" in existing:
        held = con.execute("SELECT count(*) FROM quarantine WHERE source IN ('items', 'users') "
                           "AND regexp_matches(record, ?)", [matcher.sql_pattern()]).fetchone()[0]
    return bool(held)


def delete_derived_rows(con: duckdb.DuckDBPyConnection, matcher: UserMatcher) -> dict[str, int]:
    """Inside the caller's transaction: the user's rows in every user table, then texts no
    user wrote any more. Returns rows deleted (or vectors recomputed) per table."""
    from assets.embeddings import TEXT_SOURCES_SQL, build_item_embeddings
    from assets.events import register_functions

    deleted = {}
    for table, column in user_tables(con).items():
        deleted[table] = con.execute(f'DELETE FROM "{table}" WHERE trim(CAST("{column}" AS VARCHAR)) = ?',
                                     [matcher.user_id]).fetchone()[0]
    existing = _tables(con)
    text_tables = [t for t in ("text_embeddings", "text_signals") if t in existing]
    if text_tables and {"events", "items"} <= existing:
        register_functions(con)  # clean_text, used by TEXT_SOURCES_SQL for review summaries
        con.execute(f"CREATE OR REPLACE TEMP TABLE _texts_now AS SELECT DISTINCT md5(text) AS text_hash "
                    f"FROM ({TEXT_SOURCES_SQL})")
        for table in text_tables:
            deleted[table] = con.execute(
                f"DELETE FROM {table} WHERE text_hash NOT IN (SELECT text_hash FROM _texts_now)").fetchone()[0]
        con.execute("DROP TABLE _texts_now")
    if "item_embeddings" in existing and "text_embeddings" in existing:
        # an item without catalogue text has the mean of its review vectors: recompute without the user's
        con.execute("CREATE OR REPLACE TEMP TABLE _items_before AS SELECT item_id, n_texts FROM item_embeddings")
        build_item_embeddings(con)
        deleted["item_embeddings"] = con.execute("""
            SELECT count(*) FROM _items_before b LEFT JOIN item_embeddings a USING (item_id)
            WHERE a.item_id IS NULL OR a.n_texts <> b.n_texts""").fetchone()[0]
        con.execute("DROP TABLE _items_before")
    return deleted


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {name for (name,) in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_catalog = current_database()").fetchall()}


# --- the audit -----------------------------------------------------------------------------------------------------


def audit_reason(reason: str | None, matcher: UserMatcher) -> str | None:
    """The operator's reason without personal data: e-mails and phones masked, the id itself too."""
    from assets.text_cleaning import mask_pii

    if not reason:
        return None
    return matcher.mask(mask_pii(reason))


def record_erasure(con: duckdb.DuckDBPyConnection, hashed: str, reason: str | None, landing_rows: int,
                   rows_by_table: dict[str, int], runs: list[str]) -> None:
    """The audit row: who (as a salted hash), why (masked), what was removed, and by which runs."""
    con.execute(ERASURE_AUDIT_DDL)
    con.execute(f"ALTER TABLE {AUDIT_TABLE} ADD COLUMN IF NOT EXISTS serving JSON")  # audit tables made before serving
    con.execute(f"INSERT INTO {AUDIT_TABLE} VALUES (current_timestamp::TIMESTAMP, ?, ?, ?, ?::JSON, ?, NULL)",
                [hashed, reason, landing_rows, json.dumps(rows_by_table, sort_keys=True), runs])


# --- the command ---------------------------------------------------------------------------------------------------


def forget(user_id: str, reason: str | None = None, report: Callable[[str], None] = print) -> int:
    """Erase `user_id` everywhere Portrait can reach; returns the command's exit code.

    Order matters for recovery: the landing files change first, the warehouse follows
    them. If anything stops half-way, running the command again finds the user in the
    warehouse and finishes the job; the audit row is written only when all is done.
    """
    user_id = user_id.strip()
    if not user_id:
        print("error: the user id is empty", file=sys.stderr)
        return 2
    matcher = UserMatcher(user_id)
    landing = LandingZone(root=str(landing_path()))
    warehouse = Warehouse(path=str(warehouse_path()))
    has_warehouse = Path(warehouse.path).exists()

    scan = scan_landing(landing, matcher)
    snapshots = SnapshotStore(root=str(serving_path()))
    published = snapshots.current()
    serving_before = user_rows(published, user_id) if published else {}
    older_hold = published is not None and _older_snapshots_hold(snapshots, published, user_id)
    before: dict[str, int] = {}
    ingested: set[str] = set()
    holding: set[str] = set()
    dims_hold = False
    tables: set[str] = set()
    if has_warehouse:
        with warehouse.connect(read_only=True) as con:
            before = footprint(con, matcher)
            ingested, holding = warehouse_days(con, matcher)
            dims_hold = dimensions_hold_user(con, matcher)
            tables = _tables(con)
    # raw records only mentioning the id (another user's message quoting it) do not make a user known;
    # a user left only in the serving snapshot (a republication that failed) is known, and so is one
    # left only in the previous snapshot (a run published between an interrupted erasure and its repetition)
    if not scan.rows and not any(n for t, n in before.items() if t not in RECORD_TABLES) \
            and not any(serving_before.values()) and not older_hold:
        print(f"error: user {user_id} is in no landing file and no warehouse table; nothing was changed"
              + _earlier_erasure(warehouse, has_warehouse, user_id), file=sys.stderr)
        for name in scan.unreadable_mentions:
            print(f"  note: {name} mentions the id but is not a data file Portrait reads; check it by hand",
                  file=sys.stderr)
        for name in scan.broken:
            print(f"  note: {name} cannot be read, so it was not searched", file=sys.stderr)
        return 2

    hashed = user_hash(user_id)
    report(f"Forgetting one user (audit hash {hashed[:16]}...) in {portrait_home()}")
    landing_rows = 0
    for entry in scan.files:
        removed = rewrite_without_user(entry.path, matcher)
        landing_rows += removed
        report(f"  rewrote landing/{entry.relative}: {removed:,} row(s) removed")
    for name in scan.broken:
        report(f"  WARNING landing/{name} cannot be read, so it was not searched: fix or remove it, "
               "then run `portrait forget` again")
    for name in scan.unreadable_mentions:
        report(f"  WARNING landing/{name} mentions the id but is not a data file Portrait can rewrite "
               "(an unknown format, or a `.`/`_` file being written): remove it by hand")

    days = sorted(({e.day for e in scan.files if e.day} & ingested) | holding)
    # the dimensions are rebuilt only where they were ever built: forget loads nothing new
    dimensions = bool({"items", "users"} & tables) and (any(e.dimension for e in scan.files) or dims_hold)
    outcomes = reingest(days, dimensions, hashed, report) if days or dimensions else []
    failed = [o for o in outcomes if not o.success]
    if failed:
        report(f"{len(failed)} re-ingest run(s) failed: the landing files are clean, the warehouse is not yet. "
               "Fix the cause (see Runs in the UI), then run `portrait forget` again; no audit row was written.")
        return 1

    with warehouse.transaction() as con:
        derived = delete_derived_rows(con, matcher)
        after = footprint(con, matcher)
        rows_by_table = {t: before.get(t, 0) - after.get(t, 0) for t in sorted(set(before) | set(after))}
        rows_by_table.update({t: n for t, n in derived.items() if t not in rows_by_table})
        left = {t: n for t, n in after.items() if n}
        record_erasure(con, hashed, audit_reason(reason, matcher), landing_rows, rows_by_table,
                       [o.run_id for o in outcomes])
    for table, rows in sorted(rows_by_table.items()):
        if table == "item_embeddings":
            how = "vector(s) recomputed without the user's reviews"
        elif table in (*RECORD_TABLES, "events", "items", "users"):
            how = "row(s) gone after the re-ingest"
        else:
            how = "row(s) deleted"
        if rows:
            report(f"  {table}: {rows:,} {how}")
    for table, rows in left.items():  # raw rows of other users that merely quote the id
        report(f"  note: {table} still has {rows:,} row(s) of other users that mention the id")
    if published is not None:
        try:
            serving = republish_serving(snapshots, warehouse, hashed, serving_before)
        except (OSError, duckdb.Error) as error:
            report(f"  FAILED to republish the serving snapshot ({error}): the warehouse is clean, but the API's "
                   "snapshot still holds the user. Fix the cause, then run `portrait forget` again.")
            return 1
        report(f"  serving: published snapshot {serving['snapshot']} without the user (the one before held "
               f"{sum(serving['rows'].values()):,} row(s) of the user); deleted {len(serving['deleted'])} "
               "older snapshot(s)")
    report(f"Done: {landing_rows:,} landing row(s) removed, {len(outcomes)} run(s); "
           f"recorded in {AUDIT_TABLE} as user_hash {hashed}")
    if scan.broken:  # the user may still be in them: not a clean finish
        report(f"{len(scan.broken)} landing file(s) could not be searched (listed above); fix or remove them, "
               "then run `portrait forget` again")
        return 1
    return 0


def republish_serving(snapshots: SnapshotStore, warehouse: Warehouse, hashed: str,
                      rows_before: dict[str, int]) -> dict:
    """Publish a snapshot of the cleaned warehouse and delete every other one (the previous one
    too: it still holds the user); record it on the erasure's audit row, and return what was recorded."""
    with warehouse.connect(read_only=True) as con:
        publication = snapshots.publish(con, ModelStore(root=str(models_path())).latest("search_index"),
                                        source_run=None, published_by="portrait forget", keep_previous=False)
    serving = {"snapshot": publication.snapshot.stamp, "rows": rows_before, "deleted": publication.deleted}
    with warehouse.connect() as con:
        con.execute(f"UPDATE {AUDIT_TABLE} SET serving = ?::JSON WHERE user_hash = ? "
                    f"AND erased_at = (SELECT max(erased_at) FROM {AUDIT_TABLE} WHERE user_hash = ?)",
                    [json.dumps(serving, sort_keys=True), hashed, hashed])
    return serving


def _older_snapshots_hold(snapshots: SnapshotStore, published: Snapshot, user_id: str) -> bool:
    """Whether a snapshot folder besides the published one (the previous one, kept for readers in
    flight, or one a publisher left half-written) holds rows of the user; the republication deletes them."""
    for folder in snapshots.folders():
        if folder == published.folder or not (folder / DATABASE).exists():
            continue
        try:
            if any(user_rows(Snapshot(folder, {}), user_id).values()):
                return True
        except duckdb.Error:  # being written, or left unreadable: the next publication deletes it anyway
            continue
    return False


def reingest(days: list[str], dimensions: bool, hashed: str, report: Callable[[str], None]) -> list[RunOutcome]:
    """Rebuild the dimensions and re-ingest `days` from the cleaned files, as runs recorded
    in the instance (in as few runs as the partition order allows)."""
    ensure_dagster_home()
    import dagster as dg

    from assets.partitions import event_days
    from orchestration.definitions import build_defs
    from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG, contiguous_ranges, run_job

    defs = build_defs()
    outcomes = []
    with dg.DagsterInstance.get() as instance:
        if dimensions:
            outcomes.append(_reported(run_job(defs, "ingest_dimensions", instance, {ERASURE_TAG: hashed}), report))
        known = set(instance.get_dynamic_partitions(event_days.name))
        new = [d for d in days if d not in known]
        if new:
            instance.add_dynamic_partitions(event_days.name, new)
        for first, last in contiguous_ranges(instance.get_dynamic_partitions(event_days.name), days):
            tags = {RANGE_START_TAG: first, RANGE_END_TAG: last, ERASURE_TAG: hashed}
            label = first if first == last else f"{first}..{last}"
            outcomes.append(_reported(run_job(defs, "ingest_events", instance, tags, label), report))
    return outcomes


def _reported(outcome: RunOutcome, report: Callable[[str], None]) -> RunOutcome:
    where = f" [{outcome.partitions}]" if outcome.partitions else ""
    status = "ok" if outcome.success else "FAILED"
    report(f"  re-ingested {outcome.job}{where}: {status} in {outcome.seconds:.1f} s (run {outcome.run_id[:8]})")
    if outcome.error:
        report(f"    {outcome.error}")
    return outcome


def _earlier_erasure(warehouse: Warehouse, has_warehouse: bool, user_id: str) -> str:
    if not has_warehouse or not (portrait_home() / SALT_FILE).exists():  # no salt yet: nobody was ever erased
        return ""
    with warehouse.connect(read_only=True) as con:
        if AUDIT_TABLE not in _tables(con):
            return ""
        when = con.execute(f"SELECT max(erased_at) FROM {AUDIT_TABLE} WHERE user_hash = ?",
                           [user_hash(user_id)]).fetchone()[0]
    return f" (it was erased on {when:%Y-%m-%d %H:%M} UTC)" if when else ""

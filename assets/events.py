"""`events` and `quarantine`: validated, deduplicated, cleaned events, and every row that failed.

Validation is one SQL pass over `raw_events` (see `EVENT_RULES`, in order: the first rule
a row fails names its reason). Good rows get UTC timestamps, normalized texts with
e-mail addresses and phone numbers masked, and an `event_id` (the given one, or an MD5
hash of the row's contract fields and attributes). Exact and event_id duplicates within a day keep their first row
in file order. Rows of users erased by `portrait forget` are neither loaded nor quarantined, only
counted (assets/erasure.py). A day's rows are replaced whole, in one transaction.
"""

from dataclasses import dataclass

import dagster as dg
import duckdb

from assets.automation import WAREHOUSE_POOL
from assets.erasure import ERASED, erase_rows
from assets.metadata import bar_chart_markdown, markdown_table, query_rows, table_schema
from assets.partitions import SINGLE_RUN, day_keys, event_days
from assets.raw_events import RAW_EVENTS_DDL, raw_events
from assets.table_checks import reconcile_check, shape_checks, table_check_specs
from assets.text_cleaning import clean_text_arrow, mask_json_arrow
from assets.validation import (
    ID_TYPES,
    MAX_TEXT_CHARS,
    READ_RULES,
    Rule,
    attributes_sql,
    ensure_tables,
    extract_sql,
    field_columns_sql,
    first_failure_sql,
    is_object_sql,
    missing,
    quarantine_rows,
    wrong_type,
)
from resources.warehouse import Warehouse

EVENT_TYPES = ("view", "click", "add_to_cart", "favorite", "purchase", "review", "rating", "search", "chat")
ITEMLESS_TYPES = ("search", "chat")
TEXT_TYPES = ("search", "chat")
EVENT_FIELDS = ("user_id", "event_type", "ts", "item_id", "text", "rating", "price", "quantity", "session_id", "event_id")

_types = "(" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + ")"
_itemless = "(" + ", ".join(f"'{t}'" for t in ITEMLESS_TYPES) + ")"

EVENT_RULES: tuple[Rule, ...] = READ_RULES + (
    missing("user_id"),
    wrong_type("user_id", ID_TYPES),
    missing("event_type"),
    Rule("unknown_event_type", f"etype IS NULL OR etype NOT IN {_types}",
         f"'event_type ' || left(v[2]::VARCHAR, 60) || ' is not one of {', '.join(EVENT_TYPES)}'", "event_type"),
    missing("ts"),
    Rule("ts_out_of_range", "ts_epoch IS NOT NULL AND abs(ts_epoch) >= 1e10",
         "'ts ' || ts_raw || ' is too far from today to be epoch seconds'", "ts"),
    Rule("bad_timestamp", "ts IS NULL",
         "'ts ' || left(v[3]::VARCHAR, 60) || ' is neither ISO-8601 nor epoch seconds'", "ts"),
    Rule("ts_out_of_range", "ts < TIMESTAMP '1990-01-01' OR ts > current_timestamp::TIMESTAMP + INTERVAL 1 DAY",
         "'ts ' || strftime(ts, '%Y-%m-%dT%H:%M:%SZ') || ' is before 1990 or in the future'", "ts"),
    Rule("ts_outside_partition", "ts::DATE <> event_date",
         "'ts ' || strftime(ts, '%Y-%m-%dT%H:%M:%SZ') || ' is not on ' || event_date::VARCHAR "
         "|| ' (UTC), the day folder it landed in'",
         "ts"),
    Rule("missing_field", f"item_id_raw IS NULL AND coalesce(item_id_type, 'NULL') IN ('NULL', 'VARCHAR') "
         f"AND etype NOT IN {_itemless}", "'item_id is required for ' || etype || ' events'", "item_id"),
    wrong_type("item_id", ID_TYPES),
    wrong_type("text"),
    Rule("text_too_long", f"length(text_raw) > {MAX_TEXT_CHARS}",
         f"'text has ' || length(text_raw) || ' characters; at most {MAX_TEXT_CHARS} are accepted'", "text"),
    Rule("missing_field", "text_raw IS NULL AND etype IN ('search', 'chat')",
         "'text is required for ' || etype || ' events'", "text"),
    Rule("missing_field", "text_raw IS NULL AND rating_raw IS NULL AND etype = 'review'",
         "'a review needs a text or a rating'", "text"),
    wrong_type("rating"),
    Rule("bad_rating", "rating_raw IS NOT NULL AND (rating IS NULL OR NOT rating BETWEEN 1 AND 5)",
         "'rating ' || rating_raw || ' is not a number from 1 to 5'", "rating"),
    Rule("missing_field", "rating_raw IS NULL AND etype = 'rating'", "'rating is required for rating events'", "rating"),
    wrong_type("price"),
    Rule("bad_price", "price_raw IS NOT NULL AND (price IS NULL OR NOT isfinite(price) OR price < 0)",
         "'price ' || price_raw || ' is not a non-negative number'", "price"),
    wrong_type("quantity"),
    Rule("bad_quantity", "quantity_raw IS NOT NULL AND (quantity_num IS NULL OR NOT isfinite(quantity_num) "
         "OR quantity_num < 1 OR quantity_num > 1e9 OR quantity_num <> floor(quantity_num))",
         "'quantity ' || quantity_raw || ' is not a whole number of at least 1'", "quantity"),
    wrong_type("session_id", ID_TYPES),
    wrong_type("event_id", ID_TYPES),
)

EVENTS_COLUMNS = {
    "event_id": "VARCHAR",
    "event_date": "DATE",
    "user_id": "VARCHAR",
    "event_type": "VARCHAR",
    "ts": "TIMESTAMP",
    "item_id": "VARCHAR",
    "text": "VARCHAR",
    "rating": "DOUBLE",
    "price": "DOUBLE",
    "quantity": "INTEGER",
    "session_id": "VARCHAR",
    "attributes": "JSON",
    "source_file": "VARCHAR",
    "line_no": "BIGINT",
}
EVENTS_DDL = "CREATE TABLE IF NOT EXISTS events (\n    " + ",\n    ".join(
    f"{c} {t}{' NOT NULL' if c in ('event_id', 'event_date', 'user_id', 'event_type', 'ts', 'source_file', 'line_no') else ''}"
    for c, t in EVENTS_COLUMNS.items()
) + "\n)"

REQUIRED_VIOLATIONS = {
    "user_id": "user_id IS NULL",
    "event_type": "event_type IS NULL",
    "ts": "ts IS NULL",
    "item_id": f"item_id IS NULL AND event_type NOT IN {_itemless}",
}


def _check_sql() -> str:
    return f"""
    CREATE OR REPLACE TEMP TABLE _checked AS
    WITH src AS (
        SELECT event_date, source_file, line_no, record, read_error, {is_object_sql()} AS is_object
        FROM raw_events WHERE event_date IN (SELECT unnest($days::DATE[])) AND read_error IS DISTINCT FROM '{ERASED}'
    ), fields AS (
        SELECT *, {extract_sql(EVENT_FIELDS)} FROM src
    ), typed AS (
        SELECT *,
        {field_columns_sql(EVENT_FIELDS)}
        FROM fields
    ), parsed AS (
        SELECT *,
            lower(event_type_raw) AS etype,
            CASE WHEN regexp_full_match(ts_raw, '-?[0-9]+(\\.[0-9]+)?') THEN TRY_CAST(ts_raw AS DOUBLE) END AS ts_epoch,
            CASE WHEN ts_epoch IS NOT NULL
                 THEN CASE WHEN abs(ts_epoch) < 1e10 THEN to_timestamp(ts_epoch)::TIMESTAMP END
                 ELSE TRY_CAST(ts_raw AS TIMESTAMPTZ)::TIMESTAMP END AS ts,
            TRY_CAST(rating_raw AS DOUBLE) AS rating,
            TRY_CAST(price_raw AS DOUBLE) AS price,
            TRY_CAST(quantity_raw AS DOUBLE) AS quantity_num
        FROM typed
    )
    SELECT event_date, source_file, line_no,
           {first_failure_sql(EVENT_RULES)} AS failure,
           CASE WHEN failure IS NOT NULL THEN record END AS record,
           user_id_raw AS user_id, etype AS event_type, ts, item_id_raw AS item_id, text_raw, rating, price,
           CASE WHEN failure IS NULL THEN quantity_num::INTEGER END AS quantity, session_id_raw AS session_id,
           {attributes_sql(EVENT_FIELDS)} AS attributes,
           CASE WHEN failure IS NULL THEN coalesce(event_id_raw, md5(to_json({{
               'user_id': user_id, 'event_type': event_type, 'ts': ts, 'item_id': item_id, 'text': text_raw,
               'rating': rating, 'price': price, 'quantity': quantity, 'session_id': session_id,
               'attributes': attributes}}))) END AS event_id
    FROM parsed
    """


_KEPT_COLUMNS = """event_id, event_date, user_id, event_type, ts, item_id,
       CASE WHEN text_raw IS NOT NULL THEN clean_text(text_raw) END, rating, price, quantity, session_id,
       attributes, source_file, line_no"""

_INSERT_ALL = f"INSERT INTO events SELECT {_KEPT_COLUMNS} FROM _checked WHERE failure IS NULL"

# Only rows whose (day, event_id) repeats go through the window that keeps the first in
# file order. Texts are cleaned once, on the rows kept.
_INSERT_DEDUPLICATED = f"""
INSERT INTO events
WITH valid AS MATERIALIZED (SELECT * FROM _checked WHERE failure IS NULL),
repeated AS (SELECT event_date, event_id FROM valid GROUP BY ALL HAVING count(*) > 1),
kept AS (
    SELECT * FROM valid ANTI JOIN repeated USING (event_date, event_id)
    UNION ALL
    SELECT * EXCLUDE (copy) FROM (
        SELECT *, row_number() OVER (PARTITION BY event_date, event_id ORDER BY source_file, line_no) AS copy
        FROM valid SEMI JOIN repeated USING (event_date, event_id)
    ) WHERE copy = 1
)
SELECT {_KEPT_COLUMNS} FROM kept
"""

# Rows read are the day's raw rows: those checked, and those of erased users (never checked).
_INSERT_STATS = f"""
INSERT INTO ingest_stats (source, partition_key, rows_read, loaded, duplicates, quarantined, erased, run_id, updated_at)
SELECT 'events', d.day::VARCHAR, coalesce(c.read, 0) + coalesce(x.erased, 0), coalesce(e.loaded, 0),
       coalesce(c.valid, 0) - coalesce(e.loaded, 0), coalesce(c.quarantined, 0), coalesce(x.erased, 0),
       $run_id, current_timestamp::TIMESTAMP
FROM (SELECT unnest($days::DATE[]) AS day) d
LEFT JOIN (SELECT event_date, count(*) AS read, count(*) FILTER (WHERE failure IS NULL) AS valid,
                  count(*) FILTER (WHERE failure IS NOT NULL) AS quarantined
           FROM _checked GROUP BY ALL) c ON c.event_date = d.day
LEFT JOIN (SELECT event_date, count(*) AS loaded FROM events
           WHERE event_date IN (SELECT unnest($days::DATE[])) GROUP BY ALL) e ON e.event_date = d.day
LEFT JOIN (SELECT event_date, count(*) AS erased FROM raw_events
           WHERE event_date IN (SELECT unnest($days::DATE[])) AND read_error = '{ERASED}' GROUP BY ALL) x
       ON x.event_date = d.day
"""


@dataclass(frozen=True)
class EventCounts:
    rows_read: int
    loaded: int
    duplicates: int
    quarantined: int
    erased: int = 0  # rows of users erased by `portrait forget`: neither loaded nor quarantined


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    """The Python text cleaners as vectorized SQL functions (idempotent per connection)."""
    for name, function in (("clean_text", clean_text_arrow), ("mask_json", mask_json_arrow)):
        if not con.execute("SELECT 1 FROM duckdb_functions() WHERE function_name = ?", [name]).fetchone():
            con.create_function(name, function, ["VARCHAR"], "VARCHAR", type="arrow", side_effects=False)


def clean_events(con: duckdb.DuckDBPyConnection, days: list[str], run_id: str | None) -> EventCounts:
    """Validate the raw rows of `days` into `events` and `quarantine`, replacing those days.

    Runs inside the caller's transaction. Raw rows of erased users left by a load made before
    their erasure are emptied first, so they are counted as erased like those a load found.
    """
    con.execute(RAW_EVENTS_DDL)
    con.execute(EVENTS_DDL)
    ensure_tables(con)
    register_functions(con)
    params = {"days": days}
    con.execute("DELETE FROM events WHERE event_date IN (SELECT unnest($days::DATE[]))", params)
    con.execute("DELETE FROM quarantine WHERE source = 'events' AND partition_key IN (SELECT unnest($days::VARCHAR[]))",
                params)
    con.execute("DELETE FROM ingest_stats WHERE source = 'events' AND partition_key IN (SELECT unnest($days::VARCHAR[]))",
                params)
    erase_rows(con, "raw_events", "event_date IN (SELECT unnest(?::DATE[]))", [days], keep_empty_rows=True)
    con.execute(_check_sql(), params)
    quarantine_rows(con, "events", "_checked", "event_date::VARCHAR")
    repeats = con.execute("SELECT count(*) - count(DISTINCT (event_date, event_id)) FROM _checked "
                          "WHERE failure IS NULL").fetchone()[0]
    con.execute(_INSERT_DEDUPLICATED if repeats else _INSERT_ALL)
    con.execute(_INSERT_STATS, {"days": days, "run_id": run_id})
    counts = con.execute(
        "SELECT sum(rows_read), sum(loaded), sum(duplicates), sum(quarantined), sum(erased) FROM ingest_stats "
        "WHERE source = 'events' AND partition_key IN (SELECT unnest($days::VARCHAR[]))", params,
    ).fetchone()
    con.execute("DROP TABLE _checked")
    return EventCounts(*(int(c or 0) for c in counts))


ACTUAL_EVENT_COUNTS = """
SELECT p AS partition_key, sum(read) AS read, sum(loaded) AS loaded, sum(quarantined) AS quarantined
FROM (
    SELECT event_date::VARCHAR AS p, count(*) AS read, 0 AS loaded, 0 AS quarantined FROM raw_events GROUP BY ALL
    UNION ALL SELECT event_date::VARCHAR, 0, count(*), 0 FROM events GROUP BY ALL
    UNION ALL SELECT partition_key, 0, 0, count(*) FROM quarantine WHERE source = 'events' GROUP BY ALL
) GROUP BY p
"""


@dg.multi_asset(
    pool=WAREHOUSE_POOL,
    specs=[
        dg.AssetSpec(
            "events", deps=[raw_events], group_name="ingest", kinds={"duckdb"}, owners=["team:portrait"],
            partitions_def=event_days,
            description="Validated events: UTC timestamps, normalized texts with e-mails and phones masked, "
                        "duplicates removed, unknown fields kept in `attributes`.",
        ),
        dg.AssetSpec(
            "quarantine", deps=[raw_events], group_name="ingest", kinds={"duckdb"}, owners=["team:portrait"],
            partitions_def=event_days,
            description="Every event row that failed validation, with file, line, field, reason code and detail. "
                        "Rejected item and user rows share the table (source = 'items' / 'users').",
        ),
    ],
    check_specs=table_check_specs("events", key="event_date, event_id"),
    partitions_def=event_days,
    backfill_policy=SINGLE_RUN,
    name="validate_events",
)
def validate_events(context: dg.AssetExecutionContext, warehouse: Warehouse):
    days = day_keys(context)
    with warehouse.transaction() as con:
        counts = clean_events(con, days, context.run.run_id)
    with warehouse.connect() as con:
        checks = [
            *shape_checks(con, "events", "events", EVENTS_COLUMNS, REQUIRED_VIOLATIONS, key="event_date, event_id",
                          scope="event_date IN (SELECT unnest(?::DATE[]))", scope_params=[days]),
            reconcile_check(con, "events", "events", ACTUAL_EVENT_COUNTS),
        ]
        yield dg.MaterializeResult(asset_key="events", metadata=_events_metadata(con, days, counts))
        yield dg.MaterializeResult(asset_key="quarantine", metadata=_quarantine_metadata(con, days))
    yield from checks


def _events_metadata(con: duckdb.DuckDBPyConnection, days: list[str], counts: EventCounts) -> dict:
    in_days = "event_date IN (SELECT unnest(?::DATE[]))"
    by_type = query_rows(con, f"SELECT event_type, count(*) AS events FROM events WHERE {in_days} "
                              "GROUP BY ALL ORDER BY events DESC", [days])
    preview = query_rows(con, f"""
        SELECT user_id, event_type, strftime(ts, '%Y-%m-%d %H:%M:%S') AS ts_utc, item_id, text, rating, price
        FROM events WHERE {in_days} ORDER BY ts DESC LIMIT 10""", [days])
    total, users, items = con.execute("SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM events").fetchone()
    return {
        "dagster/row_count": total,
        "dagster/column_schema": table_schema(con, "events"),
        "days_in_run": len(days),
        "rows_read": counts.rows_read,
        "rows_loaded": counts.loaded,
        "duplicates_removed": counts.duplicates,
        "rows_quarantined": counts.quarantined,
        "rows_erased": counts.erased,
        "duplicate_rate": counts.duplicates / counts.rows_read if counts.rows_read else 0.0,
        "quarantine_rate": counts.quarantined / counts.rows_read if counts.rows_read else 0.0,
        "users_total": users,
        "items_total": items,
        "events_by_type": dg.MetadataValue.md(markdown_table(by_type)),
        "events_by_type_chart": bar_chart_markdown([r["event_type"] for r in by_type],
                                                   [r["events"] for r in by_type], "Events by type (this run)"),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
    }


def _quarantine_metadata(con: duckdb.DuckDBPyConnection, days: list[str]) -> dict:
    in_days = "source = 'events' AND partition_key IN (SELECT unnest(?::VARCHAR[]))"
    reasons = query_rows(con, f"SELECT reason, field, count(*) AS rows FROM quarantine WHERE {in_days} "
                              "GROUP BY ALL ORDER BY rows DESC", [days])
    preview = query_rows(con, f"SELECT source_file, line_no, reason, field, detail FROM quarantine WHERE {in_days} "
                              "ORDER BY source_file, line_no LIMIT 10", [days])
    total = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return {
        "dagster/row_count": total,
        "dagster/column_schema": table_schema(con, "quarantine"),
        "rows_quarantined_in_run": sum(r["rows"] for r in reasons),
        "reasons": dg.MetadataValue.md(markdown_table(reasons, max_rows=30)),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
    }

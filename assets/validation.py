"""Row validation shared by every landing table: rules, reasons, quarantine and counts.

Validation runs as one SQL pass over raw records. Each table lists its rules in order;
a row's first failing rule decides its reason. Rows that fail go to `quarantine` with
the file, line, field, reason code and a readable detail; nothing is dropped silently,
and `ingest_stats` keeps, per partition, rows read = loaded + duplicates + quarantined + erased
(erased: rows of users erased by `portrait forget`, neither loaded nor quarantined; assets/erasure.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from assets.text_cleaning import sql_mask_pii

MAX_RECORD_CHARS = 1_000_000
MAX_TEXT_CHARS = 20_000
QUARANTINE_RECORD_CHARS = 65_536

#: Every reason code a quarantined row can carry. docs/data-contract.md lists the same.
REASONS: dict[str, str] = {
    "unreadable_file": "a landing file that cannot be read at all (not gzip or a truncated gzip stream, a truncated "
                       "or corrupt Parquet file, a CSV header that cannot be parsed): one row, line 0, stands for the "
                       "whole file; none of its rows are loaded",
    "invalid_utf8": "the line is not valid UTF-8 (kept with the bad bytes escaped)",
    "wrong_field_count": "a CSV row with more or fewer fields than the header",
    "bad_csv": "a CSV row the parser cannot read (for example an unclosed quote)",
    "record_too_large": f"a row longer than {MAX_RECORD_CHARS:,} characters",
    "bad_json": "a line that is not a JSON object",
    "missing_field": "a required field is absent, null or empty (see `field`)",
    "wrong_type": "a field holds an object, list or boolean where a value was expected",
    "unknown_event_type": "event_type is not one of the contract's types",
    "bad_timestamp": "ts is neither ISO-8601 nor epoch seconds",
    "ts_out_of_range": "ts is before 1990-01-01 or more than one day in the future",
    "ts_outside_partition": "ts falls on another UTC day than the folder it landed in",
    "text_too_long": f"a text longer than {MAX_TEXT_CHARS:,} characters",
    "bad_rating": "rating is not a number from 1 to 5",
    "bad_price": "price is not a number, or is negative",
    "bad_quantity": "quantity is not a whole number of at least 1",
    "bad_categories": "categories is neither a JSON list of names nor a `|`-separated string",
}

# JSON types as `field_columns_sql` names them (cheaply, from the first character of the value).
SCALAR_TYPES = "('VARCHAR', 'BIGINT', 'DOUBLE')"
ID_TYPES = "('VARCHAR', 'BIGINT')"

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR NOT NULL,          -- 'events', 'items' or 'users'
    partition_key VARCHAR,            -- the event day; NULL for items and users
    source_file VARCHAR NOT NULL,     -- path under landing/
    line_no BIGINT NOT NULL,          -- 1-based line (CSV: the row's first line); 0: the whole file
    reason VARCHAR NOT NULL,          -- a code from REASONS
    field VARCHAR,                    -- the offending field, where one is to blame
    detail VARCHAR NOT NULL,          -- what is wrong and what would be accepted
    record VARCHAR,                   -- the row as read, PII masked, cut at 64 KiB
    quarantined_at TIMESTAMP NOT NULL
)
"""

INGEST_STATS_DDL = """
CREATE TABLE IF NOT EXISTS ingest_stats (
    source VARCHAR NOT NULL,
    partition_key VARCHAR,
    rows_read BIGINT NOT NULL,
    loaded BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    quarantined BIGINT NOT NULL,
    run_id VARCHAR,
    updated_at TIMESTAMP NOT NULL,
    erased BIGINT DEFAULT 0           -- rows of erased users: neither loaded nor quarantined
)
"""
#: Warehouses made before the `erased` count get the column (0 for the partitions loaded then).
INGEST_STATS_MIGRATION = "ALTER TABLE ingest_stats ADD COLUMN IF NOT EXISTS erased BIGINT DEFAULT 0"


@dataclass(frozen=True)
class Rule:
    """A row fails with `reason` (blaming `field`) when the SQL condition `when` holds."""

    reason: str
    when: str
    detail: str
    field: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"undocumented reason code {self.reason!r}; add it to REASONS and the data contract")


#: Rules every landing table starts with: the row must have been read and be a JSON object.
READ_RULES = (
    # One row (line 0) stands for a whole file that cannot be read; its record says what is wrong.
    Rule("unreadable_file", "read_error = 'unreadable_file'",
         f"'the landing file ' || source_file || ' cannot be read at all: ' || {sql_mask_pii('record')} "
         "|| '. None of its rows are loaded. What to do: re-deliver the file; the landing sensor re-ingests it "
         "when it changes'"),
    Rule("invalid_utf8", "read_error = 'invalid_utf8'", "'the line is not valid UTF-8'"),
    Rule("wrong_field_count", "read_error = 'wrong_field_count'",
         "'the CSV row has a different number of fields than the header'"),
    Rule("bad_csv", "read_error = 'bad_csv'",
         "'the CSV parser cannot read this row (a stray or unclosed quote); the rest of a quoted field is part of it'"),
    Rule("record_too_large", f"length(record) > {MAX_RECORD_CHARS}",
         f"'the row has ' || length(record) || ' characters; at most {MAX_RECORD_CHARS} are read'"),
    Rule("bad_json", "NOT is_object", "'the line is not a JSON object'"),
)


def is_object_sql() -> str:
    # CASE, not AND: DuckDB may reorder the terms of a conjunction, and json_type
    # raises on text that is not JSON.
    return (f"CASE WHEN read_error IS NULL AND length(record) <= {MAX_RECORD_CHARS} AND json_valid(record) "
            "THEN json_type(record) = 'OBJECT' ELSE false END")


def extract_sql(fields: tuple[str, ...]) -> str:
    """One parse per row: the listed fields as JSON value texts, `v`."""
    paths = ", ".join(f"'$.\"{f}\"'" for f in fields)
    return f"CASE WHEN is_object THEN json_extract(record, [{paths}])::VARCHAR[] END AS v"


def field_columns_sql(fields: tuple[str, ...]) -> str:
    """Per field: `<f>_type` (JSON type, NULL when absent) and `<f>_raw` (its scalar text).

    Both are read off the value's JSON text, which DuckDB writes compactly (no leading
    blanks): the first character tells the type, so nothing is parsed a second time
    except strings with escapes.
    """
    columns = []
    for i, f in enumerate(fields, start=1):
        columns.append(
            f"CASE WHEN v[{i}] IS NULL THEN NULL ELSE CASE left(v[{i}], 1) WHEN '\"' THEN 'VARCHAR' "
            f"WHEN '{{' THEN 'OBJECT' WHEN '[' THEN 'ARRAY' WHEN 't' THEN 'BOOLEAN' WHEN 'f' THEN 'BOOLEAN' "
            f"WHEN 'n' THEN 'NULL' ELSE 'NUMBER' END END AS {f}_kind"
        )
        columns.append(
            f"CASE WHEN {f}_kind = 'NUMBER' THEN CASE WHEN contains(v[{i}], '.') OR contains(lower(v[{i}]), 'e') "
            f"THEN 'DOUBLE' ELSE 'BIGINT' END ELSE {f}_kind END AS {f}_type"
        )
        # A JSON string without escapes is its text between the quotes: no second parse.
        columns.append(
            f"nullif(trim(CASE WHEN {f}_type = 'VARCHAR' THEN CASE WHEN contains(v[{i}], '\\') "
            f"THEN v[{i}]->>'$' ELSE v[{i}][2:-2] END WHEN {f}_type IN {SCALAR_TYPES} THEN v[{i}] END), '') AS {f}_raw"
        )
    return ",\n    ".join(columns)


def attributes_sql(fields: tuple[str, ...]) -> str:
    """Fields outside the contract, kept as a JSON object (PII masked by `mask_json`), or NULL.

    A JSON merge patch with a null for each contract field removes those fields; merging
    the rest into `{}` drops members whose value is null (an empty CSV cell).
    """
    removal = "{" + ", ".join(f'"{f}": null' for f in fields) + "}"
    rest = f"json_merge_patch('{{}}', json_merge_patch(record, '{removal}'))"
    # json_keys is one cheap parse; the merge patches run only for rows with extra keys.
    extra = "len(json_keys(record)) > len(list_filter(v, lambda x: x IS NOT NULL))"
    # Nested CASEs, not AND: DuckDB may reorder a conjunction, and json_keys raises on non-JSON.
    # mask_json keeps '{}' as it is, so nullif turns "nothing left" into NULL without a second patch.
    return f"CASE WHEN is_object THEN CASE WHEN {extra} THEN nullif(mask_json({rest}), '{{}}')::JSON END END"


def missing(field: str) -> Rule:
    return Rule("missing_field", f"{field}_raw IS NULL AND coalesce({field}_type, 'NULL') IN ('NULL', 'VARCHAR')",
                f"'{field} is required'", field)


def wrong_type(field: str, allowed: str = SCALAR_TYPES) -> Rule:
    return Rule("wrong_type", f"{field}_type IS NOT NULL AND {field}_type <> 'NULL' AND {field}_type NOT IN {allowed}",
                f"'{field} must be a string or number, not ' || lower({field}_type)", field)


def first_failure_sql(rules: tuple[Rule, ...]) -> str:
    """A struct (reason, field, detail) for the first rule a row fails, or NULL."""
    branches = "\n        ".join(
        f"WHEN {r.when} THEN {{'reason': '{r.reason}', 'field': {_sql_str(r.field)}, 'detail': {r.detail}}}"
        for r in rules
    )
    return f"CASE\n        {branches}\n    END"


def quarantine_rows(con: duckdb.DuckDBPyConnection, source: str, checked: str, partition_expr: str) -> int:
    """Copy the failed rows of temp table `checked` into `quarantine`; return how many."""
    record = sql_mask_pii(f"left(record, {QUARANTINE_RECORD_CHARS})")
    con.execute(f"""
        INSERT INTO quarantine
        SELECT '{source}', {partition_expr}, source_file, line_no, failure.reason, failure.field,
               failure.detail, {record}, current_timestamp::TIMESTAMP
        FROM {checked} WHERE failure IS NOT NULL
    """)
    return con.execute(f"SELECT count(*) FROM {checked} WHERE failure IS NOT NULL").fetchone()[0]


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(QUARANTINE_DDL)
    con.execute(INGEST_STATS_DDL)
    con.execute(INGEST_STATS_MIGRATION)


def _sql_str(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"

"""`items` and `users`: dimension tables from `landing/items/` and `landing/users/`.

Each is rebuilt whole from every file in its folder, read in file-name order; when an
id appears more than once, the last row wins (so a later file updates an earlier one)
and the others count as duplicates. Rows that fail validation go to `quarantine`. Rows of
users erased by `portrait forget` are only counted, and their landing files are rewritten
without them (assets/erasure.py).
"""

from dataclasses import dataclass

import dagster as dg
import duckdb

from assets.automation import LANDING_RETRY, WAREHOUSE_POOL
from assets.erasure import ErasedRows, LandingRewrite, erase_rows, rewrite_landing_files
from assets.events import register_functions
from assets.landing_files import LandingFileError, insert_landing_file
from assets.metadata import markdown_table, query_rows, table_schema
from assets.table_checks import reconcile_check, shape_checks, table_check_specs
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
from resources.landing import LandingZone, is_readable
from resources.warehouse import Warehouse


def _text_rules(field: str) -> tuple[Rule, ...]:
    return (
        wrong_type(field),
        Rule("text_too_long", f"length({field}_raw) > {MAX_TEXT_CHARS}",
             f"'{field} has ' || length({field}_raw) || ' characters; at most {MAX_TEXT_CHARS} are accepted'", field),
    )


@dataclass(frozen=True)
class Dimension:
    """How one dimension table is validated and built."""

    name: str
    key: str
    fields: tuple[str, ...]
    rules: tuple[Rule, ...]
    columns: dict[str, str]
    parsed_sql: str  # extra parsed columns, computed from `<field>_raw`, `<field>_type` and `v`
    select_sql: str  # the table's columns, in `columns` order, from the checked rows


def _name_list(names_sql: str) -> str:
    return f"list_filter(list_transform({names_sql}, lambda c: nullif(trim(c), '')), lambda c: c IS NOT NULL)"


ITEMS = Dimension(
    name="items",
    key="item_id",
    fields=("item_id", "title", "categories", "brand", "price", "description"),
    rules=READ_RULES + (
        missing("item_id"),
        wrong_type("item_id", ID_TYPES),
        *_text_rules("title"),
        Rule("bad_categories",
             "categories_type IN ('OBJECT', 'BOOLEAN', 'DOUBLE') OR (categories_type = 'ARRAY' AND categories IS NULL)",
             "'categories must be a JSON list of names or a |-separated string, not ' || left(v[3]::VARCHAR, 60)",
             "categories"),
        wrong_type("brand"),
        wrong_type("price"),
        Rule("bad_price", "price_raw IS NOT NULL AND (price IS NULL OR NOT isfinite(price) OR price < 0)",
             "'price ' || price_raw || ' is not a non-negative number'", "price"),
        *_text_rules("description"),
    ),
    columns={
        "item_id": "VARCHAR", "title": "VARCHAR", "categories": "VARCHAR[]", "brand": "VARCHAR",
        "price": "DOUBLE", "description": "VARCHAR", "attributes": "JSON", "source_file": "VARCHAR",
        "line_no": "BIGINT",
    },
    parsed_sql=f"""
        TRY_CAST(price_raw AS DOUBLE) AS price,
        CASE
            WHEN categories_type = 'ARRAY'
                 AND list_bool_and(list_transform(json_extract(v[3], '$[*]'), lambda c: json_type(c) IN {ID_TYPES}))
                     IS NOT FALSE
            THEN {_name_list("json_extract_string(v[3], '$[*]')")}
            WHEN categories_type IN {ID_TYPES} THEN {_name_list("string_split(categories_raw, '|')")}
        END AS categories""",
    select_sql="item_id_raw, clean_text(title_raw), categories, brand_raw, price, clean_text(description_raw), "
               "attributes, source_file, line_no",
)

USERS = Dimension(
    name="users",
    key="user_id",
    fields=("user_id",),
    rules=READ_RULES + (missing("user_id"), wrong_type("user_id", ID_TYPES)),
    columns={"user_id": "VARCHAR", "attributes": "JSON", "source_file": "VARCHAR", "line_no": "BIGINT"},
    parsed_sql="",
    select_sql="user_id_raw, attributes, source_file, line_no",
)


@dataclass(frozen=True)
class DimensionLoad:
    rows_read: int
    loaded: int
    duplicates: int
    quarantined: int
    files: list[str]
    ignored_files: list[str]
    erased: ErasedRows
    landing_rewrite: LandingRewrite


def ddl(dimension: Dimension) -> str:
    columns = ",\n    ".join(f"{c} {t}" for c, t in dimension.columns.items())
    return f"CREATE TABLE IF NOT EXISTS {dimension.name} (\n    {columns}\n)"


def load_dimension(con: duckdb.DuckDBPyConnection, landing: LandingZone, dimension: Dimension,
                   run_id: str | None) -> DimensionLoad:
    """Rebuild one dimension table from its landing folder, inside the caller's transaction.

    For a table keyed by `user_id`, rows of erased users are dropped before validation and
    counted as erased, and the files that held them are rewritten without them."""
    con.execute(ddl(dimension))
    ensure_tables(con)
    register_functions(con)
    con.execute("CREATE OR REPLACE TEMP TABLE _raw_rows "
                "(source_file VARCHAR, line_no BIGINT, record VARCHAR, read_error VARCHAR)")
    files, ignored = [], []
    for path in landing.dimension_files(dimension.name):
        name = landing.relative(path)
        if not is_readable(path):
            ignored.append(name)
            continue
        try:
            insert_landing_file(con, path, "INSERT INTO _raw_rows SELECT ?, line_no, record, read_error FROM {rows}", [name])
        except FileNotFoundError:
            continue
        files.append(name)
    erased, rewrite = ErasedRows(), LandingRewrite()
    if dimension.key == "user_id":
        erased = erase_rows(con, "_raw_rows")
        if erased.rows:
            rewrite = rewrite_landing_files(landing.path, erased)
    fields = dimension.fields
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _checked AS
        WITH src AS (SELECT *, {is_object_sql()} AS is_object FROM _raw_rows),
        fields AS (SELECT *, {extract_sql(fields)} FROM src),
        typed AS (SELECT *, {field_columns_sql(fields)} FROM fields),
        parsed AS (SELECT *{', ' + dimension.parsed_sql if dimension.parsed_sql else ''} FROM typed)
        SELECT *, {attributes_sql(fields)} AS attributes, {first_failure_sql(dimension.rules)} AS failure
        FROM parsed
    """)
    name = dimension.name
    con.execute(f"DELETE FROM {name}")
    con.execute("DELETE FROM quarantine WHERE source = ?", [name])
    con.execute("DELETE FROM ingest_stats WHERE source = ?", [name])
    quarantined = quarantine_rows(con, name, "_checked", "NULL")
    con.execute(f"""
        INSERT INTO {name}
        SELECT {dimension.select_sql} FROM _checked WHERE failure IS NULL
        QUALIFY row_number() OVER (PARTITION BY {dimension.key}_raw ORDER BY source_file DESC, line_no DESC) = 1
        ORDER BY {dimension.key}_raw
    """)
    rows_read = con.execute("SELECT count(*) FROM _checked").fetchone()[0] + erased.rows
    loaded = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    duplicates = rows_read - quarantined - loaded - erased.rows
    con.execute("INSERT INTO ingest_stats (source, partition_key, rows_read, loaded, duplicates, quarantined, erased, "
                "run_id, updated_at) VALUES (?, NULL, ?, ?, ?, ?, ?, ?, current_timestamp::TIMESTAMP)",
                [name, rows_read, loaded, duplicates, quarantined, erased.rows, run_id])
    con.execute("DROP TABLE _checked")
    con.execute("DROP TABLE _raw_rows")
    return DimensionLoad(rows_read, loaded, duplicates, quarantined, files, ignored, erased, rewrite)


def _actual_counts(name: str) -> str:
    return f"""
        SELECT NULL AS partition_key,
               (SELECT rows_read FROM ingest_stats WHERE source = '{name}') AS read,
               (SELECT count(*) FROM {name}) AS loaded,
               (SELECT count(*) FROM quarantine WHERE source = '{name}') AS quarantined
    """


def _dimension_asset(dimension: Dimension, description: str) -> dg.AssetsDefinition:
    name = dimension.name

    @dg.asset(name=name, group_name="ingest", kinds={"duckdb"}, owners=["team:portrait"], description=description,
              retry_policy=LANDING_RETRY,
              pool=WAREHOUSE_POOL,
              check_specs=table_check_specs(name, key=dimension.key))
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse, landing: LandingZone):
        try:
            with warehouse.transaction() as con:
                load = load_dimension(con, landing, dimension, context.run.run_id)
        except LandingFileError as error:
            raise dg.Failure(str(error), allow_retries=error.transient) from error
        for ignored in load.ignored_files:
            context.log.warning(f"ignored {ignored}: not a .jsonl, .ndjson, .csv or .parquet file (optionally .gz)")
        for file, rows in load.erased.rows_by_file.items():
            if file in load.landing_rewrite.failed:
                done = f"the landing file could not be rewritten ({load.landing_rewrite.failed[file]}): remove them by hand"
            else:
                done = f"the landing file was rewritten without them ({load.landing_rewrite.rows_by_file.get(file, 0):,} " \
                       "row(s) removed)"
            context.log.warning(f"{file} holds {rows:,} row(s) of user(s) erased by `portrait forget` (delivered "
                                f"again?): none of them were loaded, {done}")
        with warehouse.connect() as con:
            checks = [
                *shape_checks(con, name, name, dimension.columns, {dimension.key: f"{dimension.key} IS NULL"},
                              key=dimension.key),
                reconcile_check(con, name, name, _actual_counts(name)),
            ]
            preview = query_rows(con, f"SELECT * EXCLUDE (source_file, line_no) FROM {name} LIMIT 10")
            reasons = query_rows(con, "SELECT reason, field, count(*) AS rows FROM quarantine WHERE source = ? "
                                      "GROUP BY ALL ORDER BY rows DESC", [name])
            yield dg.MaterializeResult(metadata={
                "dagster/row_count": load.loaded,
                "dagster/column_schema": table_schema(con, name),
                "rows_read": load.rows_read,
                "duplicates_replaced": load.duplicates,
                "rows_quarantined": load.quarantined,
                "rows_erased": load.erased.rows,
                "landing_files_rewritten": [f"{file} ({rows:,} row(s) removed)"
                                            for file, rows in load.landing_rewrite.rows_by_file.items()][:50],
                "files": load.files[:50],
                "quarantine_reasons": dg.MetadataValue.md(markdown_table(reasons)),
                "preview": dg.MetadataValue.md(markdown_table(preview)),
            })
        yield from checks

    return _asset


items = _dimension_asset(ITEMS, "The catalogue from landing/items/: titles, categories, brand, price and "
                                "description (texts normalized and masked); other fields in `attributes`.")
users = _dimension_asset(USERS, "Users from landing/users/ (optional): user_id plus any attributes "
                                "(age, gender, region, ...) in `attributes`, masked.")

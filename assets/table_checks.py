"""The asset checks every ingested table carries: schema, required fields, duplicates, reconciliation."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
import duckdb

from assets.metadata import markdown_table, query_rows

SCHEMA = "schema_matches_contract"
REQUIRED = "required_fields_present"
UNIQUE = "keys_unique"
RECONCILES = "counts_reconcile"


def table_check_specs(asset: str, key: str, reconcile: str = "For every partition, rows read = rows loaded + "
                      "duplicates removed + rows quarantined + rows of erased users.") -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(SCHEMA, asset=asset, description="Columns and types are those of the data contract."),
        dg.AssetCheckSpec(REQUIRED, asset=asset, description="Required fields are never null (null rates in metadata)."),
        dg.AssetCheckSpec(UNIQUE, asset=asset, description=f"No two rows share {key} (duplicate rate in metadata)."),
        dg.AssetCheckSpec(RECONCILES, asset=asset, description=reconcile),
    ]


def shape_checks(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    table: str,
    expected_columns: Mapping[str, str],
    violations: Mapping[str, str],
    key: str,
    scope: str = "true",
    scope_params: list | None = None,
) -> list[dg.AssetCheckResult]:
    """Schema, required fields and duplicates.

    `violations` maps a required column to the SQL condition of a row that breaks it;
    `scope` is a WHERE condition (with `?` for `scope_params`) limiting null and duplicate
    rates to the rows just written.
    """
    params = scope_params or []
    return [
        _schema(con, asset, table, expected_columns),
        _required(con, asset, table, violations, scope, params),
        _unique(con, asset, table, key, scope, params),
    ]


def _schema(con, asset, table, expected) -> dg.AssetCheckResult:
    actual = dict(con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall())
    differences = [
        {"column": c, "expected": expected.get(c), "actual": actual.get(c)}
        for c in sorted(set(expected) | set(actual))
        if expected.get(c) != actual.get(c)
    ]
    return dg.AssetCheckResult(
        asset_key=asset, check_name=SCHEMA, passed=not differences,
        metadata={"columns": len(actual), "differences": dg.MetadataValue.md(markdown_table(differences))},
    )


def _required(con, asset, table, violations, scope, params) -> dg.AssetCheckResult:
    counts = ", ".join(f"count(*) FILTER (WHERE {cond})" for cond in violations.values())
    row = con.execute(f"SELECT count(*), {counts} FROM {table} WHERE {scope}", params).fetchone()
    total, bad = row[0], row[1:]
    rates = {f"null_rate_{column}": (n / total if total else 0.0) for column, n in zip(violations, bad)}
    return dg.AssetCheckResult(asset_key=asset, check_name=REQUIRED, passed=not any(bad),
                               metadata={"rows_checked": total, **rates})


def _unique(con, asset, table, key, scope, params) -> dg.AssetCheckResult:
    total, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT ({key})) FROM {table} WHERE {scope}", params
    ).fetchone()
    duplicates = total - distinct
    return dg.AssetCheckResult(
        asset_key=asset, check_name=UNIQUE, passed=duplicates == 0,
        metadata={"rows_checked": total, "duplicate_rows": duplicates,
                  "duplicate_rate": duplicates / total if total else 0.0},
    )


def reconcile_check(con: duckdb.DuckDBPyConnection, asset: str, source: str,
                    actual_counts_sql: str) -> dg.AssetCheckResult:
    """`ingest_stats` for every partition of `source` against the tables as they stand;
    `actual_counts_sql` yields (partition_key, read, loaded, quarantined)."""
    rows = query_rows(con, f"""
        WITH actual AS ({actual_counts_sql})
        SELECT s.partition_key, s.rows_read, s.loaded, s.duplicates, s.quarantined, coalesce(s.erased, 0) AS erased,
               coalesce(a.read, 0) AS read_now, coalesce(a.loaded, 0) AS loaded_now,
               coalesce(a.quarantined, 0) AS quarantined_now
        FROM ingest_stats s LEFT JOIN actual a ON a.partition_key IS NOT DISTINCT FROM s.partition_key
        WHERE s.source = ?
        ORDER BY s.partition_key
    """, [source])
    broken = [
        r for r in rows
        if r["rows_read"] != r["loaded"] + r["duplicates"] + r["quarantined"] + r["erased"]
        or (r["read_now"], r["loaded_now"], r["quarantined_now"]) != (r["rows_read"], r["loaded"], r["quarantined"])
    ]
    totals = {k: sum(r[k] for r in rows) for k in ("rows_read", "loaded", "duplicates", "quarantined", "erased")}
    return dg.AssetCheckResult(
        asset_key=asset, check_name=RECONCILES, passed=not broken,
        metadata={"partitions": len(rows), "partitions_broken": len(broken), **totals,
                  "broken": dg.MetadataValue.md(markdown_table(broken, max_rows=20))},
    )

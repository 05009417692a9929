"""Helpers that turn warehouse facts into Dagster metadata a person can read in the UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PREVIEW_CELL_CHARS = 80


def markdown_table(rows: Sequence[Mapping[str, Any]], max_rows: int = 10) -> str:
    """A markdown table of the first `max_rows` rows; long cells are cut."""
    if not rows:
        return "_(no rows)_"
    columns = list(rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:max_rows]:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    if len(rows) > max_rows:
        lines.append(f"\n_{len(rows) - max_rows} more rows not shown_")
    return "\n".join(lines)


def counts_metadata(counts: Mapping[str, Any]) -> dict[str, Any]:
    """A dict of figures as metadata: integers as integer values (the UI plots them over runs)."""
    return {name: dg.MetadataValue.int(value) if isinstance(value, int) else value for name, value in counts.items()}


def query_rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = con.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def table_schema(con: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    columns = con.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, dtype, constraints=dg.TableColumnConstraints(nullable=nullable == "YES"))
            for name, dtype, nullable in columns
        ]
    )


def bar_chart_markdown(labels: Sequence[str], values: Sequence[float], title: str) -> dg.MetadataValue:
    """A horizontal bar chart as a PNG embedded in markdown, so the UI shows it inline."""
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(labels), 3) + 0.8), dpi=90)
    ax.barh(list(labels)[::-1], list(values)[::-1], color="#4f6bed")
    ax.set_title(title)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return _png_markdown(fig, title)


def _png_markdown(fig, title: str) -> dg.MetadataValue:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"


def histogram_markdown(values: Sequence[float], title: str, xlabel: str, bins: int = 30) -> dg.MetadataValue:
    """A histogram as a PNG embedded in markdown."""
    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    ax.hist(list(values), bins=bins, color="#4f6bed")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return _png_markdown(fig, title)


def scatter_markdown(x: Sequence[float], y: Sequence[float], groups: Sequence[str], title: str,
                     order: Sequence[str] | None = None) -> dg.MetadataValue:
    """A scatter plot with one colour per group (legend in `order`, else first-seen), as a PNG embedded in markdown."""
    xs, ys, names = list(x), list(y), [str(g) for g in groups]
    legend = list(order) if order is not None else list(dict.fromkeys(names))
    fig, ax = plt.subplots(figsize=(7, 5), dpi=90)
    palette = "tab10" if len(legend) <= 10 else "tab20"
    colours = plt.get_cmap(palette)
    for index, name in enumerate(legend):
        picked = [i for i, g in enumerate(names) if g == name]
        if picked:
            ax.scatter([xs[i] for i in picked], [ys[i] for i in picked], s=6, alpha=0.6, linewidths=0,
                       color=colours(index % colours.N), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, frameon=False)
    fig.tight_layout()
    return _png_markdown(fig, title)

"""Taobao UserBehavior CSV (Tianchi) into landing files.

Source rows are `user_id,item_id,category_id,behavior_type,timestamp` with no header;
behaviours map pv -> view, cart -> add_to_cart, fav -> favorite, buy -> purchase, and
`category_id` stays on the event as an attribute. Items get their category ids. The
data set has no texts, titles or prices.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from orchestration.importers.day_files import DayFiles, ImportSummary, source_lines, source_stem, utc_day
from resources.landing import LandingZone

BEHAVIOURS = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}
HEADER = "user_id,item_id,category_id,event_type,ts"


def import_taobao(source: Path, landing: LandingZone) -> ImportSummary:
    summary = ImportSummary(source=str(source))
    days = DayFiles()
    categories: dict[str, dict[str, None]] = {}
    for line in source_lines(source):
        summary.rows_read += 1
        fields = line.split(",")
        if len(fields) != 5 or not fields[4].strip().isdigit():
            days.add_malformed(line)  # e.g. a truncated last line: ingestion quarantines it
            summary.malformed += 1
            continue
        user_id, item_id, category_id, behaviour, ts = (f.strip() for f in fields)
        days.add(utc_day(int(ts)), _csv_line([user_id, item_id, category_id, BEHAVIOURS.get(behaviour, behaviour), ts]))
        categories.setdefault(item_id, {})[category_id] = None
    stem = source_stem(source)
    summary.files = days.write(landing, f"{stem}.csv", header=HEADER)
    with landing.open_for_write(f"items/{stem}-items.csv") as out:
        out.write("item_id,categories\n")
        for item_id, cats in categories.items():
            out.write(_csv_line([item_id, "|".join(cats)]) + "\n")
    summary.files.append(f"items/{stem}-items.csv")
    summary.rows_written = summary.rows_read
    summary.days = days.days
    summary.items = len(categories)
    return summary


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()

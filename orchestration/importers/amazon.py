"""Amazon product reviews (McAuley lab JSON lines) into landing files.

Each review becomes a `review` event: reviewer as user, ASIN as item, `unixReviewTime`
as ts, `overall` as rating, `reviewText` as text; `summary` and `helpful` are kept as
attributes. `reviewerName` and `reviewTime` are not carried: the first is personal data
the pipeline has no use for, the second repeats `unixReviewTime`. The data set has no
titles, prices or categories, so items get their id only: nothing is invented.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestration.importers.day_files import DayFiles, ImportSummary, source_lines, source_stem, utc_day
from resources.landing import LandingZone


def review_event(review: dict) -> dict:
    """The landing event for one review; raises KeyError/ValueError/TypeError when it lacks what is needed."""
    ts = int(review["unixReviewTime"])
    event = {
        "event_id": f"{review['reviewerID']}:{review['asin']}",
        "user_id": review["reviewerID"],
        "event_type": "review",
        "ts": ts,
        "item_id": review["asin"],
        "rating": review.get("overall"),
        "text": review.get("reviewText"),
        "summary": review.get("summary"),
        "helpful": review.get("helpful"),
    }
    return {k: v for k, v in event.items() if v is not None}


def import_amazon_reviews(source: Path, landing: LandingZone) -> ImportSummary:
    summary = ImportSummary(source=str(source))
    days = DayFiles()
    items: dict[str, None] = {}
    for line in source_lines(source):
        summary.rows_read += 1
        try:
            event = review_event(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError):
            days.add_malformed(line)
            summary.malformed += 1
            continue
        days.add(utc_day(event["ts"]), json.dumps(event, ensure_ascii=False))
        items.setdefault(str(event["item_id"]), None)
    stem = source_stem(source)
    summary.files = days.write(landing, f"{stem}.jsonl")
    with landing.open_for_write(f"items/{stem}-items.jsonl") as out:
        for item_id in items:
            out.write(json.dumps({"item_id": item_id}) + "\n")
    summary.files.append(f"items/{stem}-items.jsonl")
    summary.rows_written = summary.rows_read
    summary.days = days.days
    summary.items = len(items)
    return summary


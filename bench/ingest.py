"""Ingestion throughput: raw_events + events against DuckDB's bare read_json of the same files.

Writes bench/results/ingest.json with `events`, `events_per_s`, `duckdb_bare_events_per_s`
and `ratio` (ours / bare). Both sides load the same generated JSON-lines files into a
fresh DuckDB file in the same run; ours also validates, masks, deduplicates and counts.

    python -m bench.ingest [--events 1000000] [--days 10]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb

from assets.events import clean_events
from assets.raw_events import load_raw_events
from bench.machine import record
from resources.landing import LandingZone
from resources.warehouse import Warehouse

TYPES = ["view"] * 60 + ["click"] * 15 + ["add_to_cart"] * 8 + ["favorite"] * 4 + ["purchase"] * 5 + \
        ["review"] * 3 + ["rating"] * 1 + ["search"] * 3 + ["chat"] * 1
WORDS = "great sound cheap strings guitar amp cable works broke loud warm tone fast shipping love it".split()


def generate(landing: Path, events: int, days: int, seed: int = 1) -> None:
    """JSON-lines event files, one per day: the shape a shop's exporter would write."""
    rng = random.Random(seed)
    start = date(2025, 1, 1)
    per_day = events // days
    for d in range(days):
        day = start + timedelta(days=d)
        folder = landing / "events" / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        count = per_day if d < days - 1 else events - per_day * (days - 1)
        with open(folder / "events.jsonl", "w") as out:
            for i in range(count):
                kind = rng.choice(TYPES)
                event = {"event_id": f"{day:%Y%m%d}-{i}", "user_id": f"u{rng.randrange(100_000)}", "event_type": kind,
                         "ts": f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
                         "session_id": f"s{rng.randrange(10**7)}"}
                if kind not in ("search", "chat"):
                    event["item_id"] = f"i{rng.randrange(20_000)}"
                if kind in ("review", "search", "chat"):
                    event["text"] = " ".join(rng.choices(WORDS, k=rng.randrange(3, 25)))
                if kind in ("review", "rating"):
                    event["rating"] = rng.randrange(1, 6)
                if kind == "purchase":
                    event["price"] = round(rng.uniform(2, 900), 2)
                    event["quantity"] = rng.randrange(1, 3)
                out.write(json.dumps(event) + "\n")


def ours(landing: Path, database: Path) -> float:
    zone = LandingZone(root=str(landing))
    days = zone.event_days()
    warehouse = Warehouse(path=str(database))
    started = time.perf_counter()
    with warehouse.transaction() as con:  # what the raw_events asset does
        load_raw_events(con, zone, days)
    with warehouse.transaction() as con:  # what the events asset does
        counts = clean_events(con, days, run_id=None)
    elapsed = time.perf_counter() - started
    assert counts.rows_read == counts.loaded + counts.duplicates + counts.quarantined
    return elapsed


def duckdb_bare(landing: Path, database: Path) -> float:
    started = time.perf_counter()
    con = duckdb.connect(str(database))
    con.execute("CREATE TABLE events AS SELECT * FROM read_json(?, format = 'newline_delimited')",
                [str(landing / "events" / "*" / "*.jsonl")])
    con.close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"generating {args.events:,} events over {args.days} days ...", file=sys.stderr)
        generate(root / "landing", args.events, args.days)
        bare_s = duckdb_bare(root / "landing", root / "bare.duckdb")
        ours_s = ours(root / "landing", root / "ours.duckdb")
    result = {
        "events": args.events,
        "days": args.days,
        "events_per_s": round(args.events / ours_s),
        "duckdb_bare_events_per_s": round(args.events / bare_s),
        "ratio": round(bare_s / ours_s, 3),
        "ours_s": round(ours_s, 2),
        "duckdb_bare_s": round(bare_s, 2),
    }
    return record("ingest", result)


if __name__ == "__main__":
    main()

"""Incremental portraits: one new day folded into a 100,000-user table, against a full recompute.

A generated shop (100,000 users, 20,000 items with categories, brands, prices and 384-d
item embeddings, 1,000,000 events in sessions over 60 days) is written straight into a
DuckDB file. The cost of an incremental update grows with the users active that day, so
the result records them (`users_updated_incrementally`).
Portraits are built from the first 59 days; then the 60th day is loaded and the portraits
are updated incrementally (only that day's users, from the stored statistics), and
separately recomputed in full from all 60 days, in the same run on copies of the same file.
Both results are compared (max absolute difference of every numeric field and vector).

Writes bench/results/profiles.json: `users`, `incremental_s`, `full_s`, `speedup`.

    python -m bench.profiles [--users 100000] [--items 20000] [--events 1000000] [--days 60]
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from assets.profiles import ProfileConfig, update_profiles
from bench.machine import record

CATEGORIES = ["Guitars", "Bass", "Drums", "Keyboards", "Microphones", "Amplifiers", "Strings", "Cables", "Studio", "DJ"]
DIMENSION = 384


def generate(path: Path, users: int, items: int, events: int, days: int, seed: int = 1, texts: bool = False) -> None:
    """Events in sessions, with power-law user and item activity and a real shop's mix of event types.

    With `texts`, 3% of events become searches with a query (drawn from a few thousand, as a
    shop's queries repeat) and every review carries a written text (nearly all distinct), so
    the language-model stage has a realistic amount of text to encode.
    """
    con = duckdb.connect(str(path))
    con.execute(f"SELECT setseed({1 / (seed + 1)})")
    categories = "[" + ", ".join(f"'{c}'" for c in CATEGORIES) + "]"
    con.execute(f"""
        CREATE TABLE items AS
        SELECT 'I' || i AS item_id, 'Item ' || i AS title,
               [{categories}[1 + (hash(i) % {len(CATEGORIES)})::INT]] AS categories,
               'Brand' || (hash(i * 3) % 200) AS brand,
               round(5 + 995 * pow(random(), 2), 2) AS price, NULL::VARCHAR AS description, NULL::JSON AS attributes
        FROM range({items}) t(i)""")
    search, item_of_search, text = ("", "WHEN true THEN", "NULL::VARCHAR") if not texts else _text_sql()
    # events come in sessions (a user, a day, 1-11 events, 6 on average), as in a real shop's
    # logs; every user has at least one session, the busiest many
    con.execute(f"""
        CREATE TABLE events AS
        WITH sessions AS (
            SELECT s, 'U' || CASE WHEN s < {users} THEN s ELSE floor({users} * pow(random(), 1.6))::BIGINT END AS user_id,
                   (DATE '2026-01-01' + (s % {days})::INT) AS event_date, floor(random() * 80000)::BIGINT AS start,
                   1 + floor(random() * 11)::INT AS length
            FROM range({events} // 6) t(s)
        ), raw AS (
            SELECT row_number() OVER () - 1 AS i, user_id, event_date, start + 60 * k AS second,
                   random() AS r, random() AS v, random() AS x
            FROM sessions, unnest(range(length)) AS t(k)
            LIMIT {events}
        )
        SELECT 'e' || i AS event_id, event_date, user_id,
               CASE {search} WHEN r < 0.60 THEN 'view' WHEN r < 0.75 THEN 'click' WHEN r < 0.83 THEN 'add_to_cart'
                    WHEN r < 0.87 THEN 'favorite' WHEN r < 0.92 THEN 'purchase' WHEN r < 0.95 THEN 'review'
                    ELSE 'rating' END AS event_type,
               event_date + to_seconds(least(second, 86399)) AS ts,
               CASE {item_of_search} 'I' || floor({items} * pow(v, 1.8))::BIGINT END AS item_id,
               {text} AS text, CASE WHEN r >= 0.92 THEN 1 + floor(5 * x)::INT END::DOUBLE AS rating,
               NULL::DOUBLE AS price, 1 AS quantity, NULL::VARCHAR AS session_id, NULL::JSON AS attributes,
               'bench.jsonl' AS source_file, i AS line_no
        FROM raw""")
    con.execute("UPDATE events SET price = (SELECT price FROM items WHERE items.item_id = events.item_id) "
                "WHERE event_type = 'purchase'")
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((items, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.table({"item_id": [f"I{i}" for i in range(items)],
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION)})
    con.register("_vectors", table)
    con.execute(f"CREATE TABLE item_embeddings AS SELECT item_id, 'bench-random' AS model_id, 'catalog' AS source, "
                f"1 AS n_texts, vector::FLOAT[{DIMENSION}] AS vector FROM _vectors")
    con.execute("CREATE TABLE ingest_stats AS SELECT 'events' AS source, event_date::VARCHAR AS partition_key, "
                "'bench' AS run_id FROM events GROUP BY event_date")
    con.close()


def _text_sql() -> tuple[str, str, str]:
    """SQL pieces for `generate(texts=True)`: the search branch of the event type, the item
    id's guard (searches carry none) and the text: a query from category, brand and
    modifier words, or a review of five word slots whose tone follows its rating."""
    words = {
        "good": ["great", "solid", "excellent", "lovely", "reliable", "superb", "sturdy", "fantastic"],
        "bad": ["flimsy", "noisy", "disappointing", "cheap-feeling", "fragile", "awkward", "poor", "faulty"],
        "thing": ["sound", "build", "finish", "tone", "setup", "packaging", "value", "feel", "cable", "case"],
        "verb": ["arrived quickly", "works as described", "broke after a week", "needed adjusting",
                 "beats my old one", "matches the photos", "took ages to ship", "fits my studio"],
        "close": ["Would buy again.", "Not worth the price.", "My kids love it.", "Returned it.",
                  "Recommended for beginners.", "Fine for gigs.", "Five stars from me.", "Support was helpful."],
        "modifier": ["cheap", "best", "beginner", "professional", "used", "wireless", "black", "vintage", "small",
                     "studio", "portable", "electric", "acoustic", "sale", "gift", "set", "kit", "case", "stand",
                     "strings"],
    }
    lists = {k: "[" + ", ".join("'" + w.replace("'", "''") + "'" for w in v) + "]" for k, v in words.items()}
    categories = "[" + ", ".join(f"'{c.lower()}'" for c in CATEGORIES) + "]"

    def pick(name: str) -> str:
        return f"{lists[name]}[1 + floor(random() * {len(words[name])})::INT]"

    query = (f"CASE WHEN x < 0.5 THEN {categories}[1 + floor(random() * {len(CATEGORIES)})::INT] || ' ' || "
             f"{pick('modifier')} ELSE 'brand' || floor(200 * pow(random(), 2))::INT || ' ' || {pick('modifier')} END")
    review = (f"'The ' || {pick('thing')} || ' is ' || CASE WHEN x >= 0.6 THEN {pick('good')} ELSE {pick('bad')} END "
              f"|| ' and it ' || {pick('verb')} || '. ' || {pick('close')} || ' (' || {pick('thing')} || ', "
              f"' || {pick('modifier')} || ')'")
    text = f"CASE WHEN r < 0.03 THEN {query} WHEN r >= 0.92 AND r < 0.95 THEN {review} END"
    return "WHEN r < 0.03 THEN 'search'", "WHEN r >= 0.03 THEN", text


def max_difference(a: duckdb.DuckDBPyConnection, b: duckdb.DuckDBPyConnection) -> float:
    numeric = ["tenure_days", "recency_days", "engagement", "monetary", "sentiment", "price_index",
               "price_sensitivity", "purchase_recency_days"]
    left = a.sql("SELECT * FROM user_profiles ORDER BY user_id").df()
    right = b.sql("SELECT * FROM user_profiles ORDER BY user_id").df()
    assert list(left["user_id"]) == list(right["user_id"])
    worst = max(float(np.nanmax(np.abs(left[c].to_numpy(dtype=float, na_value=np.nan)
                                       - right[c].to_numpy(dtype=float, na_value=np.nan)), initial=0.0))
                for c in numeric)
    for x, y in zip(left["interest"], right["interest"]):
        if isinstance(x, np.ndarray):
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "shop.duckdb"
        print(f"generating {args.events:,} events, {args.users:,} users, {args.items:,} items ...", file=sys.stderr)
        generate(base, args.users, args.items, args.events, args.days)
        with duckdb.connect(str(base)) as con:
            last = con.execute("SELECT max(partition_key) FROM ingest_stats").fetchall()[0][0]
            # the state as it stood before the last day landed
            con.execute("ALTER TABLE events RENAME TO all_events")
            con.execute("CREATE TABLE events AS SELECT * FROM all_events WHERE event_date < ?::DATE", [last])
            con.execute("ALTER TABLE ingest_stats RENAME TO all_stats")
            con.execute("CREATE TABLE ingest_stats AS SELECT * FROM all_stats WHERE partition_key < ?", [last])
            update_profiles(con, ProfileConfig())
            # the last day lands
            con.execute("DROP TABLE events")
            con.execute("ALTER TABLE all_events RENAME TO events")
            con.execute("DROP TABLE ingest_stats")
            con.execute("ALTER TABLE all_stats RENAME TO ingest_stats")
            con.execute("CHECKPOINT")
        shutil.copy(base, Path(tmp) / "full.duckdb")
        print("incremental update of the last day ...", file=sys.stderr)
        with duckdb.connect(str(base)) as con:
            started = time.perf_counter()
            con.execute("BEGIN")
            incremental = update_profiles(con, ProfileConfig())
            con.execute("COMMIT")
            incremental_s = time.perf_counter() - started
        print("full recompute ...", file=sys.stderr)
        with duckdb.connect(str(Path(tmp) / "full.duckdb")) as con:
            started = time.perf_counter()
            con.execute("BEGIN")
            full = update_profiles(con, ProfileConfig(full_rebuild=True))
            con.execute("COMMIT")
            full_s = time.perf_counter() - started
        with duckdb.connect(str(base), read_only=True) as a, duckdb.connect(str(Path(tmp) / "full.duckdb"),
                                                                           read_only=True) as b:
            difference = max_difference(a, b)
            events_last_day = a.execute("SELECT count(*) FROM events WHERE event_date = ?::DATE", [last]).fetchall()[0][0]
    assert incremental.mode == "incremental" and full.mode == "full"
    result = {
        "users": full.users,
        "events": args.events,
        "days": args.days,
        "events_last_day": events_last_day,
        "users_updated_incrementally": incremental.users_updated,
        "incremental_s": round(incremental_s, 3),
        "full_s": round(full_s, 3),
        "speedup": round(full_s / incremental_s, 2),
        "max_abs_difference": difference,
    }
    return record("profiles", result)


if __name__ == "__main__":
    main()

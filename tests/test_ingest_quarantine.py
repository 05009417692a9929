"""A landing day mixing good rows with every kind of bad row, through real Dagster runs."""

import hashlib
import json

import duckdb
import pytest

from assets.validation import REASONS
from tests.ingest_helpers import check_results, ingest_events, query, write

DAY = "2024-03-01"


def _line(**fields) -> str:
    return json.dumps(fields)


GOOD = "good"
DUPLICATE = "duplicate"

# (line, expected outcome): GOOD, DUPLICATE, or (reason, field)
JSONL_ROWS = [
    (_line(user_id="u1", event_type="view", ts="2024-03-01T10:00:00Z", item_id="i1", colour="red"), GOOD),
    (_line(user_id="u1", event_type="view", ts="2024-03-01T10:00:00Z", item_id="i1", colour="red"), DUPLICATE),
    (_line(user_id=7, event_type="Search", ts=1709290000, text="mail bob@example.com or call +1 (555) 123-4567"), GOOD),
    ("not json at all", ("bad_json", None)),
    ("[1, 2, 3]", ("bad_json", None)),
    (_line(event_type="view", ts="2024-03-01T10:00:00Z", item_id="i1"), ("missing_field", "user_id")),
    (_line(user_id={"id": 1}, event_type="view", ts="2024-03-01T10:00:00Z", item_id="i1"), ("wrong_type", "user_id")),
    (_line(user_id="u2", ts="2024-03-01T10:00:00Z", item_id="i1"), ("missing_field", "event_type")),
    (_line(user_id="u2", event_type="teleport", ts="2024-03-01T10:00:00Z", item_id="i1"), ("unknown_event_type", "event_type")),
    (_line(user_id="u2", event_type="view", item_id="i1"), ("missing_field", "ts")),
    (_line(user_id="u2", event_type="view", ts="yesterday", item_id="i1"), ("bad_timestamp", "ts")),
    (_line(user_id="u2", event_type="view", ts="1850-03-01T00:00:00Z", item_id="i1"), ("ts_out_of_range", "ts")),
    (_line(user_id="u2", event_type="view", ts=1709290000000, item_id="i1"), ("ts_out_of_range", "ts")),
    (_line(user_id="u2", event_type="view", ts="2024-03-02T00:00:01Z", item_id="i1"), ("ts_outside_partition", "ts")),
    (_line(user_id="u2", event_type="view", ts="2024-03-01T10:00:00Z"), ("missing_field", "item_id")),
    (_line(user_id="u2", event_type="review", ts="2024-03-01T10:00:00Z", item_id="i1", rating=7, text="ok"), ("bad_rating", "rating")),
    (_line(user_id="u2", event_type="rating", ts="2024-03-01T10:00:00Z", item_id="i1"), ("missing_field", "rating")),
    (_line(user_id="u2", event_type="purchase", ts="2024-03-01T10:00:00Z", item_id="i1", price=-5), ("bad_price", "price")),
    (_line(user_id="u2", event_type="purchase", ts="2024-03-01T10:00:00Z", item_id="i1", quantity=0), ("bad_quantity", "quantity")),
    (_line(user_id="u2", event_type="review", ts="2024-03-01T10:00:00Z", item_id="i1", text="x" * 30_000), ("text_too_long", "text")),
    (_line(user_id="u2", event_type="search", ts="2024-03-01T10:00:00Z"), ("missing_field", "text")),
    (_line(user_id="u2", event_type="chat", ts="2024-03-01T10:00:00Z", text={"msg": "hi"}), ("wrong_type", "text")),
    (_line(user_id="u2", event_type="view", ts="2024-03-01T10:00:00Z", item_id="i1", pad="y" * 1_100_000), ("record_too_large", None)),
    (_line(event_id="e1", user_id="u3", event_type="purchase", ts="2024-03-01T12:00:00Z", item_id="i2", price=19.5, quantity=2), GOOD),
    (_line(event_id="e1", user_id="u3", event_type="purchase", ts="2024-03-01T12:00:05Z", item_id="i2", price=19.5, quantity=2), DUPLICATE),
    (_line(user_id="u3", event_type="chat", ts="2024-03-01T09:30:00+08:00", text="Where is my order?\x07  Call 13800138000"), GOOD),
    (_line(user_id="u3", event_type="review", ts="2024-03-01T13:00:00Z", item_id="i2", rating="4", text="Great &amp; loud\u00a0amp"), GOOD),
]
INVALID_UTF8_LINE = b'{"user_id": "u4", "event_type": "view", "ts": "2024-03-01T10:00:00Z", "item_id": "\xff\xfe"}'

CSV_TEXT = (
    "user_id,event_type,ts,item_id,price\n"
    "u5,add_to_cart,2024-03-01 09:00:00,i3,5\n"          # line 2: good
    "u5,add_to_cart,2024-03-01 09:00:00\n"               # line 3: wrong_field_count
    'u5,view,2024-03-01 09:05:00,"i""4",\n'             # line 4: good (quoted item id, empty price)
    'u5,view,2024-03-01 09:06:00,"i5"x,\n'               # line 5: bad_csv
    "u5,favorite,1709283960,i6,\n"                       # line 6: good (epoch as text)
)


@pytest.fixture
def landed(home):
    day = home / "landing" / "events" / f"date={DAY}"
    lines = [line.encode() for line, _ in JSONL_ROWS]
    lines.insert(10, INVALID_UTF8_LINE)  # becomes line 11
    lines.insert(5, b"   ")  # a blank line is not a row: line 6
    write(day / "mixed.jsonl", b"\n".join(lines) + b"\n")
    write(day / "mixed.csv", CSV_TEXT)
    write(day / "notes.txt", "not a landing format: ignored, reported")
    write(day / ".incoming.jsonl.tmp", "an in-progress write: never read")
    return home


def _expected_jsonl() -> dict[int, object]:
    expected = {}
    line_no = 0
    for position, (_, outcome) in enumerate(JSONL_ROWS):
        line_no += 1
        if position == 5:
            line_no += 1  # the blank line
        if position == 10:
            expected[line_no] = ("invalid_utf8", None)
            line_no += 1
        expected[line_no] = outcome
    return expected


def test_every_bad_row_is_quarantined_with_its_reason_and_every_good_row_loads(landed, instance):
    result = ingest_events(landed, instance, [DAY])
    assert result.success
    assert all(check_results(result).values()), check_results(result)

    quarantined = {(f, n): (r, fld) for f, n, r, fld in query(
        landed, "SELECT source_file, line_no, reason, field FROM quarantine WHERE source = 'events'")}
    jsonl = f"events/date={DAY}/mixed.jsonl"
    csv_file = f"events/date={DAY}/mixed.csv"
    expected = _expected_jsonl()
    for line_no, outcome in expected.items():
        if isinstance(outcome, tuple):
            assert quarantined.get((jsonl, line_no)) == outcome, f"line {line_no}"
    assert quarantined[(csv_file, 3)] == ("wrong_field_count", None)
    assert quarantined[(csv_file, 5)] == ("bad_csv", None)
    bad_rows = sum(isinstance(o, tuple) for o in expected.values()) + 2
    extra = {k: v for k, v in quarantined.items() if k[0] != jsonl or not isinstance(expected.get(k[1]), tuple)}
    assert len(quarantined) == bad_rows, extra

    loaded = {(f, n) for f, n in query(landed, "SELECT source_file, line_no FROM events")}
    good_jsonl = {(jsonl, n) for n, o in expected.items() if o == GOOD}
    assert loaded == good_jsonl | {(csv_file, 2), (csv_file, 4), (csv_file, 6)}

    read, events, duplicates, bad = query(
        landed, "SELECT rows_read, loaded, duplicates, quarantined FROM ingest_stats WHERE source = 'events'")[0]
    assert read == len(expected) + 5 == events + duplicates + bad
    assert duplicates == 2
    assert reasons_documented(r for r, _ in quarantined.values())


def reasons_documented(reasons) -> bool:
    return all(r in REASONS for r in reasons)


def test_cleaning_masks_pii_normalizes_text_and_keeps_unknown_fields(landed, instance):
    ingest_events(landed, instance, [DAY])
    rows = dict(query(landed, "SELECT event_type, text FROM events WHERE text IS NOT NULL"))
    assert rows["search"] == "mail [email] or call [phone]"
    assert rows["chat"] == "Where is my order? Call [phone]"
    assert rows["review"] == "Great & loud amp"
    ((attributes,),) = query(landed, "SELECT attributes FROM events WHERE user_id = 'u1'")
    assert json.loads(attributes) == {"colour": "red"}
    ((ts,),) = query(landed, "SELECT strftime(ts, '%Y-%m-%dT%H:%M:%S') FROM events WHERE event_type = 'chat'")
    assert ts == "2024-03-01T01:30:00"
    assert query(landed, "SELECT user_id, quantity, price FROM events WHERE event_id = 'e1'") == [("u3", 2, 19.5)]
    everything = " ".join(str(r) for r in query(landed, "SELECT * FROM events") + query(landed, "SELECT * FROM quarantine"))
    assert "bob@example.com" not in everything and "13800138000" not in everything


def _table_hashes(home) -> dict[str, str]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        hashes = {}
        for table, order in (("raw_events", "source_file, line_no"), ("events", "source_file, line_no"),
                             ("quarantine", "source_file, line_no")):
            rows = con.execute(f"SELECT * EXCLUDE ({'ingested_at' if table == 'raw_events' else 'source_file'}"
                               f"{', quarantined_at' if table == 'quarantine' else ''}) FROM {table} ORDER BY {order}").fetchall()
            hashes[table] = hashlib.sha256(repr(rows).encode()).hexdigest()
        return hashes
    finally:
        con.close()


def test_rerunning_a_day_replaces_it_exactly(landed, instance):
    ingest_events(landed, instance, [DAY])
    first = _table_hashes(landed)
    ingest_events(landed, instance, [DAY])
    assert _table_hashes(landed) == first
    assert query(landed, "SELECT count(*) FROM ingest_stats WHERE source = 'events'") == [(1,)]


def test_an_unreadable_file_is_quarantined_and_the_rest_of_the_day_loads(landed, instance):
    """Through the assets: the run succeeds and its checks pass; the file is one quarantined row
    naming it, the run's metadata lists it, and every other table is what it was before."""
    ingest_events(landed, instance, [DAY])
    before = _table_hashes(landed)
    ((quarantined_before,),) = query(landed, "SELECT count(*) FROM quarantine")
    write(landed / "landing" / "events" / f"date={DAY}" / "broken.parquet", b"PAR1 this is not parquet")

    result = ingest_events(landed, instance, [DAY])

    assert result.success
    assert all(check_results(result).values()), check_results(result)
    metadata = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    broken = f"events/date={DAY}/broken.parquet"
    assert metadata["raw_events"]["unreadable_files"].value == [broken]
    assert "unreadable_file" in metadata["quarantine"]["reasons"].value
    ((line_no, field, detail),) = query(landed, "SELECT line_no, field, detail FROM quarantine WHERE reason = 'unreadable_file'")
    assert (line_no, field) == (0, None) and broken in detail and "Parquet" in detail
    after = _table_hashes(landed)
    assert after["events"] == before["events"]
    read, loaded, duplicates, bad = query(
        landed, "SELECT rows_read, loaded, duplicates, quarantined FROM ingest_stats WHERE source = 'events'")[0]
    assert read == loaded + duplicates + bad and bad == quarantined_before + 1
    assert query(landed, "SELECT count(*) FROM quarantine WHERE source_file <> ?", [broken]) == [(quarantined_before,)]


def test_a_range_of_days_is_one_run_and_equals_day_by_day(home, instance, tmp_path):
    days = ["2024-03-01", "2024-03-02", "2024-03-03"]
    for day in days:
        write(home / "landing" / "events" / f"date={day}" / "e.jsonl", "\n".join(
            _line(user_id=f"u{i}", event_type="view", ts=f"{day}T0{i}:00:00Z", item_id=f"i{i}") for i in range(5)) + "\n")
    result = ingest_events(home, instance, days)
    assert result.success
    runs = instance.get_runs()
    assert len(runs) == 1
    materialized = {e.partition for e in result.get_asset_materialization_events()
                    if e.asset_key.to_user_string() == "events"}
    assert materialized == set(days)
    by_range = _table_hashes(home)
    for day in days:
        ingest_events(home, instance, [day])
    assert _table_hashes(home) == by_range


def test_rows_of_erased_users_are_counted_as_erased_and_their_files_rewritten(landed, instance):
    """Users erased by `portrait forget` before their rows are delivered (again): a numeric id, a
    line that is not valid UTF-8, and CSV rows, good and broken. None is loaded or quarantined;
    each is counted as erased, the counts reconcile, and the landing files lose exactly those rows."""
    from assets.erasure import user_hash
    from orchestration.forget import record_erasure

    erased = ("7", "u4", "u5")  # 1 JSON line, 1 invalid UTF-8 line, and every CSV row: 3 good, 2 broken
    with duckdb.connect(str(landed / "warehouse.duckdb")) as con:
        for user in erased:
            record_erasure(con, user_hash(user), None, 0, {}, [])
    folder = landed / "landing" / "events" / f"date={DAY}"
    jsonl_before = (folder / "mixed.jsonl").read_bytes().split(b"\n")

    result = ingest_events(landed, instance, [DAY])

    assert result.success
    assert all(check_results(result).values()), check_results(result)
    metadata = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert metadata["raw_events"]["rows_erased"].value == metadata["events"]["rows_erased"].value == 7
    (read, loaded, duplicates, bad, gone), = query(
        landed, "SELECT rows_read, loaded, duplicates, quarantined, erased FROM ingest_stats WHERE source = 'events'")
    assert gone == 7 and read == len(_expected_jsonl()) + 5 == loaded + duplicates + bad + gone
    assert query(landed, "SELECT count(*) FROM events WHERE user_id IN ('7', 'u4', 'u5')") == [(0,)]
    assert query(landed, "SELECT count(*) FROM quarantine WHERE regexp_matches(record, '\\bu[45]\\b')") == [(0,)]
    assert query(landed, "SELECT count(*), max(length(record)) FROM raw_events WHERE read_error = 'erased'") == [(7, 0)]
    # the files lose exactly those rows, and the next load finds nothing to remove
    assert (folder / "mixed.csv").read_text(encoding="utf-8") == CSV_TEXT.split("\n")[0] + "\n"
    jsonl_after = (folder / "mixed.jsonl").read_bytes().split(b"\n")
    assert [line for line in jsonl_before if line not in jsonl_after] == [
        JSONL_ROWS[2][0].encode(), INVALID_UTF8_LINE]
    assert ingest_events(landed, instance, [DAY]).success
    assert query(landed, "SELECT rows_read, erased FROM ingest_stats WHERE source = 'events'") == [(read - 7, 0)]
    assert query(landed, "SELECT count(*) FROM raw_events WHERE read_error = 'erased'") == [(0,)]

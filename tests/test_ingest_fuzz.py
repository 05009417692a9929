"""Ingestion against hostile landing files.

Whatever a day folder holds (truncated lines, wrong types, huge fields, invalid UTF-8, binary
garbage, duplicated rows and files, timestamps far in the past and future, several formats,
an empty file, a file deleted while the run lists it, a file that cannot be read at all),
every row read is loaded, counted as a duplicate, or quarantined with a documented reason and
its file and line (line 0: a whole unreadable file); nothing crashes the day; and per
partition rows read = loaded + duplicates + quarantined.

Row contents are fuzzed with Hypothesis. The hostile files themselves are fixed cases: their
failure modes are known in advance, so exact expectations say more than random ones would.
"""

import csv
import gzip
import io
import json
import random
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assets import landing_files
from assets.events import ACTUAL_EVENT_COUNTS, EventCounts, clean_events
from assets.landing_files import PROBLEM_CHARS, LandingFileError, read_landing_file
from assets.raw_events import RawLoad, load_raw_events
from assets.validation import QUARANTINE_RECORD_CHARS, REASONS
from resources.landing import LandingZone
from tests.ingest_helpers import check_results, ingest_events, write

DAY = "2024-03-01"
NEXT_DAY = "2024-03-02"
LOADED = "loaded"
DUPLICATE = "duplicate"

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=5)
good_event = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u1", "u2", 3]),
    "event_type": st.sampled_from(["view", "click", "purchase", "search", "review", "teleport"]),
    "ts": st.sampled_from([f"{DAY}T10:00:00Z", 1709287200, "2024-03-02T00:00:00Z", "soon", 10**13,
                           "1900-01-01T00:00:00Z", 0, "2200-01-01T00:00:00Z", 7258118400]),
}, optional={
    "item_id": st.sampled_from(["i1", "i2", 7, None, ""]),
    "text": st.one_of(st.text(max_size=40), st.just("call 555-123-4567")),
    "rating": st.one_of(st.integers(-1, 7), st.text(max_size=3)),
    "price": st.one_of(st.floats(allow_nan=True), st.integers(-5, 500)),
    "quantity": st.one_of(st.integers(-1, 3), st.floats(0, 3)),
    "event_id": st.sampled_from(["e1", "e2", None]),
    "extra": values,
})
line = st.one_of(
    good_event.map(lambda e: json.dumps(e).encode()),
    st.dictionaries(st.text(max_size=8), values, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.text(max_size=40).map(lambda t: t.replace("\n", " ").replace("\r", " ").encode()),
)
# Rows that pass every rule, so that loading and deduplication are exercised as much as quarantine.
valid_event = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u1", "u2", 3]),
    "event_type": st.sampled_from(["view", "click", "purchase"]),
    "ts": st.one_of(st.integers(1709251200, 1709337599), st.sampled_from([f"{DAY}T00:00:00Z", f"{DAY}T23:59:59+00:00"])),
    "item_id": st.sampled_from(["i1", "i2", 7]),
}, optional={"price": st.integers(0, 500), "event_id": st.sampled_from(["e1", "e2"])})
any_line = st.one_of(valid_event.map(lambda e: json.dumps(e).encode()), line)
UTC = timezone.utc
PARQUET_SCHEMA = pa.schema([("user_id", pa.string()), ("event_type", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                            ("item_id", pa.string()), ("text", pa.string()), ("price", pa.float64())])
parquet_row = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u1", "u2", "", None]),
    "event_type": st.sampled_from(["view", "purchase", "search", "teleport", None]),
    "ts": st.one_of(st.none(), st.sampled_from([datetime(1900, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
                                                datetime(2200, 1, 1, tzinfo=UTC)]),
                    st.datetimes(datetime(2024, 2, 29), datetime(2024, 3, 2), timezones=st.just(UTC))),
    "item_id": st.sampled_from(["i1", "i2", None]),
    "text": st.one_of(st.none(), st.text(max_size=40)),
    "price": st.one_of(st.none(), st.floats(allow_nan=True)),
})
valid_parquet_row = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u1", "u2"]),
    "event_type": st.sampled_from(["view", "purchase"]),
    "ts": st.datetimes(datetime(2024, 3, 1), datetime(2024, 3, 1, 23, 59, 59), timezones=st.just(UTC)),
    "item_id": st.sampled_from(["i1", "i2"]),
})
CSV_FIELDS = ("user_id", "event_type", "ts", "item_id", "text", "rating", "price", "quantity", "event_id", "extra")


def _connect(root: Path | None) -> duckdb.DuckDBPyConnection:
    """A warehouse file under `root`, or one in memory (faster, for many Hypothesis examples)."""
    con = duckdb.connect(str(root / "w.duckdb") if root else ":memory:")
    con.execute("SET TimeZone = 'UTC'")
    return con


def _ingest(con: duckdb.DuckDBPyConnection, landing: Path, days: list[str]) -> tuple[RawLoad, EventCounts]:
    """What `raw_events` then `validate_events` run, in one transaction each as the assets do."""
    con.begin()
    load = load_raw_events(con, LandingZone(root=str(landing)), days)
    con.commit()
    con.begin()
    counts = clean_events(con, days, run_id=None)
    con.commit()
    return load, counts


def _outcomes(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], str]:
    """Each raw row's fate by (file, line): loaded, duplicate, or its quarantine reason.

    Checks on the way that a row is never both loaded and quarantined, nor quarantined twice,
    and that loaded and quarantined rows name a file and line that were read."""
    raw = con.execute("SELECT source_file, line_no FROM raw_events").fetchall()
    loaded = con.execute("SELECT source_file, line_no FROM events").fetchall()
    quarantined = con.execute("SELECT source_file, line_no, reason FROM quarantine WHERE source = 'events'").fetchall()
    kept, reasons = set(loaded), {(f, n): r for f, n, r in quarantined}
    assert len(set(raw)) == len(raw) and len(kept) == len(loaded) and len(reasons) == len(quarantined)
    assert not kept & reasons.keys()
    assert kept | reasons.keys() <= set(raw)
    return {key: reasons.get(key, LOADED if key in kept else DUPLICATE) for key in raw}


def _assert_reconciles(con: duckdb.DuckDBPyConnection, days: list[str]) -> None:
    """Per partition: the stats add up, and agree with the rows the tables hold."""
    stats = {p: (read, loaded, dup, bad) for p, read, loaded, dup, bad in con.execute(
        "SELECT partition_key, rows_read, loaded, duplicates, quarantined FROM ingest_stats WHERE source = 'events'").fetchall()}
    actual = {p: (read, loaded, bad) for p, read, loaded, bad in con.execute(ACTUAL_EVENT_COUNTS).fetchall()}
    assert sorted(stats) == sorted(days)
    for day, (read, loaded, duplicates, quarantined) in stats.items():
        assert read == loaded + duplicates + quarantined, day
        assert actual.get(day, (0, 0, 0)) == (read, loaded, quarantined), day
    assert set(actual) <= set(stats)
    bad_reasons = con.execute("SELECT DISTINCT reason FROM quarantine").fetchall()
    assert {r for (r,) in bad_reasons} <= set(REASONS)
    assert con.execute("SELECT count(*) FROM quarantine WHERE detail IS NULL OR detail = '' OR source_file IS NULL "
                       "OR (line_no < 1) <> (reason = 'unreadable_file')").fetchone()[0] == 0


def _jsonl(lines: list[bytes], end: bytes = b"\n") -> bytes:
    return b"\n".join(lines) + end


def _non_blank(lines: list[bytes]) -> int:
    return sum(1 for raw in lines if raw.decode("utf-8", "replace").strip(" \t\r"))


def _csv(rows: list[dict]) -> tuple[bytes, int]:
    """CSV text of `rows` over `CSV_FIELDS`, and how many of its rows are not blank."""
    cells = [["" if (v := row.get(f)) is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
              for f in CSV_FIELDS] for row in rows]
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    writer.writerows(cells)
    return out.getvalue().encode(), sum(1 for row in cells if any(c.strip() for c in row))


def _parquet(rows: list[dict], schema: pa.Schema = PARQUET_SCHEMA) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return sink.getvalue()


# -- Generated rows in every format, one day folder ------------------------------------------------


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, min_size=1, max_size=25))
def test_every_row_is_accounted_for(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("fuzz")
    day = root / "landing" / "events" / f"date={DAY}"
    day.mkdir(parents=True)
    (day / "fuzz.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    non_blank = sum(1 for raw in lines if raw.decode("utf-8", "replace").strip(" \t\r"))

    con = duckdb.connect(str(Path(root) / "w.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    load_raw_events(con, LandingZone(root=str(root / "landing")), [DAY])
    counts = clean_events(con, [DAY], run_id=None)
    reasons = {r for (r,) in con.execute("SELECT DISTINCT reason FROM quarantine").fetchall()}
    stored = con.execute("SELECT count(*) FROM events").fetchone()[0]
    masked = con.execute("SELECT count(*) FROM events WHERE text LIKE '%555-123-4567%'").fetchone()[0]
    con.close()

    assert counts.rows_read == non_blank
    assert counts.rows_read == counts.loaded + counts.duplicates + counts.quarantined
    assert stored == counts.loaded
    assert reasons <= set(REASONS)
    assert masked == 0


FORMATS = ("rows.jsonl", "rows.jsonl.gz", "rows.csv", "rows.parquet")


@pytest.mark.slow
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jsonl=st.lists(any_line, max_size=15), gzipped=st.lists(any_line, max_size=15),
       csv_rows=st.lists(st.one_of(valid_event, good_event), max_size=15),
       parquet_rows=st.lists(st.one_of(valid_parquet_row, parquet_row), max_size=10), copied=st.sampled_from(FORMATS))
def test_generated_rows_in_every_format_are_each_loaded_duplicated_or_quarantined(
        tmp_path_factory: pytest.TempPathFactory, jsonl: list[bytes], gzipped: list[bytes], csv_rows: list[dict],
        parquet_rows: list[dict], copied: str) -> None:
    """The same row checks hold whichever reader a row went through (DuckDB's line splitter,
    the gzip/invalid-UTF-8 path, CSV, Parquet), and a file landed twice under two names adds
    duplicates and repeated quarantine entries, never a second copy of its events."""
    root = tmp_path_factory.mktemp("formats")
    folder = root / "landing" / "events" / f"date={DAY}"
    csv_bytes, csv_count = _csv(csv_rows)
    contents = {"rows.jsonl": _jsonl(jsonl), "rows.jsonl.gz": gzip.compress(_jsonl(gzipped)),
                "rows.csv": csv_bytes, "rows.parquet": _parquet(parquet_rows)}
    for name, data in contents.items():
        write(folder / name, data)
    shutil.copyfile(folder / copied, folder / f"z_copy_{copied}")  # sorts after the original
    counts_by_name = {"rows.jsonl": _non_blank(jsonl), "rows.jsonl.gz": _non_blank(gzipped),
                      "rows.csv": csv_count, "rows.parquet": len(parquet_rows)}
    counts_by_name[f"z_copy_{copied}"] = counts_by_name[copied]

    con = _connect(None)
    load, counts = _ingest(con, root / "landing", [DAY])
    outcomes = _outcomes(con)
    original, copy = f"events/date={DAY}/{copied}", f"events/date={DAY}/z_copy_{copied}"
    quarantined_copies = [con.execute("SELECT line_no, reason, field, detail, record FROM quarantine "
                                      "WHERE source_file = ? ORDER BY line_no", [name]).fetchall() for name in (original, copy)]
    _assert_reconciles(con, [DAY])
    con.close()

    assert load.rows_by_file == {f"events/date={DAY}/{name}": n for name, n in counts_by_name.items()}
    assert counts.rows_read == sum(counts_by_name.values()) == len(outcomes)
    assert counts.duplicates == sum(o == DUPLICATE for o in outcomes.values())
    assert counts.loaded == sum(o == LOADED for o in outcomes.values())
    assert LOADED not in {o for (name, _), o in outcomes.items() if name == copy}
    assert quarantined_copies[0] == quarantined_copies[1]


# -- Fixed hostile files, two day folders ----------------------------------------------------------


def _event(**fields: object) -> bytes:
    return json.dumps(fields).encode()


VIEW = {"user_id": "u1", "event_type": "view", "ts": f"{DAY}T10:00:00Z", "item_id": "i1"}
HUGE = "x" * 3_000_000  # several MB in one field: past the 1,000,000-character row limit
ELSEWHERE = "ts_outside_partition"

# (line, outcome in its own day folder, outcome when the same file also lands in NEXT_DAY's folder)
JSONL_ROWS: list[tuple[bytes, str, str]] = [
    (_event(**VIEW), LOADED, ELSEWHERE),
    (_event(**VIEW), DUPLICATE, ELSEWHERE),
    (b'{"user_id": "u1", "event_type": "vi', "bad_json", "bad_json"),  # a line cut short
    (_event(**{**VIEW, "ts": "1900-01-01T00:00:00Z"}), "ts_out_of_range", "ts_out_of_range"),
    (_event(**{**VIEW, "ts": 0}), "ts_out_of_range", "ts_out_of_range"),  # the epoch itself
    (_event(**{**VIEW, "ts": -2208988800}), "ts_out_of_range", "ts_out_of_range"),  # 1900 in epoch seconds
    (_event(**{**VIEW, "ts": "2200-01-01T00:00:00Z"}), "ts_out_of_range", "ts_out_of_range"),
    (_event(**{**VIEW, "ts": 7258118400}), "ts_out_of_range", "ts_out_of_range"),  # 2200 in epoch seconds
    (_event(**{**VIEW, "user_id": True}), "wrong_type", "wrong_type"),
    (_event(**{**VIEW, "event_type": "purchase", "price": "cheap"}), "bad_price", ELSEWHERE),
    (_event(**{**VIEW, "quantity": [2]}), "wrong_type", ELSEWHERE),
    (_event(**{**VIEW, "event_type": "review", "text": HUGE}), "record_too_large", "record_too_large"),
    (_event(**{**VIEW, "event_type": "review", "text": "y" * 30_000}), "text_too_long", ELSEWHERE),
    (_event(**{**VIEW, "event_type": "purchase", "event_id": "e1", "price": 19.5, "quantity": 2}), LOADED, ELSEWHERE),
]
CSV_HEADER = "user_id,event_type,ts,item_id,text"
CSV_ROWS: list[tuple[str, str]] = [  # the header is line 1
    ("u2,click,2024-03-01 11:00:00,i2,", LOADED),
    ("u2,click,2024-03-01 11:00:00", "wrong_field_count"),
    ('u2,view,2024-03-01 11:05:00,"i3"x,', "bad_csv"),
    ("u2,review,2024-03-01 12:00:00,i2," + HUGE, "record_too_large"),
    ("u2,view,1900-01-01 00:00:00,i2,", "ts_out_of_range"),
    ("u2,view,0,i2,", "ts_out_of_range"),
    ("u2,view,2200-01-01T00:00:00Z,i2,", "ts_out_of_range"),
    ("u1,view,2024-03-01T10:00:00Z,i1,", DUPLICATE),  # the first JSON-lines event, in another format
    ("u2,vi", "wrong_field_count"),  # the file is cut here: no newline
]
GZIP_ROWS: list[tuple[bytes, str]] = [
    (_event(user_id="u3", event_type="search", ts=1709290000, text="red shoes"), LOADED),
    (_event(user_id="u3", event_type="view", ts=f"{DAY}T11:00:00Z", item_id={"id": 1}), "wrong_type"),
    (_event(user_id=42, event_type="favorite", ts=f"{DAY}T23:59:59+00:00", item_id=7), LOADED),
]
PARQUET_ROWS: list[tuple[dict, str]] = [
    ({"user_id": "u4", "event_type": "purchase", "ts": datetime(2024, 3, 1, 8, tzinfo=UTC), "item_id": "i4", "price": 5.0},
     LOADED),
    ({"user_id": "u4", "event_type": "view", "ts": datetime(1900, 1, 1, tzinfo=UTC), "item_id": "i4"}, "ts_out_of_range"),
    ({"user_id": "u4", "event_type": "view", "ts": datetime(1970, 1, 1, tzinfo=UTC), "item_id": "i4"}, "ts_out_of_range"),
    ({"user_id": "u4", "event_type": "view", "ts": datetime(2200, 1, 1, tzinfo=UTC), "item_id": "i4"}, "ts_out_of_range"),
    ({"user_id": "u4", "event_type": "review", "ts": datetime(2024, 3, 1, 9, tzinfo=UTC), "item_id": "i4", "text": HUGE},
     "record_too_large"),
    ({"user_id": None, "event_type": "view", "ts": datetime(2024, 3, 1, 9, tzinfo=UTC), "item_id": "i4"}, "missing_field"),
    ({"user_id": "u4", "event_type": "purchase", "ts": datetime(2024, 3, 1, 9, 30, tzinfo=UTC), "item_id": "i4",
      "price": float("nan")}, "bad_price"),
]
TRUNCATED_ROWS: list[tuple[bytes, str]] = [
    (_event(user_id="u5", event_type="view", ts=f"{DAY}T13:00:00Z", item_id="i5"), LOADED),
    (b'{"user_id": "u5", "event_type": "view", "ts": "2024-03-01T13:01:00Z", "item_id": "caf\xe9"}', "invalid_utf8"),
    (b'{"user_id": "u5", "event_type": "search", "ts": "2024-03-01T13:02:00Z", "text": "\xe4\xbd', "invalid_utf8"),
]
GARBAGE = random.Random(DAY).randbytes(16_384) + b"\n\x00\x01\x02\x1b[0m\x7f\n"  # and a line of valid control bytes


def _garbage_outcomes(data: bytes) -> dict[int, str]:
    """Random bytes split at newlines: lines that are not UTF-8, or not JSON objects."""
    outcomes = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            outcomes[number] = "invalid_utf8"
            continue
        if text.strip(" \t\r"):
            outcomes[number] = "bad_json"
    return outcomes


def _write_hostile_landing(landing: Path) -> dict[tuple[str, int], str]:
    """Write every kind of hostile file into DAY's folder (and one misplaced copy into
    NEXT_DAY's); return each row's expected outcome by (file under landing/, line)."""
    day, next_day = f"events/date={DAY}", f"events/date={NEXT_DAY}"
    jsonl = _jsonl([raw for raw, _, _ in JSONL_ROWS])
    files = {
        f"{day}/a_events.jsonl": jsonl,
        f"{day}/a_events_copy.jsonl": jsonl,  # the same file landed twice under two names
        f"{day}/b_events.csv": "\n".join([CSV_HEADER, *(row for row, _ in CSV_ROWS)]).encode(),
        f"{day}/c_events.jsonl.gz": gzip.compress(_jsonl([raw for raw, _ in GZIP_ROWS])),
        f"{day}/d_events.parquet": _parquet([row for row, _ in PARQUET_ROWS]),
        f"{day}/e_empty.jsonl": b"",
        f"{day}/f_garbage.jsonl": GARBAGE,
        f"{day}/g_truncated.jsonl": _jsonl([raw for raw, _ in TRUNCATED_ROWS], end=b""),
        f"{next_day}/a_events.jsonl": jsonl,  # landed in the wrong day folder as well
    }
    for name, data in files.items():
        write(landing / name, data)
    expected: dict[tuple[str, int], str] = {}
    for n, (_, here, elsewhere) in enumerate(JSONL_ROWS, start=1):
        expected[(f"{day}/a_events.jsonl", n)] = here
        expected[(f"{day}/a_events_copy.jsonl", n)] = DUPLICATE if here == LOADED else here
        expected[(f"{next_day}/a_events.jsonl", n)] = elsewhere
    expected.update({(f"{day}/b_events.csv", n): o for n, (_, o) in enumerate(CSV_ROWS, start=2)})
    expected.update({(f"{day}/c_events.jsonl.gz", n): o for n, (_, o) in enumerate(GZIP_ROWS, start=1)})
    expected.update({(f"{day}/d_events.parquet", n): o for n, (_, o) in enumerate(PARQUET_ROWS, start=1)})
    expected.update({(f"{day}/f_garbage.jsonl", n): o for n, o in _garbage_outcomes(GARBAGE).items()})
    expected.update({(f"{day}/g_truncated.jsonl", n): o for n, (_, o) in enumerate(TRUNCATED_ROWS, start=1)})
    return expected


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, dict[tuple[str, int], str]]:
    landing = tmp_path / "landing"
    return landing, _write_hostile_landing(landing)


def test_hostile_day_folder_loads_what_it_can_and_quarantines_the_rest(
        tmp_path: Path, hostile: tuple[Path, dict[tuple[str, int], str]]) -> None:
    """One exact expectation per row across every hostile file: a copied file adds only
    duplicates (the first file in name order keeps the events), the same file in another
    day's folder is quarantined there, and quarantine keeps a cut copy of a huge row."""
    landing, expected = hostile
    assert "invalid_utf8" in expected.values() and "bad_json" in _garbage_outcomes(GARBAGE).values()
    con = _connect(tmp_path)
    load, counts = _ingest(con, landing, [DAY, NEXT_DAY])
    outcomes = _outcomes(con)
    _assert_reconciles(con, [DAY, NEXT_DAY])
    columns = {name for (name, *_) in con.execute("DESCRIBE quarantine").fetchall()}
    longest, huge_rows = con.execute(f"SELECT max(length(record)), count(*) FILTER (WHERE reason = 'record_too_large' "
                                     f"AND length(record) = {QUARANTINE_RECORD_CHARS}) FROM quarantine").fetchone()
    by_day = dict(con.execute("SELECT partition_key, quarantined FROM ingest_stats").fetchall())
    con.close()

    assert outcomes == expected
    assert (load.ignored_files, load.vanished_files) == ([], [])
    assert load.rows_by_file[f"events/date={DAY}/e_empty.jsonl"] == 0
    assert counts == EventCounts(len(expected), sum(o == LOADED for o in expected.values()),
                                 sum(o == DUPLICATE for o in expected.values()),
                                 sum(o in REASONS for o in expected.values()))
    assert by_day[NEXT_DAY] == len(JSONL_ROWS)
    assert {"source_file", "line_no", "reason", "field", "detail", "record", "partition_key"} <= columns
    assert longest == QUARANTINE_RECORD_CHARS and huge_rows == 5  # twice in DAY's JSON lines, CSV, Parquet, NEXT_DAY


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Every ingestion table without its load-time columns, in a fixed order."""
    return {
        "raw_events": con.execute("SELECT * EXCLUDE (ingested_at) FROM raw_events ORDER BY ALL").fetchall(),
        "events": con.execute("SELECT * FROM events ORDER BY ALL").fetchall(),
        "quarantine": con.execute("SELECT * EXCLUDE (quarantined_at) FROM quarantine ORDER BY ALL").fetchall(),
        "ingest_stats": con.execute("SELECT * EXCLUDE (updated_at) FROM ingest_stats ORDER BY ALL").fetchall(),
    }


def test_rerunning_the_hostile_days_gives_identical_tables(
        tmp_path: Path, hostile: tuple[Path, dict[tuple[str, int], str]]) -> None:
    """A re-run (a retry, a backfill) replaces the days: nothing is added twice, nothing lost."""
    landing, expected = hostile
    snapshots = []
    for _ in range(2):
        con = _connect(tmp_path)
        _ingest(con, landing, [DAY, NEXT_DAY])
        snapshots.append(_snapshot(con))
        con.close()
    assert len(snapshots[0]["raw_events"]) == len(expected)
    assert snapshots[1] == snapshots[0]


# -- Files that vanish, and files that cannot be read at all ---------------------------------------


def _write_events(path: Path, rows: list[dict]) -> None:
    """`rows` (all with the same keys) in the format that `path`'s name says."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        data = _parquet(rows, pa.schema([(k, pa.string()) for k in rows[0]]))
    elif name.endswith(".csv"):
        data = "\n".join([",".join(rows[0]), *(",".join(str(v) for v in r.values()) for r in rows)]).encode() + b"\n"
    else:
        data = _jsonl([json.dumps(r).encode() for r in rows])
    write(path, gzip.compress(data) if path.name.endswith(".gz") else data)


def _delete_after_listing(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """The loader lists the day folder, then `victim` is deleted before it is read."""
    listed: Callable[[LandingZone, str], list[Path]] = LandingZone.event_files

    def list_then_delete(self: LandingZone, day: str) -> list[Path]:
        files = listed(self, day)
        assert victim in files
        victim.unlink()
        return files

    monkeypatch.setattr(LandingZone, "event_files", list_then_delete)


def _day_rows(user: str, n: int) -> list[dict]:
    return [{"user_id": user, "event_type": "view", "ts": f"{DAY}T0{i}:00:00Z", "item_id": f"i{i}"} for i in range(n)]


@pytest.mark.parametrize("suffix", ["jsonl", "ndjson", "jsonl.gz", "csv", "csv.gz", "parquet"])
def test_a_file_deleted_between_listing_and_reading_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """docs/data-contract.md: a file removed between listing and reading is skipped with a
    warning, whatever its format; the day's other files load and the counts still add up."""
    folder = tmp_path / "landing" / "events" / f"date={DAY}"
    victim = folder / f"a_vanishing.{suffix}"  # read first: the loader must go on after it
    _write_events(victim, _day_rows("u9", 3))
    _write_events(folder / "b_kept.jsonl", _day_rows("u1", 2) + _day_rows("u1", 1))
    _delete_after_listing(monkeypatch, victim)

    con = _connect(tmp_path)
    load, counts = _ingest(con, tmp_path / "landing", [DAY])
    _assert_reconciles(con, [DAY])
    users = con.execute("SELECT DISTINCT user_id FROM events").fetchall()
    con.close()

    assert load.vanished_files == [f"events/date={DAY}/a_vanishing.{suffix}"]
    assert load.rows_by_file == {f"events/date={DAY}/b_kept.jsonl": 3}
    assert counts == EventCounts(rows_read=3, loaded=2, duplicates=1, quarantined=0)
    assert users == [("u1",)]


def test_a_vanished_file_is_a_warning_in_a_successful_run(home: Path, instance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the assets: the run succeeds, its checks pass, and metadata names the file."""
    folder = home / "landing" / "events" / f"date={DAY}"
    victim = folder / "a_vanishing.parquet"
    _write_events(victim, _day_rows("u9", 2))
    _write_events(folder / "b_kept.jsonl", _day_rows("u1", 2))
    _delete_after_listing(monkeypatch, victim)

    result = ingest_events(home, instance, [DAY])

    assert result.success
    assert all(check_results(result).values()), check_results(result)
    (raw,) = [e.materialization.metadata for e in result.get_asset_materialization_events()
              if e.asset_key.to_user_string() == "raw_events"]
    assert raw["vanished_files"].value == [f"events/date={DAY}/a_vanishing.parquet"]
    assert raw["dagster/row_count"].value == 2


GARBAGE_CSV = b'"\xde\xad"\xbe\xef\x00,' + GARBAGE  # the header row itself cannot be parsed
# The first deflate block's header (right after the 10-byte gzip header) inverted: zlib rejects it.
_WHOLE_GZIP = gzip.compress(_jsonl([_event(**VIEW)] * 200), mtime=0)
FLIPPED_GZIP = _WHOLE_GZIP[:10] + bytes([_WHOLE_GZIP[10] ^ 0xFF]) + _WHOLE_GZIP[11:]
CUT_GZIP = _WHOLE_GZIP[:-40]  # the stream ends before its end marker
CUT_PARQUET = _parquet([row for row, _ in PARQUET_ROWS])[:-100]  # the footer is gone

# (file name, its bytes, words the quarantine detail must carry)
UNREADABLE_FILES = [
    ("garbage.csv", GARBAGE_CSV, "CSV header cannot be parsed"),
    ("garbage.csv.gz", gzip.compress(GARBAGE_CSV), "CSV header cannot be parsed"),
    ("cut.jsonl.gz", CUT_GZIP, "truncated"),
    ("flipped.jsonl.gz", FLIPPED_GZIP, "corrupt gzip"),
    ("noise.jsonl.gz", GARBAGE, "not gzip"),
    ("noise.csv.gz", GARBAGE, "not gzip"),
    ("noise.parquet", GARBAGE, "not a readable Parquet file"),
    ("cut.parquet", CUT_PARQUET, "not a readable Parquet file"),
]


@pytest.mark.parametrize("name, data, problem", UNREADABLE_FILES, ids=[name for name, _, _ in UNREADABLE_FILES])
def test_a_file_that_cannot_be_read_at_all_is_one_quarantined_row_naming_it(
        tmp_path: Path, name: str, data: bytes, problem: str) -> None:
    """docs/data-contract.md: without a readable CSV header, a whole gzip stream or a Parquet
    footer a file has no rows of its own, so the whole file is one quarantined row (line 0,
    `unreadable_file`) whose detail names it and what is wrong; the day's other files, read
    before and after it, load; the counts add up; and a re-run gives identical tables."""
    folder = tmp_path / "landing" / "events" / f"date={DAY}"
    _write_events(folder / "a_good.jsonl", _day_rows("u1", 2))
    write(folder / f"m_{name}", data)
    _write_events(folder / "z_good.csv", _day_rows("u2", 3))
    unreadable = f"events/date={DAY}/m_{name}"

    snapshots = []
    for _ in range(2):
        con = _connect(tmp_path)
        load, counts = _ingest(con, tmp_path / "landing", [DAY])
        _assert_reconciles(con, [DAY])
        outcomes = _outcomes(con)
        quarantined = con.execute("SELECT source_file, line_no, reason, field, detail, record FROM quarantine").fetchall()
        stats = con.execute("SELECT rows_read, loaded, duplicates, quarantined FROM ingest_stats").fetchall()
        snapshots.append(_snapshot(con))
        con.close()

    assert list(load.unreadable_files) == [unreadable] and problem in load.unreadable_files[unreadable]
    assert load.rows_by_file == {f"events/date={DAY}/a_good.jsonl": 2, f"events/date={DAY}/z_good.csv": 3}
    assert (load.vanished_files, load.rows) == ([], 6)
    assert counts == EventCounts(rows_read=6, loaded=5, duplicates=0, quarantined=1)
    assert stats == [(6, 5, 0, 1)]
    assert outcomes == {**{(f"events/date={DAY}/a_good.jsonl", n): LOADED for n in (1, 2)},
                        **{(f"events/date={DAY}/z_good.csv", n): LOADED for n in (2, 3, 4)},
                        (unreadable, 0): "unreadable_file"}
    ((file, line_no, reason, field, detail, record),) = quarantined
    assert (file, line_no, reason, field) == (unreadable, 0, "unreadable_file", None)
    assert unreadable in detail and problem in detail and "re-deliver the file" in detail
    # The record says what is wrong and nothing more: no path, none of the file's bytes.
    assert record == load.unreadable_files[unreadable] and len(record) <= PROBLEM_CHARS
    assert str(tmp_path) not in detail and "\\x" not in record and "b'" not in record
    assert snapshots[1] == snapshots[0]


def test_an_unreadable_file_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip stream cut short is read in chunks, so rows of it are stored before the read
    fails: none of them stays, only the one row that stands for the file."""
    monkeypatch.setattr(landing_files, "CHUNK_BYTES", 1024)
    folder = tmp_path / "landing" / "events" / f"date={DAY}"
    cut = write(folder / "cut.jsonl.gz", CUT_GZIP)
    _write_events(folder / "good.jsonl", _day_rows("u1", 2))
    chunks = []
    with pytest.raises(LandingFileError):
        for chunk in read_landing_file(cut):
            chunks.append(chunk.num_rows)
    assert len(chunks) > 1  # the loader had inserted rows of it when the read failed

    con = _connect(tmp_path)
    load, counts = _ingest(con, tmp_path / "landing", [DAY])
    _assert_reconciles(con, [DAY])
    raw = con.execute("SELECT source_file, line_no, read_error FROM raw_events ORDER BY ALL").fetchall()
    con.close()

    assert raw == [(f"events/date={DAY}/cut.jsonl.gz", 0, "unreadable_file"),
                   (f"events/date={DAY}/good.jsonl", 1, None), (f"events/date={DAY}/good.jsonl", 2, None)]
    assert counts == EventCounts(rows_read=3, loaded=2, duplicates=0, quarantined=1)
    assert load.rows == 3


def test_a_transient_read_error_still_fails_the_day_for_a_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operating-system error (a share failing for a moment) is not a property of the file:
    it fails the run so that the retry policy tries again, and the transaction keeps the day's
    previous load."""
    folder = tmp_path / "landing" / "events" / f"date={DAY}"
    _write_events(folder / "good.jsonl", _day_rows("u1", 2))
    con = _connect(tmp_path)
    _ingest(con, tmp_path / "landing", [DAY])
    _write_events(folder / "more.jsonl.gz", _day_rows("u2", 2))

    def failing_share(path: Path):
        raise OSError(5, "Input/output error")
        yield  # a generator, like the reader it replaces

    monkeypatch.setattr(landing_files, "_read_json_lines", failing_share)
    with pytest.raises(LandingFileError, match=r"more\.jsonl\.gz") as raised:
        _ingest(con, tmp_path / "landing", [DAY])
    con.rollback()
    stored = con.execute("SELECT count(*) FROM raw_events").fetchone()[0]
    con.close()

    assert raised.value.transient
    assert stored == 2

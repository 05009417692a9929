"""`portrait forget`: a user leaves no trace in the landing zone or the warehouse, and the
warehouse ends as if the user had never existed."""

import csv
import gzip
import hashlib
import json
import shutil
import stat
import subprocess
import sys
import textwrap

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.erasure import UserMatcher, count_user_rows, rewrite_without_user, user_hash
from assets.landing_files import read_landing_file
from orchestration.cli import main
from orchestration.definitions import build_defs
from orchestration.forget import audit_reason, scan_landing
from orchestration.importers.demo import generate_demo
from orchestration.runs import run_job
from resources.landing import LandingZone
from tests.ingest_helpers import ingest_dimensions, ingest_events, query, write

UID = "U00042"


def landing_rows(path):
    return [(n, r, e) for t in read_landing_file(path)
            for n, r, e in zip(t["line_no"].to_pylist(), t["record"].to_pylist(), t["read_error"].to_pylist())]


# --- landing files -----------------------------------------------------------------------------------------------


JSON_LINES = [
    (b'{"user_id": "U00042", "event_type": "view", "item_id": "I1"}\r\n', True),
    (b'{"user_id": "U00007", "event_type": "search", "text": "who is U000421"}\n', False),
    (b"\n", False),
    (b'{"user_id": "U\\u00300042", "event_type": "view"}\n', True),  # an escape spelling the id
    (b'{"user_id": " U00042 ", "event_type": "view"}\n', True),  # ingestion trims ids
    (b'{"user_id": "U00042", "event_type": "vi\n', True),  # cut off mid-write: the id as a quoted token
    (b'{"user_id": "U00007", "text": "caf\xe9 U00042"}\n', True),  # invalid UTF-8, quarantined whole with the id
    (b'{"user_id": "U00007", "text": "ask U00042 about it"}\n', False),  # another user's row
    (b'{"user_id": "U00008", "event_type": "vi\n', False),
    (b'{"event_type": "view"}', False),
]


@pytest.mark.parametrize("name", ["a.jsonl", "a.ndjson.gz"])
def test_json_lines_lose_exactly_the_users_rows_byte_for_byte(tmp_path, name):
    original = b"".join(line for line, _ in JSON_LINES)
    expected = b"".join(line for line, belongs in JSON_LINES if not belongs)
    path = write(tmp_path / name, gzip.compress(original) if name.endswith(".gz") else original)
    path.chmod(0o640)
    matcher = UserMatcher(UID)
    assert count_user_rows(path, matcher) == 5
    assert rewrite_without_user(path, matcher) == 5
    content = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert content == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind
    assert len(landing_rows(path)) == 4  # the reader still reads the rest (the blank line is not a row)
    assert rewrite_without_user(path, matcher) == 0 and count_user_rows(path, matcher) == 0


def test_ids_compare_as_text_so_numeric_ids_match(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"user_id": 42}\n{"user_id": 420}\n{"user_id": "42"}\n{"user_id": 4.2}\n')
    assert rewrite_without_user(path, UserMatcher("42")) == 2
    assert path.read_text() == '{"user_id": 420}\n{"user_id": 4.2}\n'


CSV_ROWS = [
    ("\ufeffuser_id,event_type,ts,text\r\n", False),
    ("U00042,view,2026-09-01T00:00:00Z,\r\n", True),
    ('U00007,chat,2026-09-01T00:00:00Z,"line one\r\nmentions U00042"\r\n', False),  # a quoted line break
    ("U00042,view\r\n", True),  # wrong field count: a cell is the id
    ("U00008,view,2026-09-01T00:00:00Z,x,extra\r\n", False),
    ('"U00042"x,view,2026-09-01T00:00:00Z,\r\n', True),  # the parser rejects it: the id as a token
    (",,,\r\n", False),
    ("42,view,2026-09-01T00:00:00Z,\r\n", False),
    ("U00009,view,2026-09-01T00:00:00Z,caf\udcff\r\n", False),  # an invalid byte survives the rewrite
    (" U00042 ,view,2026-09-01T00:00:00Z,", True),
]


@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz"])
def test_csv_keeps_the_header_and_every_other_row_as_it_was(tmp_path, name):
    original = "".join(text for text, _ in CSV_ROWS).encode("utf-8", "surrogateescape")
    expected = "".join(text for text, belongs in CSV_ROWS if not belongs).encode("utf-8", "surrogateescape")
    path = write(tmp_path / name, gzip.compress(original) if name.endswith(".gz") else original)
    before = landing_rows(path)
    assert rewrite_without_user(path, UserMatcher(UID)) == 4
    content = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert content == expected
    after = landing_rows(path)
    assert len(after) == len(before) - 4
    assert not any(json.loads(r)["user_id"].strip() == UID for _, r, error in after if error is None)
    assert not any(UID in r for _, r, error in after if error is not None)


def test_parquet_rows_of_the_user_are_dropped_and_the_schema_kept(tmp_path):
    path = tmp_path / "a.parquet"
    table = pa.table({"user_id": pa.array([42, 7, 42], pa.int64()), "rating": [1.0, 2.0, 3.0]})
    pq.write_table(table, path)
    assert rewrite_without_user(path, UserMatcher("42")) == 2
    assert pq.read_table(path).equals(table.slice(1, 1))
    other = tmp_path / "b.parquet"
    pq.write_table(pa.table({"item_id": ["42"]}), other)
    assert count_user_rows(other, UserMatcher("42")) == 0


def test_the_scan_searches_every_folder_and_reports_what_it_cannot_search(tmp_path):
    root = tmp_path / "landing"
    write(root / "events/date=2026-09-01/a.jsonl", '{"user_id": "U00042"}\n{"user_id": "U00007"}\n')
    write(root / "events/old/b.csv", "user_id\nU00042\n")
    write(root / "users/u.csv", "user_id,age\nU00007,30\n")
    write(root / "events/date=2026-09-01/c.jsonl.gz", b"not gzip")
    write(root / "events/date=2026-09-01/_d.jsonl", '{"user_id": "U00042"}\n')  # being written by someone
    write(root / "notes.md", "U00042 called\n")
    scan = scan_landing(LandingZone(root=str(root)), UserMatcher(UID))
    assert [(f.relative, f.rows, f.day) for f in scan.files] == [
        ("events/date=2026-09-01/a.jsonl", 1, "2026-09-01"), ("events/old/b.csv", 1, None)]
    assert [b.split(" ")[0] for b in scan.broken] == ["events/date=2026-09-01/c.jsonl.gz"]
    assert scan.unreadable_mentions == ["events/date=2026-09-01/_d.jsonl", "notes.md"]


@pytest.mark.parametrize("user", ["U00042", "a.b+c (x)", "用户42"])
def test_whole_token_mentions_agree_in_python_and_sql(user):
    matcher = UserMatcher(user)
    texts = [f'"{user}"', f"{user},view", f"x {user}.", f"{user}1", f"x{user}", f"_{user}", user.upper() + "9"]
    expected = [True, True, True, False, False, False, False]
    assert [matcher.mentions(t) for t in texts] == expected
    with duckdb.connect() as con:
        assert [con.execute("SELECT regexp_matches(?, ?)", [t, matcher.sql_pattern()]).fetchone()[0]
                for t in texts] == expected


def test_user_hash_is_salted_stable_and_kept_private(home):
    first = user_hash(UID)
    assert first == user_hash(UID) != user_hash("U00043")
    assert first != hashlib.sha256(UID.encode()).hexdigest()
    salt = home / "erasure.salt"
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600 and len(bytes.fromhex(salt.read_text().strip())) == 32


def test_the_audit_reason_carries_no_personal_data():
    reason = audit_reason("U00042 asked by mail: jane@example.com, call +44 20 7946 0958", UserMatcher(UID))
    assert reason == "[user] asked by mail: [email], call [phone]"
    assert audit_reason(None, UserMatcher(UID)) is None


# --- end to end ----------------------------------------------------------------------------------------------------


LOCKER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
""")


def all_text_hits(home, needle: str) -> list[str]:
    """Every table and text-like column that holds `needle` anywhere."""
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        columns = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE data_type IN ('VARCHAR', 'JSON') OR data_type LIKE 'VARCHAR[]%'").fetchall()
        return [f"{t}.{c}" for t, c in columns
                if con.execute(f'SELECT count(*) FROM "{t}" WHERE contains("{c}"::VARCHAR, ?)', [needle]).fetchone()[0]]
    finally:
        con.close()


def landing_mentions(root, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.name.endswith(".parquet"):
            text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            data = path.read_bytes()
            text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode("utf-8", "replace")
        if needle in text:
            hits.append(path.relative_to(root).as_posix())
    return hits


def comparable(home) -> dict[str, list[tuple]]:
    """The ingestion tables without their load times and run ids."""
    return {
        "raw_events": query(home, "SELECT * EXCLUDE (ingested_at) FROM raw_events ORDER BY ALL"),
        "events": query(home, "SELECT * FROM events ORDER BY ALL"),
        "quarantine": query(home, "SELECT * EXCLUDE (quarantined_at) FROM quarantine ORDER BY ALL"),
        "ingest_stats": query(home, "SELECT * EXCLUDE (run_id, updated_at) FROM ingest_stats ORDER BY ALL"),
        "users": query(home, "SELECT * FROM users ORDER BY ALL"),
        "items": query(home, "SELECT * FROM items ORDER BY ALL"),
    }


def reconciles(home) -> bool:
    stats = query(home, """
        SELECT s.partition_key, s.rows_read, s.loaded, s.duplicates, s.quarantined,
               (SELECT count(*) FROM raw_events r WHERE r.event_date::VARCHAR = s.partition_key),
               (SELECT count(*) FROM events e WHERE e.event_date::VARCHAR = s.partition_key),
               (SELECT count(*) FROM quarantine q WHERE q.source = 'events' AND q.partition_key = s.partition_key)
        FROM ingest_stats s WHERE s.source = 'events'""")
    return bool(stats) and all(read == loaded + dups + bad and (raw, ev, qu) == (read, loaded, bad)
                               for _, read, loaded, dups, bad, raw, ev, qu in stats)


def build_language_model() -> None:
    """Only the stage this test needs: later stages may refuse a shop this small."""
    with dg.DagsterInstance.get() as dagster_instance:
        assert run_job(build_defs(), "build_language_model", dagster_instance).success


def add_other_formats(landing, user: str) -> None:
    """The user's rows also in a gzipped CSV, a Parquet file and a folder ingestion never reads."""
    with gzip.open(landing / "events/date=2026-09-03/shop2.csv.gz", "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "event_type", "ts", "item_id", "event_id"])
        writer.writerow([user, "view", "2026-09-03T10:00:00Z", "D0001", "X1"])
        writer.writerow(["U00001", "view", "2026-09-03T10:00:01Z", "D0001", "X2"])
        writer.writerow([user, "view"])  # wrong field count, quarantined
    pq.write_table(pa.table({"user_id": [user, "U00002"], "event_type": ["click", "click"],
                             "ts": ["2026-09-04T10:00:00Z", "2026-09-04T10:00:01Z"], "item_id": ["D0002", "D0002"],
                             "event_id": ["X3", "X4"]}), landing / "events/date=2026-09-04/shop2.parquet")
    write(landing / "events/backup-2026-09/old.jsonl", f'{{"user_id": "{user}", "event_type": "view"}}\n')


def user_event_rows(root, user: str) -> int:
    """The user's rows in the day folders, counted independently of the code under test."""
    count = 0
    for path in (root / "events").glob("date=*/*"):
        for _, record, _ in landing_rows(path):
            try:
                count += json.loads(record).get("user_id") == user
            except ValueError:
                count += f'"{user}"' in record or f"{user}," in record
    return count


def test_forget_erases_a_user_everywhere_and_the_warehouse_reconciles(home, capsys, instance, tmp_path):
    landing = home / "landing"
    generate_demo(LandingZone(root=str(landing)), users=60, items=40, days=6, seed=3)
    assert main(["forget", "U99999"]) == 2  # in no landing file, and no warehouse yet
    assert "is in no landing file and no warehouse table" in capsys.readouterr().err
    assert not (home / "warehouse.duckdb").exists()

    user = "U00032"  # searches and chats, plus rows the demo breaks on purpose (quarantined)
    add_other_formats(landing, user)
    expected_landing_rows = user_event_rows(landing, user) + 2  # + the users file's row and the backup's
    assert main(["run", "--ingest-only"]) == 0
    build_language_model()  # text_embeddings, item_embeddings, text_signals (a few seconds on this shop)
    mine = [t for (t,) in query(home, "SELECT DISTINCT text FROM events WHERE user_id = ? AND text IS NOT NULL", [user])]
    theirs = {t for (t,) in query(home, "SELECT DISTINCT text FROM events WHERE user_id <> ? AND text IS NOT NULL",
                                  [user])}
    only_mine = [t for t in mine if t not in theirs]
    assert only_mine and query(home, "SELECT count(*) FROM quarantine WHERE contains(record, ?)", [user])[0][0] >= 2
    assert query(home, "SELECT count(*) FROM text_embeddings WHERE text IN (SELECT unnest(?))", [only_mine]) == [
        (len(only_mine),)]
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:  # a later stage's table, unknown to forget
        con.execute("CREATE TABLE user_segments AS SELECT DISTINCT user_id, 'fans' AS segment FROM events")
    write(landing / "notes.txt", f"call back {user}\n")  # not a data file: reported, not rewritten
    capsys.readouterr()

    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(home / "warehouse.duckdb"), "2"],
                              stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline().strip() == "locked"  # another process writes: forget waits for it
    assert main(["forget", user, "--reason", f"request from jane@example.com about {user}"]) == 0
    locker.wait(timeout=30)
    out = capsys.readouterr().out
    assert "rewrote landing/events/date=2026-09-03/shop2.csv.gz: 2 row(s) removed" in out
    assert "rewrote landing/events/backup-2026-09/old.jsonl: 1 row(s) removed" in out
    assert "landing/notes.txt mentions the id" in out and "re-ingested ingest_events [2026-09-01..2026-09-06]: ok" in out
    assert "user_segments: 1 row(s) deleted" in out

    # the landing zone: the user is nowhere (but in the note an operator must handle), the rest is intact
    assert landing_mentions(landing, user) == ["notes.txt"]
    (landing / "notes.txt").unlink()
    assert user_event_rows(landing, user) == 0
    assert not [p for p in landing.rglob("*") if p.name.startswith(("_", "."))]

    # the warehouse: no row and no text anywhere, and the day counts still add up
    assert all_text_hits(home, user) == []
    assert query(home, "SELECT count(*) FROM text_embeddings WHERE text IN (SELECT unnest(?))", [only_mine]) == [(0,)]
    kept = [t for t in mine if t in theirs]
    assert query(home, "SELECT count(*) FROM text_embeddings WHERE text IN (SELECT unnest(?))", [kept]) == [
        (len(kept),)]
    assert query(home, "SELECT count(*) FROM text_signals WHERE text_hash NOT IN (SELECT text_hash FROM "
                       "text_embeddings)") == [(0,)]
    assert reconciles(home)
    for source_file, line_no, event_id in query(home, "SELECT source_file, line_no, event_id FROM events "
                                                      "WHERE source_file LIKE '%.jsonl'"):
        line = (landing / source_file).read_text(encoding="utf-8").split("\n")[line_no - 1]
        assert json.loads(line)["event_id"] == event_id  # line numbers are those of the rewritten files

    # exactly as if the user had never existed: a fresh load of the cleaned files is the same
    reference = tmp_path / "reference"
    shutil.copytree(landing, reference / "landing")
    ingest_dimensions(reference, instance)
    ingest_events(reference, instance, [f"2026-09-0{d}" for d in range(1, 7)])
    assert comparable(reference) == comparable(home)

    # the audit: one row, a salted hash, no personal data
    (erased_at, hashed, reason, landing_rows_removed, by_table, runs, serving), = query(home,
                                                                                      "SELECT * FROM erasure_audit")
    assert serving is None  # no serving snapshot was ever published here (tests/test_serve.py covers one)
    assert hashed == user_hash(user) and len(hashed) == 64 and reason == "request from [email] about [user]"
    assert landing_rows_removed == expected_landing_rows
    by_table = json.loads(by_table)
    events_gone = by_table["events"]
    assert events_gone > 0 and by_table["user_segments"] == 1 and by_table["users"] == 1
    assert by_table["quarantine"] == 3 and by_table["text_embeddings"] >= len(only_mine)
    assert by_table["raw_events"] == events_gone + 3 == landing_rows_removed - 2  # not the users and backup rows
    assert len(runs) == 2 and f"{hashed[:16]}" in out and hashed in out

    # a full re-ingest does not bring the user back; forgetting again, or an unknown user, changes nothing
    assert main(["run", "--ingest-only"]) == 0
    assert all_text_hits(home, user) == [] and reconciles(home)
    capsys.readouterr()
    assert main(["forget", user]) == 2
    assert "it was erased on" in capsys.readouterr().err
    assert main(["forget", "NOBODY"]) == 2
    assert query(home, "SELECT count(*) FROM erasure_audit") == [(1,)]


def test_forget_help_names_the_reason(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["forget", "--help"])
    assert exit_info.value.code == 0 and "--reason" in capsys.readouterr().out

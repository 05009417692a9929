"""Erasure holds: a user forgotten with `portrait forget` does not come back through a
re-ingest of the landed days, a backfill, or a crash and its recovery, and is then in no landing
file, no warehouse table (events, quarantine, portraits, recommender tables, recommendations,
texts) and no serving snapshot folder.

The shop is the demo, built through the whole pipeline (`portrait run`, serving snapshot
included) once per module, with its last day landed but not yet ingested when the user is
forgotten (docs/privacy.md: the next run reads the cleaned files); each test works on a copy.
"""

import gzip
import re
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.erasure import AUDIT_TABLE, user_hash
from orchestration.backfill import EVENT_ASSETS, launch_backfill
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from orchestration.runs import QUIET, RANGE_END_TAG, RANGE_START_TAG, build_downstream
from resources.landing import LandingZone
from resources.snapshots import DATABASE
from tests.conftest import portrait_home
from tests.test_crash_safety import kill_at

UID = "U00032"  # searches and chats, and a row the demo breaks on purpose (quarantined)
DAYS = [f"2026-09-0{d}" for d in range(1, 8)]  # the last one landed, not yet ingested


def database_hits(path: Path, needle: str) -> list[str]:
    """Tables and views of a DuckDB file with a row whose text holds `needle` anywhere."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT DISTINCT table_name FROM information_schema.columns "
                                            "WHERE table_catalog = current_database() ORDER BY 1").fetchall()]
        return [t for t in tables
                if con.execute(f'SELECT count(*) FROM "{t}" AS r WHERE contains(r::VARCHAR, ?)', [needle]).fetchone()[0]]


def landing_hits(root: Path, needle: str) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if needle.encode() in (gzip.decompress(data) if path.name.endswith(".gz") else data):
                hits.append(path.relative_to(root).as_posix())
    return hits


def traces(home: Path, texts: list[str], landing: bool = True) -> dict[str, list[str]]:
    """Everywhere the user still is: landing files, warehouse tables, every snapshot folder (the
    current one, the previous one and any a killed publisher left), and the texts only the user wrote."""
    found = {"landing": landing_hits(home / "landing", UID) if landing else [],
             "warehouse": database_hits(home / "warehouse.duckdb", UID)}
    for folder in sorted((home / "serving").iterdir()):
        if (folder / DATABASE).exists():
            found[f"serving/{folder.name}"] = database_hits(folder / DATABASE, UID)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        found["texts"] = [t for (t,) in con.execute(
            "SELECT 'text_embeddings' FROM text_embeddings WHERE text IN (SELECT unnest(?)) UNION ALL "
            "SELECT 'text_signals' FROM text_signals WHERE text_hash IN (SELECT md5(unnest(?)))", [texts, texts]
        ).fetchall()]
    return {place: hits for place, hits in found.items() if hits}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, list[str]]:
    """The demo shop after `portrait run`, and the texts only the user wrote."""
    home = tmp_path_factory.mktemp("shop") / "home"
    with portrait_home(home):
        generate_demo(LandingZone(root=str(home / "landing")), users=60, items=40, days=len(DAYS), seed=3)
        assert main(["run", "--end", DAYS[-2]]) == 0
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        texts = [t for (t,) in con.execute("""
            SELECT DISTINCT text FROM events WHERE user_id = ? AND text IS NOT NULL
            EXCEPT SELECT text FROM events WHERE user_id <> ? AND text IS NOT NULL""", [UID, UID]).fetchall()]
    found = traces(home, texts)
    # the checks below mean something: before the erasure the user is in every stage's tables
    assert {"events", "quarantine", "raw_events", "users", "profile_state", "recsys_interactions",
            "recsys_user_features", "recommendations", "user_segments"} <= set(found["warehouse"])
    assert texts and found["texts"] and any(place.startswith("serving/") for place in found)
    assert f"events/date={DAYS[-1]}/demo-events.jsonl" in found["landing"]  # and in the day not yet ingested
    return home, texts


@pytest.fixture(scope="module")
def forgotten(shop, tmp_path_factory) -> Path:
    """A copy of the shop with the user forgotten: gone from the warehouse and the snapshots at
    once (the landing files are checked after what each test runs: they are what a run reads)."""
    home = tmp_path_factory.mktemp("forgotten") / "home"
    shutil.copytree(shop[0], home)
    with portrait_home(home):
        assert main(["forget", UID]) == 0
    assert traces(home, shop[1], landing=False) == {}
    return home


@pytest.fixture
def copy_of(tmp_path, monkeypatch):
    """A copy of a home, made the current PORTRAIT_HOME."""
    def copy(source: Path) -> Path:
        home = tmp_path / "home"
        shutil.copytree(source, home)
        monkeypatch.setenv("PORTRAIT_HOME", str(home))
        monkeypatch.setenv("DAGSTER_HOME", "")
        return home
    return copy


@pytest.mark.slow
def test_a_full_run_re_ingesting_every_day_does_not_bring_the_user_back(shop, forgotten, copy_of):
    home = copy_of(forgotten)
    assert main(["run"]) == 0  # every landed day (re-)ingested, everything downstream rebuilt and published
    assert traces(home, shop[1]) == {}


@pytest.mark.slow
def test_a_backfill_of_the_event_days_does_not_bring_the_user_back(shop, forgotten, copy_of):
    """The backfill `portrait backfill` queues, run as the daemon runs it (one run for the range,
    the event assets' single-run policy), then what automation materializes downstream."""
    home = copy_of(forgotten)
    from orchestration.definitions import build_defs
    from resources.home import ensure_dagster_home

    ensure_dagster_home()
    defs = build_defs()
    with dg.DagsterInstance.get() as instance:
        backfill_id = launch_backfill(defs, instance, LandingZone(root=str(home / "landing")), DAYS[0], DAYS[-1])
        backfill = instance.get_backfill(backfill_id)
        targets = backfill.get_asset_backfill_data(defs.resolve_asset_graph()).target_subset
        assert {key.to_user_string() for key in targets.asset_keys} == set(EVENT_ASSETS)
        assert sorted(targets.get_partitions_subset(dg.AssetKey("events")).get_partition_keys()) == DAYS
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            run_config=QUIET, instance=instance, asset_selection=list(backfill.asset_selection),
            tags={RANGE_START_TAG: DAYS[0], RANGE_END_TAG: DAYS[-1], "dagster/backfill": backfill_id})
        assert result.success
        assert all(o.success or o.refused for o in build_downstream(defs, instance, None))
    assert traces(home, shop[1]) == {}


#: Where `portrait forget` is killed (see tests/test_crash_safety.py, KILL_POINTS).
FORGET_KILL_POINTS = {
    "landing rewritten, before the re-ingest": ("before", "orchestration.forget", "reingest", 1),
    "re-ingest: events cleaned, before COMMIT": ("after", "assets.events", "clean_events", 1),
    "warehouse rows deleted and audited, before COMMIT": ("after", "orchestration.forget", "record_erasure", 1),
    "warehouse clean, before the snapshot is republished": ("before", "orchestration.forget", "republish_serving", 1),
}
#: How the operator recovers: as docs/privacy.md says (the same command again), or after the
#: nightly run got there first.
RECOVERIES = {"forget again": [["forget", UID]], "a run, then forget again": [["run"], ["forget", UID]]}
CASES = [(point, "forget again") for point in FORGET_KILL_POINTS] + [
    ("landing rewritten, before the re-ingest", "a run, then forget again"),
    ("warehouse clean, before the snapshot is republished", "a run, then forget again"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "recovery"), CASES, ids=[re.sub(r"\W+", "-", f"{p} {r}").strip("-") for p, r in CASES])
def test_a_killed_erasure_and_its_recovery_leave_the_user_nowhere(shop, copy_of, point, recovery):
    home = copy_of(shop[0])
    kill_at(home, FORGET_KILL_POINTS[point], ["forget", UID])
    assert traces(home, shop[1], landing=False)  # killed half-way: the user is still somewhere
    for command in RECOVERIES[recovery]:
        assert main(command) == 0, command
    assert traces(home, shop[1]) == {}
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM {AUDIT_TABLE} WHERE user_hash = ?",
                           [user_hash(UID)]).fetchone()[0] >= 1  # the erasure is on record


def audit_rows(home: Path) -> list[tuple]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT * FROM {AUDIT_TABLE} ORDER BY ALL").fetchall()


@pytest.mark.slow
def test_a_file_delivered_again_by_upstream_does_not_bring_the_user_back(shop, forgotten, copy_of):
    """Upstream delivers the original day file and the users file again, the user's rows in them:
    ingestion loads none of them, counts them as erased, and rewrites the files without them."""
    home = copy_of(forgotten)
    day = "events/date=2026-09-02/demo-events.jsonl"
    users = next(p.relative_to(home / "landing").as_posix() for p in (home / "landing" / "users").iterdir())
    for name in (day, users):
        shutil.copyfile(shop[0] / "landing" / name, home / "landing" / name)  # the original, with the user's rows
        assert UID in (home / "landing" / name).read_text(encoding="utf-8")
    user_rows = {name: sum(UID in line for line in (home / "landing" / name).read_text(encoding="utf-8").splitlines())
                 for name in (day, users)}
    audit = audit_rows(home)

    assert main(["run", "--ingest-only"]) == 0

    assert traces(home, shop[1]) == {}  # in no table, no snapshot, and no landing file: both were rewritten
    for name, rows in user_rows.items():
        kept = (home / "landing" / name).read_text(encoding="utf-8").splitlines()
        original = (shop[0] / "landing" / name).read_text(encoding="utf-8").splitlines()
        assert len(kept) == len(original) - rows  # every other row is still there
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        stats = con.execute("SELECT source, partition_key, rows_read, loaded, duplicates, quarantined, erased "
                            "FROM ingest_stats").fetchall()
        assert all(read == loaded + dups + bad + erased for _, _, read, loaded, dups, bad, erased in stats)
        erased = {(source, key): n for source, key, *_, n in stats if n}
        assert erased == {("events", "2026-09-02"): user_rows[day], ("users", None): user_rows[users]}
        assert con.execute("SELECT count(*) FROM raw_events WHERE read_error = 'erased' AND record = ''").fetchone() \
            == (user_rows[day],)  # kept in place, without their records, so rows read still reconcile
    assert audit_rows(home) == audit  # the erasure's record stands as it was

    # the rewritten files are new to the landing sensor: their next load finds nothing to remove
    assert main(["run", "--ingest-only"]) == 0
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT sum(erased) FROM ingest_stats").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM raw_events WHERE read_error = 'erased'").fetchone() == (0,)
    assert traces(home, shop[1]) == {}

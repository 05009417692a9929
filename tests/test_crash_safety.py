"""Writers killed mid-write leave every table whole, the old version or the new, never half;
the next run repairs everything.

The first test kills a portrait update at random moments. The others stop each writing stage
at chosen points, in a subprocess that runs the stage's real Dagster job: a hook installed in
that process (after a given function returns, or before or after a given SQL statement on a
warehouse connection) prints a marker and waits, and the test then kills it with SIGKILL, so
the kill lands exactly there. The warehouse (and the serving folder) must then hold, table by
table, either the state before the stage or the state an uninterrupted run produces, and the
tables one transaction writes must all be on the same side. Running the stage again must give
exactly the uninterrupted result.
"""

import contextlib
import functools
import importlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.profiles import ProfileConfig, update_profiles
from bench.profiles import generate
from orchestration.importers.demo import generate_demo
from orchestration.runs import QUIET, RANGE_END_TAG, RANGE_START_TAG
from resources.landing import LandingZone
from resources.snapshots import CURRENT, DATABASE, MANIFEST
from tests.conftest import portrait_home

ROOT = Path(__file__).resolve().parents[1]
UPDATE = """
import sys, duckdb
from assets.profiles import ProfileConfig, update_profiles
with duckdb.connect(sys.argv[1]) as con:
    con.execute("BEGIN")
    print("started", flush=True)
    update_profiles(con, ProfileConfig(full_rebuild=True, half_life_days=float(sys.argv[2])))
    con.execute("COMMIT")
"""


def _fingerprint(path: Path) -> tuple:
    """What the portraits say, summed up: the state's rows and a hash of its content."""
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("""
            SELECT count(*), sum(hash(user_id, ref_ts, round(engagement, 6), round(interest_w, 6))),
                   (SELECT half_life_days FROM (SELECT (config->>'half_life_days')::DOUBLE AS half_life_days
                                                 FROM profile_meta))
            FROM profile_state""").fetchall()[0]


@pytest.mark.slow
def test_killed_update_leaves_old_or_new_portraits_never_half(tmp_path):
    path, reference = tmp_path / "shop.duckdb", tmp_path / "reference.duckdb"
    generate(path, users=5_000, items=2_000, events=120_000, days=20)
    with duckdb.connect(str(path)) as con:
        update_profiles(con, ProfileConfig(half_life_days=30))
    shutil.copy(path, reference)
    before = _fingerprint(path)
    outcomes = []
    for delay in (0.3, 0.8, 1.5):
        process = subprocess.Popen([sys.executable, "-c", UPDATE, str(path), "10"], cwd=ROOT,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "started"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        now = _fingerprint(path)
        # either the old portraits, whole, or (had it committed in time) the new configuration's
        assert now == before or now[2] == 10.0, (delay, now, before)
        outcomes.append("old" if now == before else "new")
    assert "old" in outcomes  # a kill landed mid-write and the previous portraits survived it whole

    # the next run repairs everything: the same result as an uninterrupted update
    with duckdb.connect(str(path)) as con:
        update_profiles(con, ProfileConfig(half_life_days=10))
    with duckdb.connect(str(reference)) as con:
        update_profiles(con, ProfileConfig(half_life_days=10))
    assert _fingerprint(path) == _fingerprint(reference)


# --- every writing stage, stopped at chosen points ----------------------------------------------------------------

#: Columns that say when or by which run a row was written, not what it holds.
BOOKKEEPING = {"ingested_at", "quarantined_at", "run_id", "updated_at", "built_at", "generated_at", "folded_at"}
#: The days a re-delivery from upstream changes, re-ingested by the `ingest` stage.
REDELIVERED = ("2026-09-03", "2026-09-04")
SNAPSHOT = "serving/CURRENT"  # the published snapshot, fingerprinted like a table
READY = "crash-safety: paused at the kill point"

#: Stage -> the groups of tables it writes, one group per transaction (its tables change together).
STAGES: dict[str, list[set[str]]] = {
    "ingest": [{"raw_events"}, {"events", "quarantine", "ingest_stats"}],
    "user_profiles": [{"profile_state", "profile_terms", "profile_folds", "profile_meta", "category_prices"}],
    "recsys_dataset": [{"recsys_meta", "recsys_interactions", "recsys_item_features", "recsys_user_features"}],
    "recommendations": [{"recommendations"}],
    "serving_snapshot": [{SNAPSHOT}],
}
#: (stage, kill point) -> (where the process is stopped, which side each group of the stage must be on after the kill)
KILL_POINTS: dict[tuple[str, str], tuple[tuple, tuple[str, ...]]] = {
    ("ingest", "raw_events: one file of two days loaded"): (("after", "assets.raw_events", "_insert_file", 1),
                                                           ("old", "old")),
    ("ingest", "raw_events: before COMMIT"): (("before_sql", r"^\s*COMMIT", 1), ("old", "old")),
    ("ingest", "events: quarantine written, events deleted"): (("after", "assets.events", "quarantine_rows", 1),
                                                              ("new", "old")),
    ("ingest", "events: before COMMIT"): (("before_sql", r"^\s*COMMIT", 2), ("new", "old")),
    ("user_profiles", "state folded, bookkeeping not"): (("after", "assets.profiles", "fold", 1), ("old",)),
    ("user_profiles", "before COMMIT"): (("before_sql", r"^\s*COMMIT", 1), ("old",)),
    ("recsys_dataset", "features computed, nothing written"): (("after", "assets.recsys_dataset", "user_features", 1),
                                                               ("old",)),
    ("recsys_dataset", "meta and interactions written"): (("after_sql", r"TABLE recsys_interactions\b", 1), ("old",)),
    ("recsys_dataset", "before COMMIT"): (("before_sql", r"^\s*COMMIT", 1), ("old",)),
    ("recommendations", "scoring"): (("before", "assets.recommendations", "score_cold", 1), ("old",)),
    ("recommendations", "table replaced"): (("after_sql", r"TABLE recommendations\b", 1), ("old",)),
    ("recommendations", "after COMMIT"): (("after_sql", r"^\s*COMMIT", 1), ("new",)),
    ("serving_snapshot", "copying the second table"): (("after_sql", r"CREATE TABLE serving_snapshot\.", 2),
                                                       ("old",)),
    ("serving_snapshot", "copied, before the pointer"): (("before", "resources.snapshots", "_write_atomically", 1),
                                                         ("old",)),
    ("serving_snapshot", "pointer moved, before cleanup"): (("before", "resources.snapshots",
                                                             "SnapshotStore.folders", 1), ("new",)),
}


def run_stage(stage: str) -> None:
    """Materialize one stage as the command line would, in this process, for `PORTRAIT_HOME`."""
    from orchestration.definitions import build_defs
    from resources.home import ensure_dagster_home

    ensure_dagster_home()
    defs = build_defs()
    tags, selection = {}, None
    if stage == "ingest":
        job = defs.resolve_job_def("ingest_events")
        tags = {RANGE_START_TAG: REDELIVERED[0], RANGE_END_TAG: REDELIVERED[-1]}
    elif stage in ("recommendations", "serving_snapshot"):
        job = defs.resolve_job_def({"recommendations": "recommend", "serving_snapshot": "publish_serving"}[stage])
    else:
        job = defs.resolve_implicit_global_asset_job_def()
        selection = [dg.AssetKey(stage)]
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(run_config=QUIET, instance=instance, tags=tags, asset_selection=selection,
                                        raise_on_error=False)
    failures = [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    assert result.success, f"{stage} failed: {failures}"


def _pause() -> None:
    print(READY, flush=True)
    time.sleep(600)  # the test kills the process here


def install_kill_point(where: tuple) -> None:
    """In the subprocess: stop at `where` (see KILL_POINTS)."""
    kind, *spec = where
    if kind in ("before", "after"):
        module, dotted, nth = spec
        owner = importlib.import_module(module)
        *path, name = dotted.split(".")
        for part in path:
            owner = getattr(owner, part)
        original, calls = getattr(owner, name), 0

        @functools.wraps(original)
        def hooked(*args, **kwargs):
            nonlocal calls
            calls += 1
            if kind == "before" and calls == nth:
                _pause()
            result = original(*args, **kwargs)
            if kind == "after" and calls == nth:
                _pause()
            return result

        setattr(owner, name, hooked)
        return
    pattern, nth = re.compile(spec[0]), spec[1]
    seen = 0

    class Watched:
        """A warehouse connection that stops before or after the `nth` statement matching `pattern`."""

        def __init__(self, con):
            self._con = con

        def execute(self, sql, *args, **kwargs):
            nonlocal seen
            hit = isinstance(sql, str) and pattern.search(sql) is not None
            seen += hit
            if hit and seen == nth and kind == "before_sql":
                _pause()
            result = self._con.execute(sql, *args, **kwargs)
            if hit and seen == nth and kind == "after_sql":
                _pause()
            return result

        def __getattr__(self, name):
            return getattr(self._con, name)

    from resources.warehouse import Warehouse

    connect = Warehouse.connect

    @contextlib.contextmanager
    def watched_connect(self, read_only: bool = False):
        with connect(self, read_only) as con:
            yield Watched(con)

    Warehouse.connect = watched_connect


def child(where: str, *command: str) -> None:
    """The subprocess: `where` (JSON, see KILL_POINTS) installed, then `stage NAME` or a `portrait` command."""
    install_kill_point(tuple(json.loads(where)))
    if command[0] == "stage":
        run_stage(command[1])
    else:
        from orchestration.cli import main

        main(list(command))
    print("finished without reaching the kill point", flush=True)


def kill_at(home: Path, where: tuple, command: list[str], timeout_s: float = 120) -> None:
    """Run `command` (see `child`) on `home` in a subprocess, wait until it reaches `where`, SIGKILL it there."""
    env = {**os.environ, "PORTRAIT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("DAGSTER_HOME", None)
    errors = home.parent / "stderr.txt"
    with open(errors, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.test_crash_safety import child; child(*sys.argv[1:])",
             json.dumps(where), *command], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        lines: queue.Queue = queue.Queue()

        def pump() -> None:  # its lines, as they come (None at the end)
            for text in process.stdout:
                lines.put(text.strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        seen, deadline = [], time.monotonic() + timeout_s
        try:
            while (line := lines.get(timeout=max(deadline - time.monotonic(), 0.1))) is not None:
                seen.append(line)
                if line == READY:
                    process.send_signal(signal.SIGKILL)
                    assert process.wait(timeout=30) == -signal.SIGKILL
                    return
        except queue.Empty:
            pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    pytest.fail(f"{' '.join(command)} never reached {where}: {seen[-5:]}\n{errors.read_text()[-3000:]}")


def _table_fingerprint(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, str]:
    """Row count and an order-independent hash of the rows, bookkeeping columns left out and
    floating-point values rounded (parallel sums may differ in the last bits)."""
    columns = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                          "AND table_schema = 'main' AND table_catalog = current_database() ORDER BY ordinal_position",
                          [table]).fetchall()
    parts = []
    for name, kind in columns:
        if name in BOOKKEEPING:
            continue
        if kind in ("DOUBLE", "FLOAT"):
            parts.append(f'round("{name}", 6)')
        elif re.fullmatch(r"(DOUBLE|FLOAT)\[\d*\]", kind):
            parts.append(f'list_transform("{name}"::DOUBLE[], lambda x: round(x, 5))')
        else:
            parts.append(f'"{name}"')
    row = f"[{', '.join(p + '::VARCHAR' for p in parts)}]::VARCHAR"
    return tuple(con.execute(f'SELECT count(*), md5(coalesce(string_agg({row}, chr(10) ORDER BY {row}), \'\')) '
                             f'FROM main."{table}"').fetchall()[0])


def _database_fingerprint(path: Path) -> dict[str, tuple[int, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = "
                                            "'BASE TABLE' AND table_schema = 'main' AND table_catalog = "
                                            "current_database() ORDER BY 1").fetchall()]
        return {t: _table_fingerprint(con, t) for t in tables}


def fingerprint(home: Path) -> dict[str, object]:
    """Every warehouse table's fingerprint, and the published snapshot's (what a reader of
    `serving/CURRENT` would get), after checking that the snapshot is whole."""
    found: dict[str, object] = dict(_database_fingerprint(home / "warehouse.duckdb"))
    pointer = home / "serving" / CURRENT
    if pointer.exists():
        folder = home / "serving" / pointer.read_text().strip()
        manifest = json.loads((folder / MANIFEST).read_text())
        tables = _database_fingerprint(folder / DATABASE)
        assert {t: rows for t, (rows, _) in tables.items()} == manifest["tables"], folder  # published whole
        found[SNAPSHOT] = tuple(sorted(tables.items()))
    return found


def redeliver(landing: Path) -> None:
    """Upstream re-delivers two days: each day's file loses every fifth line, and a second file
    arrives with a new user's events (copies of others', so valid) and one row that fails."""
    for day in REDELIVERED:
        folder = landing / "events" / f"date={day}"
        lines = (folder / "demo-events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / "demo-events.jsonl").write_text("".join(text for i, text in enumerate(lines) if i % 5), encoding="utf-8")
        late = []
        for line in lines[:30]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "ts" in record:
                late.append(json.dumps({**record, "user_id": "U09001", "event_id": f"{record.get('event_id')}-late"}))
        late.append(json.dumps({"user_id": "U09001", "event_type": "teleport", "ts": f"{day}T12:00:00Z"}))
        (folder / "late.jsonl").write_text("\n".join(late) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def stage_states(tmp_path_factory) -> dict[str, tuple[Path, Path, dict, dict]]:
    """A small shop built through every stage, then re-delivered days run through the stages
    one by one: per stage, a home before it and one after an uninterrupted run, with their fingerprints."""
    from orchestration.cli import main

    root = tmp_path_factory.mktemp("stages")
    before = root / "0"
    before.mkdir()
    with portrait_home(before):
        generate_demo(LandingZone(root=str(before / "landing")), users=80, items=40, days=4, seed=11)
        assert main(["run", "--ingest-only"]) == 0
        for stage in ("user_profiles", "recsys_dataset", "recommendations", "serving_snapshot"):
            run_stage(stage)
    redeliver(before / "landing")
    states = {}
    for number, stage in enumerate(STAGES, start=1):
        after = root / str(number)
        shutil.copytree(before, after)
        with portrait_home(after):
            run_stage(stage)
        states[stage] = (before, after, fingerprint(before), fingerprint(after))
        before = after
    return states


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "point"), list(KILL_POINTS),
                         ids=[re.sub(r"\W+", "-", f"{s} {p}").strip("-") for s, p in KILL_POINTS])
def test_a_stage_killed_mid_write_leaves_old_or_new_tables_never_half_and_the_next_run_repairs(
        stage_states, tmp_path, monkeypatch, stage, point):
    source, _, old, new = stage_states[stage]
    groups, expected = STAGES[stage], KILL_POINTS[stage, point][1]
    changed = {t for t in set(old) | set(new) if old.get(t) != new.get(t)}
    assert changed <= set().union(*groups) and all(changed & group for group in groups)  # the stage changes each group

    home = tmp_path / "home"
    shutil.copytree(source, home)
    kill_at(home, KILL_POINTS[stage, point][0], ["stage", stage])

    now = fingerprint(home)
    for table in set(old) | set(new) | set(now):
        assert now.get(table) in (old.get(table), new.get(table)), f"{table} is neither the old nor the new version"
    for group, side in zip(groups, expected):
        sides = {t: "old" if now.get(t) == old.get(t) else "new" for t in sorted(group & changed)}
        assert set(sides.values()) == {side}, f"tables written in one transaction ended apart: {sides}"
    if stage == "serving_snapshot":
        stamps = {p.name for p in (home / "serving").iterdir() if p.is_dir()}
        assert len(stamps) > 1  # the kill left a folder beside the published one ...

    monkeypatch.setenv("PORTRAIT_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", "")
    run_stage(stage)
    assert fingerprint(home) == new  # the next run repairs everything
    if stage == "serving_snapshot":  # ... and the next publication removes what is neither current nor previous
        folders = [p for p in (home / "serving").iterdir() if p.is_dir()]
        assert len(folders) == 2 and all((p / MANIFEST).exists() for p in folders)

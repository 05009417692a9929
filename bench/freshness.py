"""Freshness: seconds from a new events file landing to updated portraits of its users.

A demo shop is built with `portrait run`; then the Dagster daemon starts with the
project's sensors at their default intervals (landing sensor 30 s, automation 10 s). A
new day's file with events of new users is landed atomically, and the warehouse is
polled (read-only) until `user_profiles` holds those users; this is repeated for several
days, landing at different points of the sensors' cycles. The run timeline (ingestion,
then the automated downstream run, with step times) comes from the instance.

Writes bench/results/freshness.json with `land_to_profile_s` (the median), the maximum
and every sample.

    python -m bench.freshness [--users 200] [--days 10] [--new-users 25] [--trials 5]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb

from bench.machine import record
from orchestration.sensors import AUTOMATION_INTERVAL_S, LANDING_INTERVAL_S

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600


def _portrait(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def _profiles_of(warehouse: Path, users: list[str]) -> int | None:
    """How many of `users` have a portrait, or None while a run holds the warehouse."""
    try:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return con.execute("SELECT count(*) FROM user_profiles WHERE user_id IN (SELECT unnest(?::VARCHAR[]))",
                               [users]).fetchall()[0][0]
    except duckdb.Error:
        return None


def land_new_day(landing: Path, day: date, users: list[str]) -> Path:
    """A day of views and purchases by new users, written under a hidden name and renamed."""
    folder = landing / "events" / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, user in enumerate(users):
        for k, kind in enumerate(("view", "view", "add_to_cart", "purchase")):
            rows.append({"user_id": user, "event_type": kind, "item_id": f"D{(n % 50) + 1:04d}", "price": 10.0,
                         "ts": f"{day.isoformat()}T{8 + k:02d}:{n % 60:02d}:00Z", "session_id": f"fresh-{n}"})
    tmp, target = folder / ".fresh.jsonl.tmp", folder / "fresh.jsonl"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--new-users", type=int, default=25)
    parser.add_argument("--trials", type=int, default=5, help="new days landed one after another")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        home = Path(tmp) / "home"
        # DAGSTER_HOME empty: Portrait creates its instance inside PORTRAIT_HOME, and the daemon uses it
        env = {**os.environ, "PORTRAIT_HOME": str(home), "DAGSTER_HOME": "", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        print("building the demo shop ...", file=sys.stderr)
        _portrait(env, "import", "demo", "--users", str(args.users), "--items", "100", "--days", str(args.days))
        _portrait(env, "run")
        last = max(p.name[len("date="):] for p in (home / "landing" / "events").iterdir())
        day = date.fromisoformat(last) + timedelta(days=1)
        env["DAGSTER_HOME"] = str(home / "dagster")
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                   str(ROOT / "workspace.yaml")], cwd=ROOT, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = []
        try:
            time.sleep(LANDING_INTERVAL_S + 10)  # the sensors' first ticks: they take the loaded state as it stands
            first_landing = time.time()
            for trial in range(args.trials):
                users = [f"F{trial}x{n:04d}" for n in range(args.new_users)]
                print(f"trial {trial + 1}: landing {len(users)} new users' events for {day} ...", file=sys.stderr)
                landed_at = time.time()
                land_new_day(home / "landing", day, users)
                while (found := _profiles_of(home / "warehouse.duckdb", users)) != len(users):
                    if time.time() - landed_at > TIMEOUT_S:
                        raise TimeoutError(f"no portraits after {TIMEOUT_S} s (found {found}); see the runs in the UI")
                    time.sleep(0.5)
                samples.append(round(time.time() - landed_at, 1))
                _wait_for_runs(home, timeout=300)  # the rest of the automated run (segments, summaries)
                day += timedelta(days=1)
                time.sleep(7 * trial % LANDING_INTERVAL_S)  # land at a different point of the sensors' cycle
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        timeline = _timeline(home, first_landing)
    result = {
        "land_to_profile_s": float(statistics.median(samples)),
        "land_to_profile_max_s": max(samples),
        "samples_s": samples,
        "landing_sensor_interval_s": LANDING_INTERVAL_S,
        "automation_sensor_interval_s": AUTOMATION_INTERVAL_S,
        "new_users_per_day": args.new_users,
        "shop_users": args.users,
        "runs_after_landing": timeline,
    }
    return record("freshness", result)


def _wait_for_runs(home: Path, timeout: float) -> None:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    unfinished = dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                         dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    deadline = time.time() + timeout
    with dg.DagsterInstance.get() as instance:
        while instance.get_runs_count(unfinished) and time.time() < deadline:
            time.sleep(1)


def _timeline(home: Path, since: float) -> list[dict]:
    """Each run launched after the landing: job, seconds from landing to its start and end."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    rows = []
    with dg.DagsterInstance.get() as instance:
        for record in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp.timestamp()):
            if record.create_timestamp.timestamp() < since:
                continue
            run_id = record.dagster_run.run_id
            steps = {s.step_key: round(s.end_time - s.start_time, 1) for s in instance.get_run_step_stats(run_id)
                     if s.start_time and s.end_time}
            rows.append({"job": record.dagster_run.job_name, "status": record.dagster_run.status.value,
                         "created_s": round(record.create_timestamp.timestamp() - since, 1),
                         "started_s": round(record.start_time - since, 1) if record.start_time else None,
                         "ended_s": round(record.end_time - since, 1) if record.end_time else None,
                         "step_seconds": steps})
    return rows


if __name__ == "__main__":
    main()

"""Serving: latency and throughput of `portrait serve`, against DuckDB point queries on the same snapshot.

A demo shop is built with `portrait run` in a temporary PORTRAIT_HOME (which publishes a
serving snapshot at the end), the snapshot is published once more to time the copy, and
the API starts in a subprocess on a free loopback port. A fixed mix of requests (40%
profiles, 40% recommendations, 20% health, over every user in turn) is sent twice: by a
few client threads at once (throughput), and by one client (latency without queueing),
each on keep-alive connections; p50/p99 latency per endpoint and requests per second are
recorded. The bare peer runs the same lookups the handlers make, as direct DuckDB queries
on the snapshot in this process, one after another; the latency ratio compares it with
the one-client pass.

Then `portrait run` runs again, writing the warehouse (and publishing a new snapshot when
every run succeeds), and one more snapshot is published, while two clients keep asking at
a steady pace: every request must still answer 200 (`failures` must be 0), and the API
must end on the newest snapshot. The run's exit code is recorded beside.

Writes bench/results/serve.json: `requests_per_s` (the server, several clients),
`duckdb_point_queries_per_s` (the bare peer), `ratio` (server / bare), per-endpoint
latencies, and `during_pipeline_run` with its `failures`.

    python -m bench.serve [--users 300] [--days 20] [--requests 2000] [--clients 4]
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb

from bench.machine import record
from resources.snapshots import SnapshotStore

ROOT = Path(__file__).resolve().parent.parent
MIX = ("profile", "recommendations", "profile", "recommendations", "health")
START_TIMEOUT_S = 120
#: Between two requests of one client while the pipeline runs: a steady load that leaves the run its CPU.
PACE_S = 0.01


def portrait(env: dict, log: Path, *args: str, check: bool = True, timeout_s: float | None = None
             ) -> tuple[float, int]:
    """Run a `portrait` command, its output appended to `log`: (seconds, exit code; -9 when it
    was killed after `timeout_s`). With `check`, a failure raises with the log's tail."""
    started = time.perf_counter()
    with open(log, "a") as out:
        try:
            code = subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = -9
    if code and check:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise RuntimeError(f"`portrait {' '.join(args)}` exited with {code}; the end of its output:\n{tail}")
    return time.perf_counter() - started, code


def portrait_env(home: Path) -> dict:
    """The environment of a `portrait` subprocess on `home`: offline, no Dagster home of the caller."""
    return {**os.environ, "PORTRAIT_HOME": str(home), "DAGSTER_HOME": "", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def start_server(env: dict, port: int) -> subprocess.Popen:
    """`portrait serve` in a subprocess on a loopback port; answering once `wait_until_up` returns."""
    server = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(port, server)
    return server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request_paths(users: list[str], count: int) -> list[tuple[str, str]]:
    """(endpoint, path) for `count` requests: the fixed mix, users taken in turn."""
    paths = []
    for i in range(count):
        kind = MIX[i % len(MIX)]
        user = users[i % len(users)]
        paths.append((kind, "/health" if kind == "health" else
                      f"/users/{user}/profile" if kind == "profile" else f"/users/{user}/recommendations?n=10"))
    return paths


def _get(con: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    con.request("GET", path)
    response = con.getresponse()
    return response.status, response.read()


def _client(port: int, paths: list[tuple[str, str]], samples: list[tuple[str, float, int]],
            stop: threading.Event | None = None) -> None:
    """Send `paths` in order on one keep-alive connection; with `stop`, round and round at a
    steady pace until it is set."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while True:
            for kind, path in paths:
                if stop is not None and stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    status, _ = _get(con, path)
                except (OSError, http.client.HTTPException):
                    status = 0
                    con.close()
                    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                samples.append((kind, time.perf_counter() - started, status))
                if stop is not None:
                    stop.wait(PACE_S)
            if stop is None:
                return
    finally:
        con.close()


def _drive(port: int, paths: list[tuple[str, str]], clients: int) -> tuple[list[tuple[str, float, int]], float]:
    """Every path once, split over `clients` threads; returns the samples and the wall time."""
    samples: list[tuple[str, float, int]] = []
    threads = [threading.Thread(target=_client, args=(port, paths[c::clients], samples)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - started


def _summary(samples: list[tuple[str, float, int]], seconds: float) -> dict:
    by_endpoint = {}
    for kind in sorted({k for k, _, _ in samples}):
        times = sorted(t for k, t, _ in samples if k == kind)
        by_endpoint[kind] = {"requests": len(times), "p50_ms": round(1000 * statistics.median(times), 3),
                             "p99_ms": round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 3)}
    return {"requests": len(samples), "seconds": round(seconds, 3),
            "requests_per_s": round(len(samples) / seconds, 1),
            "failures": sum(1 for _, _, status in samples if status != 200), "by_endpoint": by_endpoint}


def _bare(database: Path, paths: list[tuple[str, str]]) -> tuple[list[tuple[str, float, int]], float]:
    """The handlers' lookups as plain DuckDB queries on the snapshot, in this process, in order."""
    con = duckdb.connect(str(database), read_only=True)
    tables = {t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    optional = [t for t in ("user_segments", "user_propensity", "user_summaries") if t in tables]
    samples = []
    started = time.perf_counter()
    for kind, path in paths:
        begun = time.perf_counter()
        if kind == "health":
            con.execute("SELECT 1").fetchall()  # the handler reads the manifest it already holds
        else:
            user = path.split("/")[2]
            if kind == "profile":
                con.execute("SELECT * EXCLUDE (interest) FROM user_profiles WHERE user_id = ?", [user]).fetchall()
                for table in optional:
                    con.execute(f"SELECT * FROM {table} WHERE user_id = ?", [user]).fetchall()
            else:
                con.execute("SELECT r.*, i.title FROM recommendations r LEFT JOIN items i ON i.item_id = r.item_id "
                            "WHERE r.user_id = ? ORDER BY r.rank LIMIT 10", [user]).fetchall()
        samples.append((kind, time.perf_counter() - begun, 200))
    seconds = time.perf_counter() - started
    con.close()
    return samples, seconds


def wait_until_up(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            if _get(con, "/health")[0] == 200:
                con.close()
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT_S} s")


def _stamp(port: int) -> str:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return json.loads(_get(con, "/health")[1])["snapshot"]
    finally:
        con.close()


def while_running(env: dict, log: Path, port: int, paths: list[tuple[str, str]], store: SnapshotStore,
                  warehouse: Path, run_timeout_s: float | None = None) -> dict:
    """`portrait run` again while two clients ask at a steady pace, then one more publication
    under the same load, so a switch is measured whatever the run did; every answer must be 200."""
    before = _stamp(port)
    samples: list[tuple[str, float, int]] = []
    stop = threading.Event()
    clients = [threading.Thread(target=_client, args=(port, paths[c::2], samples, stop)) for c in range(2)]
    started = time.perf_counter()
    for client in clients:
        client.start()
    try:
        run_s, code = portrait(env, log, "run", check=False, timeout_s=run_timeout_s)
        with duckdb.connect(str(warehouse), read_only=True) as con:
            store.publish(con, None, None, published_by="bench")
        time.sleep(1.0)  # requests after the last publication, too
    finally:
        stop.set()
        for client in clients:
            client.join()
    seconds = time.perf_counter() - started
    after = _stamp(port)
    return {**_summary(samples, seconds), "pipeline_run_s": round(run_s, 1), "pipeline_exit_code": code,
            "snapshot_before": before, "snapshot_after": after, "on_newest_snapshot": after == store.current_name()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        home = Path(tmp) / "home"
        env = portrait_env(home)
        log = Path(tmp) / "portrait.log"
        portrait(env, log, "import", "demo", "--users", str(args.users), "--days", str(args.days))
        build_s, _ = portrait(env, log, "run")
        store = SnapshotStore(root=str(home / "serving"))
        started = time.perf_counter()
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
            snapshot = store.publish(con, None, None, published_by="bench").snapshot
        publish_s = time.perf_counter() - started
        with duckdb.connect(str(snapshot.database), read_only=True) as con:
            users = [u for (u,) in con.execute("SELECT user_id FROM user_profiles ORDER BY user_id").fetchall()]
        paths = request_paths(users, args.requests)

        port = free_port()
        server = start_server(env, port)
        try:
            _drive(port, paths[:200], args.clients)  # warm-up: imports, first connections, caches
            served = _summary(*_drive(port, paths, args.clients))
            one_client = _summary(*_drive(port, paths, 1))
            bare = _summary(*_bare(snapshot.database, paths))
            during = while_running(env, log, port, paths, store, home / "warehouse.duckdb")
        finally:
            server.terminate()
            server.wait(timeout=30)

    ratio = {kind: round(one_client["by_endpoint"][kind]["p50_ms"] / bare["by_endpoint"][kind]["p50_ms"], 1)
             for kind in ("profile", "recommendations")}
    return record("serve", {
        "requests_per_s": served["requests_per_s"],
        "duckdb_point_queries_per_s": bare["requests_per_s"],
        "ratio": round(served["requests_per_s"] / bare["requests_per_s"], 3),
        "shop": {"users": args.users, "days": args.days, "snapshot_tables": snapshot.tables},
        "pipeline_run_s": round(build_s, 1),
        "publish_s": round(publish_s, 3),
        "clients": args.clients,
        "server": served,
        "server_one_client": one_client,
        "bare_duckdb": bare,
        "p50_ratio_one_client_to_bare": ratio,
        "during_pipeline_run": during,
    })


if __name__ == "__main__":
    main()

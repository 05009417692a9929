"""The scale-out configuration (orchestration/celery.py) runs for real: a Redis broker on loopback,
one worker on the default `dagster` queue and one on `gpu`, and a run whose warehouse step and
torch step land on their own workers."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import redis
from dagster._core.definitions.reconstruct import ReconstructableRepository

from assets.automation import TORCH_OP_TAGS
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.home import ensure_dagster_home
from resources.landing import LandingZone

ROOT = Path(__file__).resolve().parents[1]
QUEUES = ("dagster", "gpu")
#: How long a worker may take to import Portrait and report ready.
READY_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """End a process started in its own session, and everything it started, within seconds."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A throwaway Redis on a free loopback port, without persistence."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is missing: run `make redis` (or `sudo apt-get install -y redis-server`)")
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=(tmp_path / "redis.log").open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"redis-server did not answer: {(tmp_path / 'redis.log').read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        stop(process)


@pytest.fixture
def workers(home: Path, broker: str, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """One worker per queue, started the documented way; their log files by queue."""
    config = tmp_path / "celery.yaml"
    config.write_text(f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n")
    dagster_home = ensure_dagster_home(home)  # the workers and the test share this instance
    # create its storage once, here: processes migrating a new SQLite schema at the same
    # moment can leave two alembic heads behind
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)
    scripts = Path(sys.executable).parent  # `dagster-celery worker start` runs `celery` from PATH
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}", "PORTRAIT_HOME": str(home),
           "DAGSTER_HOME": str(dagster_home), "PORTRAIT_CELERY_BROKER": broker, "PORTRAIT_DEVICE": "cpu"}
    logs, processes = {}, []
    try:
        for queue in QUEUES:
            logs[queue] = tmp_path / f"worker-{queue}.log"
            # solo pool: the task runs in the worker process itself, one at a time (lean on small machines)
            processes.append(subprocess.Popen(
                [str(scripts / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config), "-q", queue,
                 "-n", queue, "--", "--pool=solo"],
                cwd=ROOT, env=env, stdout=logs[queue].open("w"), stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + READY_SECONDS
        while not all("ready." in log.read_text() for log in logs.values()):
            for queue, process in zip(QUEUES, processes):
                if process.poll() is not None:
                    pytest.fail(f"the {queue} worker exited: {logs[queue].read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"workers not ready after {READY_SECONDS} s")
            time.sleep(0.5)
        yield logs
    finally:
        for process in processes:
            stop(process)


def celery_workers_by_step(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key to the name of the Celery worker that executed it, from the run's engine events."""
    found = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        metadata = record.dagster_event.engine_event_data.metadata
        if "Celery worker" in metadata:
            found[record.step_key] = metadata["Celery worker"].value.split("@")[0]
    return found


def test_every_asset_that_takes_the_device_is_routed_to_the_gpu_queue():
    from orchestration.celery import defs

    for asset in defs.assets:
        routed = asset.op.tags.items() >= TORCH_OP_TAGS.items()
        assert routed == ("device" in asset.required_resource_keys), asset.op.name


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_through_celery_sends_torch_steps_to_the_gpu_worker(home, broker, workers, monkeypatch):
    generate_demo(LandingZone(root=str(home / "landing")), users=40, items=24, days=3, seed=5)
    assert main(["run", "--ingest-only"]) == 0  # in process, into the same instance
    warehouse = home / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        (items,) = con.execute("SELECT count(*) FROM items").fetchone()
        con.execute("DROP TABLE items")  # the Celery run must write it again

    monkeypatch.setenv("PORTRAIT_CELERY_BROKER", broker)
    monkeypatch.setenv("PORTRAIT_DEVICE", "cpu")
    job = ReconstructableRepository.for_module("orchestration.celery", "defs", working_directory=str(ROOT)) \
        .get_reconstructable_job("__ASSET_JOB")
    instance = dg.DagsterInstance.get()
    started = time.monotonic()
    with dg.execute_job(job, instance=instance,
                        asset_selection=[dg.AssetKey("items"), dg.AssetKey("text_embeddings")]) as result:
        failures = [str(e.step_failure_data.error.message) for e in result.all_events if e.is_step_failure]
        assert result.success, (failures, {queue: log.read_text()[-3000:] for queue, log in workers.items()})
        run_id = result.run_id
    print(f"celery run: {time.monotonic() - started:.1f} s")

    assert celery_workers_by_step(instance, run_id) == {"items": "dagster", "text_embeddings": "gpu"}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM items").fetchone()[0] == items > 0
        assert con.execute("SELECT count(*) FROM text_embeddings").fetchone()[0] > 0

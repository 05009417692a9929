"""The Dagster UI in a real browser, as a person uses it.

`portrait ui` serves the demo shop on a free loopback port; headless Chromium (the system's,
driven by Playwright) checks that the catalog lists every asset of the Definitions, launches a
two-day backfill of `raw_events` and a materialization of `users` by clicking, and waits for
them to succeed. Screenshots go to a temporary folder, and also to `$PORTRAIT_SCREENSHOTS`
when set (`make screenshots` refreshes docs/screenshots/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import pytest

from orchestration.definitions import defs
from resources.home import landing_path
from resources.landing import LandingZone

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = ("install Debian's Chromium with `make browser` (as root: apt-get update && apt-get install -y "
                "chromium), or point PORTRAIT_CHROMIUM at a Chromium binary")
DEMO = ["--users", "120", "--items", "80", "--days", "6"]
CHEAP_ASSET = "users"  # unpartitioned; one small landing file, about a second
PARTITIONED_ASSET = "raw_events"
VIEWPORT = {"width": 1280, "height": 900}
START_TIMEOUT_S = 180  # the code location imports torch and transformers
RUN_TIMEOUT_S = 240  # queue, a run process (imports again), and the backfill daemon's 30 s loop
UI_TIMEOUT_MS = 30_000
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_BUSY = {"REQUESTED", "CANCELING", "FAILING"}


@dataclass
class Ui:
    """A running `portrait ui`: its address, home and log."""

    url: str
    home: Path
    log: Path

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        """Dagster's GraphQL API, for reading run status only; launches are clicks."""
        request = urllib.request.Request(f"{self.url}/graphql", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"query": query, "variables": variables}).encode())
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
        with opener.open(request, timeout=30) as response:
            body = json.load(response)
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _portrait(home: Path, *args: str) -> dict[str, Any]:
    """Arguments for running the `portrait` command line on `home`, with the instance Portrait places there."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(PORTRAIT_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return {"args": [sys.executable, "-m", "orchestration.cli", *args], "cwd": PROJECT_ROOT, "env": env}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float, what: str, ui: Ui) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {value!r} after {timeout_s:.0f} s\n--- dagster log ---\n{ui.tail()}")
        time.sleep(1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system: a missing browser fails the test with the fix, never skips it."""
    configured = os.environ.get("PORTRAIT_CHROMIUM")
    if configured and not Path(configured).is_file():
        pytest.fail(f"PORTRAIT_CHROMIUM={configured} is not a file; {INSTALL_HINT}", pytrace=False)
    binary = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.fail(f"Chromium not found: {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: .venv/bin/pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    """`portrait ui` (webserver and daemon) on the ingested demo shop; its whole process group is ended after."""
    home = tmp_path_factory.mktemp("ui") / "home"
    for args in (["import", "demo", *DEMO], ["run", "--ingest-only"]):
        done = subprocess.run(**_portrait(home, *args), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"portrait {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    port = _free_port()
    log = home.parent / "dagster.log"
    with log.open("wb") as out:
        server = subprocess.Popen(**_portrait(home, "ui", "--port", str(port)), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    running = Ui(f"http://127.0.0.1:{port}", home, log)
    try:
        _poll(lambda: _location_status(running, server), lambda status: status == "LOADED", START_TIMEOUT_S,
              "the code location did not load", running)
        yield running
    finally:
        _stop(server)


def _location_status(ui: Ui, server: subprocess.Popen) -> str:
    if server.poll() is not None:
        pytest.fail(f"`portrait ui` exited with {server.returncode}\n--- dagster log ---\n{ui.tail()}")
    try:
        data = ui.graphql("{ workspaceOrError { ... on Workspace { locationEntries { loadStatus "
                          "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
    except OSError:
        return "webserver not answering"
    entries = data["workspaceOrError"].get("locationEntries") or [{"loadStatus": "no code location yet"}]
    loaded = entries[0].get("locationOrLoadError") or {}
    if loaded.get("__typename") == "PythonError":
        pytest.fail(f"the code location failed to load: {loaded['message']}")
    return entries[0]["loadStatus"]


def _stop(server: subprocess.Popen, grace_s: float = 20) -> None:
    """End `dagster dev`, its webserver, daemon, code servers and run processes: one process group.

    Ctrl-C (SIGINT) first, which `dagster dev` answers by shutting its services down; whatever is
    left after `grace_s` is killed.
    """
    deadline = time.monotonic() + grace_s
    try:
        os.killpg(server.pid, signal.SIGINT)
        while time.monotonic() < deadline:
            server.poll()  # reap `portrait ui` itself: a zombie still counts as a member of the group
            os.killpg(server.pid, 0)  # raises once no process of the group is left
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


@pytest.fixture(scope="module")
def page(browser: Browser, ui: Ui) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    # The community sign-up dialog opens once per fresh instance and would cover the page.
    context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Page, str], Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    published = os.environ.get("PORTRAIT_SCREENSHOTS")

    def take(page: Page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.wait_for_load_state("networkidle")
        page.screenshot(path=path)
        if published:
            Path(published).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(published) / path.name)
        return path

    return take


def _toast_link(page: Page, text: str) -> str:
    """The "View" link of the notification that a launch raises, e.g. `Launched run 1c8a58bd`."""
    toast = page.get_by_role("region", name=re.compile("Notifications")).get_by_role("listitem").filter(has_text=text)
    return toast.get_by_role("link", name="View").get_attribute("href")


def _catalog_links(page: Page, wanted: set[str]) -> set[str]:
    """Asset links of the catalog, scrolling its list (rows outside the view are not rendered)."""
    rows = page.locator('a[href^="/assets/"]')
    rows.first.wait_for()
    seen: set[str] = set()
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while not wanted <= seen and time.monotonic() < deadline:
        seen |= {href for href in (row.get_attribute("href") for row in rows.all()) if href}
        rows.last.hover()
        page.mouse.wheel(0, 400)
        page.wait_for_timeout(300)
    return seen


def test_catalog_and_graph_show_every_asset(page: Page, ui: Ui, screenshot: Callable[[Page, str], Path]) -> None:
    wanted = {"/assets/" + "/".join(key.path) for key in defs.resolve_all_asset_keys()}
    page.goto(f"{ui.url}/assets")
    missing = wanted - _catalog_links(page, wanted)
    assert not missing, f"the catalog does not list {sorted(missing)}"

    # The whole graph with every group open; top to bottom, the groups sit side by side and fit the screen.
    page.goto(f"{ui.url}/asset-groups")
    for item in ("vertical orientation", "Expand all groups"):
        page.get_by_role("button", name="settings", exact=True).click()  # the graph's own settings menu
        page.get_by_role("menuitem", name=re.compile(item)).click()
    page.wait_for_url(re.compile("expanded="))
    page.reload()  # a fresh load zooms the opened graph to fit
    page.get_by_text(PARTITIONED_ASSET, exact=True).wait_for()
    page.get_by_role("button", name="panel_show_right", exact=True).click()  # hide the group list beside the graph
    screenshot(page, "asset-graph")


# The backfills go before the materialization of `users`: that one sets off `portrait_automation`
# downstream, whose runs would hold the warehouse pool while the backfill waits in the queue.
def test_backfill_two_days_from_the_ui(page: Page, ui: Ui, screenshot: Callable[[Page, str], Path]) -> None:
    assert defs.resolve_asset_graph().get(dg.AssetKey(PARTITIONED_ASSET)).partitions_def is not None
    days = LandingZone(root=str(landing_path(ui.home))).event_days()[-2:]
    page.goto(f"{ui.url}/assets/{PARTITIONED_ASSET}")
    page.get_by_role("button", name=re.compile("Materialize…$")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Select a partition or create one").click()
    for day in days:
        page.get_by_role("menuitem", name=day).click()
    page.keyboard.press("Escape")  # closes the partition list, not the dialog
    dialog.get_by_text("2 partitions").wait_for()
    dialog.get_by_role("button", name="Launch backfill").click()
    backfill_id = _toast_link(page, "Created backfill").split("?")[0].rstrip("/").rsplit("/", 1)[-1]

    query = ("query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { "
             "status runs(limit: 10) { runId status tags { key value } } } } }")
    backfill = _poll(lambda: ui.graphql(query, id=backfill_id)["partitionBackfillOrError"],
                     lambda b: b["status"] not in BACKFILL_BUSY, RUN_TIMEOUT_S, f"backfill {backfill_id}", ui)
    assert backfill["status"] == "COMPLETED_SUCCESS", f"{backfill}\n--- dagster log ---\n{ui.tail()}"
    assert backfill["runs"] and all(run["status"] == "SUCCESS" for run in backfill["runs"]), backfill
    tags = {tag["key"]: tag["value"] for tag in backfill["runs"][0]["tags"]}
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == tuple(days)
    assert tags["dagster/from_ui"] == "true"

    page.goto(f"{ui.url}/runs/b/{backfill_id}")
    page.get_by_text("Succeeded", exact=True).first.wait_for()
    screenshot(page, "backfill")


def test_overlapping_backfills_queue_and_both_succeed(ui: Ui) -> None:
    """Two `portrait backfill`s over overlapping days, launched at once: each runs as one run and
    both succeed. (The daemon's backfill loop launches them seconds apart, so whether the pool
    kept them apart is shown by the test below, which queues two runs in the same second.)"""
    days = LandingZone(root=str(landing_path(ui.home))).event_days()
    ranges = [(days[0], days[-2]), (days[1], days[-1])]
    launched = [subprocess.Popen(**_portrait(ui.home, "backfill", "--start", start, "--end", end,
                                             "--wait", str(RUN_TIMEOUT_S)),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for start, end in ranges]
    outputs = [process.communicate(timeout=RUN_TIMEOUT_S + 60)[0] for process in launched]
    for process, output in zip(launched, outputs):
        assert process.returncode == 0, f"{output}\n--- dagster log ---\n{ui.tail()}"
        assert "completed_success" in output
    ids = [output.split()[1] for output in outputs]
    query = ("query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { "
             "runs(limit: 10) { status startTime endTime } } } }")
    runs = [ui.graphql(query, id=backfill_id)["partitionBackfillOrError"]["runs"] for backfill_id in ids]
    assert all(len(r) == 1 and r[0]["status"] == "SUCCESS" for r in runs), runs  # one run per range


#: Unpartitioned assets that write the warehouse, a few seconds' work together (texts to encode, portraits).
WAREHOUSE_WRITERS = ("users", "items", "text_embeddings", "item_embeddings", "user_profiles")
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
    ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def test_two_runs_launched_at_once_take_the_duckdb_pool_in_turn(ui: Ui) -> None:
    """Two runs writing the warehouse, queued in the same second: the `duckdb` pool (one slot)
    keeps the second in the queue until the first's step is done, so they never write at once."""
    data = ui.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")
    location = data["workspaceOrError"]["locationEntries"][0]["name"]
    params = {"selector": {"repositoryLocationName": location, "repositoryName": "__repository__",
                           "jobName": "__ASSET_JOB", "assetSelection": [{"path": [key]} for key in WAREHOUSE_WRITERS]},
              "runConfigData": {}}
    launched = [ui.graphql(LAUNCH, params=params)["launchRun"] for _ in range(2)]
    assert all(r["__typename"] == "LaunchRunSuccess" for r in launched), launched
    ids = [r["run"]["runId"] for r in launched]
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status startTime endTime } } }"
    runs = _poll(lambda: [ui.graphql(query, id=run_id)["runOrError"] for run_id in ids],
                 lambda found: all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in found),
                 RUN_TIMEOUT_S, "the two runs did not finish", ui)
    assert all(r["status"] == "SUCCESS" for r in runs), f"{runs}\n--- dagster log ---\n{ui.tail()}"
    first, second = sorted(runs, key=lambda run: run["startTime"])
    # the slot frees as the first run's step ends, a moment before the run records its end
    assert second["startTime"] >= first["endTime"] - 1.0, runs


def test_materialize_from_the_ui(page: Page, ui: Ui, screenshot: Callable[[Page, str], Path]) -> None:
    assert defs.resolve_asset_graph().get(dg.AssetKey(CHEAP_ASSET)).partitions_def is None
    page.goto(f"{ui.url}/assets/{CHEAP_ASSET}")
    page.get_by_role("button", name=re.compile("Materialize$")).click()
    run_path = _toast_link(page, "Launched run")
    run_id = run_path.rsplit("/", 1)[-1]

    query = ("query($id: ID!) { runOrError(runId: $id) { ... on Run { status assetSelection { path } "
             "tags { key value } } } }")
    run = _poll(lambda: ui.graphql(query, id=run_id)["runOrError"], lambda r: r["status"] in RUN_DONE,
                RUN_TIMEOUT_S, f"run {run_id}", ui)
    assert run["status"] == "SUCCESS", f"run {run_id}: {run['status']}\n--- dagster log ---\n{ui.tail()}"
    assert run["assetSelection"] == [{"path": [CHEAP_ASSET]}]
    assert {"key": "dagster/from_ui", "value": "true"} in run["tags"]

    page.goto(f"{ui.url}{run_path}")
    page.get_by_text("Success", exact=True).first.wait_for()
    screenshot(page, "run")

"""Serving: snapshots published atomically beside the warehouse, and the JSON API that reads them."""

import json
import re
import sys
import threading
import types
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

import resources.snapshots as snapshots_module
from bench.serve import free_port, portrait, portrait_env, request_paths, start_server, while_running
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from orchestration.serve import SnapshotReader, create_app
from resources.landing import LandingZone
from resources.snapshots import CURRENT, SnapshotStore, user_rows
from tests.ingest_helpers import query

#: A hand-made warehouse with every serving table, small enough to read at a glance. The
#: portraits are a view, as in the real warehouse; the vectors must not reach the API.
WAREHOUSE_SQL = """
CREATE TABLE profile_state AS SELECT * FROM (VALUES
    ('U1', 'active', 12, [1, 0, 0]::FLOAT[3], TIMESTAMP '2026-09-08 10:00:00'),
    ('U2', 'at_risk', 3, [0, 1, 0]::FLOAT[3], TIMESTAMP '2026-09-01 09:30:00'),
    ('U3', 'new', 1, NULL, TIMESTAMP '2026-09-08 23:00:00')) t(user_id, lifecycle, events, interest, last_seen);
CREATE VIEW user_profiles AS SELECT user_id, lifecycle, events, ['guitar', 'amp'] AS top_keywords,
    [{'name': 'Guitars', 'share': 0.75}] AS top_categories, interest, last_seen FROM profile_state;
CREATE TABLE items AS SELECT * FROM (VALUES ('I1', 'Red guitar', 199.0), ('I2', 'Blue amp', 89.5),
    ('I3', 'Green strings', 9.99)) t(item_id, title, price);
CREATE TABLE item_embeddings AS SELECT item_id, 'test-model' AS model_id, [1, 0, 0]::FLOAT[3] AS vector FROM items;
CREATE TABLE recommendations AS SELECT * FROM (VALUES
    ('U1', 1, 'I2', 0.9, 'goes with your guitar', 'test'), ('U1', 2, 'I3', 0.5, 'popular', 'test'),
    ('U1', 3, 'I1', 0.1, 'popular', 'test'), ('U2', 1, 'I1', 0.7, 'you viewed it', 'test'))
    t(user_id, rank, item_id, score, reason, source);
CREATE TABLE user_segments AS SELECT * FROM (VALUES ('U1', 1, 'guitar fans'), ('U2', 0, 'other'),
    ('U3', 0, 'other')) t(user_id, segment_id, segment);
CREATE TABLE segments AS SELECT * FROM (VALUES (0, 'other', 2, 'everyone else'),
    (1, 'guitar fans', 1, 'buys guitars')) t(segment_id, segment, size, description);
CREATE TABLE user_summaries AS SELECT user_id, 'A paragraph about ' || user_id AS summary, 'Hello!' AS message
    FROM profile_state;
CREATE TABLE events AS SELECT 'U1' AS user_id, 'view' AS event_type;  -- not a serving table: never copied
"""
SERVED = {"user_profiles": 3, "recommendations": 4, "items": 3, "item_embeddings": 3, "user_segments": 3,
          "segments": 2, "user_summaries": 3}


def make_warehouse(path: Path) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute(WAREHOUSE_SQL)
    return path


def publish(store: SnapshotStore, warehouse: Path, search_index: Path | None = None,
            keep_previous: bool = True) -> snapshots_module.Publication:
    with duckdb.connect(str(warehouse), read_only=True) as con:  # read-only, as the asset opens it
        return store.publish(con, search_index, "run-0", published_by="test", keep_previous=keep_previous)


@pytest.fixture
def served(tmp_path: Path) -> tuple[SnapshotStore, Path]:
    warehouse = make_warehouse(tmp_path / "warehouse.duckdb")
    store = SnapshotStore(root=str(tmp_path / "serving"))
    publish(store, warehouse)
    return store, warehouse


# --- snapshots -----------------------------------------------------------------------------------------------------


def test_publish_copies_the_serving_tables_and_keeps_the_current_and_the_previous_snapshot(tmp_path):
    warehouse = make_warehouse(tmp_path / "warehouse.duckdb")
    store = SnapshotStore(root=str(tmp_path / "serving"))
    assert store.current() is None and store.pointer_version() is None
    publications = [publish(store, warehouse) for _ in range(3)]
    stamps = [p.snapshot.stamp for p in publications]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # sortable UTC stamps, one folder each
    assert [(p.previous, p.deleted) for p in publications] == [(None, []), (stamps[0], []), (stamps[1], [stamps[0]])]
    assert sorted(p.name for p in (tmp_path / "serving").iterdir()) == sorted([".publish.lock", CURRENT,
                                                                                 *stamps[1:]])

    current = store.current()
    assert current.stamp == stamps[2] and (tmp_path / "serving" / CURRENT).read_text() == stamps[2] + "\n"
    assert current.manifest == {
        "stamp": stamps[2], "created_at": current.manifest["created_at"], "published_by": "test",
        "source_run": "run-0", "tables": SERVED, "missing_tables": ["user_propensity"], "search_index": None}
    with duckdb.connect(str(current.database), read_only=True) as con:
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall())
        assert kinds == {t: "BASE TABLE" for t in SERVED}  # the view became a table; events stayed behind
        assert con.execute("SELECT user_id, interest FROM user_profiles ORDER BY ALL").fetchall() == [
            ("U1", (1.0, 0.0, 0.0)), ("U2", (0.0, 1.0, 0.0)), ("U3", None)]
        indexed = {t for (t,) in con.execute("SELECT table_name FROM duckdb_indexes()").fetchall()}
        assert indexed == set(SERVED)
    assert user_rows(current, "U1") == {"recommendations": 3, "user_profiles": 1, "user_segments": 1,
                                        "user_summaries": 1}


def test_a_publication_that_dies_half_way_changes_nothing_readers_see(tmp_path, monkeypatch):
    warehouse = make_warehouse(tmp_path / "warehouse.duckdb")
    store = SnapshotStore(root=str(tmp_path / "serving"))
    first = publish(store, warehouse).snapshot
    version = store.pointer_version()

    def dies(con: duckdb.DuckDBPyConnection, target: Path) -> dict[str, int]:
        target.write_bytes(b"half a database")
        raise OSError("disk full")

    monkeypatch.setattr(snapshots_module, "copy_tables", dies)
    with pytest.raises(OSError, match="disk full"):
        publish(store, warehouse)
    assert store.current() == first and store.pointer_version() == version
    assert len(store.folders()) == 2  # the half-written folder, named by nothing

    monkeypatch.undo()
    third = publish(store, warehouse)
    assert sorted(p.name for p in store.folders()) == [first.stamp, third.snapshot.stamp]
    assert len(third.deleted) == 1 and third.deleted[0] > first.stamp


def test_readers_keep_working_while_new_snapshots_are_published(served):
    store, warehouse = served
    first = store.current()
    held = duckdb.connect(str(first.database), read_only=True)  # a reader that opened the first snapshot
    reader = SnapshotReader(store)
    published = {first.stamp}
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                with reader.cursor() as (opened, cursor):
                    seen.add(opened.snapshot.stamp)
                    assert cursor.execute("SELECT count(*) FROM user_profiles").fetchall() == [(3,)]
                    assert cursor.execute("SELECT title FROM items WHERE item_id = ?", ["I2"]).fetchall() == [
                        ("Blue amp",)]
                assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", store.current_name())  # always one whole stamp
            except BaseException as error:  # noqa: BLE001 - any failure fails the test below
                errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            stamp = publish(store, warehouse).snapshot.stamp
            published.add(stamp)
            while stamp not in seen and not errors:
                stop.wait(0.001)  # until a reader has switched to it, before the next replaces it
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(seen) >= 5 and seen <= published
    assert not first.folder.exists()  # deleted two publications later ...
    assert held.execute("SELECT count(*) FROM recommendations").fetchall() == [(4,)]  # ... yet still readable
    held.close()
    with reader.cursor() as (opened, _):
        assert opened.snapshot.stamp == store.current_name()
    reader.close()


# --- the API -------------------------------------------------------------------------------------------------------


def test_the_api_answers_health_profiles_and_recommendations(served):
    store, _ = served
    with TestClient(create_app(store)) as client:
        health = client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["snapshot"] == store.current_name() and body["tables"] == SERVED
        assert body["missing_tables"] == ["user_propensity"] and body["search_index"] is None

        profile = client.get("/users/U1/profile").json()
        assert profile["profile"] == {
            "lifecycle": "active", "events": 12, "top_keywords": ["guitar", "amp"],
            "top_categories": [{"name": "Guitars", "share": 0.75}], "last_seen": "2026-09-08T10:00:00"}  # no vector
        assert profile["segment"] == {"segment_id": 1, "segment": "guitar fans", "description": "buys guitars"}
        assert profile["summary"] == {"summary": "A paragraph about U1", "message": "Hello!"}
        assert profile["propensity"] is None  # no user_propensity in this snapshot

        recommended = client.get("/users/U1/recommendations", params={"n": 2}).json()
        assert recommended["n"] == 2 and recommended["recommendations"] == [
            {"rank": 1, "item_id": "I2", "score": 0.9, "reason": "goes with your guitar", "source": "test",
             "title": "Blue amp"},
            {"rank": 2, "item_id": "I3", "score": 0.5, "reason": "popular", "source": "test", "title": "Green strings"}]
        assert [r["rank"] for r in client.get("/users/U1/recommendations").json()["recommendations"]] == [1, 2, 3]
        assert client.get("/users/U3/recommendations").json()["recommendations"] == []  # known, nothing to offer


def test_unknown_users_and_bad_parameters_get_clear_answers(served):
    store, _ = served
    with TestClient(create_app(store)) as client:
        for url in ("/users/NOBODY/profile", "/users/NOBODY/recommendations", "/search?q=amp&user=NOBODY"):
            response = client.get(url)
            assert response.status_code == 404, url
            assert response.json()["error"] == "unknown_user" and response.json()["user_id"] == "NOBODY"
            assert "erased" in response.json()["detail"]
        for n in ("ten", "0", "101", "2.5", ""):
            response = client.get("/users/U1/recommendations", params={"n": n})
            assert response.status_code == 422, n
            assert response.json()["field"] == "n" and "1 to 100" in response.json()["detail"]
        for params in ({"q": ""}, {"q": "   "}, {}):
            response = client.get("/search", params=params)
            assert response.status_code == 422 and response.json()["field"] == "q"
        assert client.get("/search", params={"q": "amp", "n": "x"}).json()["field"] == "n"
        assert client.get("/nowhere").json() == {"error": "not_found", "detail": "Not Found"}


def test_without_a_snapshot_every_request_says_to_run_portrait_run(tmp_path):
    with TestClient(create_app(SnapshotStore(root=str(tmp_path / "serving")))) as client:
        for url in ("/health", "/users/U1/profile", "/users/U1/recommendations", "/search?q=amp"):
            response = client.get(url)
            assert response.status_code == 503, url
            assert response.json()["error"] == "unavailable" and "`portrait run`" in response.json()["detail"]


def test_the_api_moves_to_a_newer_snapshot_on_the_next_request(served):
    store, warehouse = served
    with TestClient(create_app(store)) as client:
        before = client.get("/health").json()["snapshot"]
        assert client.get("/users/U2/profile").status_code == 200
        with duckdb.connect(str(warehouse)) as con:
            con.execute("DELETE FROM profile_state WHERE user_id = 'U2'")
            con.execute("DELETE FROM recommendations WHERE user_id = 'U2'")
        publish(store, warehouse)
        assert client.get("/users/U2/profile").status_code == 404
        assert client.get("/health").json()["snapshot"] > before


def fake_search_module(loaded: list) -> types.ModuleType:
    """Stands in for `assets.search`: the API's contract with it, not its ranking, is under test."""

    class Searcher:
        @classmethod
        def load(cls, folder: Path, encoder: object) -> "Searcher":
            loaded.append((folder, encoder))
            return cls()

        def search(self, con: duckdb.DuckDBPyConnection, query: str, user_id: str | None = None,
                   n: int = 10) -> pd.DataFrame:
            frame = con.sql("SELECT row_number() OVER (ORDER BY item_id) AS rank, item_id, title, 1.0 AS score, "
                            "0.5 AS text_score, 0.5 AS semantic_score, 0.0 AS personal_score, 'matches' AS reason "
                            "FROM items WHERE contains(lower(title), lower($q)) LIMIT $n",
                            params={"q": query, "n": n}).df()
            frame.attrs["user"] = user_id
            return frame

    module = types.ModuleType("assets.search")
    module.Searcher = Searcher
    return module


def test_search_needs_a_published_index_and_the_search_module(served, tmp_path, monkeypatch):
    store, warehouse = served
    index = tmp_path / "models" / "search_index" / "v1"
    index.mkdir(parents=True)
    loaded: list = []
    with TestClient(create_app(store, encoder_loader=lambda: "the encoder")) as client:
        response = client.get("/search", params={"q": "amp"})
        assert response.status_code == 503 and "no published search index" in response.json()["detail"]

        publish(store, warehouse, search_index=index)
        assert client.get("/health").json()["search_index"] == "v1"
        monkeypatch.setitem(sys.modules, "assets.search", None)  # the module is not installed
        response = client.get("/search", params={"q": "amp"})
        assert response.status_code == 503 and "search is not available" in response.json()["detail"]

        monkeypatch.setitem(sys.modules, "assets.search", fake_search_module(loaded))
        for _ in range(2):
            response = client.get("/search", params={"q": "AMP", "user": "U1", "n": 5})
            assert response.status_code == 200
        assert response.json() == {"query": "AMP", "user_id": "U1", "snapshot": store.current_name(), "n": 5,
                                   "results": [{"rank": 1, "item_id": "I2", "title": "Blue amp", "score": 1.0,
                                                "text_score": 0.5, "semantic_score": 0.5, "personal_score": 0.0,
                                                "reason": "matches"}]}
        assert loaded == [(index, "the encoder")]  # loaded once per snapshot, the encoder once


def test_portrait_serve_binds_to_loopback_by_default(home, monkeypatch):
    calls: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    assert main(["serve"]) == 0
    assert main(["serve", "--port", "8123"]) == 0
    assert [options for _, options in calls] == [{"host": "127.0.0.1", "port": 8000, "log_level": "warning"},
                                                 {"host": "127.0.0.1", "port": 8123, "log_level": "warning"}]
    assert all(isinstance(app, Starlette) for app, _ in calls)


# --- end to end ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_portrait_run_publishes_a_snapshot_and_forget_takes_the_user_out_of_serving(home, capsys):
    generate_demo(LandingZone(root=str(home / "landing")), users=80, items=60, days=8, seed=11)
    assert main(["run"]) == 0
    assert "publish_serving: ok" in capsys.readouterr().out
    store = SnapshotStore(root=str(home / "serving"))
    snapshot = store.current()
    assert {"user_profiles", "recommendations", "items", "item_embeddings", "user_segments", "segments",
            "user_summaries"} <= set(snapshot.tables)
    for table, rows in snapshot.tables.items():
        assert query(home, f"SELECT count(*) FROM {table}") == [(rows,)], table
    (user,), = query(home, "SELECT user_id FROM recommendations r JOIN user_segments s USING (user_id) "
                           "ORDER BY user_id LIMIT 1")

    with TestClient(create_app(store)) as client:
        profile = client.get(f"/users/{user}/profile").json()
        assert profile["profile"]["lifecycle"] and "interest" not in profile["profile"]
        assert profile["segment"]["segment"] and profile["summary"]["summary"]
        recommended = client.get(f"/users/{user}/recommendations", params={"n": 3}).json()["recommendations"]
        assert [r["rank"] for r in recommended] == [1, 2, 3] and all(r["title"] for r in recommended)

        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:  # a previous snapshot too
            store.publish(con, None, None, published_by="test")
        assert len(store.folders()) == 2
        assert main(["forget", user, "--reason", "test erasure"]) == 0
        out = capsys.readouterr().out
        assert "serving: published snapshot" in out and "deleted 2 older snapshot(s)" in out

        current = store.current()
        assert [p.name for p in store.folders()] == [current.stamp]  # no older copy holds the user
        assert set(user_rows(current, user).values()) == {0} and current.manifest["published_by"] == "portrait forget"
        assert client.get(f"/users/{user}/profile").status_code == 404
        assert client.get(f"/users/{user}/recommendations").status_code == 404
        assert client.get("/health").json()["snapshot"] == current.stamp

    (serving,), = query(home, "SELECT serving FROM erasure_audit")
    serving = json.loads(serving)
    assert serving["snapshot"] == current.stamp and len(serving["deleted"]) == 2
    assert serving["rows"]["user_profiles"] == 1 and serving["rows"]["recommendations"] > 0


@pytest.mark.slow
def test_the_api_keeps_answering_while_a_pipeline_run_writes_the_warehouse(tmp_path):
    """The API reads published snapshots, never the warehouse: a run holding DuckDB's one writer
    lock on the warehouse must not fail or block a single request, and the API ends on the
    snapshot the run published."""
    home = tmp_path / "home"
    env, log = portrait_env(home), tmp_path / "portrait.log"
    portrait(env, log, "import", "demo", "--users", "80", "--days", "8")
    portrait(env, log, "run")
    store = SnapshotStore(root=str(home / "serving"))
    with duckdb.connect(str(store.current().database), read_only=True) as con:
        users = [u for (u,) in con.execute("SELECT user_id FROM recommendations GROUP BY 1 ORDER BY 1").fetchall()]
    port = free_port()
    server = start_server(env, port)
    try:
        during = while_running(env, log, port, request_paths(users, 200), store, home / "warehouse.duckdb",
                               run_timeout_s=600)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert during["pipeline_exit_code"] == 0, log.read_text()[-3000:]
    assert during["requests"] > 100 and during["failures"] == 0, during
    assert during["snapshot_after"] != during["snapshot_before"] and during["on_newest_snapshot"], during

"""`portrait serve`: a small JSON API over the published serving snapshot.

The server never opens the live warehouse (DuckDB admits one writing process per file, and
pipeline runs write it); it reads the snapshot `serving/CURRENT` names, read-only. Each
request checks the pointer with one `stat` and, when a newer snapshot was published, opens
it and moves on; the old connection is closed once the requests still using it finish.
Handlers are plain functions, so Starlette runs them on its thread pool; each request gets
its own DuckDB cursor (a connection of its own to the same database), never a shared one.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import duckdb
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resources.snapshots import Snapshot, SnapshotStore

if TYPE_CHECKING:
    from resources.encoder import LoadedEncoder

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_N = 10
MAX_N = 100
#: Vectors (FLOAT[384] and the like) stay in the snapshot: nobody reads 384 numbers in JSON.
VECTOR_TYPE = re.compile(r"^(FLOAT|DOUBLE)\[\d*\]$")
#: Opening the snapshot CURRENT names can race with a publication that deletes it: re-read the pointer.
OPEN_ATTEMPTS = 5


class ApiError(Exception):
    """An answer other than 200, with a JSON body that says what to do."""

    status = 500
    code = "error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


class UnknownUser(ApiError):
    status = 404
    code = "unknown_user"


class InvalidParameter(ApiError):
    status = 422
    code = "invalid_parameter"


class OpenSnapshot:
    """One snapshot's read-only connection, its columns, and how many requests use it."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.con = duckdb.connect(str(snapshot.database), read_only=True)
        self.con.execute("SET GLOBAL TimeZone = 'UTC'")  # for every cursor, as in the warehouse
        self.columns: dict[str, list[str]] = {}
        for table, column, data_type in self.con.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_catalog = current_database() ORDER BY table_name, ordinal_position").fetchall():
            if not VECTOR_TYPE.match(data_type):
                self.columns.setdefault(table, []).append(column)
        self.in_use = 0
        self.retired = False
        self.searcher: Any = None
        self.searcher_lock = threading.Lock()

    def has(self, table: str) -> bool:
        return table in self.columns

    def close(self) -> None:
        self.con.close()


class SnapshotReader:
    """Hands each request a cursor on the snapshot `CURRENT` names, switching when it changes."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._version: tuple[int, int, int] | None = None
        self._current: OpenSnapshot | None = None

    @contextmanager
    def cursor(self) -> Iterator[tuple[OpenSnapshot, duckdb.DuckDBPyConnection]]:
        with self._lock:
            version = self.store.pointer_version()
            if version != self._version:
                self._switch(version)
            opened = self._current
            if opened is None:
                raise Unavailable(f"no serving snapshot published yet under {self.store.root}: run `portrait run` "
                                  "(it publishes one at the end) or materialize serving_snapshot")
            opened.in_use += 1
            cursor = opened.con.cursor()  # created under the lock: the parent connection is shared
        try:
            yield opened, cursor
        finally:
            cursor.close()
            with self._lock:
                opened.in_use -= 1
                if opened.retired and opened.in_use == 0:
                    opened.close()

    def _switch(self, version: tuple[int, int, int] | None) -> None:
        """Open the snapshot the pointer names now, then retire the old one (closed when idle)."""
        opened = None
        for _ in range(OPEN_ATTEMPTS):
            if version is None:
                break
            try:
                snapshot = self.store.current()
                if snapshot is not None:
                    opened = OpenSnapshot(snapshot)
            except (FileNotFoundError, duckdb.IOException):  # deleted by a publication since we read the pointer
                opened = None
            again = self.store.pointer_version()
            if again == version and opened is not None:
                break
            if opened is not None:
                opened.close()
                opened = None
            version = again
        else:
            raise Unavailable("the serving snapshot changed while it was being opened; try again")
        old, self._current, self._version = self._current, opened, version
        if old is not None:
            old.retired = True
            if old.in_use == 0:
                old.close()

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.retired = True
                if self._current.in_use == 0:
                    self._current.close()
            self._current, self._version = None, None


def create_app(store: SnapshotStore, encoder_loader: Callable[[], LoadedEncoder] | None = None) -> Starlette:
    """The API over `store`'s current snapshot; `encoder_loader` builds the query encoder on the
    first search (default: the project's text encoder on `PORTRAIT_DEVICE`)."""
    reader = SnapshotReader(store)
    search = _Search(encoder_loader or _default_encoder)

    def health(request: Request) -> JSONResponse:
        with reader.cursor() as (opened, _):
            manifest = opened.snapshot.manifest
            index = opened.snapshot.search_index
            return JSONResponse({
                "status": "ok", "snapshot": opened.snapshot.stamp, "created_at": manifest["created_at"],
                "published_by": manifest["published_by"], "source_run": manifest["source_run"],
                "tables": opened.snapshot.tables, "missing_tables": manifest["missing_tables"],
                "search_index": index.name if index else None})

    def profile(request: Request) -> JSONResponse:
        user_id = request.path_params["user_id"]
        with reader.cursor() as (opened, cursor):
            portrait = _one(cursor, opened, "user_profiles", user_id)
            if portrait is None:
                raise _unknown(opened, user_id)
            segment = None
            if opened.has("user_segments"):
                described = opened.has("segments") and "description" in opened.columns["segments"]
                rows = _rows(cursor, "SELECT s.segment_id, s.segment"
                                     + (", g.description FROM user_segments s LEFT JOIN segments g USING (segment_id)"
                                        if described else " FROM user_segments s") + " WHERE s.user_id = ?", [user_id])
                segment = rows[0] if rows else None
            return JSONResponse({
                "user_id": user_id, "snapshot": opened.snapshot.stamp, "profile": portrait, "segment": segment,
                "propensity": _one(cursor, opened, "user_propensity", user_id),
                "summary": _one(cursor, opened, "user_summaries", user_id)})

    def recommendations(request: Request) -> JSONResponse:
        user_id = request.path_params["user_id"]
        n = _count(request)
        with reader.cursor() as (opened, cursor):
            if not opened.has("recommendations"):
                raise Unavailable(f"snapshot {opened.snapshot.stamp} has no recommendations: materialize "
                                  "recommendations, then serving_snapshot (or run `portrait run`)")
            columns = [c for c in opened.columns["recommendations"] if c != "user_id"]
            select = ", ".join(f'r."{c}"' for c in columns)
            join = ""
            if "title" not in columns and opened.has("items") and "title" in opened.columns["items"]:
                select += ", i.title"
                join = " LEFT JOIN items i ON i.item_id = r.item_id"
            rows = _rows(cursor, f"SELECT {select} FROM recommendations r{join} WHERE r.user_id = ? "
                                 f"ORDER BY r.rank LIMIT {n}", [user_id])
            if not rows and not _known(cursor, opened, user_id):
                raise _unknown(opened, user_id)
            return JSONResponse({"user_id": user_id, "snapshot": opened.snapshot.stamp, "n": n,
                                 "recommendations": rows})

    def search_items(request: Request) -> JSONResponse:
        query = request.query_params.get("q", "").strip()
        if not query:
            raise InvalidParameter("q must be a non-empty search text", field="q")
        n = _count(request)
        user_id = request.query_params.get("user", "").strip() or None
        with reader.cursor() as (opened, cursor):
            if user_id is not None and not _known(cursor, opened, user_id):
                raise _unknown(opened, user_id)
            results = search.run(opened, cursor, query, user_id, n)
            return JSONResponse({"query": query, "user_id": user_id, "snapshot": opened.snapshot.stamp, "n": n,
                                 "results": results})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        reader.close()

    async def api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return JSONResponse(error.body(), status_code=error.status)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        return JSONResponse({"error": "not_found" if error.status_code == 404 else "http_error",
                             "detail": error.detail}, status_code=error.status_code)

    app = Starlette(
        routes=[Route("/health", health), Route("/users/{user_id}/profile", profile),
                Route("/users/{user_id}/recommendations", recommendations), Route("/search", search_items)],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.reader = reader
    return app


class _Search:
    """Search through `assets.search.Searcher`, imported on first use so the API runs without it.

    The encoder is loaded once, a searcher once per snapshot; searches run one at a time,
    since the encoder and the index are shared and their thread safety is not promised.
    """

    def __init__(self, encoder_loader: Callable[[], LoadedEncoder]) -> None:
        self.encoder_loader = encoder_loader
        self.encoder: LoadedEncoder | None = None
        self.lock = threading.Lock()

    def run(self, opened: OpenSnapshot, cursor: duckdb.DuckDBPyConnection, query: str, user_id: str | None,
            n: int) -> list[dict[str, Any]]:
        index = opened.snapshot.search_index
        if index is None or not index.is_dir():
            raise Unavailable(f"snapshot {opened.snapshot.stamp} names no published search index: materialize "
                              "search_index, then serving_snapshot (or run `portrait run`)")
        try:
            from assets.search import Searcher
        except ImportError as error:
            raise Unavailable(f"search is not available in this installation ({error})") from error
        with self.lock:
            if opened.searcher is None:
                if self.encoder is None:
                    self.encoder = self.encoder_loader()
                try:
                    opened.searcher = Searcher.load(index, self.encoder)
                except ValueError as error:  # an index built beside the vectors of another encoder
                    raise Unavailable(str(error)) from error
            frame = opened.searcher.search(cursor, query, user_id=user_id, n=n)
        return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _default_encoder() -> LoadedEncoder:
    from resources.encoder import TextEncoder
    from resources.torch_device import TorchDevice

    device = TorchDevice(device=os.environ.get("PORTRAIT_DEVICE", "auto"),
                         precision=os.environ.get("PORTRAIT_PRECISION", "auto"))
    return TextEncoder().load(device)


def _count(request: Request) -> int:
    raw = request.query_params.get("n", str(DEFAULT_N))
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_N:
        raise InvalidParameter(f"n must be an integer from 1 to {MAX_N}, got {raw!r}", field="n")
    return n


def _rows(cursor: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    result = cursor.execute(sql, params)
    names = [d[0] for d in result.description]
    return [{name: _plain(value) for name, value in zip(names, row)} for row in result.fetchall()]


def _one(cursor: duckdb.DuckDBPyConnection, opened: OpenSnapshot, table: str, user_id: str) -> dict[str, Any] | None:
    """The user's row of `table` without `user_id` and vectors, or None (no row, or no such table)."""
    if not opened.has(table):
        return None
    columns = ", ".join(f'"{c}"' for c in opened.columns[table] if c != "user_id")
    rows = _rows(cursor, f'SELECT {columns} FROM "{table}" WHERE user_id = ?', [user_id])
    return rows[0] if rows else None


def _known(cursor: duckdb.DuckDBPyConnection, opened: OpenSnapshot, user_id: str) -> bool:
    tables = [t for t in ("user_profiles", "recommendations") if opened.has(t)]
    return any(cursor.execute(f"SELECT count(*) FROM {t} WHERE user_id = ?", [user_id]).fetchall()[0][0]
               for t in tables)


def _unknown(opened: OpenSnapshot, user_id: str) -> ApiError:
    if not opened.has("user_profiles"):
        return Unavailable(f"snapshot {opened.snapshot.stamp} has no portraits: run `portrait run`")
    return UnknownUser(f"no user {user_id!r} in snapshot {opened.snapshot.stamp}: the id is unknown, has no "
                       "events yet, or was erased", user_id=user_id)


def _plain(value: Any) -> Any:
    """A DuckDB or pandas value as JSON: timestamps as ISO text, NaN as null, numpy scalars as numbers."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays (pandas frames from the searcher)
        return _plain(value.tolist())
    return str(value)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Run the API with uvicorn until interrupted; loopback only unless `host` says otherwise."""
    import uvicorn

    from resources.home import serving_path

    store = SnapshotStore(root=str(serving_path()))
    if store.current() is None:
        print(f"note: no serving snapshot under {store.root} yet; requests answer 503 until `portrait run` "
              "publishes one")
    print(f"Portrait API on http://{host}:{port} (snapshots in {store.root}); Ctrl-C stops it")
    uvicorn.run(create_app(store), host=host, port=port, log_level="warning")
    return 0

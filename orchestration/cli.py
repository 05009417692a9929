"""The `portrait` command line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from resources.home import ensure_dagster_home, landing_path, portrait_home, warehouse_path
from resources.landing import LandingZone

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portrait", description="User portraits and recommendations for a shop.")
    parser.add_argument("--home", help="state folder (default: $PORTRAIT_HOME or ./.portrait)")
    commands = parser.add_subparsers(dest="command", required=True)

    importer = commands.add_parser("import", help="turn a source into landing files")
    sources = importer.add_subparsers(dest="source", required=True)
    demo = sources.add_parser("demo", help="generate the built-in demo shop")
    demo.add_argument("--users", type=int, default=600)
    demo.add_argument("--items", type=int, default=300)
    demo.add_argument("--days", type=int, default=45)
    demo.add_argument("--seed", type=int, default=7)
    sources.add_parser("amazon-reviews", help="McAuley Amazon review JSON lines (gzip or not)").add_argument("file")
    sources.add_parser("taobao", help="Tianchi Taobao UserBehavior CSV (gzip or not)").add_argument("file")

    run = commands.add_parser("run", help="materialize every landed day, then everything downstream")
    run.add_argument("--start", help="first day to ingest, YYYY-MM-DD (default: the first landed)")
    run.add_argument("--end", help="last day to ingest, YYYY-MM-DD (default: the last landed)")
    run.add_argument("--train", action="store_true",
                     help="also fine-tune the behaviour model and retrain the recommender (minutes on a CPU; "
                          "otherwise the published models are used)")
    run.add_argument("--train-recommender", action="store_true",
                     help="retrain the recommender only (dataset, evaluation, model; the nightly schedule does it too)")
    run.add_argument("--train-examples", type=int, help="train on at most this many reviews (the demo uses 300)")
    run.add_argument("--train-epochs", type=int, help="at most this many epochs (default 3)")
    run.add_argument("--ingest-only", action="store_true", help="stop after ingestion")

    backfill = commands.add_parser("backfill", help="queue a backfill of event days for the daemon (`make ui`)")
    backfill.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    backfill.add_argument("--wait", type=float, metavar="SECONDS",
                          help="wait up to this long for the backfill to finish; exit 1 unless it succeeded")

    forget = commands.add_parser("forget", help="erase a user from the landing zone and the warehouse")
    forget.add_argument("user", help="the user id, as in the landing files")
    forget.add_argument("--reason", help="why (kept in erasure_audit; e-mails and phone numbers are masked)")

    profile = commands.add_parser("profile", help="print a user's portrait")
    profile.add_argument("user")
    profile.add_argument("--explain", action="store_true",
                         help="list the events behind each top interest and the features behind the propensity")

    recommend = commands.add_parser("recommend", help="print a user's recommendations with their reasons")
    recommend.add_argument("user")
    recommend.add_argument("-n", type=int, default=10, help="how many (default 10)")
    recommend.add_argument("--explain", action="store_true", help="show each blend member's share of the scores")

    search = commands.add_parser("search", help="search the catalogue, re-ranked with a user's portrait")
    search.add_argument("query")
    search.add_argument("--user", help="re-rank for this user (default: the plain ranking)")
    search.add_argument("-n", type=int, default=10, help="how many results (default 10)")

    audience = commands.add_parser("audience", help="list the users whose profile matches a predicate, as CSV")
    audience.add_argument("--where", required=True, metavar="PREDICATE",
                          help="e.g. \"lifecycle = 'active' AND monetary > 100\" (grammar in docs/segments.md)")
    audience.add_argument("--out", metavar="FILE", help="write the CSV here (default: standard output)")

    ui = commands.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)

    serve = commands.add_parser("serve", help="serve profiles, recommendations and search as JSON (the published "
                                              "snapshot, never the live warehouse)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)

    args = parser.parse_args(argv)
    if args.home:
        os.environ["PORTRAIT_HOME"] = str(Path(args.home).resolve())
    handlers = {"import": _import, "run": _run, "backfill": _backfill, "forget": _forget, "profile": _profile,
                "recommend": _recommend, "search": _search, "audience": _audience, "ui": _ui, "serve": _serve}
    return handlers[args.command](args)


def _import(args: argparse.Namespace) -> int:
    landing = LandingZone(root=str(landing_path()))
    if args.source == "demo":
        from orchestration.importers.demo import generate_demo

        summary = generate_demo(landing, users=args.users, items=args.items, days=args.days, seed=args.seed)
        print(f"demo shop: {summary.events:,} events ({summary.hostile_rows} deliberately bad), "
              f"{summary.users:,} users, {summary.items:,} items, {summary.first_day}..{summary.last_day}")
    else:
        source = Path(args.file)
        if not source.is_file():
            print(f"error: {source} does not exist or is not a file", file=sys.stderr)
            return 2
        if args.source == "amazon-reviews":
            from orchestration.importers.amazon import import_amazon_reviews as importer
        else:
            from orchestration.importers.taobao import import_taobao as importer
        summary = importer(source, landing)
        print(f"{source.name}: {summary.rows_read:,} rows read, {summary.malformed:,} malformed (carried over for "
              f"quarantine), {summary.days:,} days, {summary.items:,} items")
    print(f"landing files under {landing.path}; next: `portrait run`")
    return 0


def _run(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    import dagster as dg
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the command line prints its own progress
    transformers_logging.set_verbosity_error()  # e.g. the expected "classifier newly initialized" report

    from orchestration.definitions import build_defs
    from orchestration.runs import build_downstream, ingest

    landing = LandingZone(root=str(landing_path()))
    defs = build_defs()
    print(f"Portrait home: {portrait_home()}")
    with dg.DagsterInstance.get() as instance:
        outcomes = ingest(defs, instance, landing, args.start, args.end)
        if not args.ingest_only and all(o.success for o in outcomes) and _has_events():
            training = None
            if args.train:
                training = {k: v for k, v in (("max_train_examples", args.train_examples),
                                              ("epochs", args.train_epochs)) if v is not None}
            outcomes += build_downstream(defs, instance, training, args.train or args.train_recommender)
    _print_summary()
    failed = [o for o in outcomes if not o.success and not o.refused]
    if failed:
        print(f"{len(failed)} run(s) failed; open the UI (`make ui`) and look at Runs for the full logs.")
        return 1
    print("Open the UI with `make ui`, then http://127.0.0.1:3000 (Assets, Runs, the asset graph).")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    from orchestration.backfill import launch_backfill, wait_for_backfill
    from orchestration.definitions import build_defs

    with dg.DagsterInstance.get() as instance:
        try:
            backfill_id = launch_backfill(build_defs(), instance, LandingZone(root=str(landing_path())),
                                          args.start, args.end)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"backfill {backfill_id} queued; the daemon runs it (`make ui` starts one): "
              f"http://127.0.0.1:3000/runs/b/{backfill_id}")
        if args.wait is None:
            return 0
        status = wait_for_backfill(instance, backfill_id, args.wait)
    if status not in (BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED):
        print(f"backfill {backfill_id} ended {status.value.lower()}: look at its runs in the UI", file=sys.stderr)
        return 1
    return 0


def _has_events() -> bool:
    import duckdb

    from resources.warehouse import table_exists

    path = warehouse_path()
    if not path.exists():
        return False
    with duckdb.connect(str(path), read_only=True) as con:
        return table_exists(con, "events") and bool(con.execute("SELECT count(*) FROM events").fetchone()[0])


def _print_summary() -> None:
    import duckdb

    path = warehouse_path()
    if not path.exists():
        return
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        print("Warehouse", path)
        for table in ("raw_events", "events", "quarantine", "items", "users", "text_embeddings", "item_embeddings",
                      "text_signals", "user_profiles", "user_propensity", "user_segments", "user_summaries",
                      "recommendations"):
            if table in tables:
                print(f"  {table:<12} {con.execute(f'SELECT count(*) FROM {table}').fetchone()[0]:>10,} rows")
        if "quarantine" in tables:
            reasons = con.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1 ORDER BY 2 DESC LIMIT 5").fetchall()
            for reason, rows in reasons:
                print(f"    quarantined {reason}: {rows:,}")
    finally:
        con.close()


def _forget(args: argparse.Namespace) -> int:
    from orchestration.forget import forget

    return forget(args.user, args.reason)


def _existing_warehouse() -> Path | None:
    """The warehouse's path, or None after telling the user how to make one."""
    path = warehouse_path()
    if not path.exists():
        print(f"error: no warehouse at {path}; run `portrait import` and `portrait run` first", file=sys.stderr)
        return None
    return path


def _print_report(render: Callable[..., str], errors: tuple[type[Exception], ...]) -> int:
    """Print `render(read-only connection, model store)`; a missing warehouse or one of `errors` exits 2."""
    import duckdb

    from resources.home import models_path
    from resources.model_store import ModelStore

    path = _existing_warehouse()
    if path is None:
        return 2
    with duckdb.connect(str(path), read_only=True) as con:
        try:
            print(render(con, ModelStore(root=str(models_path()))))
        except errors as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


def _profile(args: argparse.Namespace) -> int:
    from orchestration.profile_report import UnknownUser, describe

    return _print_report(lambda con, store: describe(con, args.user, args.explain, store), (UnknownUser, RuntimeError))


def _recommend(args: argparse.Namespace) -> int:
    from orchestration.recommend_report import NoRecommendations, describe

    if args.n < 1:
        print("error: -n must be at least 1", file=sys.stderr)
        return 2
    return _print_report(lambda con, store: describe(con, args.user, args.n, args.explain, store), (NoRecommendations,))


def _audience(args: argparse.Namespace) -> int:
    from orchestration.audience import select_audience, write_user_ids

    try:
        user_ids = select_audience(warehouse_path(), args.where)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_user_ids(user_ids, Path(args.out) if args.out else None)
    print(f"{len(user_ids):,} users" + (f" written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from orchestration.serve import serve

    return serve(args.host, args.port)


def _search(args: argparse.Namespace) -> int:
    import duckdb
    from transformers.utils import logging as transformers_logging

    from assets.search import INDEX_NAME, Searcher, query_terms
    from resources.encoder import TextEncoder
    from resources.home import models_path
    from resources.model_store import ModelStore
    from resources.torch_device import TorchDevice

    path = _existing_warehouse()
    if path is None:
        return 2
    folder = ModelStore(root=str(models_path())).latest(INDEX_NAME)
    if folder is None:
        print("error: no search index is published yet; run `portrait run` (or materialize search_index in the UI)",
              file=sys.stderr)
        return 2
    transformers_logging.disable_progress_bar()
    try:
        query_terms(args.query)  # a blank query fails before the encoder loads
        device = TorchDevice(device=os.environ.get("PORTRAIT_DEVICE", "auto"),
                             precision=os.environ.get("PORTRAIT_PRECISION", "auto"))
        searcher = Searcher.load(folder, TextEncoder().load(device))
        with duckdb.connect(str(path), read_only=True) as con:
            user = args.user
            if user is not None and not con.execute("SELECT count(*) FROM information_schema.tables "
                                                    "WHERE table_name = 'user_profiles'").fetchall()[0][0]:
                print("no portraits yet (run `portrait run`): the plain ranking", file=sys.stderr)
                user = None
            results = searcher.search(con, args.query, user, args.n)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if user is not None and not results.attrs["personalized"]:
        print(f"no portrait for user {user!r}: the plain ranking", file=sys.stderr)
    if results.empty:
        print(f"nothing found for {args.query!r}")
        return 0
    for row in results.itertuples():
        title = (row.title or "")[:48]
        print(f"{row.rank:>3}  {row.item_id:<10} {title:<48} {row.score:6.3f}  {row.reason}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"Dagster UI on http://127.0.0.1:{args.port} (instance {os.environ['DAGSTER_HOME']})")
    return subprocess.call(command, cwd=PROJECT_ROOT)


if __name__ == "__main__":
    sys.exit(main())

"""The scale run: a generated shop through the whole asset graph, with time and peak memory per asset.

The shop comes from `bench.profiles.generate` (sessions, power-law users and items, with
texts: 3% of events are searches, every review is written) and is written as landing files
(JSON lines per day, items and users) into a temporary PORTRAIT_HOME. Every asset registered
in the Definitions is then materialized in graph order, one step (an asset, or the assets of
one multi-asset) per subprocess against the same home and Dagster instance, so each step's
peak resident memory is the kernel's high-water mark of its own process (`VmHWM`). The
behaviour model's fine-tuning is left out: it is a separately scheduled training job, and
without a published behaviour model `text_signals` leaves sentiment empty.

Each size (users = events / 10, items = events / 50, 60 days) runs in a fresh home; the
per-asset times across sizes give each asset's growth exponent (the log-log slope between
neighbouring sizes). The figures of the largest size measured are the headline. Results are
written after every step, so a run cut short still leaves what it measured, with
`partial: true`, the sizes that finished and the size in progress. A step whose memory passes
`--memory-limit-gib` is stopped and recorded as such rather than left to exhaust the machine.

Writes bench/results/scale.json and bench/results/scale.png.

    python -m bench.scale [--sizes 10000,100000,1000000] [--merge] [--memory-limit-gib 12]

`--merge` keeps the sizes of the existing scale.json that are not being measured (when they
ran with the same run config), so one size can be rerun or added alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from bench.machine import RESULTS, record
from bench.profiles import generate

DAYS = 60
#: Left out of the run, with the reason recorded in the results.
SKIPPED = {"behavior_model": "fine-tuning is a separately scheduled training job (weekly_fine_tune), not part of "
                             "the data pipeline"}
#: The scale run's recommender settings (docs/performance.md): the `last_days` protocol (the last
#: day held out) instead of the default time cut, whose blend-weight search holds dense
#: validation-users x items matrices that grow with the square of the shop (about 20 GiB at
#: 1M events); one LightFM seed instead of three and at most 10 epochs (early stopping still
#: picks the count), so evaluation and training fit in the run on two cores.
RUN_CONFIG = {"recommender_evaluation": {"protocol": "last_days", "days": 1, "seeds": 1, "max_epochs": 10}}
#: The table whose rows an asset's `rows` counts; assets that write files (models, index,
#: snapshot) or append run history count none.
TABLES = {
    "raw_events": "raw_events", "events": "events", "items": "items", "users": "users",
    "text_embeddings": "text_embeddings", "item_embeddings": "item_embeddings", "text_signals": "text_signals",
    "user_profiles": "profile_state", "purchase_propensity": "user_propensity", "user_segments": "user_segments",
    "user_summaries": "user_summaries", "recsys_dataset": "recsys_interactions",
    "recommendations": "recommendations",
}
HEARTBEAT_S = 30


def write_landing(home: Path, events: int, users: int, items: int, days: int = DAYS) -> dict:
    """Generate the shop and write it as landing files: a JSON lines file per UTC day, items and users."""
    landing = home / "landing"
    (landing / "items").mkdir(parents=True)
    (landing / "users").mkdir()
    shop = home / "shop.duckdb"
    generate(shop, users, items, events, days, texts=True)
    with duckdb.connect(str(shop)) as con:
        con.execute(f"""
            COPY (SELECT event_id, user_id, event_type, strftime(ts, '%Y-%m-%dT%H:%M:%SZ') AS ts, item_id, text,
                         rating, price, quantity, strftime(event_date, '%Y-%m-%d') AS date
                  FROM events ORDER BY ts)
            TO '{landing / "events"}' (FORMAT json, PARTITION_BY (date), FILE_EXTENSION 'jsonl')""")
        con.execute(f"COPY (SELECT item_id, title, categories, brand, price FROM items) "
                    f"TO '{landing / 'items' / 'items.jsonl'}' (FORMAT json)")
        con.execute(f"""
            COPY (SELECT user_id, 18 + hash(user_id) % 50 AS age,
                         ['f', 'm', 'x'][1 + (hash(user_id || 'g') % 3)::INT] AS gender,
                         'R' || (hash(user_id || 'r') % 12) AS region
                  FROM (SELECT DISTINCT user_id FROM events))
            TO '{landing / 'users' / 'users.jsonl'}' (FORMAT json)""")
        texts = dict(con.execute("""
            SELECT event_type, count(*) FROM events WHERE text IS NOT NULL GROUP BY 1""").fetchall())
        distinct = con.execute("SELECT count(DISTINCT text) FROM events").fetchone()[0]
    shop.unlink()
    return {"reviews_with_text": texts.get("review", 0), "searches": texts.get("search", 0),
            "distinct_event_texts": distinct}


def graph_steps() -> list[tuple[str, list[str], bool]]:
    """Every registered asset in graph order as (step name, asset keys, partitioned); the
    assets of one multi-asset are one step, named after its first key."""
    from orchestration.definitions import build_defs

    defs = build_defs()
    order = {key: i for i, key in enumerate(defs.resolve_asset_graph().toposorted_asset_keys)}
    steps = []
    for assets_def in defs.assets:
        keys = sorted(assets_def.keys, key=order.__getitem__)
        names = [k.to_user_string() for k in keys]
        if not any(n in SKIPPED for n in names):
            steps.append((order[keys[0]], names[0], names, assets_def.partitions_def is not None))
    return [(name, keys, partitioned) for _, name, keys, partitioned in sorted(steps)]


def run_step(keys: list[str], partitioned: bool, out: Path) -> None:
    """In the step's own process: materialize `keys` (every landed day as one range if
    partitioned) and write the run's outcome to `out`."""
    import dagster as dg

    from orchestration.definitions import build_defs
    from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG, register_event_days, run_job
    from resources.home import ensure_dagster_home, landing_path
    from resources.landing import LandingZone

    ensure_dagster_home()
    job = dg.define_asset_job("scale_step", selection=dg.AssetSelection.assets(*keys))
    defs = dg.Definitions.merge(build_defs(), dg.Definitions(jobs=[job]))
    run_config = {"ops": {k: {"config": RUN_CONFIG[k]} for k in keys if k in RUN_CONFIG}}
    with dg.DagsterInstance.get() as instance:
        tags = {}
        if partitioned:
            days = register_event_days(instance, LandingZone(root=str(landing_path())))
            tags = {RANGE_START_TAG: days[0], RANGE_END_TAG: days[-1]}
        outcome = run_job(defs, "scale_step", instance, tags, run_config=run_config)
    out.write_text(json.dumps({"success": outcome.success, "refused": outcome.refused, "seconds": outcome.seconds,
                               "error": outcome.error, "failed_checks": outcome.failed_checks,
                               "peak_rss_gib": high_water_gib("self")}))


def high_water_gib(pid: int | str) -> float:
    """The process's peak resident memory (`VmHWM`). Not `wait4`'s `ru_maxrss`: across
    `exec` Linux keeps the launcher's high-water mark there, so every step would report at
    least the RSS of this script's parent process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return kib / 2**20


def measure_step(home: Path, name: str, keys: list[str], partitioned: bool, label: str,
                 memory_limit_gib: float) -> dict:
    """Run one step in a subprocess; its wall time and its own peak RSS (reported by the step,
    and sampled here in case it dies). A step over `memory_limit_gib` is killed: on a shared
    machine it would otherwise take others down."""
    out, log = home / f"step-{name}.json", home / f"step-{name}.log"
    command = [sys.executable, "-m", "bench.scale", "--step", ",".join(keys)] + (["--partitioned"] if partitioned else [])
    started = time.monotonic()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
        beat, sampled, over_limit = started, 0.0, None
        while True:
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            sampled = max(sampled, high_water_gib(process.pid))
            if sampled > memory_limit_gib and over_limit is None:
                over_limit = f"stopped at {sampled:.1f} GiB after {time.monotonic() - started:.0f} s"
                print(f"  [{label}] {name}: {over_limit} (limit {memory_limit_gib} GiB)", flush=True)
                process.kill()
            if time.monotonic() - beat >= HEARTBEAT_S:
                beat = time.monotonic()
                print(f"  [{label}] {name}: still running, {beat - started:.0f} s", flush=True)
            time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    process_s = time.monotonic() - started
    outcome = json.loads(out.read_text()) if out.exists() else {
        "success": False, "refused": False, "seconds": None,
        "error": over_limit or f"exit status {process.returncode}"}
    # a version refused by its blocking check did all its work: the run goes on, as in `portrait run`
    finished = outcome["success"] or outcome["refused"]
    if not finished:
        tail = log.read_text()[-3000:]
        print(f"  [{label}] {name} FAILED: {outcome['error']}\n{tail}", flush=True)
    return {"asset": name, "keys": keys, "wall_s": _round(outcome["seconds"]), "process_s": round(process_s, 2),
            "peak_rss_gib": round(max(sampled, outcome.get("peak_rss_gib", 0.0)), 3), "rows": _rows(home, name),
            "finished": finished, "refused_by_check": outcome["refused"],
            "failed_checks": outcome.get("failed_checks", []), **({"error": outcome["error"]} if not finished else {})}


def _rows(home: Path, name: str) -> int | None:
    table = TABLES.get(name)
    path = home / "warehouse.duckdb"
    if table is None or not path.exists():
        return None
    with duckdb.connect(str(path), read_only=True) as con:
        found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0]
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if found else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run_size(events: int, steps: list[tuple[str, list[str], bool]], memory_limit_gib: float,
             progress: Callable[[dict], None]) -> dict:
    """One shop of `events` events through every step, in a fresh temporary home; `progress`
    gets the size's figures so far after every step."""
    users, items = events // 10, events // 50
    label = f"{events:,}"
    with tempfile.TemporaryDirectory(prefix="portrait-scale-") as tmp:
        home = Path(tmp)
        os.environ["PORTRAIT_HOME"] = str(home)
        os.environ["DAGSTER_HOME"] = ""  # Portrait then keeps the instance inside the home
        print(f"[{label}] generating {events:,} events, {users:,} users, {items:,} items over {DAYS} days", flush=True)
        started = time.monotonic()
        texts = write_landing(home, events, users, items)
        generate_s = time.monotonic() - started
        print(f"[{label}] landing files written in {generate_s:.1f} s; texts: {texts}", flush=True)
        measured: list[dict] = []
        started = time.monotonic()
        for name, keys, partitioned in steps:
            print(f"[{label}] {name} ...", flush=True)
            step = measure_step(home, name, keys, partitioned, label, memory_limit_gib)
            measured.append(step)
            print(f"[{label}] {name}: {step['wall_s']} s in the run ({step['process_s']} s with start-up), "
                  f"peak {step['peak_rss_gib']} GiB, rows {step['rows']}; {time.monotonic() - started:.0f} s so far",
                  flush=True)
            progress(_size_figures(events, texts, generate_s, time.monotonic() - started, measured,
                                   done=len(measured) == len(steps)))
        wall_s = time.monotonic() - started
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
            texts["texts_encoded"] = con.execute("SELECT count(*) FROM text_embeddings").fetchone()[0]
            texts["item_texts"] = con.execute("SELECT count(*) FROM items WHERE title IS NOT NULL").fetchone()[0]
            loaded = con.execute("SELECT count(*) FROM events").fetchone()[0]
    figures = {**_size_figures(events, texts, generate_s, wall_s, measured, done=True), "events_loaded": loaded}
    progress(figures)
    return figures


def _size_figures(events: int, texts: dict, generate_s: float, wall_s: float, measured: list[dict],
                  done: bool) -> dict:
    """One size's figures; `complete` only when every step ran and finished."""
    return {"events": events, "users": events // 10, "items": events // 50, "days": DAYS, "texts": dict(texts),
            "generate_s": round(generate_s, 2), "wall_s": round(wall_s, 2),
            "peak_rss_gib": max(s["peak_rss_gib"] for s in measured),
            "complete": done and all(s["finished"] for s in measured), "assets": list(measured)}


def knee(runs: list[dict]) -> dict:
    """Each asset's in-run time per size and the log-log slope between neighbouring sizes
    (None where a size has no finished time for it)."""
    sizes = [r["events"] for r in runs]
    timed = [{a["asset"]: (a["wall_s"] if a["finished"] else None) for a in r["assets"]} for r in runs]
    rows = []
    for name in dict.fromkeys(a["asset"] for r in runs for a in r["assets"]):
        seconds = [t.get(name) for t in timed]
        rows.append({"asset": name, "seconds": dict(zip(map(str, sizes), seconds)),
                     "exponent": _exponents(sizes, seconds)})
    totals = [sum(s["wall_s"] or 0.0 for s in r["assets"]) if r["complete"] else None for r in runs]
    return {"sizes": sizes, "assets": rows,
            "total": {"seconds": dict(zip(map(str, sizes), [_round(t) for t in totals])),
                      "exponent": _exponents(sizes, totals)}}


def _exponents(sizes: list[int], seconds: list[float | None]) -> dict:
    return {f"{a}-{b}": (round(math.log(tb / ta) / math.log(b / a), 2) if ta and tb else None)
            for a, b, ta, tb in zip(sizes, sizes[1:], seconds, seconds[1:])}


def chart(result: dict, path: Path) -> None:
    """Per-asset time at the largest size (bars), and time against size for each asset (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assets = result["assets"]
    figure, (bars, lines) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1.2, 1]})
    names = [a["asset"] for a in assets][::-1]
    bars.barh(names, [a["wall_s"] or 0.0 for a in assets][::-1], color="#4C72B0")
    bars.set_xlabel("seconds")
    bars.set_title(f"time per asset, {result['events']:,} events, {result['users']:,} users, {result['items']:,} items")
    sizes = result["knee"]["sizes"]
    colours = plt.get_cmap("tab20").colors
    for i, row in enumerate(result["knee"]["assets"]):
        values = [row["seconds"][str(s)] for s in sizes]
        if all(values):
            lines.plot(sizes, values, marker="o", color=colours[i % len(colours)], label=row["asset"])
    lines.set_xscale("log")
    lines.set_yscale("log")
    lines.set_xlabel("events")
    lines.set_ylabel("seconds")
    lines.set_title("time against size (log-log)")
    lines.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="event counts, comma-separated, ascending")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sizes of the existing scale.json (same run config)")
    parser.add_argument("--memory-limit-gib", type=float, default=12.0, help="stop a step whose RSS passes this")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--partitioned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        run_step(args.step.split(","), args.partitioned, Path(os.environ["PORTRAIT_HOME"]) /
                 f"step-{args.step.split(',')[0]}.json")
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    steps = graph_steps()
    print("steps: " + ", ".join(name for name, _, _ in steps) + f"; left out: {', '.join(SKIPPED)}", flush=True)
    kept = _kept_runs(sizes) if args.merge else []
    wanted = sorted(set(sizes) | {r["events"] for r in kept})
    measured: dict[int, dict] = {r["events"]: r for r in kept}

    def progress(figures: dict) -> None:
        measured[figures["events"]] = figures
        result = _result([measured[s] for s in sorted(measured)], wanted, steps)
        record("scale", result)
        chart(result, RESULTS / "scale.png")

    for events in sizes:
        run_size(events, steps, args.memory_limit_gib, progress)
    return json.loads((RESULTS / "scale.json").read_text())


def _kept_runs(sizes: list[int]) -> list[dict]:
    """Complete sizes of the existing results measured with this run config, except `sizes`."""
    path = RESULTS / "scale.json"
    if not path.exists():
        return []
    previous = json.loads(path.read_text())
    if previous.get("run_config") != RUN_CONFIG:
        return []
    return [r for r in previous.get("runs", []) if r["complete"] and r["events"] not in sizes]


def _result(runs: list[dict], wanted: list[int], steps: list) -> dict:
    """The largest size measured as the headline (partial while any size or step is missing),
    every size in `runs`, and `knee`."""
    largest = runs[-1]
    finished = [r["events"] for r in runs if r["complete"]]
    return {
        **{k: largest.get(k) for k in ("events", "users", "items", "days", "events_loaded", "texts", "wall_s",
                                       "peak_rss_gib", "assets")},
        "partial": finished != wanted,
        "sizes_requested": wanted,
        "sizes_finished": finished,
        "size_incomplete": next((r["events"] for r in runs if not r["complete"]), None),
        "peak_rss_floor_gib": 8,
        "run_config": RUN_CONFIG,
        "left_out": SKIPPED,
        "steps": [name for name, _, _ in steps],
        "runs": runs,
        "knee": knee(runs),
    }


if __name__ == "__main__":
    main()

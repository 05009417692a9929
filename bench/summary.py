"""`bench/results/README.md`: one table of every benchmark's headline figure beside its peer.

Each row reads one result file; a benchmark not run yet shows as missing rather than
disappearing, so the table always says what was and was not measured.
"""

import json
from pathlib import Path

from bench.machine import RESULTS

#: (result file, what is measured, our figure, the peer's figure, ratio, the peer) with dotted paths into the JSON.
ROWS = [
    ("ingest", "ingestion, events/s (1M events)", "events_per_s", "duckdb_bare_events_per_s", "ratio",
     "DuckDB bare read_json"),
    ("encode", "text encoding, texts/s (CPU)", "ours_texts_per_s", "sentence_transformers_texts_per_s", "speedup",
     "sentence-transformers"),
    ("profiles", "portrait update after a new day, s (100k users)", "incremental_s", "full_s", "speedup",
     "full recompute"),
    ("freshness", "file landed to portrait updated, median s", "land_to_profile_s", None, None, "none (latency)"),
    ("recommender", "Amazon recall@10, production blend", "amazon.production_recall", "amazon.best_baseline_recall",
     "amazon.ratio_recall", "best baseline of each run, mean over seed sets"),
    ("recommender", "Amazon NDCG@10, production blend", "amazon.production_ndcg", "amazon.best_baseline_ndcg",
     "amazon.ratio_ndcg", "best baseline of each run, mean over seed sets"),
    ("recommender", "Taobao recall@10, production blend", "taobao.production_recall", "taobao.best_baseline_recall",
     "taobao.ratio_recall", "best baseline of each run, mean over seed sets"),
    ("recommender", "Taobao NDCG@10, production blend", "taobao.production_ndcg", "taobao.best_baseline_ndcg",
     "taobao.ratio_ndcg", "best baseline of each run, mean over seed sets"),
    ("recommender", "scoring every user x item, s", "scoring.batch_s", "scoring.predict_loop_s", "scoring_speedup",
     "LightFM predict per user"),
    ("search", "search MRR@10 of the sought item", "personalized_mrr", "plain_mrr", "mrr_ratio",
     "same ranking without the portrait"),
    ("serve", "API requests per second", "requests_per_s", "duckdb_point_queries_per_s", "ratio",
     "bare DuckDB point queries"),
    ("scale", "whole graph, 1M events, wall s", "wall_s", None, None, "none (floor: finishes, < 8 GiB)"),
    ("scale", "whole graph, peak memory GiB", "peak_rss_gib", None, None, "none (floor 8 GiB)"),
]


def _get(data: dict, path: str | None):
    if path is None:
        return None
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_summary(results: Path = RESULTS) -> Path:
    lines = ["# Benchmark results", "",
             "Written by `make bench` (`python -m bench`) from the JSON files beside this one; each file also",
             "records the machine (cores, memory, library versions, git commit). Figures next to their peer were",
             "measured in the same run.", "",
             "| benchmark | measured | ours | peer | peer value | ratio | commit |",
             "|---|---|---|---|---|---|---|"]
    for name, label, ours, peer, ratio, peer_label in ROWS:
        path = results / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | {label} | not run yet | {peer_label} | - | - | - |")
            continue
        data = json.loads(path.read_text())
        commit = (_get(data, "machine.git_commit") or "-")[:8]
        lines.append(f"| {name} | {label} | {_cell(_get(data, ours))} | {peer_label} | {_cell(_get(data, peer))} | "
                     f"{_cell(_get(data, ratio))} | {commit} |")
    target = results / "README.md"
    target.write_text("\n".join(lines) + "\n")
    return target


if __name__ == "__main__":
    print(write_summary().read_text())

"""Personalized search on the demo shop: how high the searched-for item ranks, plain against personalized.

The demo shop (600 users, 300 items, 45 days by default) is generated into a temporary
PORTRAIT_HOME and goes through the real assets: ingestion, `text_embeddings`,
`item_embeddings` and `search_index`. Every search event names the item the shopper was
after (`attributes.target_item`); each search is scored by the rank of that item: MRR@10
and NDCG@10 (one relevant item, so NDCG@10 = 1 / log2(rank + 1) within the top 10).

Rankings compared, on the same candidates:
- `bm25`: BM25 alone (the bare peer);
- `plain`: BM25 fused with the query-to-item embedding similarity;
- `personalized`: the plain score re-ranked with the searcher's portrait.

Leakage. A search session usually ends by buying the target, and the search text itself
enters the portrait, so a portrait built from all events would know the answer. Portraits
are therefore rebuilt day by day from the events *before* each day (as a nightly `portrait
run` would leave them), and every search is re-ranked with the portrait as of the start of
its day: nothing from that day, the search and its session included, is in it.

Weights. The first `--warmup-days` days only build portraits. The fusion weight (for plain)
and the fusion and portrait weights (for personalized) are chosen by MRR@10 on the searches
of the next `--validation-days` days; the figures reported are those of the searches after
that, which never took part in any choice. A paired bootstrap over the reported searches
gives a 95% interval of the MRR gain. On a sample of reported searches the ranks are checked
against `Searcher.search` itself.

Writes bench/results/search.json.

    python -m bench.search [--users 600] [--items 300] [--days 45] [--warmup-days 15] [--validation-days 15]
"""

import argparse
import itertools
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np

from assets.dimensions import items, users
from assets.embeddings import item_embeddings, text_embeddings
from assets.events import validate_events
from assets.profile_state import embedding_dimension, fold
from assets.profiles import ProfileConfig, profile_select, refresh_category_prices
from assets.raw_events import raw_events
from assets.search import INDEX_NAME, Searcher, min_max, read_portrait, search_index
from bench.machine import record
from orchestration.importers.demo import generate_demo
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG
from resources.encoder import TextEncoder
from resources.landing import LandingZone
from resources.model_store import ModelStore
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse, table_exists

K = 10
PREFIX = "bench_search"
TEXT_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
PORTRAIT_WEIGHTS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6)
CHECKED_SEARCHES = 100
BOOTSTRAP = 2_000


@dataclass
class Judged:
    """One search, ready to be ranked under any weights: per candidate the normalized BM25
    and cosine and the three portrait signals (columns), and where the target sits."""

    day: date
    user_id: str
    query: str
    target: str
    features: np.ndarray  # candidates x 5: bm25, semantic, interest, category, price
    target_row: int  # -1: the target is not among the candidates
    has_portrait: bool
    seen_before: bool  # the user touched the target on an earlier day


def build_shop(home: Path, users_n: int, items_n: int, days: int, encoder: TextEncoder, device: TorchDevice) -> None:
    """The demo shop through the real assets, in `home`."""
    landing = LandingZone(root=str(home / "landing"))
    generate_demo(landing, users=users_n, items=items_n, days=days)
    resources = {"warehouse": Warehouse(path=str(home / "warehouse.duckdb")), "landing": landing, "device": device,
                 "encoder": encoder, "model_store": ModelStore(root=str(home / "models"))}
    with dg.instance_for_test() as instance:
        day_keys = landing.event_days()
        instance.add_dynamic_partitions("event_days", day_keys)
        steps = [([items, users], {}),
                 ([raw_events, validate_events], {RANGE_START_TAG: day_keys[0], RANGE_END_TAG: day_keys[-1]}),
                 ([text_embeddings, item_embeddings], {}),
                 ([search_index], {})]
        for assets, tags in steps:
            result = dg.materialize(assets, instance=instance, resources=resources, tags=tags, raise_on_error=False)
            if not result.success:
                raise RuntimeError(f"materializing {[a.key.to_user_string() for a in assets]} failed")


def portraits_at(con: duckdb.DuckDBPyConnection, day: date, since: date | None, config: ProfileConfig,
                 dimension: int) -> None:
    """`user_profiles` (a table) as it stood at the start of `day`: the events from `since`
    (None: from the beginning, on a fresh state) up to `day` are folded in first."""
    if since is None:
        for table in (f"{PREFIX}_state", f"{PREFIX}_terms"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    after = "" if since is None else f"event_date >= '{since}'::DATE AND "
    fold(con, f"SELECT * FROM events WHERE {after}event_date < '{day}'::DATE", config.decay(), PREFIX, dimension)
    select = profile_select(PREFIX, f"TIMESTAMP '{day}'", config, dimension, table_exists(con, "users"))
    con.execute(f"CREATE OR REPLACE TABLE user_profiles AS {select}")


def judge(con: duckdb.DuckDBPyConnection, searcher: Searcher, warmup_days: int) -> list[Judged]:
    """Every search after the warm-up, with its candidates and the portrait as of its day's start."""
    searches = con.execute("""
        SELECT event_date, user_id, text, attributes->>'target_item' AS target FROM events
        WHERE event_type = 'search' AND text IS NOT NULL AND attributes->>'target_item' IS NOT NULL
        ORDER BY ts, event_id""").fetchall()
    first_touch = {(u, i): d for u, i, d in con.execute(
        "SELECT user_id, item_id, min(event_date) FROM events WHERE item_id IS NOT NULL GROUP BY 1, 2").fetchall()}
    days = sorted({s[0] for s in searches})
    first = days[0] + timedelta(days=warmup_days)
    queries = sorted({s[2] for s in searches if s[0] >= first})
    vectors = dict(zip(queries, searcher.encoder.encode(queries)))
    config = ProfileConfig()
    dimension = embedding_dimension(con)
    refresh_category_prices(con)
    judged = []
    previous = None
    for day in (d for d in days if d >= first):
        portraits_at(con, day, previous, config, dimension)  # every event before `day`, none of it
        previous = day
        for _, user_id, query, target in (s for s in searches if s[0] == day):
            candidates = searcher.candidates(con, query, vectors[query])
            portrait = read_portrait(con, user_id)
            personal = searcher.personal_features(candidates, portrait)
            features = np.column_stack([min_max(candidates.text), min_max(candidates.semantic), personal.interest,
                                        personal.category, personal.price])
            ids = searcher.index.items["item_id"].to_numpy()[candidates.rows]
            rows = np.flatnonzero(ids == target)
            seen = first_touch.get((user_id, target))
            judged.append(Judged(day, user_id, query, target, features, int(rows[0]) if len(rows) else -1,
                                 portrait is not None, seen is not None and seen < day))
    return judged


def weight_grid(text_weight: float | None) -> np.ndarray:
    """Columns of (bm25, semantic, interest, category, price) weights to try: the fusion weight
    alone (no portrait) when `text_weight` is None, else the portrait weights on top of it."""
    if text_weight is None:
        return np.array([(t, 1 - t, 0.0, 0.0, 0.0) for t in TEXT_WEIGHTS]).T
    return np.array([(text_weight, 1 - text_weight, *p) for p in itertools.product(PORTRAIT_WEIGHTS, repeat=3)]).T


def target_ranks(judged: list[Judged], weights: np.ndarray) -> np.ndarray:
    """searches x weight columns: the target's 1-based rank (ties: index order, as `ranking`), 0 if not a candidate."""
    ranks = np.zeros((len(judged), weights.shape[1]), dtype=np.int64)
    for i, search in enumerate(judged):
        if search.target_row < 0:
            continue
        scores = search.features @ weights
        target = scores[search.target_row]
        ahead = (scores > target) | ((scores == target) & (np.arange(len(scores)) < search.target_row)[:, None])
        ranks[i] = 1 + ahead.sum(axis=0)
    return ranks


def mrr(ranks: np.ndarray) -> np.ndarray:
    return np.where((ranks >= 1) & (ranks <= K), 1.0 / np.maximum(ranks, 1), 0.0).mean(axis=0)


def ndcg(ranks: np.ndarray) -> np.ndarray:
    return np.where((ranks >= 1) & (ranks <= K), 1.0 / np.log2(np.maximum(ranks, 1) + 1), 0.0).mean(axis=0)


def choose(validation: list[Judged], text_weight: float | None = None) -> np.ndarray:
    """The weight column with the best validation MRR@10 (the first, i.e. the smallest weights, on ties)."""
    grid = weight_grid(text_weight)
    return grid[:, int(np.argmax(mrr(target_ranks(validation, grid))))]


def bootstrap_gain(plain: np.ndarray, personalized: np.ndarray, seed: int = 1) -> list[float]:
    """95% interval of the MRR@10 gain, resampling the reported searches (paired)."""
    rng = np.random.default_rng(seed)
    gain = np.where((personalized >= 1) & (personalized <= K), 1.0 / np.maximum(personalized, 1), 0.0) - \
        np.where((plain >= 1) & (plain <= K), 1.0 / np.maximum(plain, 1), 0.0)
    means = [gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(BOOTSTRAP)]
    return [round(float(q), 4) for q in np.quantile(means, [0.025, 0.975])]


def check_against_searcher(con: duckdb.DuckDBPyConnection, searcher: Searcher, judged: list[Judged],
                           weights: np.ndarray, ranks: np.ndarray) -> int:
    """`Searcher.search` with the chosen weights ranks the target where the evaluation says;
    returns how many searches were checked."""
    settings = replace(searcher.settings, text_weight=float(weights[0]), interest_weight=float(weights[2]),
                       category_weight=float(weights[3]), price_weight=float(weights[4]))
    checker = Searcher(replace(searcher.index, settings=settings), searcher.encoder)
    config = ProfileConfig()
    dimension = embedding_dimension(con)
    sample = sorted(np.random.default_rng(2).choice(len(judged), min(CHECKED_SEARCHES, len(judged)), replace=False))
    by_day: dict[date, list[int]] = {}
    for i in sample:
        by_day.setdefault(judged[i].day, []).append(i)
    previous = None
    for day, members in sorted(by_day.items()):
        portraits_at(con, day, previous, config, dimension)
        previous = day
        for i in members:
            found = checker.search(con, judged[i].query, judged[i].user_id, n=K)
            hits = np.flatnonzero(found["item_id"].to_numpy() == judged[i].target)
            rank = int(hits[0]) + 1 if len(hits) else 0
            expected = int(ranks[i]) if 1 <= ranks[i] <= K else 0
            if rank != expected:
                raise AssertionError(f"Searcher.search ranks {judged[i].target} for {judged[i].query!r} at {rank}, "
                                     f"the evaluation at {expected}")
    return len(sample)


def figures(ranks: np.ndarray) -> dict:
    return {"mrr": round(float(mrr(ranks[:, None])[0]), 4), "ndcg": round(float(ndcg(ranks[:, None])[0]), 4),
            "hit_rate": round(float(((ranks >= 1) & (ranks <= K)).mean()), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--warmup-days", type=int, default=15)
    parser.add_argument("--validation-days", type=int, default=15)
    args = parser.parse_args(argv)
    device = TorchDevice(device="cpu")
    encoder = TextEncoder()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        print(f"building the demo shop ({args.users} users, {args.items} items, {args.days} days) ...", file=sys.stderr)
        build_shop(home, args.users, args.items, args.days, encoder, device)
        searcher = Searcher.load(ModelStore(root=str(home / "models")).latest(INDEX_NAME), encoder.load(device))
        with duckdb.connect(str(home / "warehouse.duckdb")) as con:
            print("ranking every search with the portrait of its day ...", file=sys.stderr)
            judged = judge(con, searcher, args.warmup_days)
            cut = min(j.day for j in judged) + timedelta(days=args.validation_days)
            validation = [j for j in judged if j.day < cut]
            test = [j for j in judged if j.day >= cut]
            bm25_weights = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
            plain_weights = choose(validation)
            # the re-rank goes on top of the plain ranking that users without a portrait get
            personal_weights = choose(validation, text_weight=float(plain_weights[0]))
            chosen = np.column_stack([bm25_weights, plain_weights, personal_weights])
            ranks = target_ranks(test, chosen)
            # each portrait signal alone, at its chosen weight, on top of the plain ranking
            alone = np.column_stack([np.where(np.arange(5) == i, personal_weights, plain_weights) for i in (2, 3, 4)])
            ablation = mrr(target_ranks(test, alone))
            valid_ranks = target_ranks(validation, chosen)
            checked = check_against_searcher(con, searcher, test, personal_weights, ranks[:, 2])
    bm25, plain, personal = (figures(ranks[:, i]) for i in range(3))
    new = np.array([not j.seen_before for j in test])
    names = ("bm25", "semantic", "interest", "category", "price")
    result = {
        "searches": len(test),
        "validation_searches": len(validation),
        "users": len({j.user_id for j in test}),
        "with_portrait": round(float(np.mean([j.has_portrait for j in test])), 4),
        "target_in_candidates": round(float(np.mean([j.target_row >= 0 for j in test])), 4),
        "reported_days": f"{cut}..{max(j.day for j in test)}",
        "validation_days": f"{min(j.day for j in validation)}..{cut - timedelta(days=1)}",
        "k": K,
        "bm25_mrr": bm25["mrr"], "bm25_ndcg": bm25["ndcg"], "bm25_hit_rate": bm25["hit_rate"],
        "plain_mrr": plain["mrr"], "plain_ndcg": plain["ndcg"], "plain_hit_rate": plain["hit_rate"],
        "personalized_mrr": personal["mrr"], "personalized_ndcg": personal["ndcg"],
        "personalized_hit_rate": personal["hit_rate"],
        "mrr_ratio": round(personal["mrr"] / plain["mrr"], 3) if plain["mrr"] else None,
        "ndcg_ratio": round(personal["ndcg"] / plain["ndcg"], 3) if plain["ndcg"] else None,
        "plain_vs_bm25_mrr_ratio": round(plain["mrr"] / bm25["mrr"], 3) if bm25["mrr"] else None,
        "mrr_gain_ci95": bootstrap_gain(ranks[:, 1], ranks[:, 2]),
        "target_seen_before": round(float(1 - new.mean()), 4),
        "new_targets": {"searches": int(new.sum()), **{name: figures(ranks[new, i]) for i, name in
                                                       enumerate(("bm25", "plain", "personalized"))}},
        "validation": {name: figures(valid_ranks[:, i]) for i, name in enumerate(("bm25", "plain", "personalized"))},
        "signal_alone_mrr": {name: round(float(v), 4) for name, v in zip(("interest", "category", "price"), ablation)},
        "plain_weights": dict(zip(names, map(float, plain_weights))),
        "personalized_weights": dict(zip(names, map(float, personal_weights))),
        "checked_against_searcher": checked,
        "shop": {"users": args.users, "items": args.items, "days": args.days, "warmup_days": args.warmup_days},
        "index_settings": {"k1": searcher.settings.k1, "b": searcher.settings.b,
                           "candidates": searcher.settings.candidates},
    }
    return record("search", result)


if __name__ == "__main__":
    main()

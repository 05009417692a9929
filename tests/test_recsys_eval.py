"""The recommender evaluation harness: metrics against hand-computed values, splits without
leakage, exclusions, batched top-k, the baselines, and the reference numbers on the real data."""

import math
import time

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sparse

from assets import recsys_eval as rs
from assets.metadata import markdown_table
from orchestration.cli import main
from resources.landing import LandingZone
from tests.conftest import shared_file
from tests.ingest_helpers import ingest_dimensions, ingest_events

T0 = pd.Timestamp("2026-01-10 12:00")


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Interactions from (user, item, days after T0[, event_type]) tuples."""
    out = pd.DataFrame([(r[0], r[1], T0 + pd.Timedelta(days=r[2]), r[3] if len(r) > 3 else "view") for r in rows],
                       columns=["user_id", "item_id", "ts", "event_type"])
    out["weight"] = out["event_type"].map(rs.DEFAULT_WEIGHTS)
    return out


def toy_split(exclude: str = "train") -> rs.Split:
    """Three users. Training: u1 x x y z (4 rows), u2 x (cold), u3 y b (cold); popularity x 3, y 2, z 1, b 1."""
    train = frame([("u1", "x", 0), ("u1", "x", 1), ("u1", "y", 1), ("u1", "z", 2), ("u2", "x", 0),
                   ("u3", "y", 1), ("u3", "b", 2)])
    test = {"u1": {"a", "b"}, "u2": {"c"}, "u3": {"d", "e", "f", "g"}}
    items = np.array(sorted("abcdefgxyz"), dtype=object)
    return rs.Split(name="toy", train=train, test=test, users=["u1", "u2", "u3"], items=items, exclude=exclude)


TOY_LISTS = {"u1": ["a", "x", "b"], "u2": ["x", "y", "c"], "u3": ["x", "y", "z"]}


# --------------------------------------------------------------------------- metrics

def test_metrics_at_3_match_hand_computed_values():
    result = rs.evaluate(TOY_LISTS, toy_split(), k=3)
    # u1: hits 1 0 1 of 2 relevant; u2: 0 0 1 of 1; u3: nothing of 4
    ndcg_u1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert result["users"] == 3
    assert result["precision@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert result["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    assert result["ndcg@3"] == pytest.approx((ndcg_u1 + 0.5 + 0) / 3)
    assert result["ndcg@3"] == pytest.approx(0.473240, abs=1e-6)
    assert result["map@3"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 1 + 0) / 3)
    assert result["hit_rate@3"] == pytest.approx(2 / 3)
    # 6 distinct items shown (a b c x y z) of a catalogue of 10
    assert result["coverage@3"] == pytest.approx(0.6)
    # shares of 7 training rows: x 3/7 (three times), y 2/7 (twice), z and b 1/7, a and c unseen (count as 1/7)
    novelty = (4 * math.log2(7) + 3 * math.log2(7 / 3) + 2 * math.log2(7 / 2)) / 9
    assert result["novelty@3"] == pytest.approx(novelty)
    assert result["novelty@3"] == pytest.approx(2.056812, abs=1e-6)


def test_metrics_at_several_k_and_the_cold_breakdown():
    result = rs.evaluate(TOY_LISTS, toy_split(), k=[1, 3])
    assert result["precision@1"] == pytest.approx(1 / 3)
    assert result["recall@1"] == pytest.approx((1 / 2) / 3)
    assert result["ndcg@1"] == pytest.approx(1 / 3)  # ideal DCG over min(1, 2) = 1 position
    assert result["map@1"] == pytest.approx(1 / 3)   # average precision over min(1, 2) = 1
    assert "recall@3" in result and "recall@10" not in result
    # cold users (fewer than 3 training rows): u2 and u3
    assert result["cold_users"] == 2
    assert result["cold_user_precision@3"] == pytest.approx((1 / 3 + 0) / 2)
    assert result["cold_user_recall@3"] == pytest.approx(0.5)
    assert result["cold_user_ndcg@3"] == pytest.approx(0.25)
    assert result["cold_user_map@3"] == pytest.approx(1 / 6)
    assert result["cold_user_hit_rate@3"] == pytest.approx(0.5)
    # cold items (no training row): u1 {a} (b was trained on by u3), u2 {c}, u3 {d e f g}
    assert result["cold_item_users"] == 3
    assert result["cold_item_recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    assert result["auc"] is None


def test_missing_lists_count_as_zero_and_duplicates_count_once():
    result = rs.evaluate({"u1": ["a", "a", "a"]}, toy_split(), k=3)
    assert result["precision@3"] == pytest.approx((1 / 3) / 3)
    assert result["recall@3"] == pytest.approx((1 / 2) / 3)
    assert rs.evaluate({}, toy_split(), k=3)["hit_rate@3"] == 0.0
    # coverage against a given catalogue size, novelty against a given popularity
    result = rs.evaluate(TOY_LISTS, toy_split(), k=3, catalogue_size=12, train_popularity={"x": 1, "y": 1})
    assert result["coverage@3"] == pytest.approx(0.5)
    assert result["novelty@3"] == pytest.approx(1.0)  # every item counts as 1 of 2


def test_auc_against_hand_computed_values():
    items = np.array(["p", "q", "r", "s", "t"], dtype=object)
    train = frame([("u", "t", 0)])
    scores = {"u": pd.Series({"p": 0.9, "q": 0.3, "r": 0.5, "s": 0.3, "t": 1.0})}
    split = rs.Split("auc", train, {"u": {"p", "q"}}, ["u"], items, exclude="train")
    # negatives r and s (t is a training item): p beats both; q loses to r, ties s
    assert rs.auc(scores, split) == pytest.approx((1 + 0.25) / 2)
    repeats = rs.Split("auc", train, {"u": {"p", "q"}}, ["u"], items, exclude="none")
    # where repeats count, t is a negative too: p beats 2 of 3, q ties one of 3
    assert rs.auc(scores, repeats) == pytest.approx((2 / 3 + 0.5 / 3) / 2)
    # an item the vector lacks scores below everything
    assert rs.auc({"u": pd.Series({"q": 0.3, "r": 0.5, "s": 0.3, "t": 1.0})}, split) == pytest.approx((0 + 0.25) / 2)
    assert rs.auc({}, split) is None


# --------------------------------------------------------------------------- splits

def random_interactions(users: int = 60, items: int = 40, rows: int = 2_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "user_id": [f"u{i}" for i in rng.integers(0, users, rows)],
        "item_id": [f"i{i}" for i in rng.zipf(1.5, rows) % items],
        "ts": T0 + pd.to_timedelta(rng.integers(0, 30 * 86_400, rows), unit="s"),
        "event_type": rng.choice(["view", "add_to_cart", "purchase"], rows, p=[0.8, 0.15, 0.05]),
    })
    df["weight"] = df["event_type"].map(rs.DEFAULT_WEIGHTS)
    return df


def test_time_split_has_no_leakage():
    df = random_interactions()
    split = rs.time_split(df, quantile=0.9)
    assert split.cut == pd.Timestamp(int(np.quantile(df["ts"].astype("datetime64[ns]").astype("int64"), 0.9)))
    assert (split.train["ts"] <= split.cut).all() and len(split.train) == (df["ts"] <= split.cut).sum()
    assert split.users and set(split.users) <= set(split.train["user_id"]) and set(split.users) == set(split.test)
    for user in split.users:
        trained = set(split.train.loc[split.train["user_id"] == user, "item_id"])
        assert split.test[user] and not split.test[user] & trained  # only items new to the user
        # every interaction of the user with a relevant item lies after the cut
        rows = df[(df["user_id"] == user) & df["item_id"].isin(split.test[user])]
        assert (rows["ts"] > split.cut).all()
    assert split.exclude == "train" and split.describe().startswith("time, cut")
    repeats = rs.time_split(df, quantile=0.9, new_items_only=False)
    assert repeats.exclude == "none"
    assert sum(map(len, repeats.test.values())) > sum(map(len, split.test.values()))
    with pytest.raises(ValueError):
        rs.time_split(df, quantile=1.0)


def test_last_days_split_counts_days_in_local_time_and_keeps_repeats():
    # UTC+8: 2017-12-02 15:59 UTC is 23:59 on the 2nd in China, 16:00 UTC is midnight of the 3rd
    df = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "c"],
        "item_id": ["x", "y", "x", "z", "x"],
        "ts": pd.to_datetime(["2017-12-01 10:00", "2017-12-02 15:59", "2017-12-02 16:00", "2017-12-03 15:00",
                              "2017-12-03 01:00"]),
        "event_type": "view",
    })
    split = rs.last_days_split(df, days=1, repeats=True, utc_offset_hours=8)
    assert split.cut == pd.Timestamp("2017-12-02 16:00")
    assert split.train["ts"].max() == pd.Timestamp("2017-12-02 15:59")
    assert split.test == {"a": {"x"}}  # a repeat is relevant; b and c were never seen before the window
    assert split.users == ["a"] and split.exclude == "none"
    assert rs.last_days_split(df, days=1, repeats=False, utc_offset_hours=8).test == {}
    # in UTC the last day is the 3rd from 00:00 UTC; two days reach back to the 2nd
    assert rs.last_days_split(df, days=1).cut == pd.Timestamp("2017-12-03")
    two = rs.last_days_split(df, days=2, repeats=True)
    assert two.cut == pd.Timestamp("2017-12-02") and two.test == {"a": {"x", "y"}}


def test_stratified_split_puts_each_item_on_one_side():
    df = random_interactions(rows=3_000)
    split = rs.stratified_random_split(df, test_share=0.25, seed=11)
    assert split.exclude == "train"
    train_pairs = set(zip(split.train["user_id"], split.train["item_id"]))
    for user, items in df.groupby("user_id")["item_id"]:
        distinct = set(items)
        trained = {i for u, i in train_pairs if u == user}
        tested = split.test.get(user, set())
        assert trained | tested == distinct and not trained & tested
        assert len(tested) == len(distinct) - math.floor(len(distinct) * 0.75 + 0.5)
    # all of a (user, item)'s interactions go with it
    assert len(split.train) == df.merge(pd.DataFrame(list(train_pairs), columns=["user_id", "item_id"])).shape[0]
    assert set(split.users) <= set(split.train["user_id"])
    again = rs.stratified_random_split(df, test_share=0.25, seed=11)
    assert again.test == split.test
    assert rs.stratified_random_split(df, test_share=0.25, seed=12).test != split.test


# --------------------------------------------------------------------------- recommend and exclusions

def test_top_k_orders_breaks_ties_by_column_and_skips_excluded():
    scores = np.array([[1.0, 2.0, 2.0, 0.0, 2.0], [-np.inf, 3.0, -np.inf, np.nan, -np.inf]])
    picked = rs.top_k(scores, 2)
    assert picked[0].tolist() == [1, 2] and picked[1].tolist() == [1]
    assert [p.tolist() for p in rs.top_k(scores, 10)] == [[1, 2, 4, 0, 3], [1]]


def test_exclusion_rules():
    split = toy_split()
    popularity = rs.Popularity().fit(split.train)
    assert list(popularity.items) == ["b", "x", "y", "z"]
    assert rs.recommend(popularity, ["u1", "u2", "new"], k=2, exclude="none") == {
        "u1": ["x", "y"], "u2": ["x", "y"], "new": ["x", "y"]}
    assert rs.recommend(popularity, ["u1", "u2", "new"], k=2, exclude="train") == {
        "u1": ["b"], "u2": ["y", "b"], "new": ["x", "y"]}
    with pytest.raises(ValueError):
        rs.recommend(popularity, ["u1"], k=2, exclude="seen")


class RandomScores(rs.Candidate):
    name = "random"

    def __init__(self):
        self.calls = []

    def _fit(self, train, rows, cols):
        self.matrix = np.random.default_rng(0).random((len(self.user_index), len(self.items)))

    def scores(self, users):
        self.calls.append(len(users))
        return self.matrix[self.user_index.get_indexer(users)]


def test_recommend_is_batched_and_fast():
    rng = np.random.default_rng(1)
    n_users, n_items = 2_000, 5_000
    train = pd.DataFrame({"user_id": [f"u{i:04d}" for i in np.r_[np.arange(n_users), rng.integers(0, n_users, 20_000)]],
                          "item_id": [f"i{i:04d}" for i in np.r_[np.arange(n_items), rng.integers(0, n_items, 17_000)]],
                          "ts": T0})
    candidate = RandomScores().fit(train)
    users = list(candidate.user_index)
    started = time.perf_counter()
    out = rs.recommend(candidate, users, k=10, exclude="train")
    seconds = time.perf_counter() - started
    assert seconds < 5, seconds
    assert len(candidate.calls) == 3 and sum(candidate.calls) == n_users  # 800 users x 5,000 items a batch
    for user in users[:50]:
        row = candidate.matrix[candidate.user_index.get_loc(user)].copy()
        row[candidate.seen([user]).nonzero()[1]] = -np.inf
        assert out[user] == candidate.items[np.argsort(-row, kind="stable")[:10]].tolist()


# --------------------------------------------------------------------------- baselines

def test_popularity_and_recent_popularity():
    train = frame([("u1", "old", 0), ("u2", "old", 0), ("u3", "old", 1), ("u1", "new", 9), ("u2", "new", 9.5),
                   ("u3", "mid", 5, "purchase")])
    assert rs.recommend(rs.Popularity().fit(train), ["u9"], 3)["u9"] == ["old", "new", "mid"]
    assert rs.recommend(rs.Popularity(weighted=True).fit(train), ["u9"], 3)["u9"] == ["mid", "old", "new"]
    recent = rs.RecentPopularity(days=7).fit(train)
    assert recent.name == "recent_popularity_7d"
    assert rs.recommend(recent, ["u9"], 2)["u9"] == ["new", "mid"]


def test_own_recent_items_weights_behaviour_and_time_and_fills_with_popularity():
    train = frame([("u", "viewed_today", 10), ("u", "bought_yesterday", 9, "purchase"), ("u", "viewed_last_week", 3),
                   ("v", "popular", 10), ("w", "popular", 10), ("v", "viewed_today", 10)])
    decayed = rs.OwnRecentItems(half_life_days=2).fit(train)
    # 6 x 2^-0.5 = 4.2 for the purchase beats 1 for today's view; a week-old view counts 2^-3.5
    assert rs.recommend(decayed, ["u"], 4)["u"] == ["bought_yesterday", "viewed_today", "viewed_last_week", "popular"]
    recency = rs.OwnRecentItems(recency_only=True).fit(train)
    assert rs.recommend(recency, ["u"], 4)["u"] == ["viewed_today", "bought_yesterday", "viewed_last_week", "popular"]
    assert rs.recommend(decayed, ["stranger"], 2)["stranger"] == ["popular", "viewed_today"]
    scores = decayed.scores(["u", "stranger"])
    assert scores.shape == (2, len(decayed.items))
    assert (scores[0] > 1).sum() == 3 and scores[0].max() <= 2 + decayed.prior and scores[1].max() <= decayed.prior


def test_content_similarity_scores_by_cosine_and_reaches_cold_items():
    vectors = {"a": [1.0, 0.0], "b": [0.9, 0.2], "c": [0.0, 1.0], "cold": [0.8, 0.1]}
    train = frame([("u", "a", 0), ("v", "c", 0), ("v", "c", 1)])
    dense = rs.ContentSimilarity(vectors).fit(train)
    assert list(dense.items) == ["a", "b", "c", "cold"]
    assert rs.recommend(dense, ["u"], 3, exclude="train")["u"] == ["cold", "b", "c"]
    # a stranger has no interest vector: popularity orders the list
    assert rs.recommend(dense, ["stranger"], 1)["stranger"] == ["c"]
    ids, matrix = list(vectors), sparse.csr_matrix(np.array(list(vectors.values())))
    sparse_candidate = rs.ContentSimilarity((ids, matrix)).fit(train)
    np.testing.assert_allclose(sparse_candidate.scores(["u", "v"]), dense.scores(["u", "v"]))
    split = rs.Split("cold", train, {"u": {"cold"}}, ["u"], np.array(["a", "b", "c", "cold"], dtype=object), "train")
    result = rs.evaluate_candidate(rs.ContentSimilarity(vectors), split, k=1)
    assert result["recall@1"] == 1.0 and result["cold_item_recall@1"] == 1.0 and result["auc"] == 1.0


def test_interactions_read_events_with_weights():
    con = duckdb.connect()
    con.execute("CREATE TABLE events (user_id VARCHAR, event_type VARCHAR, ts TIMESTAMP, item_id VARCHAR, "
                "rating DOUBLE, price DOUBLE)")
    con.execute("""INSERT INTO events VALUES
        ('u', 'view', '2026-01-01 10:00', 'a', NULL, 5), ('u', 'purchase', '2026-01-01 11:00', 'a', NULL, 5),
        ('u', 'search', '2026-01-01 09:00', NULL, NULL, NULL), ('v', 'rating', '2026-01-02', 'b', 4, NULL),
        ('v', 'chat', '2026-01-02', NULL, NULL, NULL)""")
    df = rs.interactions(con)
    assert list(df.columns) == ["user_id", "item_id", "ts", "event_type", "rating", "weight"]
    assert list(zip(df["event_type"], df["weight"])) == [("view", 1.0), ("purchase", 6.0), ("rating", 5.0)]
    assert df["ts"].dtype == "datetime64[ns]"
    only = rs.interactions(con, {"purchase": 1.0})
    assert list(only["event_type"]) == ["purchase"]
    with pytest.raises(ValueError):
        rs.interactions(con, {"like": 1.0})


def test_evaluate_candidates_and_the_report():
    df = random_interactions(rows=3_000)
    split = rs.time_split(df, quantile=0.8, new_items_only=False)
    results = rs.evaluate_candidates([rs.Popularity(), rs.OwnRecentItems(), rs.RecentPopularity(days=3)], split,
                                     k=[5, 10])
    assert set(results) == {"popularity", "own_items_decayed_2d", "recent_popularity_3d"}
    for metrics in results.values():
        assert 0 <= metrics["recall@10"] <= 1 and metrics["recall@5"] <= metrics["recall@10"]
        assert 0 <= metrics["auc"] <= 1 and metrics["seconds"] >= 0
    rows = rs.results_table(results)
    assert [r["candidate"] for r in rows] == list(results)
    assert list(rows[0])[:4] == ["candidate", "users", "cold_users", "cold_item_users"]
    assert markdown_table(rows).startswith("| candidate | users |")
    name, value = rs.best_baseline(results, "recall@10")
    assert value == max(m["recall@10"] for m in results.values()) and results[name]["recall@10"] == value
    with pytest.raises(ValueError):
        rs.best_baseline(results, "cold_user_recall@10" if all(
            m["cold_user_recall@10"] is None for m in results.values()) else "no_such_metric")


# --------------------------------------------------------------------------- real data

TAOBAO = "taobao-userbehavior-head/UserBehavior.csv.gz"
AMAZON = "amazon-musical-instruments-5core/reviews_Musical_Instruments_5.json.gz"


def report(title: str, split: rs.Split, results: dict) -> None:
    print(f"\n{title}: {split.describe()}")
    print(markdown_table(rs.results_table(results), max_rows=20))


@pytest.mark.slow
def test_amazon_time_split_reference_numbers(home):
    source = shared_file(AMAZON)
    assert main(["import", "amazon-reviews", str(source)]) == 0
    days = LandingZone(root=str(home / "landing")).event_days()
    instance = dg.DagsterInstance.ephemeral()
    assert ingest_events(home, instance, days).success and ingest_dimensions(home, instance).success
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        df = rs.interactions(con)
    assert len(df) == 10_261

    split = rs.time_split(df, quantile=0.9, new_items_only=True)
    # the cut falls on a day; reviews of that day train, the 323 users seen by then with new reviews after it are tested
    assert split.cut == pd.Timestamp("2014-04-17") and len(split.users) == 323
    results = rs.evaluate_candidates([rs.Popularity(), rs.RecentPopularity(days=365), rs.OwnRecentItems(half_life_days=365)],
                                     split)
    report("amazon", split, results)
    popularity = results["popularity"]
    assert popularity["recall@10"] == pytest.approx(0.093, abs=0.01)
    assert popularity["ndcg@10"] == pytest.approx(0.051, abs=0.01)
    assert popularity["auc"] > 0.5
    # no repeats to find here: with training items excluded, own history leaves only the popularity prior
    assert results["own_items_decayed_365d"]["recall@10"] == pytest.approx(popularity["recall@10"])
    assert rs.best_baseline(results, "recall@10")[1] >= popularity["recall@10"]

    stratified = rs.stratified_random_split(df, test_share=0.25, seed=42)
    public = rs.evaluate_candidates([rs.Popularity()], stratified)
    report("amazon", stratified, public)
    assert 0 < public["popularity"]["recall@10"] < 0.2


@pytest.mark.slow
def test_taobao_last_day_reference_numbers(home):
    source = shared_file(TAOBAO)
    assert main(["import", "taobao", str(source)]) == 0
    assert main(["run", "--ingest-only"]) == 0
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        df = rs.interactions(con)
        categories = rs.category_vectors(con)
    assert len(df) == 84_475

    split = rs.last_days_split(df, days=1, repeats=True, utc_offset_hours=8)
    assert split.cut == pd.Timestamp("2017-12-02 16:00")  # midnight of 2017-12-03 in China
    assert len(split.users) == 801
    candidates = [rs.Popularity(), rs.RecentPopularity(days=1), rs.OwnRecentItems(recency_only=True),
                  rs.OwnRecentItems(half_life_days=2.0), rs.ContentSimilarity(categories, half_life_days=1.0)]
    results = rs.evaluate_candidates(candidates, split)
    report("taobao", split, results)
    assert results["own_items_by_recency"]["recall@10"] == pytest.approx(0.080, abs=0.015)
    assert results["popularity"]["recall@10"] == pytest.approx(0.002, abs=0.002)
    decayed = results["own_items_decayed_2d"]["recall@10"]
    print(f"taobao own items, decayed behaviour-weighted (half-life 2 days): recall@10 {decayed:.4f}")
    assert decayed > 0.09
    assert rs.best_baseline(results, "recall@10")[0] == "own_items_decayed_2d"
    # only a candidate that scores items nobody touched in training reaches cold items
    assert results["content_similarity"]["cold_item_recall@10"] > 0
    assert results["popularity"]["cold_item_recall@10"] == 0


def test_item_embedding_vectors_read_in_item_order():
    import duckdb

    from assets.recsys_eval import item_embedding_vectors

    con = duckdb.connect()
    con.execute("CREATE TABLE item_embeddings AS SELECT * FROM (VALUES ('b', [0.0, 1.0]::FLOAT[2]), "
                "('a', [1.0, 0.5]::FLOAT[2])) t(item_id, vector)")
    ids, vectors = item_embedding_vectors(con)
    assert ids == ["a", "b"] and vectors.tolist() == [[1.0, 0.5], [0.0, 1.0]]

"""The recommender's dataset, the production model with its blocking check, recommendations and
`portrait recommend`, on a generated shop run through the real pipeline."""

import json
import pickle
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from assets.recommendations import Context, reason
from assets.recommender_model import CHECK_NAME, MODEL_NAME, lightfm_model
from assets.recommender_recipe import RecommenderConfig, production
from assets.recsys_dataset import catalogue_features, item_vectors, user_features
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.landing import LandingZone
from resources.model_store import ModelStore
from resources.warehouse import Warehouse


def _tiny_warehouse() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE items (item_id VARCHAR, categories VARCHAR[], brand VARCHAR, price DOUBLE)")
    con.execute("INSERT INTO items VALUES ('a', ['Guitars', 'Electric'], 'Kestrel', 300), "
                "('b', ['Strings'], NULL, 8), ('c', NULL, 'Plectra', NULL), ('d', ['Strings'], 'Plectra', 12)")
    con.execute("CREATE TABLE users (user_id VARCHAR, attributes JSON)")
    con.execute("""INSERT INTO users VALUES ('u1', '{"age": 34, "gender": "f", "region": "north"}'),
                                            ('u2', '{"age": "unknown"}')""")
    return con


def test_catalogue_and_user_features():
    con = _tiny_warehouse()
    items = catalogue_features(con)
    assert items["a"] == ["brand:Kestrel", "category:Electric", "category:Guitars", "price_band:3"]
    assert items["b"] == ["category:Strings", "price_band:1"]
    assert items["c"] == ["brand:Plectra"]  # no categories, no price: no band
    train = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u3"], "item_id": ["b", "d", "a", "a"],
                          "weight": [1.0, 6.0, 4.0, 1.0]})
    users = user_features(con, train, items, top=1)
    assert users["u1"] == ["category:Strings", "age:30s", "gender:f", "region:north"]  # strings 7 > guitars 4
    assert users["u3"] == ["category:Electric"]  # ties go alphabetically
    assert "u2" not in users  # an unreadable age and nothing else


def test_item_vectors_as_of_a_cut_average_only_earlier_reviews():
    con = duckdb.connect()
    con.execute("CREATE TABLE item_embeddings (item_id VARCHAR, source VARCHAR, vector FLOAT[2])")
    con.execute("INSERT INTO item_embeddings VALUES ('cat', 'catalog', [1, 0]), ('rev', 'reviews', [0.6, 0.8])")
    con.execute("CREATE TABLE text_embeddings (text_hash VARCHAR, vector FLOAT[2])")
    con.execute("INSERT INTO text_embeddings VALUES (md5('early'), [0, 1]), (md5('late'), [1, 0])")
    con.execute("CREATE TABLE events (item_id VARCHAR, event_type VARCHAR, text VARCHAR, ts TIMESTAMP)")
    con.execute("INSERT INTO events VALUES ('rev', 'review', 'early', '2026-01-01'), "
                "('rev', 'review', 'late', '2026-03-01'), ('new', 'review', 'late', '2026-03-01')")
    ids, vectors = item_vectors(con, pd.Timestamp("2026-02-01"))
    assert ids == ["cat", "rev"]  # 'new' has no review before the cut
    assert np.allclose(vectors, [[1, 0], [0, 1]])
    ids, vectors = item_vectors(con)  # as the table stands: every review
    assert ids == ["cat", "rev"] and np.allclose(vectors[1], [0.6, 0.8])


def test_reasons_name_the_member_that_ranked_the_item():
    context = Context(titles={"a": "Kestrel Guitar"}, last_event={("u", "a"): "purchase", ("u", "b"): "add_to_cart"},
                      user_categories={"u": ["Strings"]}, item_categories={"c": ["Strings"], "d": ["Drums"]},
                      segment_of={"u": "budget guitarists"}, segment_top={"budget guitarists": {"e"}})
    assert reason("item_knn", "u", "x", context, anchor="a") == "because you bought Kestrel Guitar"
    assert reason("own_items_decayed_7d", "u", "b", context) == "you added to your cart it recently"
    assert reason("popularity", "u", "e", context) == "popular with 'budget guitarists'"
    assert reason("popularity", "u", "f", context) == "popular in the shop"
    assert reason("lightfm_hybrid", "u", "c", context) == "matches your interest in Strings"
    assert reason("content_similarity", "u", "d", context) == "similar to what you like"


def test_a_fitted_production_blend_pickles_and_scores_the_same():
    rng = np.random.default_rng(4)
    rows = [(f"U{u}", f"I{2 * rng.integers(15) + u % 2}", pd.Timestamp("2026-01-01") + pd.Timedelta(hours=int(h)), 1.0,
             "view") for u in range(40) for h in rng.integers(0, 24 * 20, size=10)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "weight", "event_type"])
    config = RecommenderConfig(protocol="last_days", days=2, seeds=1, components=8, max_epochs=4)
    items = {f"I{i}": [f"category:{i % 2}"] for i in range(30)}
    blend = production(config, items, {}, None, sorted(items)).fit(frame)
    assert set(blend.weights) >= {"popularity", "item_knn", "lightfm_hybrid", "own_items_decayed_1d"}
    assert len(blend.items) == 30  # items nobody touched are in the catalogue
    restored = pickle.loads(pickle.dumps(blend))
    assert np.allclose(restored.scores(["U0", "U1"]), blend.scores(["U0", "U1"]))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated shop run through `portrait run --train-recommender` once (ingestion to
    recommendations, the recommender trained)."""
    home = tmp_path_factory.mktemp("shop")
    patch = pytest.MonkeyPatch()
    patch.setenv("PORTRAIT_HOME", str(home))
    patch.setenv("DAGSTER_HOME", "")
    generate_demo(LandingZone(root=str(home / "landing")), users=150, items=80, days=14, seed=5)
    assert main(["run", "--train-recommender"]) == 0
    yield home
    patch.undo()


def _con(home: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)


@pytest.mark.slow
def test_every_user_gets_ranked_reasoned_recommendations_without_purchased_items(shop, monkeypatch):
    monkeypatch.setenv("PORTRAIT_HOME", str(shop))
    with _con(shop) as con:
        profiles = {u for (u,) in con.execute("SELECT user_id FROM user_profiles").fetchall()}
        per_user = con.execute("""
            SELECT user_id, count(*), min(rank), max(rank), count(DISTINCT item_id), bool_and(reason <> '')
            FROM recommendations GROUP BY user_id""").fetchall()
        bought = con.execute("""
            SELECT count(*) FROM recommendations r JOIN recsys_interactions i USING (user_id, item_id)
            WHERE i.event_type = 'purchase'""").fetchall()[0][0]
        viewed_again = con.execute("""
            SELECT count(*) FROM recommendations r JOIN recsys_interactions i USING (user_id, item_id)
            WHERE i.event_type = 'view'""").fetchall()[0][0]
        ordered = con.execute("""
            SELECT count(*) FROM (SELECT score, lead(score) OVER (PARTITION BY user_id ORDER BY rank) AS next
                                  FROM recommendations) WHERE next > score + 1e-9""").fetchall()[0][0]
        sources = {s for (s,) in con.execute("SELECT DISTINCT source FROM recommendations").fetchall()}
        evaluated = con.execute("SELECT count(DISTINCT candidate), bool_and(recipe IS NOT NULL) "
                                "FROM recommender_evaluations").fetchall()[0]
    assert {row[0] for row in per_user} == profiles
    for user, count, first, last, distinct, reasoned in per_user:
        assert (count, first, last, distinct, reasoned) == (50, 1, 50, 50, True)  # 50 of the 80 items by default
    assert bought == 0  # purchases excluded by default
    assert viewed_again > 0  # views may come back
    assert ordered == 0  # ranks follow scores
    assert evaluated == (7, True)  # five baselines, the LightFM hybrid and the blend, each with the recipe
    store = ModelStore(root=str(shop / "models"))
    published = store.latest(MODEL_NAME)
    if published:
        assert sources == {"model"}
    else:  # no model beat the baselines yet: the best baseline fills in, and says so
        assert len(sources) == 1 and sources.pop().startswith("baseline:")


@pytest.mark.slow
def test_blocking_check_publishes_only_a_blend_that_beat_the_baselines(shop):
    """The check's decision on recorded evaluations (rows written here stand for two evaluation runs)."""
    warehouse = Warehouse(path=str(shop / "warehouse.duckdb"))
    store = ModelStore(root=str(shop / "models"))
    recipe = RecommenderConfig(seeds=1, max_epochs=5).model_dump_json()

    def evaluation(production_ndcg: float) -> None:
        with warehouse.transaction() as con:
            con.execute("INSERT INTO recommender_evaluations BY NAME SELECT now()::TIMESTAMP + INTERVAL 1 DAY * "
                        "(SELECT count(*) FROM recommender_evaluations) AS evaluated_at, * FROM (VALUES "
                        "('popularity', 0.10, 0.05, true), ('production_blend', 0.12, ?, false)) "
                        "AS t(candidate, recall, ndcg, baseline)", [production_ndcg])
            con.execute("UPDATE recommender_evaluations SET recipe = ?, k = 10 WHERE recipe IS NULL", [recipe])

    resources = {"warehouse": warehouse, "model_store": store}
    evaluation(production_ndcg=0.04)  # better recall, worse NDCG: refused
    before = store.latest(MODEL_NAME)
    result = dg.materialize([lightfm_model], resources=resources, raise_on_error=False)
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(CHECK_NAME, False)]
    assert checks[0].metadata["ndcg@10_ratio"].value == 0.8
    assert store.latest(MODEL_NAME) == before  # the previous model (or none) stays

    evaluation(production_ndcg=0.06)
    result = dg.materialize([lightfm_model], resources=resources)
    assert result.get_asset_check_evaluations()[0].passed
    published = store.latest(MODEL_NAME)
    assert published is not None and published != before
    card = json.loads((published / "model_card.json").read_text())
    assert card["passed"] and card["evaluation"]["ndcg@10"]["ratio"] == 1.2 and card["lightfm_epochs"]["lightfm_hybrid"] >= 1


@pytest.mark.slow
def test_portrait_recommend_prints_reasons_and_explains_the_blend(shop, monkeypatch, capsys):
    monkeypatch.setenv("PORTRAIT_HOME", str(shop))
    with _con(shop) as con:
        user = con.execute("SELECT min(user_id) FROM recommendations").fetchall()[0][0]
    assert main(["recommend", user, "-n", "5", "--explain"]) == 0
    out = capsys.readouterr().out
    assert f"Recommendations for {user}" in out and "  5. " in out and "  6. " not in out
    assert "Blend weights" in out or "best baseline" in out
    assert main(["recommend", "no-such-user"]) == 2
    assert "no recommendations for user 'no-such-user'" in capsys.readouterr().err
    assert main(["recommend", "' OR '1'='1"]) == 2  # an id is a parameter, never SQL


HOSTILE_IDS = ["' OR '1'='1", "U0'; DROP TABLE user_profiles; --", "U0\" OR 1=1 --", "%", "U0 $1 ? %s {0}"]


@pytest.mark.slow
@pytest.mark.parametrize("user", HOSTILE_IDS)
def test_user_ids_in_every_command_are_parameters_never_sql(shop, monkeypatch, capsys, user):
    """An id that is SQL or a pattern matches no user and changes nothing (the tables keep their rows)."""
    monkeypatch.setenv("PORTRAIT_HOME", str(shop))
    tables = ("user_profiles", "recommendations", "events", "items")
    with _con(shop) as con:
        before = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]
    assert main(["profile", user]) == 2
    assert main(["recommend", user]) == 2
    assert main(["search", "guitar", "--user", user]) in (0, 2)
    assert main(["forget", user, "--reason", "test"]) == 2
    err = capsys.readouterr().err
    assert "nothing was changed" in err and "Traceback" not in err
    with _con(shop) as con:
        assert [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables] == before


@pytest.mark.slow
def test_a_new_user_with_only_searches_gets_recommendations_from_their_text(shop, monkeypatch):
    """Runs last: it lands one more day (a newcomer who only searched and chatted) and runs again."""
    monkeypatch.setenv("PORTRAIT_HOME", str(shop))
    with _con(shop) as con:
        last_day = con.execute("SELECT max(event_date) FROM events").fetchall()[0][0]
    day = (pd.Timestamp(last_day) + pd.Timedelta(days=1)).date().isoformat()
    folder = shop / "landing" / "events" / f"date={day}"
    folder.mkdir(parents=True)
    rows = [{"user_id": "NEWBIE", "event_type": "search", "text": "bass guitar strings", "ts": f"{day}T09:00:00Z"},
            {"user_id": "NEWBIE", "event_type": "chat", "text": "which bass strings last longest?",
             "ts": f"{day}T09:05:00Z"}]
    (folder / "newbie.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["run", "--start", day, "--end", day]) == 0
    with _con(shop) as con:
        found = con.execute("SELECT r.member, r.reason, i.title FROM recommendations r JOIN items i USING (item_id) "
                            "WHERE user_id = 'NEWBIE' ORDER BY rank LIMIT 5").fetchall()
    assert len(found) == 5 and {member for member, _, _ in found} == {"cold_content"}
    assert sum("Bass" in title or "String" in title for _, _, title in found) >= 3  # the text steered it


def test_co_occurrence_reasons_name_a_history_item_even_when_the_blend_knows_more_items():
    """The blend's catalogue is wider than co-occurrence's (new items scored by features), so the
    anchor of a reason must be looked up by item id, not by position."""
    from assets.blend import ItemKNN
    from assets.recommendations import _anchors

    frame = pd.DataFrame({"user_id": ["u", "u", "v", "v"], "item_id": ["a", "b", "a", "b"],
                          "ts": pd.Timestamp("2026-01-01"), "weight": 1.0, "event_type": "view"})
    knn = ItemKNN().fit(frame)
    blend_items = np.array(["a", "b", "new1", "new2"], dtype=object)
    anchors = _anchors(knn, ["u"], [np.array([3, 1, 2])], blend_items)
    assert anchors == [[None, "a", None]]  # "b" co-occurs with "a"; new items have no anchor

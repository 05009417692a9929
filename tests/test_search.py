"""Personalized search: tokenization, fusion and re-rank, the `search_index` asset, `Searcher`
on a hand-made shop, `portrait search`, and the whole path on a small demo shop."""

import hashlib
from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from assets.embeddings import item_embeddings, text_embeddings
from assets.profiles import user_profiles
from assets.search import (
    INDEX_NAME,
    RESULT_COLUMNS,
    Portrait,
    SearchConfig,
    Searcher,
    SearchIndex,
    SearchSettings,
    fuse,
    item_price_index,
    min_max,
    personal_features,
    personal_score,
    pool,
    price_fit,
    publish_index,
    query_terms,
    ranking,
    reason,
    search_index,
    tokenize,
)
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.encoder import TextEncoder
from resources.landing import LandingZone
from resources.model_store import ModelStore
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse
from tests.ingest_helpers import ingest_dimensions, ingest_events, query

DIMENSION = 16
INJECTIONS = ["guitar'; DROP TABLE items; --", "guitar\" OR 1=1 --", "guitar $1 ? :user_id %s {0}", "guitar\\'); --"]


# --- tokenization ------------------------------------------------------------------------------------------------

def test_tokens_are_lower_case_singular_words_without_stop_words():
    assert tokenize("Five-String Basses for the Blues") == ["five", "string", "bass", "blue"]
    assert tokenize("88-key digital pianos, MIDI keyboards & switches") == ["88", "key", "digital", "piano", "midi",
                                                                           "keyboard", "switch"]
    assert tokenize("accessories and boxes") == ["accessory", "box"]
    assert tokenize("the bass is a bus") == ["bass", "bus"]  # "ss", "us" and short words keep their s
    assert tokenize("Ｇｕｉｔａｒｓ") == ["guitar"]  # full-width letters fold to ASCII
    assert tokenize("电吉他 guitar_strings 吉他strings") == ["电", "吉", "他", "guitar", "string", "吉", "他", "string"]
    assert tokenize("") == [] and tokenize(None) == [] and tokenize(" ,.;!? ") == []


def test_a_blank_query_is_an_error_but_punctuation_is_a_query():
    for blank in ("", "   ", "\t\n", None):
        with pytest.raises(ValueError, match="search query is empty"):
            query_terms(blank)
    assert query_terms("!!!") == {}
    # each token once, with the word as typed first
    assert query_terms("Guitars guitar GUITAR strings") == {"guitar": "guitars", "string": "strings"}


def test_sql_looking_queries_are_plain_words():
    assert tokenize("'; DROP TABLE items; --") == ["drop", "table", "item"]
    assert tokenize("x' OR '1'='1") == ["x", "1", "1"]


# --- fusion and re-rank ------------------------------------------------------------------------------------------

def test_min_max_ignores_missing_scores_and_flat_lists():
    assert min_max(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert min_max(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]
    assert min_max(np.array([np.nan, 1.0, 3.0])).tolist() == [0.0, 0.0, 1.0]
    assert min_max(np.array([])).tolist() == []


def test_fusion_is_a_weighted_sum_of_normalized_scores():
    text = np.array([0.0, 2.0, 8.0, 4.0])
    semantic = np.array([0.9, 0.5, 0.1, np.nan])
    assert fuse(text, semantic, 1.0) == pytest.approx([0.0, 0.25, 1.0, 0.5])
    assert fuse(text, semantic, 0.0) == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert fuse(text, semantic, 0.4) == pytest.approx([0.6, 0.4, 0.4, 0.2])


def test_the_pool_is_the_union_of_both_top_lists():
    text = np.array([0.0, 3.0, 1.0, 0.0, 2.0])
    semantic = np.array([0.9, np.nan, 0.1, 0.8, 0.2])
    assert pool(text, semantic, 2).tolist() == [0, 1, 3, 4]  # BM25: 1, 4; cosine: 0, 3
    assert pool(text, semantic, 10).tolist() == [0, 1, 2, 3, 4]
    assert pool(np.zeros(3), np.full(3, np.nan), 5).tolist() == []  # no match, no vector: nothing


def test_price_fit_is_the_ratio_of_the_smaller_to_the_larger_index():
    fit = price_fit(np.array([1.0, 2.0, 0.5, np.nan, 0.0]), 1.0)
    assert fit.tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]  # the last two have no usable price: neutral
    assert price_fit(np.array([0.4, 2.5]), None).tolist() == [0.5, 0.5]
    assert price_fit(np.array([0.4, 2.5]), 2.0) == pytest.approx([0.2, 0.8])


def test_item_price_index_is_relative_to_the_category_median():
    index = item_price_index(pd.Series(["A", "A", "A", "B", None]), pd.Series([10.0, 20.0, 40.0, 5.0, 3.0]))
    assert index[:4] == pytest.approx([0.5, 1.0, 2.0, 1.0]) and np.isnan(index[4])


def test_the_portrait_re_ranks_equal_plain_scores():
    vectors = np.eye(3)
    categories = np.array(["Guitars", "Microphones", "Guitars"], dtype=object)
    prices = np.array([0.5, 1.0, 2.0])
    premium = Portrait(None, {"Guitars": 0.8, "Microphones": 0.2}, 2.0, "premium")
    features = personal_features(premium, vectors, np.ones(3, bool), categories, prices)
    assert features.interest.tolist() == [0, 0, 0]
    assert features.category.tolist() == [0.8, 0.2, 0.8]
    assert features.price == pytest.approx([0.25, 0.5, 1.0])
    settings = SearchSettings(interest_weight=0.0, category_weight=1.0, price_weight=1.0)
    assert ranking(np.zeros(3) + personal_score(features, settings)).tolist() == [2, 0, 1]

    fan = Portrait(np.array([0.0, 3.0, 0.0]), {}, None, None)  # interest points at item 1
    features = personal_features(fan, vectors, np.array([True, True, False]), categories, prices)
    assert features.interest.tolist() == [0.0, 1.0, 0.0]
    assert ranking(personal_score(features, SearchSettings())).tolist() == [1, 0, 2]

    nobody = personal_features(None, vectors, np.ones(3, bool), categories, prices)
    assert personal_score(nobody, SearchSettings()).tolist() == [0, 0, 0]
    assert ranking(np.array([1.0, 2.0, 1.0, 2.0])).tolist() == [1, 3, 0, 2]  # ties keep index order


def test_reasons_name_the_match_and_the_strongest_portrait_signal():
    portrait = Portrait(None, {"Guitars": 0.62}, 1.1, "mid")
    assert reason(["guitars"], 0.7, portrait, "Guitars", {"interest": 0.1, "category": 0.3, "price": 0.0}) == \
        "matches 'guitars'; Guitars is 62% of your interest"
    assert reason([], 0.7, portrait, "Guitars", {"interest": 0.0, "category": 0.0, "price": 0.1}) == \
        "close in meaning to the query; near the prices you usually pay (mid)"
    assert reason([], 0.2, None, "Guitars", {}) == "no query word matches; nearest in meaning"
    assert reason(["a", "b"], 0.9, portrait, None, {"interest": 0.4, "category": 0.1, "price": -0.1}) == \
        "matches 'a', 'b'; like items you viewed and bought"


# --- Searcher on a hand-made shop --------------------------------------------------------------------------------

class WordEncoder:
    """A stand-in for the text encoder: each word hashes to a fixed direction, a text is the
    normalized sum of its words' directions (so shared words mean similar vectors)."""

    model_id = "words@test"
    dimension = DIMENSION

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in tokenize(text):
                seed = int(hashlib.md5(word.encode()).hexdigest()[:8], 16)
                out[row] += np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        return out


ITEMS = [
    ("G1", "Harlow Go Acoustic Guitar", ["Guitars", "Acoustic Guitars"], "Harlow", 150.0, "Acoustic guitar for beginners."),
    ("G2", "Redwood Pro Acoustic Guitar", ["Guitars", "Acoustic Guitars"], "Redwood", 900.0, "Acoustic guitar for gigs."),
    ("G3", "Vantor Studio Acoustic Guitar", ["Guitars", "Acoustic Guitars"], "Vantor", 400.0, "Acoustic guitar for gigs."),
    ("S1", "Stringwise Acoustic Guitar Strings", ["Strings & Picks", "Guitar Strings"], "Stringwise", 9.0,
     "Phosphor-bronze strings."),
    ("M1", "Sonora Studio Condenser Microphone", ["Microphones", "Condenser Microphones"], "Sonora", 150.0,
     "Large-diaphragm microphone for podcasts."),
    ("K1", "Korvia Digital Piano", ["Keyboards", "Digital Pianos"], "Korvia", 500.0, None),
]


def _shop(path: Path, encoder: WordEncoder) -> None:
    """items, item_embeddings (the stand-in's vectors), two portraits and one review in `events`."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE items (item_id VARCHAR, title VARCHAR, categories VARCHAR[], brand VARCHAR, "
                "price DOUBLE, description VARCHAR, attributes JSON, source_file VARCHAR, line_no BIGINT)")
    con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, NULL, 'items.jsonl', 1)", [list(i) for i in ITEMS])
    ids = [i[0] for i in ITEMS]
    vectors = encoder.encode([f"{i[1]}. {i[5] or ''}" for i in ITEMS])
    by_id = dict(zip(ids, vectors))
    con.register("_v", pa.table({"item_id": ids, "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel(), pa.float32()), DIMENSION)}))
    con.execute(f"CREATE TABLE item_embeddings AS SELECT item_id, '{encoder.model_id}' AS model_id, 'catalog' AS source, "
                f"1 AS n_texts, vector::FLOAT[{DIMENSION}] AS vector FROM _v")
    # two guitarists: one pays double the category median and likes G2, one pays half and likes G1
    profiles = pa.table({
        "user_id": ["premium", "budget"],
        "interest": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([by_id["G2"], by_id["G1"]]),
                                                               pa.float32()), DIMENSION),
        "price_index": [2.0, 0.5],
        "price_band": ["premium", "budget"],
    })
    con.register("_p", profiles)
    con.execute(f"CREATE TABLE user_profiles AS SELECT user_id, interest::FLOAT[{DIMENSION}] AS interest, "
                "[{'name': 'Guitars', 'share': 0.9}, {'name': 'Strings & Picks', 'share': 0.1}] AS top_categories, "
                "price_index, price_band FROM _p")
    con.execute("CREATE TABLE events AS SELECT 'budget' AS user_id, 'review' AS event_type, 'G1' AS item_id, "
                "'my zanzibar guitar, call me on 0170' AS text")
    con.close()


@pytest.fixture
def shop(home: Path) -> tuple[Path, ModelStore]:
    """The hand-made shop in PORTRAIT_HOME, its index published (without Dagster, for speed)."""
    warehouse = home / "warehouse.duckdb"
    _shop(warehouse, WordEncoder())
    store = ModelStore(root=str(home / "models"))
    with duckdb.connect(str(warehouse)) as con:
        publish_index(con, store, SearchSettings())
    return warehouse, store


def test_the_asset_publishes_a_catalogue_only_index_with_its_card(home, instance):
    warehouse = home / "warehouse.duckdb"
    _shop(warehouse, WordEncoder())
    store = ModelStore(root=str(home / "models"))
    resources = {"warehouse": Warehouse(path=str(warehouse)), "model_store": store}
    result = dg.materialize([search_index], instance=instance, resources=resources)
    folder = store.latest(INDEX_NAME)
    assert folder is not None and (folder / "items.parquet").exists() and (folder / "bm25").is_dir()
    card = store.read_card(folder)
    assert (card["items"], card["items_with_text"], card["items_with_vector"]) == (6, 6, 6)
    assert card["model_id"] == "words@test" and card["settings"] == SearchSettings().__dict__
    metadata = result.asset_materializations_for_node("search_index")[0].metadata
    assert metadata["dagster/row_count"].value == 6 and metadata["version"].value == folder.name
    index = SearchIndex.read(folder)
    vocabulary = set(index.retriever.vocab_dict)
    assert {"acoustic", "guitar", "harlow", "microphone", "keyboard", "podcast"} <= vocabulary
    assert not {"zanzibar", "0170", "call"} & vocabulary  # a review's words never reach the index
    assert index.items.set_index("item_id").loc["G2", "price_index"] == pytest.approx(900 / 400)

    # an empty catalogue publishes nothing, says why, and leaves the published version alone
    # (without failing the run: the portraits built beside it must not fail for it)
    with duckdb.connect(str(warehouse)) as con:
        con.execute("DELETE FROM items")
    skipped = dg.materialize([search_index], instance=instance, resources=resources)
    metadata = skipped.asset_materializations_for_node("search_index")[0].metadata
    assert metadata["published"].value is False and "catalogue is empty" in metadata["reason"].value
    assert store.latest(INDEX_NAME) == folder


def test_config_settings_reach_the_card(home):
    _shop(home / "warehouse.duckdb", WordEncoder())
    store = ModelStore(root=str(home / "models"))
    settings = SearchConfig(text_weight=0.3, candidates=5, price_weight=0.0).settings()
    assert settings == SearchSettings(text_weight=0.3, candidates=5, price_weight=0.0)
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        folder, _ = publish_index(con, store, settings)
    assert store.latest(INDEX_NAME) == folder
    assert Searcher.load(folder, WordEncoder()).settings == settings


def test_search_returns_the_documented_frame_and_re_ranks_per_user(shop):
    warehouse, store = shop
    searcher = Searcher.load(store.latest(INDEX_NAME), WordEncoder())
    with duckdb.connect(str(warehouse), read_only=True) as con:
        plain = searcher.search(con, "acoustic guitar", n=4)
        assert list(plain.columns) == RESULT_COLUMNS and plain["rank"].tolist() == [1, 2, 3, 4]
        assert set(plain["item_id"]) == {"G1", "G2", "G3", "S1"} and not plain.attrs["personalized"]
        assert (plain["personal_score"] == 0).all() and plain["score"].is_monotonic_decreasing
        assert plain.set_index("item_id").loc["G1", "title"] == "Harlow Go Acoustic Guitar"
        assert "matches 'acoustic', 'guitar'" in plain["reason"].iloc[0]

        premium = searcher.search(con, "acoustic guitar", "premium", n=3)
        budget = searcher.search(con, "acoustic guitar", "budget", n=3)
        assert premium.attrs["personalized"] and premium["item_id"].iloc[0] == "G2"
        assert budget["item_id"].iloc[0] == "G1"
        assert (premium["personal_score"] > 0).all()
        assert "Guitars is 90% of your interest" in premium["reason"].iloc[0] or \
            "like items you viewed and bought" in premium["reason"].iloc[0]
        # a user without a portrait gets the plain ranking, without an error
        stranger = searcher.search(con, "acoustic guitar", "nobody", n=4)
        pd.testing.assert_frame_equal(stranger, plain)

        with pytest.raises(ValueError, match="search query is empty"):
            searcher.search(con, "   ", "premium")
        with pytest.raises(ValueError, match="n must be at least 1"):
            searcher.search(con, "guitar", n=0)


def test_queries_that_look_like_sql_are_searched_as_text(shop):
    warehouse, store = shop
    searcher = Searcher.load(store.latest(INDEX_NAME), WordEncoder())
    with duckdb.connect(str(warehouse)) as con:
        for text in INJECTIONS:
            found = searcher.search(con, text, "premium' OR '1'='1", n=3)
            assert not found.attrs["personalized"]  # the odd user id matched nobody
            assert found["item_id"].iloc[0].startswith("G"), text
            assert found["reason"].iloc[0].startswith("matches 'guitar'"), text
        assert con.execute("SELECT count(*) FROM items").fetchall() == [(6,)]
        assert con.execute("SELECT count(*) FROM user_profiles").fetchall() == [(2,)]


def test_items_gone_from_the_catalogue_and_new_vectors_are_picked_up(shop):
    warehouse, store = shop
    searcher = Searcher.load(store.latest(INDEX_NAME), WordEncoder())
    with duckdb.connect(str(warehouse)) as con:
        assert "S1" in searcher.search(con, "guitar strings", n=6)["item_id"].tolist()
        con.execute("DELETE FROM items WHERE item_id = 'S1'")
        con.execute("DELETE FROM item_embeddings WHERE item_id = 'K1'")
        found = searcher.search(con, "guitar strings", n=6)
        assert "S1" not in found["item_id"].tolist()
        piano = searcher.search(con, "digital piano", n=6).set_index("item_id")
        assert piano.loc["K1", "text_score"] > 0 and np.isnan(piano.loc["K1", "semantic_score"])  # found by BM25 alone


def test_an_index_built_beside_other_vectors_is_refused(shop):
    _, store = shop
    other = WordEncoder()
    other.model_id = "another-model"
    with pytest.raises(ValueError, match="built beside item vectors of words@test"):
        Searcher.load(store.latest(INDEX_NAME), other)


def test_weights_of_zero_give_bm25_alone(shop):
    warehouse, store = shop
    searcher = Searcher.load(store.latest(INDEX_NAME), WordEncoder())
    searcher.settings = replace(searcher.settings, text_weight=1.0, interest_weight=0.0, category_weight=0.0,
                                price_weight=0.0)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        found = searcher.search(con, "studio", "premium", n=6)
    assert found["item_id"].tolist()[:2] == ["G3", "M1"] and not found.attrs["personalized"]
    assert (found["text_score"].iloc[:2] > 0).all() and (found["text_score"].iloc[2:] == 0).all()


# --- the command line --------------------------------------------------------------------------------------------

def test_search_command_says_what_to_run_first(home, capsys):
    assert main(["search", "guitar"]) == 2
    assert "no warehouse" in capsys.readouterr().err
    _shop(home / "warehouse.duckdb", WordEncoder())
    assert main(["search", "guitar"]) == 2
    assert "no search index is published yet; run `portrait run`" in capsys.readouterr().err


def test_search_command_refuses_a_blank_query(shop, capsys):
    assert main(["search", "  "]) == 2
    assert "search query is empty" in capsys.readouterr().err


# --- the whole path on a small demo shop -------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_searches_find_their_targets_and_the_command_prints_them(home, instance, capsys):
    generate_demo(LandingZone(root=str(home / "landing")), users=60, items=40, days=6, seed=5)
    ingest_dimensions(home, instance)
    days = sorted(p.name[len("date="):] for p in (home / "landing" / "events").iterdir())
    ingest_events(home, instance, days)
    resources = {"warehouse": Warehouse(path=str(home / "warehouse.duckdb")), "device": TorchDevice(device="cpu"),
                 "encoder": TextEncoder(), "model_store": ModelStore(root=str(home / "models"))}
    assert dg.materialize([text_embeddings, item_embeddings, user_profiles, search_index], instance=instance,
                          resources=resources).success

    searcher = Searcher.load(ModelStore(root=str(home / "models")).latest(INDEX_NAME),
                             TextEncoder().load(TorchDevice(device="cpu")))
    searches = query(home, "SELECT text, user_id, attributes->>'target_item' FROM events WHERE event_type = 'search' "
                           "ORDER BY event_id LIMIT 40")
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        ranks = []
        for text, _, target in searches:
            ids = searcher.search(con, text, n=10)["item_id"].tolist()
            ranks.append(ids.index(target) + 1 if target in ids else 0)
        personalized = searcher.search(con, searches[0][0], searches[0][1], n=5)
    mrr = np.mean([1 / r if r else 0 for r in ranks])
    assert len(searches) == 40 and mrr > 0.5  # 40 items: a random order scores about 0.07
    assert personalized.attrs["personalized"] and (personalized["personal_score"] != 0).any()

    text, user, _ = searches[0]
    assert main(["search", text, "--user", user, "-n", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3"]
    assert all(line.split()[1].startswith("D") for line in lines) and "matches" in lines[0]
    assert main(["search", "guitar'; DROP TABLE items; --", "--user", "nobody", "-n", "2"]) == 0
    captured = capsys.readouterr()
    assert "no portrait for user 'nobody': the plain ranking" in captured.err
    assert len(captured.out.strip().splitlines()) == 2
    assert query(home, "SELECT count(*) FROM items") == [(40,)]

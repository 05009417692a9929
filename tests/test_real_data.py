"""The two real data sets in ../shared/data, imported and ingested end to end.

Facts asserted here come from shared/data/README.md, not from our own output.
"""

import json
import shutil

import dagster as dg
import duckdb
import pytest

from assets.embeddings import item_embeddings, text_embeddings
from assets.profile_state import EVENT_TYPES
from assets.profiles import ProfileConfig, update_profiles
from assets.propensity import PropensityConfig, stored_profile_config, train
from orchestration.cli import main
from orchestration.definitions import build_defs
from resources.encoder import TextEncoder
from resources.landing import LandingZone
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse
from tests.conftest import shared_file
from tests.ingest_helpers import check_results, ingest_dimensions, ingest_events, query

pytestmark = pytest.mark.slow

TAOBAO = "taobao-userbehavior-head/UserBehavior.csv.gz"
AMAZON = "amazon-musical-instruments-5core/reviews_Musical_Instruments_5.json.gz"


def test_taobao_head_through_the_command_line(home):
    source = shared_file(TAOBAO)
    assert main(["import", "taobao", str(source)]) == 0
    assert main(["run"]) == 0

    assert query(home, "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM events") == [
        (84_475, 815, 55_368)]
    assert dict(query(home, "SELECT event_type, count(*) FROM events GROUP BY 1")) == {
        "view": 75_872, "add_to_cart": 4_497, "favorite": 2_356, "purchase": 1_750}
    # the truncated last line of the file is the one bad row, kept as it was
    assert query(home, "SELECT reason, record FROM quarantine") == [("wrong_field_count", "100370,1968385,1875258,pv")]
    assert query(home, "SELECT count(*) FROM items") == [(55_368,)]
    assert query(home, "SELECT count(DISTINCT c) FROM items, unnest(categories) AS t(c)") == [(2_914,)]
    assert query(home, "SELECT count(DISTINCT attributes->>'category_id') FROM events") == [(2_914,)]
    outside = "(ts + INTERVAL 8 HOUR)::DATE NOT BETWEEN DATE '2017-11-25' AND DATE '2017-12-03'"
    assert query(home, f"SELECT count(*) FROM events WHERE {outside}") == [(35,)]
    assert query(home, "SELECT sum(rows_read), sum(loaded), sum(duplicates), sum(quarantined) FROM ingest_stats "
                       "WHERE source = 'events'") == [(84_476, 84_475, 0, 1)]
    # a shop without texts: nothing to embed, every item listed as without embedding, nothing invented
    assert query(home, "SELECT count(*) FROM text_embeddings") == [(0,)]
    assert query(home, "SELECT count(*) FROM items_without_embedding") == [(55_368,)]
    assert query(home, "SELECT count(*) FROM text_signals") == [(0,)]

    # portraits: every user once, segmented once; propensity beats the recency-frequency baseline
    assert query(home, "SELECT count(*), count(DISTINCT user_id), count(interest) FROM user_profiles") == [(815, 815, 0)]
    assert query(home, "SELECT count(*), count(DISTINCT user_id) FROM user_segments") == [(815, 815)]
    card = json.loads((home / "models" / "purchase_propensity" / (home / "models" / "purchase_propensity" / "LATEST")
                       .read_text().strip() / "model_card.json").read_text())
    assert card["chosen"] == "model" and card["model_auc"] > card["baseline_auc"], card
    # the top category is the category of most of the user's events when every event weighs the same ...
    mode_sql = """
        WITH c AS (SELECT e.user_id, i.categories[1] AS category, count(*) AS n
                   FROM events e JOIN items i USING (item_id) GROUP BY 1, 2)
        SELECT count(*) FILTER (WHERE p.top_category IN (SELECT category FROM c WHERE c.user_id = p.user_id
                                 AND c.n = (SELECT max(n) FROM c AS d WHERE d.user_id = p.user_id))), count(*)
        FROM user_profiles p"""
    agree, users = query(home, mode_sql)[0]
    assert agree / users > 0.75  # ... and mostly so with purchases weighing more and old events less
    copy = home / "flat.duckdb"
    shutil.copy(home / "warehouse.duckdb", copy)
    with duckdb.connect(str(copy)) as con:
        update_profiles(con, ProfileConfig(event_weights={t: 1.0 for t in EVENT_TYPES}, half_life_days=1e9))
        assert con.execute(mode_sql).fetchall() == [(815, 815)]


def test_amazon_reviews_every_day_in_one_run(home):
    source = shared_file(AMAZON)
    assert main(["import", "amazon-reviews", str(source)]) == 0
    days = LandingZone(root=str(home / "landing")).event_days()
    assert (days[0], days[-1]) == ("2004-09-18", "2014-07-22")
    # an in-memory instance: these are real runs, without writing ~5,000 events to SQLite
    instance = dg.DagsterInstance.ephemeral()
    result = ingest_events(home, instance, days)
    assert result.success and len(instance.get_runs()) == 1
    assert all(check_results(result).values())
    assert ingest_dimensions(home, instance).success

    assert query(home, "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM events") == [
        (10_261, 1_429, 900)]
    assert query(home, "SELECT count(*) FROM items") == [(900,)]
    assert dict(query(home, "SELECT rating::INT, count(*) FROM events GROUP BY 1")) == {
        5: 6_938, 4: 2_084, 3: 772, 2: 250, 1: 217}
    assert query(home, "SELECT count(*) FROM quarantine") == [(0,)]
    # 7 reviews have an empty reviewText; their summary is kept
    assert query(home, "SELECT count(*), count(attributes->>'summary') FROM events WHERE text IS NULL") == [(7, 7)]
    assert query(home, "SELECT min(ts)::DATE::VARCHAR, max(ts)::DATE::VARCHAR FROM events") == [
        ("2004-09-18", "2014-07-22")]
    assert query(home, "SELECT count(*) FROM events WHERE attributes->>'reviewerName' IS NOT NULL") == [(0,)]

    # portraits without a published sentiment model: a review's sentiment comes from its stars
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        report = update_profiles(con, ProfileConfig())
        assert (report.mode, report.users) == ("full", 1_429)
        by_rating = con.sql("""
            SELECT p.sentiment, p.sentiment_label, r.mean_rating, r.low_share
            FROM user_profiles p JOIN (SELECT user_id, avg(rating) AS mean_rating,
                                              avg(CASE WHEN rating <= 2 THEN 1 ELSE 0 END) AS low_share
                                       FROM events GROUP BY 1) r USING (user_id)""").df()
        mostly_low = by_rating[by_rating["low_share"] > 0.5]
        assert len(mostly_low) >= 5 and (mostly_low["sentiment"] <= 0).all()
        assert "positive" not in set(mostly_low["sentiment_label"])
        assert (by_rating.loc[by_rating["mean_rating"] <= 2.5, "sentiment_label"] == "negative").all()
        assert by_rating["sentiment"].corr(by_rating["mean_rating"], method="spearman") > 0.95
        # no purchases in a review data set: reviews are the conversions
        result = train(con, PropensityConfig(horizon_days=90), stored_profile_config(con))
        assert result.conversions == ("review",) and result.test_users > 100
        print(f"amazon propensity (90 days): model AUC {result.model.auc:.3f}, baseline {result.baseline.auc:.3f}")
    # the whole portraits stage as a real run: segments cover every user once, everyone gets a summary
    portraits = build_defs().resolve_job_def("build_portraits").execute_in_process(instance=instance)
    assert portraits.success
    assert query(home, "SELECT count(*), count(DISTINCT user_id) FROM user_segments") == [(1_429, 1_429)]
    assert query(home, "SELECT count(*) FROM user_summaries WHERE length(summary) > 20") == [(1_429,)]
    assert query(home, "SELECT count(*) FROM segments WHERE size < 20 AND segment <> 'other'") == [(0,)]

    # the recommender on real reviews: evaluated, published through its blocking check, recommending to all.
    # Its item features include clusters of the review vectors, so the reviews are embedded first, as
    # `portrait run` does (cut at 32 tokens here, an eighth of the default, to keep the test short).
    embedded = dg.materialize([text_embeddings, item_embeddings], instance=instance, resources={
        "warehouse": Warehouse(path=str(home / "warehouse.duckdb")), "encoder": TextEncoder(max_length=32),
        "device": TorchDevice()})
    assert embedded.success and query(home, "SELECT count(*) FROM item_embeddings") == [(900,)]
    # One training thread and a fixed seed make the evaluation reproducible bit for bit.
    recipe = {"ops": {"recommender_evaluation": {"config": {"threads": 1}}}}
    trained = build_defs().resolve_job_def("train_recommender").execute_in_process(instance=instance,
                                                                                   run_config=recipe)
    assert trained.success
    assert check_results(trained)[("lightfm_model", "recommender_beats_baselines")]
    evaluation = trained.asset_materializations_for_node("recommender_evaluation")[0].metadata
    print(f"amazon recommender: recall@10 {evaluation['production_recall'].value:.4f} "
          f"({evaluation['production_vs_best_recall'].value}x {evaluation['best_baseline_recall'].value}), "
          f"NDCG@10 {evaluation['production_ndcg'].value:.4f} ({evaluation['production_vs_best_ndcg'].value}x)")
    assert build_defs().resolve_job_def("recommend").execute_in_process(instance=instance).success
    assert query(home, "SELECT count(DISTINCT user_id), min(n), count(DISTINCT source) FROM "
                       "(SELECT user_id, source, count(*) AS n FROM recommendations GROUP BY 1, 2)") == [(1_429, 50, 1)]
    assert query(home, "SELECT DISTINCT source FROM recommendations") == [("model",)]
    # an item the user already reviewed is not recommended again
    assert query(home, "SELECT count(*) FROM recommendations r JOIN events e USING (user_id, item_id)") == [(0,)]

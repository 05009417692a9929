"""Segments: features, clustering, the privacy floor and names on a planted population; the asset end to end."""

import dagster as dg
import duckdb
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from assets.segments import (
    CHECK_NAME,
    OTHER,
    OTHER_ID,
    SegmentsConfig,
    apply_privacy_floor,
    build_features,
    describe_segments,
    k_range,
    read_profiles,
    segment_users,
    user_segments,
)
from resources.warehouse import Warehouse
from tests.synthetic_profiles import GROUPS, TINY, population, write_profiles


@pytest.fixture(scope="module")
def planted():
    return population()


@pytest.fixture(scope="module")
def kmeans_result(planted):
    frame, interest, has = planted
    return segment_users(frame, interest, has, SegmentsConfig())


def test_kmeans_recovers_the_planted_groups_and_picks_their_number(planted, kmeans_result):
    frame, _, _ = planted
    assert kmeans_result.clustering.k == len(GROUPS)
    assert set(kmeans_result.clustering.silhouettes) == set(range(3, 11))
    assert kmeans_result.clustering.silhouette == max(kmeans_result.clustering.silhouettes.values())
    assert adjusted_rand_score(frame["planted"], kmeans_result.segment_ids) > 0.8


def test_every_user_is_in_exactly_one_segment_with_a_unique_descriptive_name(planted, kmeans_result):
    frame, _, _ = planted
    assert len(kmeans_result.segment_ids) == len(kmeans_result.user_ids) == len(frame)
    assert kmeans_result.user_ids == frame["user_id"].tolist()
    names = [s.segment for s in kmeans_result.segments]
    assert len(set(names)) == len(names)
    assert sum(s.size for s in kmeans_result.segments) == len(frame)
    names_by_id = {s.segment_id: s for s in kmeans_result.segments}
    for group in GROUPS:
        members = kmeans_result.segment_ids[(frame["planted"] == group.name).to_numpy()]
        segment = names_by_id[np.bincount(members).argmax()]
        assert group.category in segment.segment, segment
        assert group.lifecycle in segment.segment
        assert segment.description.startswith(f"{segment.size:,} users; ")
        assert f"top category {group.category} (" in segment.description
        assert f"mostly {group.lifecycle}" in segment.description
        if group.price_band:
            assert f"{group.price_band} prices" in segment.description
        assert segment.figures["top_category"] == group.category
    unhappy = names_by_id[np.bincount(kmeans_result.segment_ids[(frame["planted"] == "unhappy").to_numpy()]).argmax()]
    assert "negative reviews" in unhappy.description and "chat" in unhappy.description


def test_features_are_standardized_and_the_blocks_weigh_the_same(planted):
    frame, interest, has = planted
    features = build_features(frame, interest, has, components=8)
    assert features.matrix.shape == (len(frame), features.behaviour.shape[1] + 8)
    assert features.interest_users == int(has.sum()) and features.interest_components == 8
    assert np.allclose(features.behaviour.mean(), 0, atol=1e-9)
    behaviour, interest_block = features.matrix[:, :-8], features.matrix[:, -8:]
    assert np.isclose(behaviour.var(axis=0).sum(), 1.0) and np.isclose(interest_block.var(axis=0).sum(), 1.0)
    assert not interest_block[~has].any()  # no vector: the centre of the interest block
    assert {"never_bought", "no_sentiment", "no_price", "no_interest", "lifecycle_active",
            "price_band_premium"} <= set(features.columns)
    assert not np.isnan(features.matrix).any()

    # a shop without interest vectors or sentiment still gets a finite matrix
    bare = frame.assign(sentiment=None, sentiment_label=None, price_index=None, price_band=None)
    without = build_features(bare)
    assert without.interest_components == 0 and not np.isnan(without.matrix).any()


def test_the_privacy_floor_merges_small_clusters_into_other():
    labels = np.array([0] * 30 + [1] * 25 + [2] * 5 + [3] * 3 + [-1] * 2)
    ids = apply_privacy_floor(labels, min_size=20)
    assert ids.tolist() == [1] * 30 + [2] * 25 + [OTHER_ID] * 10
    assert apply_privacy_floor(labels, min_size=100).tolist() == [OTHER_ID] * len(labels)


def test_k_never_exceeds_what_the_floor_lets_an_average_segment_clear():
    assert k_range(300, 3, 10, 20) == (3, 10)
    assert k_range(145, 3, 10, 20) == (3, 7)
    assert k_range(50, 3, 10, 20) == (2, 2)


def test_a_large_other_is_described_like_any_segment(planted):
    frame, interest, has = planted
    features = build_features(frame, interest, has)
    (other,) = describe_segments(frame, features.behaviour, np.zeros(len(frame), dtype=int), min_size=20)
    assert other.segment == OTHER and other.size == 300
    assert other.description.startswith("300 users that no segment fits (noise or clusters under the privacy floor)")
    assert other.figures["top_category"] is not None


def test_a_small_planted_group_ends_in_other_that_says_only_its_size_bucket():
    frame, interest, has = population(GROUPS + (TINY,))
    result = segment_users(frame, interest, has, SegmentsConfig(k_min=5, k_max=5, min_segment_size=20))
    tiny = result.segment_ids[(frame["planted"] == "tiny").to_numpy()]
    assert set(tiny.tolist()) == {OTHER_ID}
    other = [s for s in result.segments if s.segment_id == OTHER_ID]
    assert len(other) == 1 and other[0].segment == OTHER and other[0].size < 20
    assert other[0].description == "fewer than 20 users"
    assert "Yachts" not in other[0].description and other[0].figures["top_category"] is None
    assert all(s.size >= 20 for s in result.segments if s.segment_id != OTHER_ID)


def test_hdbscan_runs_and_obeys_the_floor(planted):
    frame, interest, has = planted
    result = segment_users(frame, interest, has, SegmentsConfig(method="hdbscan", min_segment_size=25))
    assert result.clustering.method == "hdbscan" and result.clustering.k >= 2
    assert len(result.segment_ids) == len(frame)
    assert all(s.size >= 25 for s in result.segments if s.segment_id != OTHER_ID)
    assert adjusted_rand_score(frame["planted"], result.segment_ids) > 0.6
    names = [s.segment for s in result.segments]
    assert len(set(names)) == len(names)


def test_names_stay_unique_when_two_segments_look_alike(planted):
    frame, interest, has = planted
    features = build_features(frame, interest, has)
    loyal = (frame["planted"] == "loyal").to_numpy()
    ids = np.where(loyal, 1, 3)
    ids[np.flatnonzero(loyal)[::2]] = 2  # the loyal group cut in two halves
    segments = describe_segments(frame, features.behaviour, ids, min_size=20)
    names = [s.segment for s in segments]
    assert len(set(names)) == 3 and all("Guitars" in n for n in names[:2])


def test_read_profiles_takes_the_vector_size_from_the_column_type(tmp_path, planted):
    frame, interest, has = planted
    path = tmp_path / "w.duckdb"
    write_profiles(path, frame.iloc[:40], interest[:40, :16], has[:40])
    with duckdb.connect(str(path)) as con:
        profiles, vectors, present = read_profiles(con)
    assert profiles["user_id"].tolist() == frame["user_id"].iloc[:40].tolist()
    assert vectors.shape == (40, 16) and present.tolist() == has[:40].tolist()
    assert np.allclose(vectors[present], interest[:40, :16][has[:40]])


def test_the_asset_writes_both_tables_with_a_map_and_passes_its_check(tmp_path, planted, instance):
    frame, interest, has = planted
    path = tmp_path / "warehouse.duckdb"
    write_profiles(path, frame, interest, has)
    result = dg.materialize([user_segments], instance=instance, resources={"warehouse": Warehouse(path=str(path))})
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == CHECK_NAME and check.passed
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["dagster/row_count"].value == len(frame)
    assert metadata["chosen_k"].value == len(GROUPS) and metadata["segment_count"].value == len(GROUPS)
    assert "data:image/png;base64," in metadata["map"].value
    assert "| k | silhouette | chosen |" in metadata["silhouette_by_k"].value
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT user_id) FROM user_segments").fetchone() == (300, 300)
        rows = con.execute("SELECT segment_id, segment, size, method, silhouette, description FROM segments "
                           "ORDER BY segment_id").fetchall()
        joined = con.execute("SELECT count(*) FROM user_segments u JOIN segments s USING (segment_id, segment)")
        assert joined.fetchone()[0] == 300
    assert [r[0] for r in rows] == [1, 2, 3, 4] and sum(r[2] for r in rows) == 300
    assert all(r[3] == "kmeans" and r[4] > 0.5 for r in rows)

    # a floor above the whole population: one `other` that says only its size bucket; the check still passes
    again = dg.materialize([user_segments], instance=instance, resources={"warehouse": Warehouse(path=str(path))},
                           run_config={"ops": {"user_segments": {"config": {"min_segment_size": 400}}}})
    assert again.get_asset_check_evaluations()[0].passed
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT segment, size, description, top_category FROM segments").fetchall() == [
            (OTHER, 300, "fewer than 400 users", None)]
        assert con.execute("SELECT count(*) FROM user_segments WHERE segment = 'other'").fetchone()[0] == 300

"""Portraits: the fields on hand-made events, the incremental update against a full
recompute on a generated shop, the propensity model, and `portrait profile`."""

import shutil
from datetime import datetime, timedelta

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from assets.profiles import ProfileConfig, update_profiles, user_profiles
from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.landing import LandingZone
from resources.warehouse import Warehouse

AS_OF = datetime(2026, 3, 31, 12, 0, 0)


def _events_warehouse(path, rows: list[tuple]) -> duckdb.DuckDBPyConnection:
    """A warehouse holding `events` (user, type, ts, item, text, rating, price), items and ingest_stats."""
    con = duckdb.connect(str(path))
    con.execute("""CREATE TABLE events (event_id VARCHAR, event_date DATE, user_id VARCHAR, event_type VARCHAR,
                   ts TIMESTAMP, item_id VARCHAR, text VARCHAR, rating DOUBLE, price DOUBLE, quantity INTEGER,
                   session_id VARCHAR, attributes JSON, source_file VARCHAR, line_no BIGINT)""")
    for n, (user, kind, ts, item, text, rating, price) in enumerate(rows):
        con.execute("INSERT INTO events VALUES (?, ?::DATE, ?, ?, ?, ?, ?, ?, ?, 1, NULL, NULL, 'f.jsonl', ?)",
                    [f"e{n}", ts, user, kind, ts, item, text, rating, price, n + 1])
    con.execute("""CREATE TABLE items AS SELECT * FROM (VALUES
        ('G1', 'Guitar one', ['Guitars', 'Electric'], 'Fender', 1000.0),
        ('G2', 'Guitar two', ['Guitars', 'Acoustic'], 'Yamaha', 500.0),
        ('G3', 'Guitar three', ['Guitars', 'Acoustic'], 'Yamaha', 800.0),
        ('S1', 'Strings', ['Strings'], 'Ernie', 10.0),
        ('S2', 'More strings', ['Strings'], 'Ernie', 20.0)) t(item_id, title, categories, brand, price)""")
    con.execute("""CREATE TABLE ingest_stats AS SELECT 'events' AS source, event_date::VARCHAR AS partition_key,
                   'run-1' AS run_id FROM events GROUP BY event_date""")
    return con


def _profile(con, user: str) -> dict:
    return con.sql("SELECT * FROM user_profiles WHERE user_id = ?", params=[user]).df().iloc[0].to_dict()


def test_fields_follow_the_documented_rules(tmp_path):
    day = timedelta(days=1)
    con = _events_warehouse(tmp_path / "w.duckdb", [
        # A: a guitarist who paid premium prices; one purchase 30 days before as_of (one half-life)
        ("A", "purchase", AS_OF - 30 * day, "G1", None, None, 1500.0),
        ("A", "view", AS_OF - 2 * day, "G2", None, None, None),
        ("A", "view", AS_OF, "S1", None, None, None),
        ("A", "review", AS_OF - day, "G1", "awful, it broke", 1.0, None),
        ("A", "rating", AS_OF - day, "G2", None, 2.0, None),
        # B: silent for 40 days, a bargain hunter on strings
        ("B", "purchase", AS_OF - 100 * day, "S1", None, None, 5.0),
        ("B", "purchase", AS_OF - 40 * day, "S2", None, None, 15.0),
        # C: one view, 90 days ago
        ("C", "view", AS_OF - 90 * day, "S2", None, None, None),
    ])
    report = update_profiles(con, ProfileConfig())
    assert (report.mode, report.users, report.as_of) == ("full", 3, AS_OF)

    a = _profile(con, "A")
    # purchase 6 * 1/2 + view 1 * 2^(-2/30) on Guitars; review 5 and rating 5 on guitars too; view 1 on strings
    guitars = 6 * 0.5 + 2 ** (-2 / 30) + 5 * 2 ** (-1 / 30) * 2
    assert a["top_category"] == "Guitars"
    assert a["top_categories"][0]["share"] == pytest.approx(guitars / (guitars + 1), rel=1e-9)
    assert a["lifecycle"] == "active" and a["recency_days"] == pytest.approx(0)
    assert (a["frequency"], a["monetary"], a["events"]) == (1, 1500.0, 5)
    assert a["price_index"] == pytest.approx(1500 / 800)  # Guitars: catalogue prices 500, 800, 1000
    assert a["price_band"] == "premium" and a["price_sensitivity"] == 0
    assert a["sentiment"] == pytest.approx(-1.0) and a["sentiment_label"] == "negative"  # a 1-star review
    assert a["engagement"] == pytest.approx(6 * 0.5 + 2 ** (-2 / 30) + 1 + 2 * 5 * 2 ** (-1 / 30), rel=1e-9)
    assert a["interest"] is None or pd.isna(a["interest"])  # nothing embedded in this warehouse

    b = _profile(con, "B")
    assert b["lifecycle"] == "at_risk" and b["recency_days"] == pytest.approx(40)
    assert b["price_band"] == "budget" and b["price_sensitivity"] == 0.5 and b["monetary"] == 20.0
    assert b["purchase_recency_days"] == pytest.approx(40)
    assert _profile(con, "C")["lifecycle"] == "churned"

    # nothing new: nothing recomputed; a re-ingested day: a full rebuild that says why
    assert update_profiles(con, ProfileConfig()).mode == "unchanged"
    con.execute("UPDATE ingest_stats SET run_id = 'run-2' WHERE partition_key = ?", [str((AS_OF - day).date())])
    rebuilt = update_profiles(con, ProfileConfig())
    assert rebuilt.mode == "full" and "re-ingested" in rebuilt.reason
    assert update_profiles(con, ProfileConfig(half_life_days=7)).mode == "full"


def test_unknown_event_weight_is_a_clear_error(tmp_path):
    con = _events_warehouse(tmp_path / "w.duckdb", [("A", "view", AS_OF, "G1", None, None, None)])
    with pytest.raises(ValueError, match="unknown event types.*'like'"):
        update_profiles(con, ProfileConfig(event_weights={"like": 2.0}))


def _compare(full: pd.DataFrame, incremental: pd.DataFrame) -> None:
    """Every column equal; numbers (and vectors, and shares) to 1e-6."""
    assert list(full["user_id"]) == list(incremental["user_id"])
    for column in full.columns:
        for x, y in zip(full[column], incremental[column]):
            if isinstance(x, (list, np.ndarray)) and len(x) and isinstance(x[0], dict):
                assert [e["name"] for e in x] == [e["name"] for e in y], column
                assert np.allclose([e["share"] for e in x], [e["share"] for e in y], atol=1e-6), column
            elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), column
                assert np.allclose(x, y, atol=1e-6, rtol=0) if x.dtype.kind == "f" else list(x) == list(y), column
            elif isinstance(x, float) and not pd.isna(x):
                assert y == pytest.approx(x, abs=1e-6), column
            else:
                assert str(x) == str(y), column


@pytest.mark.slow
def test_incremental_update_equals_full_recompute(home):
    summary = generate_demo(LandingZone(root=str(home / "landing")), users=80, items=60, days=8, seed=11)
    last = summary.last_day
    before = str((datetime.fromisoformat(str(last)) - timedelta(days=1)).date())
    assert main(["run", "--end", before]) == 0
    warehouse = home / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        state_before = con.sql("SELECT user_id, ref_ts FROM profile_state").df()
    assert main(["run"]) == 0  # the last day lands: only its users are recomputed

    with duckdb.connect(str(warehouse), read_only=True) as con:
        folds = con.execute("SELECT count(*) FROM profile_folds").fetchall()[0][0]
        state_after = con.sql("SELECT user_id, ref_ts FROM profile_state").df()
        new_day_users = {r[0] for r in con.execute("SELECT DISTINCT user_id FROM events WHERE event_date = ?",
                                                   [last]).fetchall()}
        incremental = con.sql("SELECT * FROM user_profiles ORDER BY user_id").df()
        assert con.execute("SELECT count(interest) FROM user_profiles").fetchall()[0][0] > 0
        assert con.execute("SELECT count(sentiment) FROM user_profiles").fetchall()[0][0] > 0
    assert folds == 8
    unchanged = state_before.merge(state_after, on="user_id", suffixes=("_before", "_after"))
    moved = set(unchanged.loc[unchanged["ref_ts_before"] != unchanged["ref_ts_after"], "user_id"])
    assert moved <= new_day_users and len(state_after) > len(new_day_users)

    copy = home / "full.duckdb"
    shutil.copy(warehouse, copy)
    with duckdb.connect(str(copy)) as con:
        assert update_profiles(con, ProfileConfig(full_rebuild=True)).mode == "full"
        full = con.sql("SELECT * FROM user_profiles ORDER BY user_id").df()
    _compare(full, incremental)


def test_asset_materializes_with_metadata(tmp_path):
    path = tmp_path / "w.duckdb"
    _events_warehouse(path, [("A", "view", AS_OF, "G1", None, None, None),
                             ("B", "purchase", AS_OF, "S1", None, None, 12.0)]).close()
    result = dg.materialize([user_profiles], resources={"warehouse": Warehouse(path=str(path))})
    metadata = result.asset_materializations_for_node("user_profiles")[0].metadata
    assert metadata["dagster/row_count"].value == 2 and metadata["mode"].value == "full"
    assert "data:image/png;base64" in metadata["lifecycle_chart"].value


def test_profile_command_prints_and_explains(home, capsys):
    day = timedelta(days=1)
    con = _events_warehouse(home / "warehouse.duckdb", [
        ("A", "purchase", AS_OF - 30 * day, "G1", None, None, 1500.0),
        ("A", "view", AS_OF, "S1", None, None, None),
    ])
    update_profiles(con, ProfileConfig())
    con.close()
    assert main(["profile", "A", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "lifecycle          active" in out and "Guitars (75%)" in out
    # the purchase weighs 6 halved once (30 days, one half-life): 3.00
    assert "category Guitars (75% of the user's category weight)" in out and "purchase    G1 Guitar one (weight 3.00)" in out
    assert main(["profile", "nobody"]) == 2
    assert "no portrait for user 'nobody'" in capsys.readouterr().err

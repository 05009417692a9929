"""A range of days ingested in one run equals the same days ingested one by one, and running
either again changes nothing: the tables' contents compared by hash, times and run ids aside."""

import duckdb
import pytest

from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.landing import LandingZone

#: Columns that say when or by which run a row was written, not what it holds.
BOOKKEEPING = {"raw_events": ["ingested_at"], "quarantine": ["quarantined_at"], "ingest_stats": ["run_id", "updated_at"]}
TABLES = ("raw_events", "events", "quarantine", "ingest_stats", "items", "users")


def content_hashes(warehouse) -> dict[str, tuple[int, str]]:
    """Per table: row count and an order-independent hash of every row's content."""
    found = {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for table in TABLES:
            columns = {c for (c,) in con.execute("SELECT column_name FROM information_schema.columns "
                                                  "WHERE table_name = ?", [table]).fetchall()}
            excluded = [c for c in BOOKKEEPING.get(table, []) if c in columns]
            select = f"SELECT * EXCLUDE ({', '.join(excluded)})" if excluded else "SELECT *"
            found[table] = tuple(con.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::VARCHAR, '\n' ORDER BY t::VARCHAR), '')) "
                f"FROM ({select} FROM {table}) t").fetchall()[0])
    return found


@pytest.mark.slow
def test_a_range_in_one_run_equals_day_by_day_and_reruns_change_nothing(home):
    landing = LandingZone(root=str(home / "landing"))
    generate_demo(landing, users=80, items=40, days=5, seed=11)
    days = landing.event_days()
    warehouse = home / "warehouse.duckdb"

    assert main(["run", "--ingest-only"]) == 0  # every day in one run
    one_run = content_hashes(warehouse)
    assert one_run["events"][0] > 500 and one_run["quarantine"][0] > 0  # the demo carries bad rows

    assert main(["run", "--ingest-only"]) == 0  # the same range again
    assert content_hashes(warehouse) == one_run

    warehouse.unlink()
    for day in days[1:] + days[:1]:  # day by day, the first day last, one run each
        assert main(["run", "--ingest-only", "--start", day, "--end", day]) == 0
    assert content_hashes(warehouse) == one_run

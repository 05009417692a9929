"""The command line, end to end: import the demo shop, run, and find the runs in the instance."""

import dagster as dg
import pytest

from orchestration.cli import main
from orchestration.runs import contiguous_ranges
from tests.ingest_helpers import query


def test_contiguous_ranges_follow_the_partition_order():
    order = ["2024-01-01", "2024-01-02", "2024-01-04", "2023-12-31", "2024-01-03"]
    assert contiguous_ranges(order, order) == [("2024-01-01", "2024-01-03")]
    assert contiguous_ranges(order, ["2024-01-01", "2024-01-02", "2024-01-03"]) == [
        ("2024-01-01", "2024-01-02"), ("2024-01-03", "2024-01-03")]
    assert contiguous_ranges(order, []) == []


def test_import_demo_then_run_records_runs_in_the_home_instance(home, capsys):
    assert main(["import", "demo", "--users", "40", "--items", "30", "--days", "4"]) == 0
    assert main(["run", "--ingest-only"]) == 0
    out = capsys.readouterr().out
    assert "ingest_events [2026-09-01..2026-09-04]: ok" in out and "make ui" in out

    instance_dir = home / "dagster"
    assert (instance_dir / "dagster.yaml").exists()
    with dg.DagsterInstance.from_config(str(instance_dir)) as instance:
        runs = instance.get_runs()
        assert sorted(r.job_name for r in runs) == ["ingest_dimensions", "ingest_events"]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert instance.get_dynamic_partitions("event_days") == ["2026-09-01", "2026-09-02", "2026-09-03", "2026-09-04"]

    (read, loaded, dups, bad), = query(home, "SELECT sum(rows_read), sum(loaded), sum(duplicates), sum(quarantined) "
                                             "FROM ingest_stats WHERE source = 'events'")
    assert read == loaded + dups + bad and loaded > 0
    assert query(home, "SELECT count(*) FROM events") == [(loaded,)]
    assert query(home, "SELECT count(*) FROM users") == [(40,)]

    before = query(home, "SELECT * FROM events ORDER BY event_id")
    assert main(["run", "--start", "2026-09-02", "--end", "2026-09-03", "--ingest-only"]) == 0
    assert query(home, "SELECT * FROM events ORDER BY event_id") == before


@pytest.mark.slow
def test_run_builds_the_language_stage_after_ingestion(home, capsys):
    assert main(["import", "demo", "--users", "30", "--items", "24", "--days", "3"]) == 0
    assert main(["run"]) == 0  # no --train: no model is published yet, so sentiment stays empty
    assert "build_language_model: ok" in capsys.readouterr().out
    (texts,), = query(home, "SELECT count(*) FROM text_embeddings")
    assert texts > 0 and query(home, "SELECT count(*) FROM text_signals") == [(texts,)]
    assert query(home, "SELECT count(sentiment) FROM text_signals") == [(0,)]
    assert query(home, "SELECT count(*) FROM item_embeddings") == [(24,)]


def test_import_of_a_missing_file_says_so(home, capsys):
    assert main(["import", "taobao", str(home / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_with_nothing_landed_explains_what_to_do(home, capsys):
    assert main(["run"]) == 0
    assert "no event days landed yet" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["import", "--help"], ["run", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: portrait" in capsys.readouterr().out

"""The landing sensor: new and rewritten files request runs once; the cursor carries over."""

import json
import os

import dagster as dg

from orchestration.definitions import build_defs
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG
from orchestration.sensors import landing_sensor
from resources.landing import LandingZone


def _land(landing: LandingZone, day: str, name: str = "a.jsonl", users: int = 1) -> None:
    with landing.open_for_write(f"events/date={day}/{name}") as out:
        for n in range(users):
            out.write(json.dumps({"user_id": f"U{n}", "event_type": "view", "ts": f"{day}T10:00:00Z",
                                  "item_id": "I1"}) + "\n")


def _tick(instance: dg.DagsterInstance, landing: LandingZone, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"landing": landing})
    return landing_sensor(context)


def test_new_days_rewritten_files_and_quiet_ticks(tmp_path, instance):
    landing = LandingZone(root=str(tmp_path / "landing"))
    for day in ("2026-05-01", "2026-05-02", "2026-05-04"):
        _land(landing, day)
    with landing.open_for_write("items/items.jsonl") as out:
        out.write('{"item_id": "I1"}\n')

    first = _tick(instance, landing, None)
    jobs = [(r.job_name, r.tags.get(RANGE_START_TAG), r.tags.get(RANGE_END_TAG)) for r in first.run_requests]
    # one range: day 3 never landed, so days 2 and 4 are neighbours among the partitions
    assert jobs == [("ingest_dimensions", None, None), ("ingest_events", "2026-05-01", "2026-05-04")]
    assert first.dynamic_partitions_requests[0].partition_keys == ["2026-05-01", "2026-05-02", "2026-05-04"]
    instance.add_dynamic_partitions("event_days", ["2026-05-01", "2026-05-02", "2026-05-04"])

    quiet = _tick(instance, landing, first.cursor)  # nothing changed: nothing to do
    assert quiet.run_requests == [] and not quiet.dynamic_partitions_requests

    _land(landing, "2026-05-02", users=3)  # a rewritten file: its day again, with a new run key
    path = landing.path / "events" / "date=2026-05-02" / "a.jsonl"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    _land(landing, "2026-05-06")  # and a new day
    again = _tick(instance, landing, first.cursor)
    keys = {(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]): r.run_key for r in again.run_requests}
    assert set(keys) == {("2026-05-02", "2026-05-02"), ("2026-05-06", "2026-05-06")}
    assert keys[("2026-05-02", "2026-05-02")] not in {r.run_key for r in first.run_requests}
    assert again.dynamic_partitions_requests[0].partition_keys == ["2026-05-06"]

    # half-written files (hidden names) and other formats are never looked at
    (landing.path / "events" / "date=2026-05-06" / ".partial.jsonl.tmp").write_text("{")
    assert _tick(instance, landing, again.cursor).run_requests == []


def test_first_tick_skips_days_already_loaded(tmp_path, instance):
    landing = LandingZone(root=str(tmp_path / "landing"))
    _land(landing, "2026-05-01")
    _land(landing, "2026-05-02")
    instance.add_dynamic_partitions("event_days", ["2026-05-01"])
    instance.report_runless_asset_event(dg.AssetMaterialization("events", partition="2026-05-01"))
    instance.report_runless_asset_event(dg.AssetMaterialization("items"))
    result = _tick(instance, landing, None)
    assert [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in result.run_requests] == [
        ("2026-05-02", "2026-05-02")]


def test_downstream_assets_follow_by_automation():
    graph = build_defs().get_repository_def().asset_graph
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == {"text_embeddings", "item_embeddings", "text_signals", "user_profiles",
                         "purchase_propensity", "user_segments", "user_summaries", "recsys_dataset",
                         "recommendations", "search_index", "serving_snapshot"}
    # training is heavy: it runs on schedules (and in `portrait run`), never on every new file
    assert not automated & {"behavior_model", "recommender_evaluation", "lightfm_model"}

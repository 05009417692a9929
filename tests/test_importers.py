"""Importers turn sources into landing files and never drop a source row."""

import gzip
import json

from orchestration.importers.amazon import import_amazon_reviews
from orchestration.importers.taobao import import_taobao
from resources.landing import LandingZone
from tests.ingest_helpers import write


def _review(user: str, item: str, ts: int, rating: float = 5.0, text: str = "great") -> str:
    return json.dumps({"reviewerID": user, "asin": item, "reviewerName": "Jane", "overall": rating,
                       "reviewText": text, "summary": "ok", "unixReviewTime": ts, "reviewTime": "x"})


def test_amazon_reviews_become_review_events_and_malformed_lines_are_carried(tmp_path):
    source = tmp_path / "reviews.json.gz"
    lines = [_review("A1", "B1", 1_400_000_000), "{not json", _review("A2", "B1", 1_400_090_000, 2.0),
             json.dumps({"reviewerID": "A3"}), "  ", b"\xff\xfe".decode("latin-1")]
    source.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    landing = LandingZone(root=str(tmp_path / "landing"))
    summary = import_amazon_reviews(source, landing)
    assert (summary.rows_read, summary.malformed, summary.days, summary.items) == (5, 3, 2, 1)
    first = (tmp_path / "landing/events/date=2014-05-13/reviews.jsonl").read_text().splitlines()
    assert json.loads(first[0]) == {"event_id": "A1:B1", "user_id": "A1", "event_type": "review", "ts": 1_400_000_000,
                                    "item_id": "B1", "rating": 5.0, "text": "great", "summary": "ok"}
    assert first[1] == "{not json"  # carried into the day of the row before it
    second = (tmp_path / "landing/events/date=2014-05-14/reviews.jsonl").read_text().splitlines()
    assert len(second) == 3 and json.loads(second[1]) == {"reviewerID": "A3"}
    assert "Jane" not in "".join(first + second)
    assert (tmp_path / "landing/items/reviews-items.jsonl").read_text() == '{"item_id": "B1"}\n'


def test_taobao_rows_map_behaviours_and_keep_the_truncated_line(tmp_path):
    source = write(tmp_path / "UserBehavior.csv", "1,10,100,pv,1511544070\n1,11,101,buy,1511544071\n2,10,100,pv\n")
    landing = LandingZone(root=str(tmp_path / "landing"))
    summary = import_taobao(source, landing)
    assert (summary.rows_read, summary.malformed, summary.items) == (3, 1, 2)
    day = (tmp_path / "landing/events/date=2017-11-24/UserBehavior.csv").read_text().splitlines()
    assert day == ["user_id,item_id,category_id,event_type,ts", "1,10,100,view,1511544070",
                   "1,11,101,purchase,1511544071", "2,10,100,pv"]
    assert (tmp_path / "landing/items/UserBehavior-items.csv").read_text().splitlines() == [
        "item_id,categories", "10,100", "11,101"]


def test_reimporting_gives_the_same_files(tmp_path):
    source = write(tmp_path / "t.csv", "1,10,100,pv,1511544070\n")
    landing = LandingZone(root=str(tmp_path / "landing"))
    import_taobao(source, landing)
    path = tmp_path / "landing/events/date=2017-11-24/t.csv"
    first = path.read_bytes()
    import_taobao(source, landing)
    assert path.read_bytes() == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.csv"]  # no temporary files left behind

"""Property-based ingestion: any mix of rows is either loaded, a duplicate, or quarantined with
a documented reason, and nothing crashes the day."""

import json
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assets.events import clean_events
from assets.raw_events import load_raw_events
from assets.validation import REASONS
from resources.landing import LandingZone

DAY = "2024-03-01"
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=5)
good_event = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u1", "u2", 3]),
    "event_type": st.sampled_from(["view", "click", "purchase", "search", "review", "teleport"]),
    "ts": st.sampled_from([f"{DAY}T10:00:00Z", 1709287200, "2024-03-02T00:00:00Z", "soon", 10**13]),
}, optional={
    "item_id": st.sampled_from(["i1", "i2", 7, None, ""]),
    "text": st.one_of(st.text(max_size=40), st.just("call 555-123-4567")),
    "rating": st.one_of(st.integers(-1, 7), st.text(max_size=3)),
    "price": st.one_of(st.floats(allow_nan=True), st.integers(-5, 500)),
    "quantity": st.one_of(st.integers(-1, 3), st.floats(0, 3)),
    "event_id": st.sampled_from(["e1", "e2", None]),
    "extra": values,
})
line = st.one_of(
    good_event.map(lambda e: json.dumps(e).encode()),
    st.dictionaries(st.text(max_size=8), values, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.text(max_size=40).map(lambda t: t.replace("\n", " ").replace("\r", " ").encode()),
)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, min_size=1, max_size=25))
def test_every_row_is_accounted_for(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("fuzz")
    day = root / "landing" / "events" / f"date={DAY}"
    day.mkdir(parents=True)
    (day / "fuzz.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    non_blank = sum(1 for raw in lines if raw.decode("utf-8", "replace").strip(" \t\r"))

    con = duckdb.connect(str(Path(root) / "w.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    load_raw_events(con, LandingZone(root=str(root / "landing")), [DAY])
    counts = clean_events(con, [DAY], run_id=None)
    reasons = {r for (r,) in con.execute("SELECT DISTINCT reason FROM quarantine").fetchall()}
    stored = con.execute("SELECT count(*) FROM events").fetchone()[0]
    masked = con.execute("SELECT count(*) FROM events WHERE text LIKE '%555-123-4567%'").fetchone()[0]
    con.close()

    assert counts.rows_read == non_blank
    assert counts.rows_read == counts.loaded + counts.duplicates + counts.quarantined
    assert stored == counts.loaded
    assert reasons <= set(REASONS)
    assert masked == 0

"""The demo shop generator: deterministic, valid per the landing contract, and carrying real signal."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from assets.text_cleaning import EMAIL_PATTERN, PHONE_PATTERN
from orchestration.importers.demo import (
    CATEGORIES,
    REVIEW_CLOSERS,
    REVIEW_OPENERS,
    REVIEW_REMARKS,
    DemoSummary,
    generate_demo,
)
from resources.landing import LandingZone

EVENT_TYPES = {"view", "click", "add_to_cart", "favorite", "purchase", "review", "rating", "search", "chat"}
ISO_UTC = re.compile(r"^(\d{4}-\d{2}-\d{2})T\d{2}:\d{2}:\d{2}Z$")
WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class Shop:
    root: Path
    summary: DemoSummary
    valid: list[dict]  # every valid event, with the day folder it was in as `_folder`
    hostile: list[str]  # the reason of every row that breaks the contract
    items: dict[str, dict]


def hostile_reason(line: str, folder_day: str) -> str | None:
    """Why a landing line breaks the contract, or None when it is a valid event."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return "bad_json"
    if not isinstance(event, dict):
        return "bad_json"
    if not isinstance(event.get("user_id"), str) or not event["user_id"]:
        return "missing_user_id"
    if event.get("event_type") not in EVENT_TYPES:
        return "unknown_event_type"
    match = ISO_UTC.match(str(event.get("ts", "")))
    if not match:
        return "bad_timestamp"
    if match.group(1) != folder_day:
        return "wrong_day"
    if "rating" in event and event["rating"] not in (1, 2, 3, 4, 5):
        return "bad_rating"
    if "price" in event and not (isinstance(event["price"], (int, float)) and event["price"] >= 0):
        return "bad_price"
    return None


def query_category(query: str) -> str:
    """The one category whose product nouns the query names."""
    matches = {c.name for c in CATEGORIES for kind in c.kinds if kind.noun.lower() in query}
    assert len(matches) == 1, f"query {query!r} names {sorted(matches)}"
    return matches.pop()


def bank_words(banks: tuple[dict[str, tuple[str, ...]], ...], mood: str) -> set[str]:
    return {word for bank in banks for phrase in bank[mood] for word in WORD.findall(phrase.lower())}


def read_shop(root: Path, summary: DemoSummary) -> Shop:
    valid, hostile = [], []
    for path in sorted((root / "events").glob("date=*/*.jsonl")):
        folder_day = path.parent.name.removeprefix("date=")
        for line in path.read_text(encoding="utf-8").splitlines():
            reason = hostile_reason(line, folder_day)
            if reason is None:
                valid.append({**json.loads(line), "_folder": folder_day})
            else:
                hostile.append(reason)
    items = {}
    for line in (root / "items" / "demo-items.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        items[item["item_id"]] = item
    return Shop(root, summary, valid, hostile, items)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Shop:
    root = tmp_path_factory.mktemp("demo")
    return read_shop(root, generate_demo(LandingZone(root=str(root))))


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(shop, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert generate_demo(LandingZone(root=str(again))) == shop.summary
    generate_demo(LandingZone(root=str(other)), seed=8)
    assert file_bytes(again) == file_bytes(shop.root)
    first, different = file_bytes(shop.root), file_bytes(other)
    assert first.keys() == different.keys()
    assert all(first[name] != different[name] for name in first)


def test_summary_describes_what_was_written(shop):
    summary = shop.summary
    assert (summary.users, summary.items, summary.days) == (600, 300, 45)
    assert (summary.first_day, summary.last_day) == ("2026-09-01", "2026-10-15")
    folders = sorted(p.name for p in (shop.root / "events").iterdir())
    assert folders == [f"date=2026-09-{d:02d}" for d in range(1, 31)] + [f"date=2026-10-{d:02d}" for d in range(1, 16)]
    assert summary.events == len(shop.valid) + len(shop.hostile)
    assert 40_000 <= summary.events <= 80_000


def test_valid_events_follow_the_contract(shop):
    for event in shop.valid:
        assert isinstance(event["session_id"], str) and event["session_id"]
        assert None not in event.values(), "fields without a value are left out, not null"
        kind = event["event_type"]
        if kind not in ("search", "chat"):
            assert event["item_id"] in shop.items
        if kind in ("search", "chat", "review"):
            assert isinstance(event["text"], str) and event["text"].strip()
        if kind in ("review", "rating"):
            assert event["rating"] in (1, 2, 3, 4, 5)
        if kind == "purchase":
            assert event["price"] == shop.items[event["item_id"]]["price"]
            assert event["quantity"] in (1, 2)
    ids = [event["event_id"] for event in shop.valid]
    assert len(ids) == len(set(ids))


def test_events_sit_in_the_folder_of_their_utc_day_except_hostile_rows(shop):
    assert all(event["ts"][:10] == event["_folder"] for event in shop.valid)
    assert Counter(shop.hostile)["wrong_day"] >= 1


def test_hostile_rows_are_few_counted_and_of_every_kind(shop):
    assert len(shop.hostile) == shop.summary.hostile_rows
    assert set(shop.hostile) == {"bad_json", "unknown_event_type", "bad_rating", "bad_price", "missing_user_id",
                                 "wrong_day"}
    assert shop.summary.hostile_rows <= 0.005 * shop.summary.events


def test_all_nine_event_types_occur(shop):
    counts = Counter(event["event_type"] for event in shop.valid)
    assert set(counts) == EVENT_TYPES
    assert counts["view"] == max(counts.values())


def test_items_and_users_files(shop):
    assert len(shop.items) == 300
    for item in shop.items.values():
        assert item["categories"][0] in {c.name for c in CATEGORIES} and len(item["categories"]) == 2
        assert item["price"] > 0 and round(item["price"], 2) == item["price"]
        assert item["title"].startswith(item["brand"]) and item["description"]
    with (shop.root / "users" / "demo-users.csv").open(encoding="utf-8", newline="") as handle:
        users = list(csv.DictReader(handle))
    assert list(users[0]) == ["user_id", "age", "gender", "region", "signup_date"]
    assert len(users) == 600 and users[0]["user_id"] == "U00001"
    assert all(18 <= int(u["age"]) <= 70 and u["gender"] in ("f", "m", "x") for u in users)


def test_a_search_that_ends_in_a_purchase_bought_from_the_query_category(shop):
    sessions: dict[str, list[dict]] = defaultdict(list)
    for event in shop.valid:
        sessions[event["session_id"]].append(event)
    checked = 0
    for events in sessions.values():
        events.sort(key=lambda e: (e["ts"], e["event_id"]))
        if events[0]["event_type"] == "search" and events[-1]["event_type"] == "purchase":
            bought = shop.items[events[-1]["item_id"]]
            assert bought["categories"][0] == query_category(events[0]["text"])
            checked += 1
    assert checked >= 50
    assert all(query_category(e["text"]) for e in shop.valid if e["event_type"] == "search")


def test_review_words_follow_the_stars(shop):
    banks = (REVIEW_OPENERS, REVIEW_REMARKS, REVIEW_CLOSERS)
    negative, positive = bank_words(banks, "negative"), bank_words(banks, "positive")
    negative, positive = negative - positive, positive - negative

    def mean_hits(stars: tuple[int, ...], words: set[str]) -> float:
        texts = [e["text"].lower() for e in shop.valid if e["event_type"] == "review" and e["rating"] in stars]
        assert texts
        return sum(sum(w in words for w in WORD.findall(t)) for t in texts) / len(texts)

    assert mean_hits((1, 2), negative) > mean_hits((1, 2), positive)
    assert mean_hits((4, 5), positive) > mean_hits((4, 5), negative)


def test_ratings_lean_positive_like_a_real_shop(shop):
    stars = Counter(e["rating"] for e in shop.valid if e["event_type"] in ("review", "rating"))
    total = sum(stars.values())
    assert 0.5 <= stars[5] / total <= 0.7
    assert 0.05 <= (stars[1] + stars[2]) / total <= 0.2


def test_some_chats_leak_an_email_or_a_phone_number(shop):
    chats = [e["text"] for e in shop.valid if e["event_type"] == "chat"]
    with_email = [t for t in chats if re.search(EMAIL_PATTERN, t)]
    with_phone = [t for t in chats if re.search(PHONE_PATTERN, t)]
    assert with_email and with_phone
    assert len(set(with_email) | set(with_phone)) <= 0.1 * len(chats)
    assert any("item_id" in e for e in shop.valid if e["event_type"] == "chat")


def test_too_small_a_catalogue_is_refused(tmp_path):
    with pytest.raises(ValueError, match="items"):
        generate_demo(LandingZone(root=str(tmp_path)), items=5)

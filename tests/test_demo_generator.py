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
    GENERIC_WORDS,
    PRICE_WORDS,
    REVIEW_PHRASES,
    REVIEW_VERDICTS,
    SEARCH_BUY_SHARE,
    DemoSummary,
    generate_demo,
)
from resources.landing import LandingZone

EVENT_TYPES = {"view", "click", "add_to_cart", "favorite", "purchase", "review", "rating", "search", "chat"}
ISO_UTC = re.compile(r"^(\d{4}-\d{2}-\d{2})T\d{2}:\d{2}:\d{2}Z$")
WORD = re.compile(r"[a-z']+")
QUERY_FILLERS = {"for"} | {w for words in PRICE_WORDS.values() for p in words for w in p.split()} | {
    w for p in GENERIC_WORDS for w in p.split()}


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


def query_kinds(query: str) -> set[str]:
    """The sub-categories whose product nouns the query names (none for a brand- or use-only query)."""
    return {kind.subcategory for c in CATEGORIES for kind in c.kinds if kind.noun.lower() in query}


def phrase_words(*kinds: str) -> set[str]:
    return {word for kind in kinds for phrase in REVIEW_PHRASES[kind] for word in WORD.findall(phrase.lower())}


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


def sessions_of(shop: Shop) -> dict[str, list[dict]]:
    sessions: dict[str, list[dict]] = defaultdict(list)
    for event in shop.valid:
        sessions[event["session_id"]].append(event)
    for events in sessions.values():
        events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return sessions


def test_every_search_names_the_catalogue_item_its_query_was_built_from(shop):
    searches = [e for e in shop.valid if e["event_type"] == "search"]
    assert len(searches) >= 1_000
    assert all(e["target_item"] in shop.items for e in searches)
    with_noun = 0
    for event in searches:
        target = shop.items[event["target_item"]]
        named = query_kinds(event["text"])
        if named:  # a query that names a product names the target's kind
            assert target["categories"][1] in named, (event["text"], target["categories"])
            with_noun += 1
        described = set(WORD.findall(f"{target['title']} {target['description']}".lower()))
        assert set(WORD.findall(event["text"])) - QUERY_FILLERS <= described, (event["text"], target["description"])
    assert 0.8 * len(searches) <= with_noun < len(searches)  # a few name only a brand or a use


def test_most_searches_end_in_buying_the_target_in_the_same_session(shop):
    sessions = sessions_of(shop)
    searches = [e for e in shop.valid if e["event_type"] == "search"]
    bought = 0
    for search in searches:
        later = [e for e in sessions[search["session_id"]] if e["ts"] > search["ts"]]
        purchases = [e["item_id"] for e in later if e["event_type"] == "purchase"]
        if search["target_item"] in purchases:
            bought += 1
            assert any(e["event_type"] == "view" and e["item_id"] == search["target_item"] for e in later)
    assert bought / len(searches) > 0.5 and abs(bought / len(searches) - SEARCH_BUY_SHARE) < 0.05


def test_users_search_for_what_they_buy(shop):
    """A shopper's searches mostly aim at the category they buy most from."""
    bought: dict[str, Counter] = defaultdict(Counter)
    searched: dict[str, Counter] = defaultdict(Counter)
    for event in shop.valid:
        if event["event_type"] == "purchase":
            bought[event["user_id"]][shop.items[event["item_id"]]["categories"][0]] += 1
        elif event["event_type"] == "search":
            searched[event["user_id"]][shop.items[event["target_item"]]["categories"][0]] += 1
    top_share = Counter()
    for user, categories in searched.items():
        if bought[user]:
            top = bought[user].most_common(1)[0][0]
            top_share["top"] += categories[top]
            top_share["all"] += sum(categories.values())
    shop_share = max(Counter(i["categories"][0] for i in shop.items.values()).values()) / len(shop.items)
    assert top_share["top"] / top_share["all"] > max(0.6, 2 * shop_share)


def reviews(shop: Shop, stars: tuple[int, ...]) -> list[str]:
    texts = [e["text"].lower() for e in shop.valid if e["event_type"] == "review" and e["rating"] in stars]
    assert texts
    return texts


def test_review_words_follow_the_stars_on_average(shop):
    praise = phrase_words("praise", "mild_praise")
    complaints = phrase_words("complaint", "mild_complaint")
    praise, complaints = praise - complaints, complaints - praise

    def mean_hits(stars: tuple[int, ...], words: set[str]) -> float:
        texts = reviews(shop, stars)
        return sum(sum(w in words for w in WORD.findall(t)) for t in texts) / len(texts)

    assert mean_hits((1, 2), complaints) > mean_hits((1, 2), praise)
    assert mean_hits((4, 5), praise) > mean_hits((4, 5), complaints)


def test_reviews_are_not_phrase_lists_by_star(shop):
    """Negated praise, sarcasm, mixed reviews and noise: the words alone do not give the stars away."""
    positive, neutral, negative = reviews(shop, (4, 5)), reviews(shop, (3,)), reviews(shop, (1, 2))

    def share(texts: list[str], *needles: str) -> float:
        return sum(any(n in t for n in needles) for t in texts) / len(texts)

    assert share(positive, "not bad", "can't fault", "no complaints", "never had a problem", "not disappointed") > 0.1
    assert share(negative, "not worth", "can't recommend", "wouldn't buy", "doesn't", "won't") > 0.15
    assert share(negative, "great", "love", "amazing", "perfect", "fantastic", "looks great", "nice") > 0.25
    assert share(positive, "but", "only nitpick", "one star off", "my only gripe", "could be better") > 0.2
    assert share(neutral, "but ", "however", "on the other hand", "that said") > 0.5
    assert share(positive + neutral + negative, "wanted to love", "wanted to like") > 0.01
    lengths = [len(t.split()) for t in positive + neutral + negative]
    assert min(lengths) <= 3 and max(lengths) >= 30
    all_texts = [e["text"] for e in shop.valid if e["event_type"] == "review"]
    assert 0.08 < sum(t == t.lower() for t in all_texts) / len(all_texts) < 0.3
    verdicts = {v.lower() for stars in REVIEW_VERDICTS.values() for v in stars if "{" not in v}
    assert len({t for t in positive + neutral + negative if t.rstrip(".!") not in verdicts}) > 0.8 * len(all_texts)


def test_reviews_name_the_item(shop):
    named = 0
    texts = [e for e in shop.valid if e["event_type"] == "review"]
    for event in texts:
        item = shop.items[event["item_id"]]
        words = {w for w in WORD.findall((item["title"] + " " + item["description"]).lower()) if len(w) > 4}
        named += bool(words & set(WORD.findall(event["text"].lower())))
    assert named > 0.3 * len(texts)


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

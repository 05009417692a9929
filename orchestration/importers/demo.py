"""A seeded demo shop (a music-instrument store), written as landing files.

The data is made to carry signal that the later stages can find: shoppers with stable
tastes (and, for some, a change of heart halfway through), price bands, Zipf-like item
popularity, searches built from one catalogue item each (named in the search event as
`target_item`; most such sessions end by buying it, so personalized search has a ground
truth), reviews whose gist follows their rating but whose words do not give it away
(negations, mixed feelings, sarcasm, typos), chats that sometimes leak an e-mail address or
phone number, and a few hostile rows so that the quarantine has something to show. The same
arguments always give the same bytes: every random choice comes from one
`random.Random(seed)`, in a fixed order.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from itertools import accumulate, count

from resources.landing import LandingZone

DAY_SECONDS = 86_400
EVENTS_FILE = "demo-events.jsonl"
ITEMS_FILE = "items/demo-items.jsonl"
USERS_FILE = "users/demo-users.csv"
USER_COLUMNS = ("user_id", "age", "gender", "region", "signup_date")
EVENT_FIELDS = ("event_id", "user_id", "event_type", "ts", "item_id", "text", "rating", "price", "quantity",
                "session_id")


@dataclass(frozen=True)
class Kind:
    """A sub-category and the noun shoppers type for it; most search queries contain the noun."""

    subcategory: str
    noun: str


@dataclass(frozen=True)
class Category:
    """One department of the shop, with the vocabulary its titles, queries and reviews draw on."""

    name: str
    weight: float  # share of the catalogue and of shoppers' interest
    median_price: float
    price_spread: float  # sigma of the log price
    kinds: tuple[Kind, ...]
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    features: tuple[str, ...]
    uses: tuple[str, ...]
    consumable: bool = False  # bought two at a time more often


CATEGORIES: tuple[Category, ...] = (
    Category(
        "Guitars", 0.20, 420.0, 0.65,
        (Kind("Electric Guitars", "electric guitar"), Kind("Acoustic Guitars", "acoustic guitar"),
         Kind("Classical Guitars", "classical guitar")),
        ("Harlow", "Redwood", "Vantor", "Kestrel"),
        ("sunburst", "mahogany", "maple-neck", "vintage", "lightweight", "satin-finish"),
        ("humbucker pickups", "locking tremolo", "slim C-shaped neck", "solid spruce top", "built-in tuner",
         "coil-split switching", "rosewood fingerboard"),
        ("blues", "rock", "beginners", "fingerstyle", "live gigs", "jazz"),
    ),
    Category(
        "Bass", 0.09, 460.0, 0.55,
        (Kind("Electric Basses", "bass guitar"), Kind("Five-String Basses", "five-string bass"),
         Kind("Bass Amps", "bass amp")),
        ("Lowline", "Deepwell", "Vantor"),
        ("active", "passive", "fretless", "short-scale", "jazz-style", "precision-style"),
        ("active EQ", "34-inch scale", "split-coil pickups", "12-inch speaker", "compressor circuit",
         "flatwound strings"),
        ("funk", "metal", "studio sessions", "small hands", "church bands"),
    ),
    Category(
        "Keyboards", 0.13, 480.0, 0.70,
        (Kind("Digital Pianos", "digital piano"), Kind("Synthesizers", "synthesizer"),
         Kind("MIDI Controllers", "MIDI keyboard")),
        ("Korvia", "Aurelle", "Tonewerk"),
        ("88-key", "weighted", "portable", "analog", "polyphonic", "compact"),
        ("hammer-action keys", "built-in speakers", "step sequencer", "velocity-sensitive pads", "USB-MIDI port",
         "sustain pedal input"),
        ("home practice", "beginners", "live performance", "music production", "film scoring"),
    ),
    Category(
        "Drums", 0.10, 560.0, 0.65,
        (Kind("Acoustic Drum Kits", "drum kit"), Kind("Electronic Drums", "electronic drum kit"),
         Kind("Cymbals", "cymbal set"), Kind("Snares", "snare drum")),
        ("Thunderhead", "Brassline", "Kestrel"),
        ("birch", "mesh-head", "five-piece", "hand-hammered", "maple-shell", "compact"),
        ("mesh heads", "bluetooth module", "chrome hardware", "bronze alloy", "double-braced stands",
         "practice coach mode"),
        ("apartment practice", "rock", "jazz", "kids", "gigging"),
    ),
    Category(
        "Microphones", 0.12, 150.0, 0.70,
        (Kind("Condenser Microphones", "condenser microphone"), Kind("Dynamic Microphones", "dynamic microphone"),
         Kind("USB Microphones", "USB microphone")),
        ("Sonora", "Vocalis", "Clearpath"),
        ("large-diaphragm", "cardioid", "studio", "handheld", "broadcast"),
        ("shock mount", "built-in pop filter", "headphone output", "low-cut switch", "metal grille",
         "gain knob"),
        ("podcast", "streaming", "vocals", "voiceover", "live vocals", "home studio"),
    ),
    Category(
        "Audio Interfaces", 0.10, 210.0, 0.60,
        (Kind("USB Audio Interfaces", "USB audio interface"),
         Kind("Thunderbolt Interfaces", "thunderbolt audio interface"), Kind("Mixers", "audio mixer")),
        ("Signalis", "Clearpath", "Ampere"),
        ("two-channel", "low-latency", "bus-powered", "eight-channel", "desktop"),
        ("combo inputs", "phantom power", "24-bit converters", "loopback routing", "headphone amp",
         "direct monitoring"),
        ("podcast", "home recording", "streaming", "band rehearsal", "bedroom producers"),
    ),
    Category(
        "Strings & Picks", 0.15, 11.0, 0.50,
        (Kind("Guitar Strings", "guitar strings"), Kind("Bass Strings", "bass strings"),
         Kind("Picks", "guitar picks")),
        ("Stringwise", "Plectra", "Redwood"),
        ("nickel-wound", "coated", "light-gauge", "phosphor-bronze", "medium-gauge", "celluloid"),
        ("anti-corrosion coating", "hex core", "grippy texture", "sealed packaging", "reinforced ball ends"),
        ("long sessions", "beginners", "heavy strumming", "studio work"),
        consumable=True,
    ),
    Category(
        "Cables & Stands", 0.11, 24.0, 0.60,
        (Kind("Instrument Cables", "instrument cable"), Kind("XLR Cables", "XLR cable"),
         Kind("Mic Stands", "mic stand"), Kind("Keyboard Stands", "keyboard stand")),
        ("Linkwire", "Steadfast", "Ampere"),
        ("braided", "ten-foot", "right-angle", "boom", "X-style", "heavy-duty"),
        ("gold-plated connectors", "braided jacket", "counterweighted boom", "quick-release clamp",
         "noise shielding"),
        ("live stages", "studio", "rehearsal rooms", "pedalboards"),
        consumable=True,
    ),
)
CATEGORY_BY_NAME = {category.name: category for category in CATEGORIES}

# Interest multipliers per age group (under 30, 30-49, 50 and over), so segments have something to find.
AGE_TILT: dict[str, tuple[float, float, float]] = {
    "Drums": (1.4, 1.0, 0.6),
    "Microphones": (1.5, 1.0, 0.7),
    "Audio Interfaces": (1.3, 1.0, 0.7),
    "Keyboards": (0.8, 1.0, 1.6),
}
BANDS = ("budget", "mid", "premium")
BAND_ODDS_BY_AGE = ((0.55, 0.35, 0.10), (0.35, 0.45, 0.20), (0.25, 0.45, 0.30))
# How much a shopper of a band (row) is drawn to an item of a price tier (column).
BAND_AFFINITY = {
    "budget": {"budget": 1.0, "mid": 0.35, "premium": 0.08},
    "mid": {"budget": 0.5, "mid": 1.0, "premium": 0.4},
    "premium": {"budget": 0.15, "mid": 0.5, "premium": 1.0},
}
TIER_SUFFIXES = {"budget": ("Go", "Lite", "Start"), "mid": ("Classic", "SE", "Studio"),
                 "premium": ("Pro", "Custom", "Signature")}
PRICE_WORDS = {"budget": ("cheap", "budget", "affordable"), "mid": ("best", "good", "reliable"),
               "premium": ("professional", "high end", "premium")}
# Search queries: each is built from one catalogue item (the item the searcher is after). The fields a
# template names are also what a result must share with that item: its kind (the noun), brand or use.
# Most queries name the product noun; a few name only a brand or a use and are ambiguous across categories.
QUERY_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{noun}", 3.0), ("{price_word} {noun}", 2.0), ("{noun} for {use}", 3.0), ("{brand} {noun}", 2.0),
    ("{adjective} {noun}", 2.0), ("{price_word} {noun} for {use}", 1.0), ("{brand} {adjective} {noun}", 1.0),
    ("{brand}", 0.6), ("{generic} for {use}", 0.6), ("{price_word} {generic} for {use}", 0.4),
)
GENERIC_WORDS = ("gear", "setup", "equipment", "starter kit")
CLOSING_SENTENCES = ("Backed by a {years}-year {brand} warranty.", "Free returns within 30 days.",
                     "Ships within two working days.")

REGIONS = ("Northeast", "Southeast", "Midwest", "Southwest", "West Coast")
REGION_ODDS = (0.24, 0.22, 0.20, 0.14, 0.20)
GENDERS = ("f", "m", "x")
GENDER_ODDS = (0.38, 0.57, 0.05)
# Share of sessions starting in each UTC hour: quiet nights, busy evenings.
HOUR_ODDS = (2, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 6, 6, 6, 6, 6, 7, 8, 9, 10, 10, 9, 6, 4)
WEEKEND_BOOST = 1.3

DRIFT_SHARE = 0.30
LATE_SIGNUP_SHARE = 0.08
GRUMPY_SHARE = 0.20
LEMON_SHARE = 0.08
ZIPF_EXPONENT = 1.1
SEARCH_SHARE = 0.30
SEARCH_FOCUS_POWER = 2.0  # searches lean harder on a shopper's main interest than browsing does
SEARCH_BUY_SHARE = 0.60  # search sessions that go on to buy the item the query was built from
EXPLORE_SHARE = 0.10
FAVORITE_SHARE = 0.06
CART_SHARE = 0.12
CHECKOUT_SHARE = 0.55  # browsing sessions with a full cart that end in a purchase
CHAT_SHARE = 0.06
PII_SHARE = 0.04
REVIEW_SHARE = 0.55
RATING_ONLY_SHARE = 0.10
HOSTILE_SHARE = 0.002
SESSION_GAP_SECONDS = 1_800

# Star odds (1..5) by who rates what; mixed so that overall about 58/20/10/6/6 % are 5/4/3/2/1 stars.
RATING_ODDS = {
    "content": (0.02, 0.03, 0.09, 0.22, 0.64),
    "grumpy": (0.12, 0.12, 0.14, 0.20, 0.42),
    "lemon": (0.30, 0.25, 0.15, 0.15, 0.15),
}

# Review sentences. Slots: {part} (a part of this kind of product), {feature} (one of the item's features),
# {noun}, {brand}, {use} (one of the item's uses). Praise and complaints come in a strong and a mild form,
# and each also in a negated form ("not bad at all" praises, "not worth the money" complains), so the
# words alone do not give the stars away: the rating follows what the review says on balance.
REVIEW_PARTS: dict[str, tuple[str, ...]] = {
    "Guitars": ("neck", "frets", "tuners", "finish", "bridge", "nut", "input jack"),
    "Bass": ("neck", "tone knobs", "frets", "output jack", "bridge", "tuners"),
    "Keyboards": ("keys", "speakers", "knobs", "display", "pitch wheel", "power supply"),
    "Drums": ("pedal", "hardware", "heads", "shells", "hi-hat stand", "throne"),
    "Microphones": ("capsule", "cable", "mount", "grille", "stand adapter", "case"),
    "Audio Interfaces": ("preamps", "knobs", "headphone output", "USB port", "power switch", "meters"),
    "Strings & Picks": ("coating", "packaging", "ball ends", "winding", "edges"),
    "Cables & Stands": ("connectors", "clamp", "jacket", "legs", "boom arm", "locking screws"),
}
REVIEW_PHRASES: dict[str, tuple[str, ...]] = {
    "praise": (
        "The {part} is flawless.", "The {feature} is fantastic.", "Sounds amazing for {use}.",
        "Best {noun} I have ever owned.", "Build quality is superb, the {part} feels rock solid.",
        "The {feature} alone is worth the price.", "Blew me away the first time I plugged it in.",
        "Incredible value for money.", "Everything about it feels premium.", "The {part} is just perfect.",
        "My teacher was impressed.", "Worth every penny.",
    ),
    "mild_praise": (
        "The {part} is nice.", "Sounds good for {use}.", "Setup was easy enough.", "Feels solid.",
        "Decent value for the money.", "The {feature} is handy.", "Does what it says on the box.",
        "The {part} feels fine.", "Looks nice in person.", "The {feature} works well.",
        "Good enough for {use}.", "Looks and feels well made.",
    ),
    "negated_praise": (
        "Not bad at all.", "Can't fault the {part}.", "No complaints about the {feature}.",
        "Haven't had a single issue with it.", "Honestly can't find anything wrong with it.",
        "Didn't expect much for the price, but it's really not bad.", "The {part} hasn't let me down once.",
        "Never had a problem with the {feature}.", "I was not disappointed.", "No buzz, no noise, no regrets.",
    ),
    "mild_complaint": (
        "The {part} feels a bit cheap.", "The {feature} is a little fiddly.", "It took a while to set up.",
        "The manual is pretty useless.", "Shipping took longer than promised.",
        "It's a bit heavier than I expected.", "The {part} needed adjusting out of the box.",
        "The {feature} could be better.", "It's slightly overpriced for what you get.",
        "The {part} rattles a little.", "The {part} is a bit stiff.",
    ),
    "complaint": (
        "The {part} broke within a week.", "The {feature} stopped working after two days.",
        "It arrived damaged and scratched.", "Constant buzzing from the {part}.", "Feels cheap and flimsy.",
        "The {feature} is useless.", "Customer service never answered my emails.",
        "The {part} came loose after a few sessions.", "Unusable for {use}.", "The {part} was cracked.",
    ),
    "negated_complaint": (
        "Not worth the money.", "The {part} doesn't hold up.", "Can't recommend it.", "Wouldn't buy it again.",
        "Not what I expected at all.", "The {feature} doesn't really work.", "Nothing like the pictures.",
        "Not good enough for {use}.", "The {part} won't stay in place.",
    ),
    "torn": (
        "Not the best {noun} I've had, not the worst either.", "Some good, some bad.", "Honestly, I'm torn.",
        "Not great, not terrible.", "It has its ups and downs.",
    ),
    "sarcasm": (
        "Great, the {part} fell off on day two.", "Love how the {feature} quits whenever I actually need it.",
        "Wow, what a bargain: it lasted a whole week.", "Five stars for the packaging, zero for the {noun}.",
        "Amazing how fast the {part} broke. Truly impressive.", "Just perfect if you enjoy buzzing and crackling.",
        "Fantastic {noun}, if you like sending things back.",
    ),
    "context": (
        "Bought the {brand} {noun} for {use}.", "Got this as a gift for my son.", "I've been playing for years.",
        "Using it mostly for {use}.", "Replaced my old {noun} with this one.", "Had it for about a month now.",
        "Ordered it on a Tuesday, it arrived on Friday.", "Picked the {brand} over two other brands.",
        "First {noun} I've bought online.", "I play in a covers band on weekends.",
    ),
}
# How each star rating usually sums up, and the turns mixed reviews take.
REVIEW_VERDICTS: dict[int, tuple[str, ...]] = {
    5: ("Would buy again.", "Highly recommend.", "Five stars.", "Love it!", "Perfect for {use}.",
        "Couldn't be happier.", "Best purchase this year."),
    4: ("Would recommend.", "Happy with it overall.", "Very good, not perfect.", "Pretty happy so far.",
        "Solid choice for {use}.", "Good buy.", "Four stars."),
    3: ("It's okay.", "Does the job, nothing more.", "Average.", "Mixed feelings.", "Might keep it, might not.",
        "Fine for the money, I guess.", "Middle of the road.", "Not great, not terrible."),
    2: ("Disappointed.", "Expected more for the price.", "Probably sending it back.", "Not great.", "Meh.",
        "Two stars."),
    1: ("Returning it.", "Avoid.", "Save your money.", "Complete junk.", "Never again.", "One star."),
}
REVIEW_TURNS: dict[str, tuple[str, ...]] = {
    "wanted_to_love": ("I wanted to love this {noun}, but {clause}", "I really wanted to like it, but {clause}",
                       "Looks great, but {clause}", "On paper it's perfect, but {clause}"),
    "won_over": ("I was skeptical at first, but {clause}", "Wasn't sure about the {brand}, but {clause}"),
    "nitpick": ("Only nitpick: {clause}", "If I had to complain: {clause}", "Minor thing: {clause}"),
    "star_off": ("One star off because {clause}", "Would be five stars, but {clause}", "My only gripe: {clause}"),
    "contrast": ("But {clause}", "On the other hand, {clause}", "That said, {clause}", "However, {clause}"),
}
COMPLAINT_KINDS = ("mild_complaint", "complaint", "negated_complaint", "sarcasm")
PLURAL_VERBS = {"is": "are", "was": "were", "feels": "feel", "works": "work", "rattles": "rattle", "quits": "quit",
                "hasn't": "haven't", "doesn't": "don't"}
REVIEW_LOWERCASE_SHARE = 0.15  # typed without capitals
REVIEW_TYPO_SHARE = 0.12  # a letter swapped or dropped somewhere

CHAT_TOPICS: dict[str, tuple[str, ...]] = {
    "support": ("Hi, the {feature} on my {brand} {noun} stopped working. Can you help?",
                "How do I set up the {feature} on the {title}?"),
    "return": ("I'd like to return the {title}. How does that work?",
               "The {brand} {noun} I ordered arrived damaged, can I send it back?"),
    "shipping": ("When will my order with the {title} ship?", "Do you ship to the {region}? How long does it take?"),
    "compare": ("Which is better for {use}: the {title} or the {other}?",
                "What's the difference between the {title} and the {other}?"),
    "purchase": ("Is the {title} in stock?", "Does the {title} come with {feature}?",
                 "Can I pay for the {title} in instalments?"),
}
CHAT_TOPIC_ODDS = (0.25, 0.15, 0.2, 0.15, 0.25)
ITEM_SLOTS = ("{title}", "{brand}", "{noun}", "{feature}")
PII_SENTENCES = ("You can reach me at {email}.", "Please call me at {phone}.", "My number is {phone}, thanks.",
                 "Reply to {email} please.")
FIRST_NAMES = ("jane", "omar", "li", "maria", "tom", "aisha", "pedro", "nina")
LAST_NAMES = ("doe", "smith", "chen", "garcia", "novak", "okafor", "berg")
MAIL_DOMAINS = ("example.com", "example.org", "mail.example.net")
PHONE_FORMATS = ("555-{a:03d}-{b:04d}", "(555) {a:03d}-{b:04d}", "+44 20 {a:04d} {b:04d}")

HOSTILE_KINDS = ("bad_json", "unknown_event_type", "bad_rating", "bad_price", "missing_user_id", "wrong_day")


@dataclass(frozen=True)
class DemoSummary:
    """What `generate_demo` wrote."""

    users: int
    items: int
    events: int  # valid + hostile rows written
    hostile_rows: int
    days: int
    first_day: str
    last_day: str


@dataclass(frozen=True)
class Item:
    """A catalogue item, with the hidden traits (tier, popularity, lemon) that shape behaviour towards it."""

    item_id: str
    category: Category
    kind: Kind
    brand: str
    adjective: str
    features: tuple[str, ...]
    price: float
    lemon: bool  # a weak product: rated lower by everyone, complaints name its first feature
    uses: tuple[str, ...] = ()  # what the description says it is made for
    tier: str = ""  # budget, mid or premium: the price tercile within its category
    popularity: float = 0.0
    title: str = ""
    description: str = ""


@dataclass(frozen=True)
class Shopper:
    """A user, with the hidden traits (tastes, band, activity, grumpiness) that drive their events."""

    user_id: str
    age: int
    gender: str
    region: str
    signup: date
    tastes: tuple[tuple[str, float], ...]  # (category, weight), strongest first
    drifted: tuple[tuple[str, float], ...] | None  # tastes from the drift day on, for some shoppers
    band: str
    sessions_per_day: float
    grumpy: bool


@dataclass(frozen=True)
class Period:
    """The simulated days, as UTC epoch seconds."""

    start: date
    days: int

    @property
    def first_ts(self) -> int:
        return int(datetime(self.start.year, self.start.month, self.start.day, tzinfo=timezone.utc).timestamp())

    @property
    def end_ts(self) -> int:
        """First second after the period."""
        return self.first_ts + self.days * DAY_SECONDS

    def day_index(self, ts: int) -> int:
        return (ts - self.first_ts) // DAY_SECONDS

    def day_key(self, index: int) -> str:
        """`YYYY-MM-DD` of the period's day number `index` (0 is the first day)."""
        return date.fromordinal(self.start.toordinal() + index).isoformat()


class Catalog:
    """Items by category, with precomputed cumulative weights per shopper band for fast draws."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.by_category: dict[str, list[Item]] = {c.name: [] for c in CATEGORIES}
        for item in items:
            self.by_category[item.category.name].append(item)
        self._cumulative: dict[tuple[str, str], list[float]] = {}
        for name, members in self.by_category.items():
            for band in BANDS:
                weights = [item.popularity * BAND_AFFINITY[band][item.tier] for item in members]
                self._cumulative[(name, band)] = list(accumulate(weights))

    def pick(self, rng: random.Random, category: str, band: str) -> Item:
        """Popular items of the shopper's price band come up most often."""
        return rng.choices(self.by_category[category], cum_weights=self._cumulative[(category, band)])[0]


def generate_demo(landing: LandingZone, *, users: int = 600, items: int = 300, days: int = 45,
                  start: date = date(2026, 9, 1), seed: int = 7) -> DemoSummary:
    """Write the demo shop's items, users and events into `landing`; the same arguments give the same bytes."""
    if items < 3 * len(CATEGORIES) or users < 1 or days < 2:
        raise ValueError(f"need at least {3 * len(CATEGORIES)} items (a few per category), one user and two days")
    rng = random.Random(seed)
    period = Period(start, days)
    catalog = Catalog(_build_items(rng, items))
    shoppers = [_build_shopper(rng, n, period) for n in range(1, users + 1)]
    events = _simulate(rng, shoppers, catalog, period)
    lines = _day_lines(events, period)
    hostile = _add_hostile_rows(rng, lines, events, catalog, period)
    _write_items(landing, catalog.items)
    _write_users(landing, shoppers)
    for index, day_lines in enumerate(lines):
        with landing.open_for_write(f"events/date={period.day_key(index)}/{EVENTS_FILE}") as handle:
            handle.write("".join(line + "\n" for line in day_lines))
    return DemoSummary(
        users=len(shoppers), items=len(catalog.items), events=sum(len(d) for d in lines), hostile_rows=hostile,
        days=days, first_day=period.day_key(0), last_day=period.day_key(days - 1),
    )


# --- catalogue -------------------------------------------------------------------------------------------------


def _build_items(rng: random.Random, total: int) -> list[Item]:
    """Categories get items in proportion to their weight; ids are shuffled so they do not give the category away."""
    counts = _apportion(total, [c.weight for c in CATEGORIES])
    assignment = [c for c, n in zip(CATEGORIES, counts) for _ in range(n)]
    rng.shuffle(assignment)
    drafts = [_draft_item(rng, category, n) for n, category in enumerate(assignment, start=1)]
    return _finish_items(rng, drafts)


def _draft_item(rng: random.Random, category: Category, number: int) -> Item:
    """An item before its price tier, title and popularity are known: they depend on its category's other items."""
    kind = rng.choice(category.kinds)
    price = round(category.median_price * math.exp(rng.gauss(0.0, category.price_spread)), 2)
    return Item(
        item_id=f"D{number:04d}", category=category, kind=kind, brand=rng.choice(category.brands),
        adjective=rng.choice(category.adjectives), features=tuple(rng.sample(category.features, rng.randint(2, 3))),
        price=max(price, 1.99), lemon=rng.random() < LEMON_SHARE,
    )


def _finish_items(rng: random.Random, drafts: list[Item]) -> list[Item]:
    """Price terciles within a category set the tier; a random rank within it sets a Zipf-like popularity."""
    tiers: dict[str, str] = {}
    popularity: dict[str, float] = {}
    for category in CATEGORIES:
        members = [item for item in drafts if item.category is category]
        for position, item in enumerate(sorted(members, key=lambda i: (i.price, i.item_id))):
            tiers[item.item_id] = BANDS[3 * position // len(members)]
        ranks = list(range(1, len(members) + 1))
        rng.shuffle(ranks)
        for item, rank in zip(members, ranks):
            popularity[item.item_id] = 1.0 / rank**ZIPF_EXPONENT
    return [_named(rng, replace(item, tier=tiers[item.item_id], popularity=popularity[item.item_id]))
            for item in drafts]


def _named(rng: random.Random, item: Item) -> Item:
    """Title and description: the tier shows in the model suffix (Lite, Studio, Pro...), as in real shops."""
    model = f"{item.brand[:2].upper()}-{rng.randint(1, 9)}{rng.choice('05')}0"
    title = (f"{item.brand} {model} {rng.choice(TIER_SUFFIXES[item.tier])} "
             f"{_title_case(item.adjective)} {_title_case(item.kind.noun)}")
    uses = rng.sample(item.category.uses, 2)
    sentences = [
        f"{item.adjective.capitalize()} {item.kind.noun} from {item.brand} with {_listing(item.features)}.",
        f"Made for {uses[0]} and {uses[1]}.",
    ]
    if rng.random() < 0.5:
        sentences.append(rng.choice(CLOSING_SENTENCES).format(years=rng.randint(1, 5), brand=item.brand))
    return replace(item, title=title, description=" ".join(sentences), uses=tuple(uses))


# --- shoppers ----------------------------------------------------------------------------------------------------


def _build_shopper(rng: random.Random, number: int, period: Period) -> Shopper:
    """A shopper whose tastes, price band and activity stay consistent across the whole period."""
    age = min(70, max(18, round(rng.triangular(18, 70, 31))))
    age_group = 0 if age < 30 else 1 if age < 50 else 2
    tastes = _tastes(rng, age_group)
    drifted = _drift(rng, tastes) if rng.random() < DRIFT_SHARE else None
    if rng.random() < LATE_SIGNUP_SHARE:
        signup_offset = rng.randrange(period.days - 1)
    else:
        signup_offset = -rng.randint(1, 1_000)
    return Shopper(
        user_id=f"U{number:05d}", age=age, gender=rng.choices(GENDERS, GENDER_ODDS)[0],
        region=rng.choices(REGIONS, REGION_ODDS)[0], signup=date.fromordinal(period.start.toordinal() + signup_offset),
        tastes=tastes, drifted=drifted, band=rng.choices(BANDS, BAND_ODDS_BY_AGE[age_group])[0],
        # Heavy-tailed: most shoppers drop by every few days, a few come several times a day.
        sessions_per_day=min(4.0, rng.lognormvariate(math.log(0.4) - 0.5, 1.0)),
        grumpy=rng.random() < GRUMPY_SHARE,
    )


def _tastes(rng: random.Random, age_group: int) -> tuple[tuple[str, float], ...]:
    """One to three preferred categories, drawn by popularity tilted by age, with uneven weights."""
    pool = {c.name: c.weight * AGE_TILT.get(c.name, (1.0, 1.0, 1.0))[age_group] for c in CATEGORIES}
    chosen = []
    for _ in range(rng.choices((1, 2, 3), (0.35, 0.40, 0.25))[0]):
        name = rng.choices(list(pool), list(pool.values()))[0]
        chosen.append(name)
        del pool[name]
    shares = sorted((rng.gammavariate(1.5, 1.0) for _ in chosen), reverse=True)
    total = sum(shares)
    return tuple((name, share / total) for name, share in zip(chosen, shares))


def _drift(rng: random.Random, tastes: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    """The same tastes with one preferred category swapped for one the shopper did not care about."""
    replaced = rng.randrange(len(tastes))
    held = {name for name, _ in tastes}
    candidates = [c for c in CATEGORIES if c.name not in held]
    newcomer = rng.choices(candidates, [c.weight for c in candidates])[0].name
    return tuple((newcomer, weight) if i == replaced else (name, weight) for i, (name, weight) in enumerate(tastes))


# --- events ------------------------------------------------------------------------------------------------------


class SessionLog:
    """Collects one session's events, moving a clock forward by human-scale pauses."""

    def __init__(self, rng: random.Random, shopper: Shopper, session_id: str, start_ts: int) -> None:
        self.rng = rng
        self.shopper = shopper
        self.session_id = session_id
        self.ts = start_ts
        self.events: list[dict] = []

    def add(self, event_type: str, item: Item | None = None, **fields: object) -> None:
        if self.events:
            self.ts += 2 + int(self.rng.lognormvariate(math.log(25), 0.8))
        event: dict = {"user_id": self.shopper.user_id, "event_type": event_type, "ts": self.ts}
        if item is not None:
            event["item_id"] = item.item_id
        event.update(fields)
        event["session_id"] = self.session_id
        self.events.append(event)


def _simulate(rng: random.Random, shoppers: list[Shopper], catalog: Catalog, period: Period) -> list[dict]:
    """Every shopper's sessions and follow-up reviews, in time order."""
    session_ids = count(1)
    events: list[dict] = []
    for shopper in shoppers:
        events.extend(_shopper_events(rng, shopper, catalog, period, session_ids))
    events.sort(key=lambda e: e["ts"])  # stable: ties keep their generated order
    return events


def _shopper_events(rng: random.Random, shopper: Shopper, catalog: Catalog, period: Period,
                    session_ids: count) -> list[dict]:
    """One shopper's sessions; sessions never overlap and nothing falls after the period."""
    events: list[dict] = []
    purchases: list[Item] = []
    free_from = 0
    for start_ts in _session_starts(rng, shopper, period):
        start_ts = max(start_ts, free_from)
        tastes = shopper.tastes
        if shopper.drifted is not None and period.day_index(start_ts) >= period.days // 2:
            tastes = shopper.drifted
        log = SessionLog(rng, shopper, f"S{next(session_ids):06d}", start_ts)
        bought = _play_session(rng, log, catalog, tastes, purchases)
        session = [e for e in log.events if e["ts"] < period.end_ts]  # a prefix: the clock only moves forward
        events.extend(session)
        free_from = log.ts + SESSION_GAP_SECONDS
        if bought is not None and session and session[-1]["event_type"] == "purchase":
            purchases.append(bought)
            events.extend(_follow_up(rng, shopper, bought, session[-1]["ts"], period, session_ids))
    return events


def _session_starts(rng: random.Random, shopper: Shopper, period: Period) -> list[int]:
    """Poisson-many sessions over the shopper's active days, busier at weekends and in the evening."""
    first_day = max(0, (shopper.signup - period.start).days)
    active_days = list(range(first_day, period.days))
    total = _poisson(rng, shopper.sessions_per_day * len(active_days))
    day_odds = [WEEKEND_BOOST if date.fromordinal(period.start.toordinal() + d).weekday() >= 5 else 1.0
                for d in active_days]
    starts = []
    for day in rng.choices(active_days, day_odds, k=total):
        hour = rng.choices(range(24), HOUR_ODDS)[0]
        starts.append(period.first_ts + day * DAY_SECONDS + hour * 3_600 + rng.randrange(3_600))
    return sorted(starts)


def _play_session(rng: random.Random, log: SessionLog, catalog: Catalog, tastes: tuple[tuple[str, float], ...],
                  purchases: list[Item]) -> Item | None:
    """Search or browse, maybe chat, maybe buy. Returns the item bought, if any."""
    if rng.random() < SEARCH_SHARE:
        visited, bought = _search_visits(rng, log, catalog, tastes)
    else:
        visited, bought = _browse_visits(rng, log, catalog, tastes)
    if rng.random() < CHAT_SHARE:
        _chat(rng, log, catalog, visited, purchases)
    if bought is not None:
        quantity = 2 if rng.random() < (0.4 if bought.category.consumable else 0.1) else 1
        log.add("purchase", bought, price=bought.price, quantity=quantity)
    return bought


def _browse_visits(rng: random.Random, log: SessionLog, catalog: Catalog,
                   tastes: tuple[tuple[str, float], ...]) -> tuple[list[Item], Item | None]:
    """Items of the shopper's interests, a few into the cart; sometimes one of those is bought."""
    band = log.shopper.band
    focus = _pick_taste(rng, tastes)
    cart: list[Item] = []
    visited: list[Item] = []
    for _ in range(1 + int(rng.expovariate(1 / 3))):
        item = catalog.pick(rng, _visit_category(rng, focus, tastes), band)
        if rng.random() < 0.15:
            log.add("click", item)
        log.add("view", item)
        visited.append(item)
        if rng.random() < FAVORITE_SHARE:
            log.add("favorite", item)
        if rng.random() < CART_SHARE:
            log.add("add_to_cart", item)
            cart.append(item)
    bought = rng.choice(cart) if cart and rng.random() < CHECKOUT_SHARE else None
    return visited, bought


def _search_visits(rng: random.Random, log: SessionLog, catalog: Catalog,
                   tastes: tuple[tuple[str, float], ...]) -> tuple[list[Item], Item | None]:
    """A query built from one item (named in the event as `target_item`), then results that match it.

    The item is drawn like any other visit (the shopper's interests, popularity, price band), with
    the interests sharpened: people search most for what they care about most. With probability
    `SEARCH_BUY_SHARE` the shopper finds that item among the results, puts it into the cart and buys
    it at the end of the session; otherwise they look around and leave without buying.
    """
    band = log.shopper.band
    target = catalog.pick(rng, _pick_taste(rng, tastes, power=SEARCH_FOCUS_POWER), band)
    query, matches = _search_query(rng, target)
    log.add("search", text=query, target_item=target.item_id)
    results = [item for item in catalog.items if matches(item)]
    weights = [item.popularity * BAND_AFFINITY[band][item.tier] for item in results]
    buys = rng.random() < SEARCH_BUY_SHARE
    views = 1 + int(rng.expovariate(1 / 2.5))
    found_at = rng.randrange(views) if buys else -1
    visited: list[Item] = []
    for step in range(views):
        item = target if step == found_at else rng.choices(results, weights)[0]
        if rng.random() < 0.7:
            log.add("click", item)
        log.add("view", item)
        visited.append(item)
        if rng.random() < FAVORITE_SHARE:
            log.add("favorite", item)
        if step == found_at or (not buys and item is not target and rng.random() < CART_SHARE / 2):
            log.add("add_to_cart", item)
    return visited, target if buys else None


def _visit_category(rng: random.Random, focus: str, tastes: tuple[tuple[str, float], ...]) -> str:
    """Mostly the session's focus, else another preferred category, now and then anything."""
    if rng.random() < 0.6:
        return focus
    if rng.random() < EXPLORE_SHARE:
        return rng.choices(CATEGORIES, [c.weight for c in CATEGORIES])[0].name
    return _pick_taste(rng, tastes)


def _pick_taste(rng: random.Random, tastes: tuple[tuple[str, float], ...], power: float = 1.0) -> str:
    return rng.choices([name for name, _ in tastes], [weight**power for _, weight in tastes])[0]


def _search_query(rng: random.Random, item: Item) -> tuple[str, Callable[[Item], bool]]:
    """Query words from the item's own attributes, and the test a result must pass to match the query.

    A result shares whatever the query names of the item: its kind (the noun), its brand, its use.
    Price words follow the item's price tier; they and adjectives narrow nothing down.
    """
    template = rng.choices([t for t, _ in QUERY_TEMPLATES], [w for _, w in QUERY_TEMPLATES])[0]
    use = rng.choice(item.uses)
    query = template.format(
        noun=item.kind.noun, price_word=rng.choice(PRICE_WORDS[item.tier]), use=use, brand=item.brand,
        adjective=item.adjective, generic=rng.choice(GENERIC_WORDS),
    )
    named_kind, named_brand, named_use = "{noun}" in template, "{brand}" in template, "{use}" in template

    def matches(other: Item) -> bool:
        return ((not named_kind or other.kind is item.kind) and (not named_brand or other.brand == item.brand)
                and (not named_use or use in other.uses))

    return query.lower(), matches


def _chat(rng: random.Random, log: SessionLog, catalog: Catalog, visited: list[Item],
          purchases: list[Item]) -> None:
    """A support, return, shipping, compare or purchase question, now and then with contact details."""
    topic = rng.choices(list(CHAT_TOPICS), CHAT_TOPIC_ODDS)[0]
    about_order = topic in ("support", "return", "shipping") and purchases
    item = rng.choice(purchases) if about_order else rng.choice(visited)
    other = rng.choice([i for i in catalog.by_category[item.category.name] if i is not item])
    template = rng.choice(CHAT_TOPICS[topic])
    text = template.format(
        title=item.title, brand=item.brand, noun=item.kind.noun, feature=rng.choice(item.features),
        use=rng.choice(item.category.uses), other=other.title, region=log.shopper.region,
    )
    if rng.random() < PII_SHARE:
        text += " " + _contact_details(rng)
    if any(slot in template for slot in ITEM_SLOTS):
        log.add("chat", item, text=text)
    else:
        log.add("chat", text=text)


def _contact_details(rng: random.Random) -> str:
    email = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}@{rng.choice(MAIL_DOMAINS)}"
    phone = rng.choice(PHONE_FORMATS).format(a=rng.randint(100, 999), b=rng.randint(1_000, 9_999))
    return rng.choice(PII_SENTENCES).format(email=email, phone=phone)


def _follow_up(rng: random.Random, shopper: Shopper, item: Item, bought_ts: int, period: Period,
               session_ids: count) -> list[dict]:
    """Days after a purchase, sometimes a review with text, sometimes a bare rating."""
    draw = rng.random()
    if draw >= REVIEW_SHARE + RATING_ONLY_SHARE:
        return []
    ts = bought_ts + rng.randint(2, 12) * DAY_SECONDS + rng.randint(-14_400, 14_400)
    if ts >= period.end_ts:
        return []
    rating = _rating(rng, shopper, item)
    event: dict = {"user_id": shopper.user_id, "ts": ts, "item_id": item.item_id}
    if draw < REVIEW_SHARE:
        event.update(event_type="review", text=_review_text(rng, rating, item), rating=rating)
    else:
        event.update(event_type="rating", rating=rating)
    event["session_id"] = f"S{next(session_ids):06d}"
    return [event]


def _rating(rng: random.Random, shopper: Shopper, item: Item) -> int:
    """Lemons disappoint everyone; grumpy shoppers give fewer stars to everything else."""
    table = "lemon" if item.lemon else "grumpy" if shopper.grumpy else "content"
    return rng.choices((1, 2, 3, 4, 5), RATING_ODDS[table])[0]


def _review_text(rng: random.Random, rating: int, item: Item) -> str:
    """A review whose gist follows the stars, said the way shoppers say it.

    Five stars mostly praise (sometimes with a nitpick), four praise more mildly and often name
    what cost the star, three weigh a pro against a con, two complain after a kind word or a
    disappointed "I wanted to love it", one complains outright or sarcastically. Any of them
    can be a few words or several sentences, praise and complaints also come negated, and some
    reviews are typed in lower case or with a typo. Complaints about a lemon name its weak feature.
    """
    write = _ReviewWriter(rng, item, lemon=item.lemon)
    sentences = [write("context")] if rng.random() < 0.35 else []
    if rng.random() < 0.12:
        sentences.append(write.verdict(rating))
    else:
        sentences.extend(_REVIEW_BODIES[rating](rng, write))
        if rng.random() < 0.55:
            sentences.append(write.verdict(rating))
    text = " ".join(sentences)
    if rng.random() < REVIEW_LOWERCASE_SHARE:
        text = text.lower().rstrip(".")
    if rng.random() < REVIEW_TYPO_SHARE:
        text = _typo(rng, text)
    return text


class _ReviewWriter:
    """Fills review sentences with one item's parts, features, noun, brand and uses.

    Parts and features are taken in turn, so one review does not praise and blame the same
    part, and no sentence is used twice. A lemon's complaints all name its weak first feature.
    """

    def __init__(self, rng: random.Random, item: Item, lemon: bool) -> None:
        self.rng = rng
        self.item = item
        parts = REVIEW_PARTS[item.category.name]
        self.parts = rng.sample(parts, len(parts))
        self.weak_feature = item.features[0] if lemon else None
        features = [f for f in item.features if f != self.weak_feature]
        self.features = rng.sample(features, len(features))
        self.taken = {"part": 0, "feature": 0}
        self.used: set[str] = set()

    def __call__(self, kind: str) -> str:
        return self._fill(self._choose(REVIEW_PHRASES[kind]), complaint=kind in COMPLAINT_KINDS)

    def turn(self, turn: str, kind: str) -> str:
        """A sentence of `kind` led in by one of the turns in `REVIEW_TURNS[turn]`."""
        return self._fill(self._choose(REVIEW_TURNS[turn]), clause=_lower_first(self(kind)))

    def verdict(self, rating: int) -> str:
        return self._fill(self._choose(REVIEW_VERDICTS[rating]))

    def pick(self, *kinds: tuple[str, float]) -> str:
        return self(self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0])

    def _choose(self, templates: tuple[str, ...]) -> str:
        for _ in range(4):
            template = self.rng.choice(templates)
            if template not in self.used:
                break
        self.used.add(template)
        return template

    def _next(self, name: str) -> str:
        values = self.parts if name == "part" else self.features
        value = values[self.taken[name] % len(values)]
        self.taken[name] += 1
        return value

    def _fill(self, template: str, complaint: bool = False, **given: str) -> str:
        if "{" not in template:
            return template
        slots = dict(given, noun=self.item.kind.noun, brand=self.item.brand)
        slots["use"] = self.rng.choice(self.item.uses) if "{use}" in template else ""
        slots["part"] = self._next("part") if "{part}" in template else ""
        if "{feature}" in template:
            slots["feature"] = self.weak_feature if complaint and self.weak_feature else self._next("feature")
        text = template.format(**slots)
        for name in ("part", "feature"):  # "the tuners are", not "the tuners is"
            value = slots.get(name, "")
            if value.endswith("s") and not value.endswith("ss"):
                text = re.sub(rf"\b({re.escape(value)}) ({'|'.join(PLURAL_VERBS)})\b",
                              lambda m: f"{m.group(1)} {PLURAL_VERBS[m.group(2)]}", text)
        return text


def _five_stars(rng: random.Random, write: _ReviewWriter) -> list[str]:
    praise = (("praise", 3.0), ("mild_praise", 1.0), ("negated_praise", 1.5))
    body = [write.turn("won_over", "praise") if rng.random() < 0.1 else write.pick(*praise)]
    if rng.random() < 0.5:
        body.append(write.pick(*praise))
    if rng.random() < 0.2:
        body.append(write.turn("nitpick", "mild_complaint"))
    return body


def _four_stars(rng: random.Random, write: _ReviewWriter) -> list[str]:
    praise = (("mild_praise", 3.0), ("praise", 1.0), ("negated_praise", 1.5))
    body = [write.turn("won_over", "mild_praise") if rng.random() < 0.1 else write.pick(*praise)]
    if rng.random() < 0.45:
        body.append(write.pick(*praise))
    draw = rng.random()
    if draw < 0.25:
        body.append(write.turn("star_off", "mild_complaint"))
    elif draw < 0.45:
        body.append(write.turn("contrast", "mild_complaint"))
    elif draw < 0.55:
        body.append(write("mild_complaint"))
    return body


def _three_stars(rng: random.Random, write: _ReviewWriter) -> list[str]:
    draw = rng.random()
    if draw < 0.45:
        return [write("mild_praise"), write.turn("contrast", "mild_complaint")]
    if draw < 0.75:
        return [write("mild_complaint"), write.turn("contrast", "mild_praise")]
    return [write("torn"), write.pick(("mild_praise", 1.0), ("mild_complaint", 1.0))]


def _two_stars(rng: random.Random, write: _ReviewWriter) -> list[str]:
    complaint = (("complaint", 2.0), ("mild_complaint", 1.0), ("negated_complaint", 1.5))
    draw = rng.random()
    if draw < 0.35:
        body = [write.turn("wanted_to_love", rng.choice(("complaint", "mild_complaint", "negated_complaint")))]
    elif draw < 0.6:
        body = [write("mild_praise"), write.turn("contrast", "complaint")]
    elif draw < 0.9:
        body = [write("mild_complaint"), write.pick(*complaint)]
    else:
        body = [write("sarcasm")]
    if rng.random() < 0.3:
        body.append(write("mild_complaint"))
    return body


def _one_star(rng: random.Random, write: _ReviewWriter) -> list[str]:
    complaint = (("complaint", 2.0), ("negated_complaint", 1.0))
    draw = rng.random()
    if draw < 0.45:
        body = [write("complaint")]
    elif draw < 0.7:
        body = [write("sarcasm")]
    elif draw < 0.85:
        body = [write.turn("wanted_to_love", "complaint")]
    else:
        body = [write("negated_complaint")]
    if rng.random() < 0.5:
        body.append(write.pick(*complaint))
    return body


_REVIEW_BODIES: dict[int, Callable[[random.Random, _ReviewWriter], list[str]]] = {
    5: _five_stars, 4: _four_stars, 3: _three_stars, 2: _two_stars, 1: _one_star,
}


def _lower_first(sentence: str) -> str:
    """`The neck...` -> `the neck...` to continue a sentence, leaving `I` and acronyms alone."""
    first = sentence.split(" ", 1)[0]
    if first == "I" or first.startswith("I'") or first.isupper():
        return sentence
    return sentence[:1].lower() + sentence[1:]


def _typo(rng: random.Random, text: str) -> str:
    """Two neighbouring letters swapped, or one dropped, in one longer word."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    at = rng.randrange(1, len(word) - 2)
    words[i] = word[:at] + word[at + 1] + word[at] + word[at + 2:] if rng.random() < 0.6 else word[:at] + word[at + 1:]
    return " ".join(words)


# --- files -------------------------------------------------------------------------------------------------------


def _day_lines(events: list[dict], period: Period) -> list[list[str]]:
    """JSON lines per day folder, numbered in time order."""
    lines: list[list[str]] = [[] for _ in range(period.days)]
    for number, event in enumerate(events, start=1):
        lines[period.day_index(event["ts"])].append(_json_line({**event, "event_id": f"E{number:07d}"}))
    return lines


def _json_line(event: dict) -> str:
    """Contract fields in order, then any others (attributes); ISO-8601 UTC timestamps; no null values."""
    record = {key: event[key] for key in EVENT_FIELDS if event.get(key) is not None}
    record.update((key, value) for key, value in event.items() if key not in record and value is not None)
    record["ts"] = _iso(event["ts"])
    return json.dumps(record, ensure_ascii=False)


def _add_hostile_rows(rng: random.Random, lines: list[list[str]], events: list[dict], catalog: Catalog,
                      period: Period) -> int:
    """Insert a few broken copies of real view events, one kind of damage each, at random places."""
    views = [event for event in events if event["event_type"] == "view"]
    prices = {item.item_id: item.price for item in catalog.items}
    total = max(len(HOSTILE_KINDS), round(HOSTILE_SHARE * len(events)))
    for number in range(total):
        event = rng.choice(views)
        day = period.day_index(event["ts"])
        row = _hostile_row(HOSTILE_KINDS[number % len(HOSTILE_KINDS)], event, prices[event["item_id"]], period)
        lines[day].insert(rng.randint(0, len(lines[day])), row)
    return total


def _hostile_row(kind: str, event: dict, price: float, period: Period) -> str:
    """A row that fails exactly one validation rule, named by `kind`."""
    if kind == "bad_json":
        text = _json_line(event)
        return text[: len(text) // 2]  # cut off mid-write: an object that never closes
    if kind == "unknown_event_type":
        return _json_line({**event, "event_type": "hover"})
    if kind == "bad_rating":
        return _json_line({**event, "event_type": "rating", "rating": 9})
    if kind == "bad_price":
        return _json_line({**event, "event_type": "purchase", "price": -price, "quantity": 1})
    if kind == "missing_user_id":
        return _json_line({k: v for k, v in event.items() if k != "user_id"})
    shift = DAY_SECONDS if period.day_index(event["ts"]) == 0 else -DAY_SECONDS
    return _json_line({**event, "ts": event["ts"] + shift})


def _write_items(landing: LandingZone, items: list[Item]) -> None:
    with landing.open_for_write(ITEMS_FILE) as handle:
        for item in items:
            record = {"item_id": item.item_id, "title": item.title,
                      "categories": [item.category.name, item.kind.subcategory], "brand": item.brand,
                      "price": item.price, "description": item.description}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_users(landing: LandingZone, shoppers: list[Shopper]) -> None:
    with landing.open_for_write(USERS_FILE) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(USER_COLUMNS)
        for s in shoppers:
            writer.writerow((s.user_id, s.age, s.gender, s.region, s.signup.isoformat()))


# --- small helpers -----------------------------------------------------------------------------------------------


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Whole counts proportional to `weights` that add up to `total` (largest remainders get the rest)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _poisson(rng: random.Random, mean: float) -> int:
    """Arrivals of a unit-rate Poisson process within `mean` (means here stay small, so counting is cheap)."""
    arrivals, clock = 0, rng.expovariate(1.0)
    while clock < mean:
        arrivals += 1
        clock += rng.expovariate(1.0)
    return arrivals


def _listing(words: tuple[str, ...]) -> str:
    """`a, b and c`."""
    return ", ".join(words[:-1]) + " and " + words[-1]


def _title_case(words: str) -> str:
    """Capitalize each word but leave acronyms such as USB or MIDI as they are."""
    return " ".join(w if any(ch.isupper() for ch in w) else w[:1].upper() + w[1:] for w in words.split())


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

"""`user_summaries`: a readable paragraph and a one-line message per user.

`summarize` turns one `user_profiles` row (plus the user's purchase propensity and segment,
where those tables exist) into an English paragraph by templates: every clause appears
only when its fields are present, so a Taobao user (no prices, brands or texts) or an
Amazon user (no prices) gets a shorter paragraph, never "None" or "nan". `message`
writes a one-line marketing message from the top category, brand, intent and lifecycle.

With the optional `generator` resource set (a local causal language model), the model
rewrites both from the template paragraph; where it returns nothing, the template text
stays. The functions beside the asset need neither Dagster nor a warehouse.
"""

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa

from assets.automation import AUTOMATION, TORCH_OP_TAGS, WAREHOUSE_POOL
from resources.text_generator import TextGenerator, message_prompt, summary_prompt
from resources.torch_device import TorchDevice
from resources.warehouse import Warehouse

TEMPLATE_SOURCE = "template"
PREVIEW_ROWS = 5
GENERATION_CHUNK = 256  # prompts per progress line when a generator writes the texts
MAX_CATEGORIES = 3
MIN_SECOND_SHARE = 0.1  # categories after the first are named only with at least this share
MAX_KEYWORDS = 3
TREND_THRESHOLD = 0.1  # sentiment_trend beyond +-this reads as improving / getting worse
SENSITIVE, INSENSITIVE = 0.6, 0.2  # price_sensitivity at or above / at or below
LIKELY, POSSIBLE = 0.5, 0.2  # propensity at or above

LIFECYCLE_HEAD = {
    "new": "New customer, first seen {tenure} ago",
    "active": "Active customer for {tenure}",
    "at_risk": "At-risk customer of {tenure}",
    "churned": "Churned customer of {tenure}",
}
LIFECYCLE_ONLY = {"new": "New customer", "active": "Active customer", "at_risk": "At-risk customer",
                  "churned": "Churned customer"}
PRICE_BANDS = {"budget": "Buys at budget prices", "mid": "Buys at mid-range prices", "premium": "Buys at premium prices"}
INTENT_PHRASES = {"browse": "to browse", "compare": "to compare", "purchase": "to buy", "support": "for support",
                  "return": "about returns", "shipping": "about shipping"}
MESSAGE_INTENT_TAIL = {"compare": " — compare them side by side", "purchase": " — ready to order"}
MESSAGE_LIFECYCLE_HEAD = {"new": "Welcome! ", "at_risk": "We miss you! ", "churned": "Welcome back! "}


# --- reading fields -------------------------------------------------------------------

def _value(profile: Mapping[str, Any], key: str) -> Any:
    """The field, or None when it is absent, NULL, NaN or blank."""
    value = profile.get(key)
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        value = value.strip()
        return value if value and value.lower() not in ("nan", "none", "null") else None
    try:
        if value != value:  # numpy / pandas NaN and NA-likes
            return None
    except (TypeError, ValueError):
        pass
    return value


def _number(profile: Mapping[str, Any], key: str) -> float | None:
    value = _value(profile, key)
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return None if number is None or math.isnan(number) or math.isinf(number) else number


def _count(profile: Mapping[str, Any], key: str) -> int | None:
    number = _number(profile, key)
    return None if number is None or number < 0 else int(round(number))


def _shares(profile: Mapping[str, Any], key: str) -> list[tuple[str, float | None]]:
    """(name, share) pairs of a STRUCT(name, share)[] field, skipping unnamed entries."""
    value = profile.get(key)
    if value is None or isinstance(value, (str, bytes)):
        return []
    out: list[tuple[str, float | None]] = []
    for entry in list(value):
        if isinstance(entry, Mapping):
            name, share = entry.get("name"), entry.get("share")
        elif isinstance(entry, Sequence) and len(entry) == 2:
            name, share = entry
        else:
            continue
        name = _value({"v": name}, "v")
        if name is None:
            continue
        out.append((str(name), _number({"v": share}, "v")))
    return out


def _strings(profile: Mapping[str, Any], key: str) -> list[str]:
    value = profile.get(key)
    if value is None or isinstance(value, (str, bytes)):
        return []
    return [str(v) for v in (_value({"v": item}, "v") for item in list(value)) if v is not None]


# --- formatting -----------------------------------------------------------------------

def plural(n: int, word: str, words: str | None = None) -> str:
    """`1 purchase`, `14 purchases`, `1,204 events`."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def humanize_days(days: float) -> str:
    """A duration in days as hours, days, months or years: `5 hours`, `1 day`, `5 months`, `2 years`."""
    if days < 1 / 24:
        return "less than an hour"
    if days < 1:
        return plural(max(1, round(days * 24)), "hour")
    if days < 60:
        return plural(max(1, round(days)), "day")
    if days < 730:
        return plural(round(days / 30.4375), "month")
    return plural(round(days / 365.25), "year")


def money(amount: float) -> str:
    return f"{amount:,.2f}"


def percent(share: float) -> str:
    value = round(share * 100)
    return "<1%" if value == 0 and share > 0 else f"{value}%"


def _label(name: str, kind: str) -> str:
    """Numeric ids (Taobao categories) read as `category 4756105`."""
    return f"{kind} {name}" if name.isdigit() else name


def join_words(words: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


# --- clauses --------------------------------------------------------------------------

def _activity(profile: Mapping[str, Any]) -> str:
    lifecycle = (_value(profile, "lifecycle") or "").lower()
    tenure = _number(profile, "tenure_days")
    recency = _number(profile, "recency_days")
    parts: list[str] = []
    if tenure is not None and tenure >= 0:
        head = LIFECYCLE_HEAD.get(lifecycle, "Customer for {tenure}")
        parts.append(head.format(tenure=humanize_days(tenure)))
    elif lifecycle in LIFECYCLE_ONLY:
        parts.append(LIFECYCLE_ONLY[lifecycle])
    if recency is not None and recency >= 0:
        parts.append(f"last seen {humanize_days(recency)} ago")
    head = ", ".join(parts)

    purchases = ""
    frequency = _count(profile, "frequency")
    if frequency is None:
        frequency = _count(profile, "n_purchase")
    if frequency:
        purchases = plural(frequency, "purchase")
        monetary = _number(profile, "monetary")
        if monetary is not None and monetary > 0:
            purchases += f" worth {money(monetary)}"
        last = _number(profile, "purchase_recency_days")
        if last is not None and last >= 0 and frequency > 1:
            purchases += f", the last {humanize_days(last)} ago"
    elif frequency == 0:
        purchases = "no purchases yet"
        events = _count(profile, "events")
        if events:
            purchases += f" in {plural(events, 'event')}"
    if head and purchases:
        return _sentence(f"{head}; {purchases}")
    return _sentence(head or purchases)


def _demographics(profile: Mapping[str, Any]) -> str:
    parts = []
    age = _value(profile, "age")
    if age is not None:
        parts.append(f"age {age}")
    gender = _value(profile, "gender")
    if gender is not None:
        gender = str(gender)
        parts.append({"f": "female", "m": "male"}.get(gender.lower(), gender.lower() if gender.isalpha() else gender))
    region = _value(profile, "region")
    if region is not None:
        parts.append(f"from {region}")
    return _sentence(", ".join(parts)) if parts else ""


def _interests(profile: Mapping[str, Any]) -> str:
    categories = _shares(profile, "top_categories")
    if not categories and _value(profile, "top_category") is not None:
        categories = [(str(_value(profile, "top_category")), None)]
    named = []
    for index, (name, share) in enumerate(categories[:MAX_CATEGORIES]):
        if index and (share is None or share < MIN_SECOND_SHARE):
            break
        label = _label(name, "category")
        named.append(f"{label} ({percent(share)})" if share is not None else label)
    brand = _value(profile, "top_brand")
    if brand is None:
        brands = _shares(profile, "top_brands")
        brand = brands[0][0] if brands else None
    text = f"mostly interested in {join_words(named)}" if named else ""
    if brand is not None:
        brand_text = f"favourite brand {_label(str(brand), 'brand')}"
        text = f"{text}, {brand_text}" if text else brand_text
    return _sentence(text) if text else ""


def _keywords(profile: Mapping[str, Any]) -> str:
    words = _strings(profile, "top_keywords")[:MAX_KEYWORDS]
    return _sentence(f"often mentions {join_words(words)}") if words else ""


def _price(profile: Mapping[str, Any]) -> str:
    band = (_value(profile, "price_band") or "").lower()
    index = _number(profile, "price_index")
    sensitivity = _number(profile, "price_sensitivity")
    text = PRICE_BANDS.get(band, "")
    if index is not None and index > 0:
        ratio = f"{index:.1f}x the category median"
        text = f"{text} ({ratio})" if text else f"Pays {ratio}"
    if sensitivity is not None:
        if sensitivity >= SENSITIVE:
            text = f"{text} and is price-sensitive" if text else "Price-sensitive"
        elif sensitivity <= INSENSITIVE:
            text = f"{text} and is not price-sensitive" if text else "Not price-sensitive"
    return _sentence(text) if text else ""


def _sentiment(profile: Mapping[str, Any]) -> str:
    label = _value(profile, "sentiment_label")
    score = _number(profile, "sentiment")
    if label is None and score is not None:
        label = "positive" if score >= 0.25 else "negative" if score <= -0.25 else "neutral"
    if label is None:
        return ""
    label = str(label).lower()
    if _count(profile, "n_review"):
        subject = "Reviews are"
    elif _count(profile, "n_chat"):
        subject = "Chat messages are"
    else:
        subject = "Feedback is"
    trend = _number(profile, "sentiment_trend")
    if trend is not None and trend > TREND_THRESHOLD:
        label += " and improving"
    elif trend is not None and trend < -TREND_THRESHOLD:
        label += " and getting worse"
    return _sentence(f"{subject} {label}")


def _intent(profile: Mapping[str, Any]) -> str:
    intent = _value(profile, "top_intent")
    if intent is None:
        intents = _shares(profile, "intents")
        intent = intents[0][0] if intents else None
    if intent is None:
        return ""
    intent = str(intent).lower()
    searches, chats = _count(profile, "n_search"), _count(profile, "n_chat")
    subject = "Searches and chats" if searches and chats else "Chats" if chats else "Searches"
    return _sentence(f"{subject} mostly {INTENT_PHRASES.get(intent, 'about ' + intent)}")


def _propensity(propensity: float | None, horizon_days: Any) -> str:
    p = _number({"v": propensity}, "v")
    if p is None:
        return ""
    p = min(max(p, 0.0), 1.0)
    verb = "Likely to buy" if p >= LIKELY else "May buy" if p >= POSSIBLE else "Unlikely to buy"
    horizon = _count({"v": horizon_days}, "v")
    when = ("in the next day" if horizon == 1 else f"in the next {horizon:,} days") if horizon else "soon"
    return f"{verb} {when} ({percent(p)})."


def summarize(profile: Mapping[str, Any], propensity: float | None = None, segment: str | None = None) -> str:
    """A readable paragraph about one user, by templates; clauses whose fields are missing
    are left out. `profile` may also carry `horizon_days` for the propensity clause."""
    clauses = [_activity(profile), _demographics(profile), _interests(profile), _keywords(profile), _price(profile),
               _sentiment(profile), _intent(profile), _propensity(propensity, profile.get("horizon_days"))]
    segment = _value({"v": segment}, "v")
    if segment is not None:
        clauses.append(_sentence(f"Segment: {segment}"))
    text = " ".join(c for c in clauses if c)
    return text or "No activity recorded yet."


def message(profile: Mapping[str, Any]) -> str:
    """A one-line marketing message: `New in Guitars: picks for you from Fender`."""
    category = _value(profile, "top_category")
    if category is None:
        categories = _shares(profile, "top_categories")
        category = categories[0][0] if categories else None
    brand = _value(profile, "top_brand")
    if brand is None:
        brands = _shares(profile, "top_brands")
        brand = brands[0][0] if brands else None
    picks = f"picks for you from {_label(str(brand), 'brand')}" if brand is not None else "picks for you"
    if category is not None:
        text = f"New in {_label(str(category), 'category')}: {picks}"
    elif brand is not None:
        text = picks[0].upper() + picks[1:]
    else:
        text = "New arrivals, picked for you"
    text += MESSAGE_INTENT_TAIL.get(str(_value(profile, "top_intent") or "").lower(), "")
    head = MESSAGE_LIFECYCLE_HEAD.get(str(_value(profile, "lifecycle") or "").lower(), "")
    return head + text


# --- the asset ------------------------------------------------------------------------

def _relation_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                      "ORDER BY ordinal_position", [name]).fetchall()]


def profiles_sql(con: duckdb.DuckDBPyConnection) -> str:
    """`user_profiles` without its interest vector, with each user's segment and latest, shortest-horizon
    propensity where `user_segments` / `user_propensity` exist (they may not have been materialized)."""
    columns = _relation_columns(con, "user_profiles")
    if not columns:
        raise dg.Failure("user_profiles does not exist; materialize user_profiles first")
    wanted = ", ".join(f'p."{c}"' for c in columns if c != "interest")
    joins, extra = "", ""
    segments = set(_relation_columns(con, "user_segments"))
    if {"user_id", "segment"} <= segments:
        order = " ORDER BY segment_id" if "segment_id" in segments else " ORDER BY segment"
        joins += (f" LEFT JOIN (SELECT user_id, first(segment{order}) AS segment FROM user_segments "
                  "WHERE segment IS NOT NULL GROUP BY user_id) s USING (user_id)")
        extra += ", s.segment AS _segment"
    else:
        extra += ", NULL::VARCHAR AS _segment"
    propensity = set(_relation_columns(con, "user_propensity"))
    if {"user_id", "propensity"} <= propensity:
        horizon = "horizon_days" if "horizon_days" in propensity else "NULL::INTEGER"
        order = ", ".join(([] if "as_of" not in propensity else ["as_of DESC NULLS LAST"]) +
                          ([] if "horizon_days" not in propensity else ["horizon_days"]) + ["propensity DESC"])
        joins += (f" LEFT JOIN (SELECT user_id, propensity, {horizon} AS horizon_days FROM user_propensity "
                  f"WHERE propensity IS NOT NULL QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY {order}) = 1)"
                  " q USING (user_id)")
        extra += ", q.propensity AS _propensity, q.horizon_days AS horizon_days"
    else:
        extra += ", NULL::DOUBLE AS _propensity, NULL::INTEGER AS horizon_days"
    as_of = 'p."as_of"' if "as_of" in columns else "NULL::TIMESTAMP"
    return (f"SELECT {wanted}{extra}, coalesce({as_of}, current_timestamp::TIMESTAMP) AS _as_of "
            f"FROM user_profiles p{joins} WHERE p.user_id IS NOT NULL ORDER BY p.user_id")


def template_texts(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Template summary and message for each row of `profiles_sql`."""
    return ([summarize(r, r.get("_propensity"), r.get("_segment")) for r in rows], [message(r) for r in rows])


def merge_generated(template: list[str], generated: list[str]) -> tuple[list[str], list[bool]]:
    """Generated texts where the model wrote something, the template text elsewhere."""
    merged = [g if g and g.strip() else t for t, g in zip(template, generated, strict=True)]
    return merged, [bool(g and g.strip()) for g in generated]


def write_summaries(con: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
    con.execute("""
        CREATE OR REPLACE TABLE user_summaries (
            user_id VARCHAR NOT NULL,
            summary VARCHAR NOT NULL,
            message VARCHAR NOT NULL,
            source VARCHAR NOT NULL,    -- 'template', or the generator's model id where it wrote the text
            as_of TIMESTAMP NOT NULL
        )""")
    con.register("_summaries", table)
    try:
        con.execute("INSERT INTO user_summaries SELECT user_id, summary, message, source, as_of FROM _summaries "
                    "ORDER BY user_id")
    finally:
        con.unregister("_summaries")


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="portraits",
    kinds={"duckdb", "python"},
    owners=["team:portrait"],
    # segments and propensity are optional inputs: listed so a run of the portraits group writes summaries
    # after them; materializing `user_summaries` alone still works without them
    deps=["user_profiles", "user_segments", "purchase_propensity"],
    op_tags=TORCH_OP_TAGS,
)
def user_summaries(context: dg.AssetExecutionContext, warehouse: Warehouse, generator: TextGenerator,
                   device: TorchDevice) -> dg.MaterializeResult:
    """A readable paragraph and a one-line marketing message per user, from `user_profiles`
    (with the segment and purchase propensity where those tables exist). Written by templates;
    with the `generator` resource set, a local causal language model rewrites both from the
    template facts and `source` names the model (the template text stays where it returns nothing)."""
    started = time.perf_counter()
    with warehouse.connect(read_only=True) as con:
        profiles = con.sql(profiles_sql(con)).to_arrow_table()
    rows = profiles.to_pylist()
    summaries, messages = template_texts(rows)
    template_seconds = time.perf_counter() - started
    sources = [TEMPLATE_SOURCE] * len(rows)
    metadata: dict[str, Any] = {}
    if generator.enabled and rows:
        loaded = generator.load(device)
        context.log.info(f"generating texts for {len(rows):,} users with {loaded.model_id} on "
                         f"{device.describe()['device']}")
        generate_started = time.perf_counter()
        written_summaries: list[str] = []
        written_messages: list[str] = []
        for start in range(0, len(rows), GENERATION_CHUNK):
            facts = summaries[start:start + GENERATION_CHUNK]
            examples = messages[start:start + GENERATION_CHUNK]
            written_summaries += loaded.generate([summary_prompt(f) for f in facts])
            written_messages += loaded.generate([message_prompt(f, e) for f, e in zip(facts, examples)], one_line=True)
            context.log.info(f"generated {min(start + GENERATION_CHUNK, len(rows)):,} / {len(rows):,}")
        summaries, summary_written = merge_generated(summaries, written_summaries)
        messages, message_written = merge_generated(messages, written_messages)
        sources = [loaded.model_id if s or m else TEMPLATE_SOURCE for s, m in zip(summary_written, message_written)]
        generate_seconds = time.perf_counter() - generate_started
        metadata.update({
            "generated_summaries": sum(summary_written),
            "generated_messages": sum(message_written),
            "template_fallbacks": len(rows) - sum(summary_written),
            "generate_seconds": round(generate_seconds, 2),
            **device.describe(),
        })
    table = pa.table({
        "user_id": pa.array([str(r["user_id"]) for r in rows], pa.string()),
        "summary": pa.array(summaries, pa.string()),
        "message": pa.array(messages, pa.string()),
        "source": pa.array(sources, pa.string()),
        "as_of": profiles.column("_as_of"),
    })
    with warehouse.transaction() as con:
        write_summaries(con, table)
    source = loaded.model_id if generator.enabled and rows else TEMPLATE_SOURCE
    preview = "\n".join(f"- **{r['user_id']}** ({sources[i]}): {summaries[i]}  \n  _{messages[i]}_"
                        for i, r in enumerate(rows[:PREVIEW_ROWS])) or "_(no users)_"
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(rows),
        "source": source,
        "template_seconds": round(template_seconds, 2),
        "seconds": round(seconds, 2),
        "users_per_second": round(len(rows) / seconds, 1) if rows and seconds > 0 else 0.0,
        **metadata,
        "preview": dg.MetadataValue.md(preview),
    })

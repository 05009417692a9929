"""`user_profiles`: one portrait per user, updated incrementally as event days land.

The asset keeps decayed sufficient statistics (`profile_state`, `profile_terms`, see
assets/profile_state.py) and publishes `user_profiles`, a view that turns them into
readable fields at the portrait's `as_of` time: recency and lifecycle age with the clock
even for users without new events, category shares, price index against the category
median, sentiment level and trend, intents, demographics and the interest vector.

When only new event days arrived, only their users are recomputed. A day that was
re-ingested or removed, a changed configuration, encoder or sentiment model, or a changed
catalogue rebuilds everything from the events (the reason is in the run's metadata).
"""

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import duckdb
from pydantic import Field

from assets.automation import AUTOMATION, WAREHOUSE_POOL
from assets.metadata import bar_chart_markdown, markdown_table, query_rows
from assets.profile_state import (
    DAY_SECONDS,
    DEFAULT_EVENT_WEIGHTS,
    EVENT_TYPES,
    DecaySettings,
    embedding_dimension,
    ensure_state,
    fold,
)
from resources.warehouse import Warehouse, table_exists

PREFIX = "profile"
#: sentiment below -0.2 is negative, above 0.2 positive (scores run from -1 to 1)
SENTIMENT_NEUTRAL_BAND = 0.2
#: price index bands: under 0.8x the category median is budget, over 1.25x premium
BUDGET_BELOW, PREMIUM_ABOVE = 0.8, 1.25
#: a purchase at or under this share of the category median counts as a bargain
BARGAIN_AT = 0.9
#: term kind -> (column, how many are kept)
TOP_TERMS = {"category": ("top_categories", 3), "brand": ("top_brands", 3), "intent": ("intents", 3)}
TOP_KEYWORDS = 5


class ProfileConfig(dg.Config):
    """How portraits weigh and age events (docs/profiles.md). Changing any value rebuilds them."""

    half_life_days: float = Field(default=30.0, description="an event's weight halves every this many days")
    trend_half_life_days: float = Field(default=30.0, description="half-life of the recent sentiment that the trend "
                                                                  "compares with the overall level")
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
                                            description="weight per event type; reviews and ratings are signed "
                                                        "by their sentiment")
    new_within_days: float = Field(default=14.0, description="first seen at most this long ago: new")
    at_risk_after_days: float = Field(default=21.0, description="silent longer than this: at_risk")
    churned_after_days: float = Field(default=60.0, description="silent longer than this: churned")
    full_rebuild: bool = Field(default=False, description="recompute every user from all events")

    def decay(self) -> DecaySettings:
        return DecaySettings({**DEFAULT_EVENT_WEIGHTS, **self.event_weights}, self.half_life_days,
                             self.trend_half_life_days)


@dataclass(frozen=True)
class UpdateReport:
    mode: str               # 'incremental', 'full' or 'unchanged'
    reason: str
    days_folded: list[str]
    events_folded: int
    users_updated: int
    users: int
    as_of: datetime | None
    seconds: float


def fingerprint(con: duckdb.DuckDBPyConnection, config: ProfileConfig, dimension: int) -> str:
    """Everything folded contributions depend on besides the events themselves."""
    parts: dict = {"config": config.model_dump(exclude={"full_rebuild"}), "dimension": dimension}
    if table_exists(con, "item_embeddings"):
        parts["encoder"] = con.execute("SELECT any_value(model_id) FROM item_embeddings").fetchall()[0][0]
    if table_exists(con, "text_signals"):
        parts["sentiment"] = con.execute("SELECT list(DISTINCT sentiment_model ORDER BY sentiment_model) "
                                         "FROM text_signals WHERE sentiment_model IS NOT NULL").fetchall()[0][0]
    if table_exists(con, "items"):
        parts["catalogue"] = con.execute("SELECT md5(coalesce(string_agg(item_id || ':' || coalesce(categories[1], '') "
                                         "|| ':' || coalesce(brand, ''), ',' ORDER BY item_id), '')) FROM items").fetchall()[0][0]
    return hashlib.md5(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _ensure_bookkeeping(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS profile_folds (event_date VARCHAR NOT NULL, run_id VARCHAR, "
                "folded_at TIMESTAMP NOT NULL)")
    con.execute("CREATE TABLE IF NOT EXISTS profile_meta (fingerprint VARCHAR, as_of TIMESTAMP, config JSON, "
                "updated_at TIMESTAMP NOT NULL)")


def _plan(con: duckdb.DuckDBPyConnection, config: ProfileConfig, print_: str) -> tuple[str, str, list[str]]:
    """(mode, reason, days to fold) from what is loaded against what was folded."""
    loaded = dict(con.execute("SELECT partition_key, run_id FROM ingest_stats WHERE source = 'events'").fetchall()) \
        if table_exists(con, "ingest_stats") else {}
    folded = dict(con.execute("SELECT event_date, run_id FROM profile_folds").fetchall())
    previous = next(iter(con.execute("SELECT fingerprint FROM profile_meta").fetchall()), None)
    changed = sorted(d for d in folded if d in loaded and loaded[d] != folded[d])
    removed = sorted(d for d in folded if d not in loaded)
    if config.full_rebuild:
        return "full", "full_rebuild requested", sorted(loaded)
    if previous is None or not folded:
        return "full", "first build", sorted(loaded)
    if previous[0] != print_:
        return "full", "configuration, encoder, sentiment model or catalogue changed", sorted(loaded)
    if changed or removed:
        days = ", ".join((changed + removed)[:5])
        return "full", f"{len(changed)} day(s) re-ingested and {len(removed)} removed since the last fold ({days})", \
            sorted(loaded)
    new = sorted(d for d in loaded if d not in folded)
    return ("incremental", f"{len(new)} new day(s)", new) if new else ("unchanged", "no new days", [])


def update_profiles(con: duckdb.DuckDBPyConnection, config: ProfileConfig) -> UpdateReport:
    """Bring the portrait state up to date with the loaded event days and (re)create the
    `user_profiles` view. Run inside one transaction: a crash leaves the previous portraits."""
    started = time.perf_counter()
    dimension = embedding_dimension(con)
    _ensure_bookkeeping(con)
    print_ = fingerprint(con, config, dimension)
    mode, reason, days = _plan(con, config, print_)
    if mode == "full":
        con.execute(f"DROP TABLE IF EXISTS {PREFIX}_state")
        con.execute(f"DROP TABLE IF EXISTS {PREFIX}_terms")
        con.execute("DELETE FROM profile_folds")
    ensure_state(con, PREFIX, dimension)
    events = users_updated = 0
    if days:
        con.execute("CREATE OR REPLACE TEMP TABLE _days AS SELECT unnest(?::VARCHAR[])::DATE AS event_date", [days])
        source = "SELECT * FROM events" if mode == "full" else \
            "SELECT * FROM events WHERE event_date IN (SELECT event_date FROM _days)"
        events, users_updated = fold(con, source, config.decay(), PREFIX, dimension)
        con.execute("DROP TABLE _days")
        con.execute("DELETE FROM profile_folds WHERE event_date IN (SELECT unnest(?::VARCHAR[]))", [days])
        con.execute("INSERT INTO profile_folds SELECT partition_key, run_id, now()::TIMESTAMP FROM ingest_stats "
                    "WHERE source = 'events' AND partition_key IN (SELECT unnest(?::VARCHAR[]))", [days])
    as_of = con.execute(f"SELECT max(last_ts) FROM {PREFIX}_state").fetchall()[0][0]
    con.execute("DELETE FROM profile_meta")
    con.execute("INSERT INTO profile_meta VALUES (?, ?, ?, now()::TIMESTAMP)",
                [print_, as_of, config.model_dump_json(exclude={"full_rebuild"})])
    refresh_category_prices(con)
    view = profile_select(PREFIX, "(SELECT as_of FROM profile_meta)", config, dimension, table_exists(con, "users"))
    con.execute(f"CREATE OR REPLACE VIEW user_profiles AS {view}")
    users = con.execute(f"SELECT count(*) FROM {PREFIX}_state").fetchall()[0][0]
    return UpdateReport(mode, reason, days, events, users_updated, users, as_of, time.perf_counter() - started)


def refresh_category_prices(con: duckdb.DuckDBPyConnection) -> None:
    """Median catalogue price per (first) category: the reference of the price index."""
    source = ("SELECT categories[1] AS category, price FROM items WHERE price IS NOT NULL AND categories[1] IS NOT NULL"
              if table_exists(con, "items") else "SELECT NULL::VARCHAR AS category, NULL::DOUBLE AS price WHERE false")
    con.execute(f"CREATE OR REPLACE TABLE category_prices AS SELECT category, median(price) AS median_price, "
                f"count(*) AS items FROM ({source}) GROUP BY category")


def profile_select(prefix: str, as_of_sql: str, config: ProfileConfig, dimension: int, with_users: bool) -> str:
    """The portrait fields, computed from `<prefix>_state`/`<prefix>_terms` at `as_of_sql`."""
    h = config.half_life_days * DAY_SECONDS
    counts = ", ".join(f"s.n_{t}" for t in EVENT_TYPES)
    total = " + ".join(f"s.n_{t}" for t in EVENT_TYPES)
    tops = ",\n".join(
        f"list({{'name': term, 'share': share}} ORDER BY weight DESC, term) FILTER (WHERE kind = '{kind}')"
        f"[1:{n}] AS {column}" for kind, (column, n) in TOP_TERMS.items())
    users = ("SELECT user_id, any_value(attributes) AS attributes FROM users GROUP BY user_id" if with_users else
             "SELECT NULL::VARCHAR AS user_id, NULL::JSON AS attributes WHERE false")
    return f"""
WITH shares AS (
    SELECT user_id, kind, term, weight, weight / sum(weight) OVER (PARTITION BY user_id, kind) AS share
    FROM {prefix}_terms WHERE weight > 0
), tops AS (
    SELECT user_id, {tops},
           list(term ORDER BY weight DESC, term) FILTER (WHERE kind = 'keyword')[1:{TOP_KEYWORDS}] AS top_keywords
    FROM shares GROUP BY user_id
), paid AS (
    SELECT t.user_id, avg(t.price / m.median_price) AS price_index,
           avg(CASE WHEN t.price <= {BARGAIN_AT} * m.median_price THEN 1.0 ELSE 0.0 END) AS price_sensitivity
    FROM (SELECT user_id, term, unnest(prices) AS price FROM {prefix}_terms WHERE kind = 'category' AND len(prices) > 0) t
    JOIN category_prices m ON m.category = t.term AND m.median_price > 0
    GROUP BY t.user_id
), base AS (
    SELECT s.*, {as_of_sql} AS as_of FROM {prefix}_state s
)
SELECT s.user_id, s.as_of, s.first_ts AS first_seen, s.last_ts AS last_seen,
       (epoch(s.as_of) - epoch(s.first_ts)) / {DAY_SECONDS} AS tenure_days,
       (epoch(s.as_of) - epoch(s.last_ts)) / {DAY_SECONDS} AS recency_days,
       s.active_days, ({total}) AS events, {counts},
       s.engagement * pow(2.0, -(epoch(s.as_of) - epoch(s.ref_ts)) / {h!r}) AS engagement,
       s.n_purchase AS frequency, CASE WHEN s.priced_purchases > 0 THEN s.spend END AS monetary,
       (epoch(s.as_of) - epoch(s.last_purchase_ts)) / {DAY_SECONDS} AS purchase_recency_days,
       CASE WHEN (epoch(s.as_of) - epoch(s.last_ts)) / {DAY_SECONDS} > {config.churned_after_days!r} THEN 'churned'
            WHEN (epoch(s.as_of) - epoch(s.last_ts)) / {DAY_SECONDS} > {config.at_risk_after_days!r} THEN 'at_risk'
            WHEN (epoch(s.as_of) - epoch(s.first_ts)) / {DAY_SECONDS} <= {config.new_within_days!r} THEN 'new'
            ELSE 'active' END AS lifecycle,
       t.top_categories[1].name AS top_category, coalesce(t.top_categories, []) AS top_categories,
       t.top_brands[1].name AS top_brand, coalesce(t.top_brands, []) AS top_brands,
       coalesce(t.top_keywords, []) AS top_keywords,
       CASE WHEN s.sentiment_n > 0 THEN s.sentiment_sum / s.sentiment_n END AS sentiment,
       CASE WHEN s.sentiment_n = 0 THEN NULL
            WHEN s.sentiment_sum / s.sentiment_n < -{SENTIMENT_NEUTRAL_BAND} THEN 'negative'
            WHEN s.sentiment_sum / s.sentiment_n > {SENTIMENT_NEUTRAL_BAND} THEN 'positive'
            ELSE 'neutral' END AS sentiment_label,
       CASE WHEN s.sentiment_n > 0 AND s.trend_n > 0 THEN s.trend_sum / s.trend_n - s.sentiment_sum / s.sentiment_n
            END AS sentiment_trend,
       t.intents[1].name AS top_intent, coalesce(t.intents, []) AS intents,
       p.price_index,
       CASE WHEN p.price_index < {BUDGET_BELOW} THEN 'budget' WHEN p.price_index > {PREMIUM_ABOVE} THEN 'premium'
            WHEN p.price_index IS NOT NULL THEN 'mid' END AS price_band,
       p.price_sensitivity,
       u.attributes->>'age' AS age, u.attributes->>'gender' AS gender, u.attributes->>'region' AS region,
       s.interest::FLOAT[{dimension}] AS interest
FROM base s
LEFT JOIN tops t USING (user_id)
LEFT JOIN paid p USING (user_id)
LEFT JOIN ({users}) u USING (user_id)
"""


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="portraits",
    kinds={"duckdb"},
    owners=["team:portrait"],
    deps=["events", "items", "users", "item_embeddings", "text_embeddings", "text_signals"],
)
def user_profiles(context: dg.AssetExecutionContext, config: ProfileConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """One portrait per user: interest vector, top categories and brands, keywords, sentiment
    level and trend, intents, price band, RFM and lifecycle, demographics. Only users with
    events in newly loaded days are recomputed, from stored decayed statistics."""
    with warehouse.transaction() as con:
        report = update_profiles(con, config)
    context.log.info(f"user_profiles: {report.mode} ({report.reason}); {report.users_updated:,} users updated")
    with warehouse.connect() as con:
        lifecycle = query_rows(con, "SELECT lifecycle, count(*) AS users FROM user_profiles GROUP BY 1 ORDER BY 2 DESC")
        categories = query_rows(con, "SELECT top_category, count(*) AS users FROM user_profiles "
                                     "WHERE top_category IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10")
        coverage = query_rows(con, """
            SELECT count(*) AS users, count(interest) AS with_interest, count(top_category) AS with_category,
                   count(sentiment) AS with_sentiment, count(top_intent) AS with_intent,
                   count(price_band) AS with_price_band, count(age) AS with_age
            FROM user_profiles""")
        preview = query_rows(con, """
            SELECT user_id, lifecycle, round(recency_days, 1) AS recency_days, frequency, round(monetary, 2) AS monetary,
                   top_category, top_brand, array_to_string(top_keywords[1:3], ', ') AS keywords,
                   round(sentiment, 2) AS sentiment, top_intent, price_band
            FROM user_profiles ORDER BY engagement DESC, user_id LIMIT 10""")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": report.users,
        "mode": report.mode,
        "reason": report.reason,
        "days_folded": len(report.days_folded),
        "events_folded": report.events_folded,
        "users_updated": report.users_updated,
        "as_of": str(report.as_of),
        "seconds": round(report.seconds, 2),
        "coverage": dg.MetadataValue.md(markdown_table(coverage)),
        "lifecycle": dg.MetadataValue.md(markdown_table(lifecycle)),
        "lifecycle_chart": bar_chart_markdown([r["lifecycle"] for r in lifecycle], [r["users"] for r in lifecycle],
                                              "Users by lifecycle stage"),
        "top_categories": dg.MetadataValue.md(markdown_table(categories)),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
    })

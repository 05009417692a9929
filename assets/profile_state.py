"""Decayed sufficient statistics behind `user_profiles`, and the fold that keeps them fresh.

Every quantity a portrait needs is stored per user as a sum that can be updated without
the history: counts, spend, first and last times, and time-decayed sums (engagement,
sentiment, category/brand/keyword/intent weights, the interest vector as a weighted mean
with its weight). Decayed sums of a user are all referenced to the user's `ref_ts`; moving
the reference from r to r' multiplies them by 2^-((r' - r) / half-life). Folding new events
into the state is therefore exact: fold(fold(nothing, A), B) = fold(nothing, A and B), which
is what makes the incremental update equal a full recompute (docs/profiles.md).

The state lives in `<prefix>_state` (one row per user) and `<prefix>_terms` (one row per
user, kind and term); `profile_*` for the portraits, temporary `_cut_*` tables for the
propensity model's point-in-time features.
"""

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import scipy.sparse as sparse

from resources.warehouse import table_exists, vector_dimension

EVENT_TYPES = ("view", "click", "add_to_cart", "favorite", "purchase", "review", "rating", "search", "chat")
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0, "click": 1.0, "favorite": 3.0, "add_to_cart": 4.0, "purchase": 6.0,
    "review": 5.0, "rating": 5.0, "search": 2.0, "chat": 1.0,
}
DEFAULT_DIMENSION = 384
DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class DecaySettings:
    event_weights: dict[str, float]
    half_life_days: float
    trend_half_life_days: float

    def __post_init__(self) -> None:
        unknown = set(self.event_weights) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"event_weights names unknown event types {sorted(unknown)}; known: {', '.join(EVENT_TYPES)}")
        if self.half_life_days <= 0 or self.trend_half_life_days <= 0:
            raise ValueError("half-lives must be positive numbers of days")


def embedding_dimension(con: duckdb.DuckDBPyConnection) -> int:
    """The encoder's vector size, read from the stored vectors (384 when nothing is embedded yet)."""
    for table in ("item_embeddings", "text_embeddings"):
        if dimension := vector_dimension(con, table):
            return dimension
    return DEFAULT_DIMENSION


def ensure_state(con: duckdb.DuckDBPyConnection, prefix: str, dimension: int, temp: bool = False) -> None:
    kind = "TEMP TABLE" if temp else "TABLE"
    counts = ",\n".join(f"    n_{t} BIGINT NOT NULL" for t in EVENT_TYPES)
    con.execute(f"""
        CREATE {kind} IF NOT EXISTS {prefix}_state (
            user_id VARCHAR NOT NULL,
            ref_ts TIMESTAMP NOT NULL,          -- every decayed sum of this user is referenced to this time
            first_ts TIMESTAMP NOT NULL,
            last_ts TIMESTAMP NOT NULL,
            last_purchase_ts TIMESTAMP,
            active_days BIGINT NOT NULL,
{counts},
            spend DOUBLE NOT NULL,
            priced_purchases BIGINT NOT NULL,  -- purchases with a price (spend is unknown without)
            engagement DOUBLE NOT NULL,        -- decayed sum of event weights
            sentiment_sum DOUBLE NOT NULL,     -- sum of text sentiment, and texts scored (the level: no decay)
            sentiment_n DOUBLE NOT NULL,
            trend_sum DOUBLE NOT NULL,         -- the same decayed with the trend half-life (the recent mood)
            trend_n DOUBLE NOT NULL,
            interest_w DOUBLE NOT NULL,        -- decayed sum of |weight| behind the interest mean
            interest DOUBLE[{dimension}]       -- the decayed, weighted mean vector (NULL: nothing embedded)
        )""")
    con.execute(f"""
        CREATE {kind} IF NOT EXISTS {prefix}_terms (
            user_id VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,              -- category, brand, keyword, intent
            term VARCHAR NOT NULL,
            weight DOUBLE NOT NULL,             -- decayed, referenced to the user's ref_ts
            n BIGINT NOT NULL,
            prices DOUBLE[] NOT NULL            -- unit prices paid (categories only)
        )""")


def decay_sql(to: str, since: str, half_life_days: float) -> str:
    """SQL for 2^-((to - since) / half-life): the factor an event at `since` weighs at `to`."""
    return f"pow(2.0, -(epoch({to}) - epoch({since})) / {half_life_days * DAY_SECONDS!r})"


def weight_sql(column: str, weights: dict[str, float]) -> str:
    """SQL for the weight of the event type in `column` (0 for a type without one)."""
    cases = " ".join(f"WHEN '{t}' THEN {float(weights.get(t, DEFAULT_EVENT_WEIGHTS[t]))!r}" for t in EVENT_TYPES)
    return f"CASE {column} {cases} ELSE 0.0 END"


def _signals_sql(con: duckdb.DuckDBPyConnection) -> str:
    if table_exists(con, "text_signals"):
        return "SELECT text_hash, sentiment_score, keywords, intent FROM text_signals"
    return ("SELECT NULL::VARCHAR AS text_hash, NULL::DOUBLE AS sentiment_score, NULL::VARCHAR[] AS keywords, "
            "NULL::VARCHAR AS intent WHERE false")


def _stage_events(con: duckdb.DuckDBPyConnection, source_sql: str, prefix: str, settings: DecaySettings) -> int:
    """`_ev`: the new events with their weight, sign, sentiment, category, brand, keywords,
    intent and decay factors to their user's new reference time (`_ref`)."""
    items = ("SELECT item_id, categories[1] AS category, brand FROM items" if table_exists(con, "items") else
             "SELECT NULL::VARCHAR AS item_id, NULL::VARCHAR AS category, NULL::VARCHAR AS brand WHERE false")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ev_raw AS
        SELECT e.user_id, e.event_type, e.ts, e.event_date, e.item_id, e.price, e.quantity,
               CASE WHEN e.text IS NOT NULL THEN md5(e.text) END AS text_hash,
               i.category, i.brand,
               {weight_sql("e.event_type", settings.event_weights)} AS w,
               CASE e.event_type
                   WHEN 'review' THEN coalesce(s.sentiment_score, (e.rating - 3) / 2, 1.0)
                   WHEN 'rating' THEN coalesce((e.rating - 3) / 2, 0.0)
                   ELSE 1.0 END AS sign,
               CASE WHEN e.event_type = 'review' THEN coalesce(s.sentiment_score, (e.rating - 3) / 2)
                    WHEN e.event_type = 'chat' THEN s.sentiment_score END AS sentiment,
               s.keywords,
               CASE WHEN e.event_type IN ('search', 'chat') THEN s.intent END AS intent
        FROM ({source_sql}) e
        LEFT JOIN ({items}) i ON i.item_id = e.item_id
        LEFT JOIN ({_signals_sql(con)}) s ON s.text_hash = md5(e.text)
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ref AS
        SELECT n.user_id, o.ref_ts AS old_ref, greatest(n.max_ts, o.ref_ts) AS new_ref,
               coalesce({decay_sql('greatest(n.max_ts, o.ref_ts)', 'o.ref_ts', settings.half_life_days)}, 1.0) AS k,
               coalesce({decay_sql('greatest(n.max_ts, o.ref_ts)', 'o.ref_ts', settings.trend_half_life_days)}, 1.0) AS k_trend
        FROM (SELECT user_id, max(ts) AS max_ts FROM _ev_raw GROUP BY 1) n
        LEFT JOIN {prefix}_state o USING (user_id)
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ev AS
        SELECT e.*, {decay_sql('r.new_ref', 'e.ts', settings.half_life_days)} AS d,
               {decay_sql('r.new_ref', 'e.ts', settings.trend_half_life_days)} AS d_trend
        FROM _ev_raw e JOIN _ref r USING (user_id)
    """)
    con.execute("DROP TABLE _ev_raw")
    return con.execute("SELECT count(*) FROM _ev").fetchall()[0][0]


def _merge_scalars(con: duckdb.DuckDBPyConnection, prefix: str) -> None:
    counts = ", ".join(f"count(*) FILTER (WHERE event_type = '{t}') AS n_{t}" for t in EVENT_TYPES)
    merged_counts = ", ".join(f"coalesce(o.n_{t}, 0) + n.n_{t} AS n_{t}" for t in EVENT_TYPES)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _scalars AS
        SELECT r.user_id, r.new_ref AS ref_ts,
               least(o.first_ts, n.first_ts) AS first_ts, greatest(o.last_ts, n.last_ts) AS last_ts,
               greatest(o.last_purchase_ts, n.last_purchase_ts) AS last_purchase_ts,
               coalesce(o.active_days, 0) + n.active_days AS active_days,
               {merged_counts},
               coalesce(o.spend, 0) + n.spend AS spend,
               coalesce(o.priced_purchases, 0) + n.priced_purchases AS priced_purchases,
               coalesce(o.engagement * r.k, 0) + n.engagement AS engagement,
               coalesce(o.sentiment_sum, 0) + n.sentiment_sum AS sentiment_sum,
               coalesce(o.sentiment_n, 0) + n.sentiment_n AS sentiment_n,
               coalesce(o.trend_sum * r.k_trend, 0) + n.trend_sum AS trend_sum,
               coalesce(o.trend_n * r.k_trend, 0) + n.trend_n AS trend_n
        FROM _ref r
        JOIN (SELECT user_id, min(ts) AS first_ts, max(ts) AS last_ts,
                     max(ts) FILTER (WHERE event_type = 'purchase') AS last_purchase_ts,
                     count(DISTINCT event_date) AS active_days, {counts},
                     coalesce(sum(price * coalesce(quantity, 1)) FILTER (WHERE event_type = 'purchase'), 0) AS spend,
                     count(price) FILTER (WHERE event_type = 'purchase') AS priced_purchases,
                     sum(d * w) AS engagement,
                     coalesce(sum(sentiment), 0) AS sentiment_sum,
                     count(sentiment) AS sentiment_n,
                     coalesce(sum(d_trend * sentiment), 0) AS trend_sum,
                     coalesce(sum(d_trend) FILTER (WHERE sentiment IS NOT NULL), 0) AS trend_n
              FROM _ev GROUP BY user_id) n USING (user_id)
        LEFT JOIN {prefix}_state o USING (user_id)
    """)


def _merge_terms(con: duckdb.DuckDBPyConnection, prefix: str) -> None:
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _terms_new AS
        SELECT user_id, 'category' AS kind, category AS term, sum(d * w) AS weight, count(*) AS n,
               coalesce(list(price ORDER BY ts, price) FILTER (WHERE event_type = 'purchase' AND price IS NOT NULL),
                        []::DOUBLE[]) AS prices
        FROM _ev WHERE category IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT user_id, 'brand', brand, sum(d * w), count(*), []::DOUBLE[] FROM _ev WHERE brand IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT user_id, 'keyword', keyword, sum(d * w), count(*), []::DOUBLE[]
        FROM (SELECT user_id, d, w, unnest(keywords) AS keyword FROM _ev WHERE keywords IS NOT NULL) GROUP BY ALL
        UNION ALL
        SELECT user_id, 'intent', intent, sum(d), count(*), []::DOUBLE[] FROM _ev WHERE intent IS NOT NULL GROUP BY ALL
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _terms_merged AS
        SELECT coalesce(o.user_id, n.user_id) AS user_id, coalesce(o.kind, n.kind) AS kind,
               coalesce(o.term, n.term) AS term,
               coalesce(o.weight * r.k, 0) + coalesce(n.weight, 0) AS weight,
               coalesce(o.n, 0) + coalesce(n.n, 0) AS n,
               list_concat(coalesce(o.prices, []::DOUBLE[]), coalesce(n.prices, []::DOUBLE[])) AS prices
        FROM (SELECT * FROM {prefix}_terms WHERE user_id IN (SELECT user_id FROM _ref)) o
        FULL JOIN _terms_new n ON n.user_id = o.user_id AND n.kind = o.kind AND n.term = o.term
        JOIN _ref r ON r.user_id = coalesce(o.user_id, n.user_id)
    """)
    con.execute("DROP TABLE _terms_new")


def matrix(vectors: pa.ChunkedArray, dimension: int) -> np.ndarray:
    """Rows of a fixed-size-list column as a float64 matrix, read straight from the Arrow
    buffer (null rows come out as zeros)."""
    array = vectors.combine_chunks()
    if len(array) == 0:
        return np.zeros((0, dimension))
    values = array.values
    dtype = np.float32 if values.type == pa.float32() else np.float64
    flat = np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values) + values.offset)[values.offset:]
    rows = flat[array.offset * dimension:(array.offset + len(array)) * dimension].reshape(len(array), dimension)
    rows = rows.astype(np.float64)
    if array.null_count:
        rows[~array.is_valid().to_numpy(zero_copy_only=False)] = 0.0
    return rows


def _contributions(con: duckdb.DuckDBPyConnection, users: dict[str, int], dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """Per affected user: the sum of decayed, signed, weighted vectors of what they touched and
    wrote, and the sum of the absolute weights (a sparse users x vectors product, never a loop)."""
    total = np.zeros((len(users), dimension))
    weight = np.zeros(len(users))
    sources = []
    if table_exists(con, "item_embeddings"):
        sources.append(("item_id", "item_embeddings", "item_id", "true"))
    if table_exists(con, "text_embeddings"):
        model = "(SELECT any_value(model_id) FROM item_embeddings)" if table_exists(con, "item_embeddings") else \
            "(SELECT any_value(model_id) FROM text_embeddings)"
        sources.append(("text_hash", "text_embeddings", "text_hash", f"model_id = {model}"))
    for column, table, key, condition in sources:
        # the vectors of what the new events touched, fetched by rowid so only those rows are read
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _keys AS
            SELECT {key} AS key, min(rowid) AS row, (row_number() OVER (ORDER BY {key}) - 1)::BIGINT AS col
            FROM {table} WHERE {condition} AND {key} IN (SELECT {column} FROM _ev) GROUP BY {key}""")
        vectors = matrix(con.sql(f"""
            SELECT v.vector FROM (SELECT rowid AS row, vector FROM {table} WHERE rowid IN (SELECT row FROM _keys)) v
            JOIN _keys k USING (row) ORDER BY k.col""").to_arrow_table().column(0), dimension)
        rows = con.sql(f"""
            SELECT e.user_id, k.col, sum(e.d * e.w * e.sign) AS v, sum(abs(e.d * e.w * e.sign)) AS a
            FROM _ev e JOIN _keys k ON k.key = e.{column} GROUP BY ALL""").to_arrow_table()
        con.execute("DROP TABLE _keys")
        if not len(vectors):
            continue
        user_rows = np.array([users[u] for u in rows.column("user_id").to_pylist()], dtype=np.int64)
        product = sparse.csr_matrix((rows.column("v").to_numpy(), (user_rows, rows.column("col").to_numpy())),
                                    shape=(len(users), len(vectors)))
        total += product @ vectors
        weight += np.bincount(user_rows, weights=rows.column("a").to_numpy(), minlength=len(users))
    return total, weight


def _merge_interest(con: duckdb.DuckDBPyConnection, prefix: str, dimension: int) -> pa.Table:
    # select by rowid: DuckDB then reads only the affected users' vectors, not the whole column
    old = con.sql(f"""
        SELECT r.user_id, r.k, coalesce(o.interest_w, 0) AS interest_w, o.interest
        FROM _ref r LEFT JOIN (
            SELECT user_id, interest_w, interest FROM {prefix}_state
            WHERE rowid IN (SELECT rowid FROM {prefix}_state WHERE user_id IN (SELECT user_id FROM _ref))
        ) o USING (user_id) ORDER BY r.user_id""").to_arrow_table()
    user_ids = old.column("user_id").to_pylist()
    users = {u: i for i, u in enumerate(user_ids)}
    total, weight = _contributions(con, users, dimension)
    old_w = old.column("interest_w").to_numpy() * old.column("k").to_numpy()
    total += matrix(old.column("interest"), dimension) * old_w[:, None]
    new_w = old_w + weight
    has = new_w > 0
    mean = np.divide(total, new_w[:, None], out=np.zeros_like(total), where=has[:, None])
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(mean.ravel(), pa.float64()), dimension,
                                                mask=pa.array(~has))
    return pa.table({"user_id": pa.array(user_ids, pa.string()), "interest_w": pa.array(new_w, pa.float64()),
                     "interest": vectors})


def fold(con: duckdb.DuckDBPyConnection, source_sql: str, settings: DecaySettings, prefix: str, dimension: int,
         temp: bool = False, with_interest: bool = True) -> tuple[int, int]:
    """Fold the events selected by `source_sql` into `<prefix>_state` / `<prefix>_terms`;
    only the users with new events are rewritten. Returns (events folded, users updated).

    Each event day must be folded once: re-folding a day counts it twice (the caller
    rebuilds from scratch when a folded day changed). `with_interest=False` leaves the
    interest vector empty (point-in-time features that do not use it).
    """
    ensure_state(con, prefix, dimension, temp)
    events = _stage_events(con, source_sql, prefix, settings)
    if not events:
        return 0, 0
    _merge_scalars(con, prefix)
    _merge_terms(con, prefix)
    interest = _merge_interest(con, prefix, dimension) if with_interest else con.sql(
        f"SELECT user_id, 0.0::DOUBLE AS interest_w, NULL::DOUBLE[{dimension}] AS interest FROM _ref").to_arrow_table()
    con.register("_interest", interest)
    try:
        columns = [r[0] for r in con.execute(f"SELECT column_name FROM information_schema.columns WHERE table_name = "
                                             f"'{prefix}_state' ORDER BY ordinal_position").fetchall()]
        select = ", ".join(f"i.{c}" if c in ("interest_w", "interest") else f"s.{c}" for c in columns)
        con.execute(f"DELETE FROM {prefix}_state WHERE user_id IN (SELECT user_id FROM _ref)")
        con.execute(f"INSERT INTO {prefix}_state SELECT {select} FROM _scalars s JOIN _interest i USING (user_id)")
        con.execute(f"DELETE FROM {prefix}_terms WHERE user_id IN (SELECT user_id FROM _ref)")
        con.execute(f"INSERT INTO {prefix}_terms SELECT * FROM _terms_merged WHERE weight > 0 OR n > 0")
    finally:
        con.unregister("_interest")
    users = con.execute("SELECT count(*) FROM _ref").fetchall()[0][0]
    for table in ("_ev", "_ref", "_scalars", "_terms_merged"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return events, users

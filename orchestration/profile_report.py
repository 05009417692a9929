"""What `portrait profile USER [--explain]` prints: the portrait, and why it says what it says."""

import duckdb
import pandas as pd

from assets.profile_state import decay_sql, weight_sql
from assets.propensity import contributions, features, load_model
from resources.model_store import ModelStore
from resources.warehouse import table_exists

EVIDENCE_PER_INTEREST = 3


class UnknownUser(LookupError):
    pass


def _portrait(con: duckdb.DuckDBPyConnection, user_id: str) -> pd.DataFrame:
    if not table_exists(con, "profile_state"):
        raise RuntimeError("no portraits yet: run `portrait run` (or materialize user_profiles in the UI)")
    frame = con.sql("SELECT * EXCLUDE (interest), interest IS NOT NULL AS has_interest FROM user_profiles "
                    "WHERE user_id = ?", params=[user_id]).df()
    if frame.empty:
        raise UnknownUser(f"no portrait for user {user_id!r}: the id is unknown, has no events, or was erased")
    return frame


def _optional(con: duckdb.DuckDBPyConnection, table: str, column: str, user_id: str):
    if not table_exists(con, table):
        return None
    rows = con.execute(f"SELECT {column} FROM {table} WHERE user_id = ?", [user_id]).fetchall()
    return rows[0][0] if rows else None


def _shares(entries) -> str:
    return ", ".join(f"{e['name']} ({e['share']:.0%})" for e in entries) if entries is not None and len(entries) else "-"


def _evidence(con: duckdb.DuckDBPyConnection, user_id: str, kind: str, term: str, half_life_days: float,
              weights: dict[str, float]) -> list[tuple]:
    """The user's events that weigh most in one category or brand, with their decayed weight."""
    column = "categories[1]" if kind == "category" else "brand"
    decay = decay_sql("(SELECT as_of FROM profile_meta)", "e.ts", half_life_days)
    return con.execute(f"""
        SELECT e.ts, e.event_type, e.item_id, i.title, {weight_sql("e.event_type", weights)} * {decay} AS weight
        FROM events e JOIN items i USING (item_id)
        WHERE e.user_id = ? AND i.{column} = ?
        ORDER BY weight DESC, e.ts DESC LIMIT {EVIDENCE_PER_INTEREST}""", [user_id, term]).fetchall()


def describe(con: duckdb.DuckDBPyConnection, user_id: str, explain: bool, store: ModelStore) -> str:
    """The portrait as text; with `explain`, the events behind each top interest and the
    features behind the propensity."""
    p = _portrait(con, user_id).iloc[0]
    lines = [f"User {user_id} (as of {p['as_of']:%Y-%m-%d %H:%M} UTC)"]
    summary = _optional(con, "user_summaries", "summary", user_id)
    if summary:
        lines += ["", summary, ""]

    def field(name: str, value) -> None:
        if value is not None and not (isinstance(value, float) and pd.isna(value)) and value != "-":
            lines.append(f"  {name:<18} {value}")

    field("lifecycle", p["lifecycle"])
    field("first / last seen", f"{p['first_seen']:%Y-%m-%d} / {p['last_seen']:%Y-%m-%d} "
                               f"({p['recency_days']:.1f} days ago)")
    field("events", f"{p['events']:,} on {p['active_days']} day(s): " + ", ".join(
        f"{c[2:]} {p[c]:,}" for c in p.index if c.startswith("n_") and p[c]))
    monetary = f", monetary {p['monetary']:,.2f}" if pd.notna(p["monetary"]) else ""
    field("RFM", f"recency {p['recency_days']:.1f} d, frequency {p['frequency']}{monetary}")
    field("top categories", _shares(p["top_categories"]))
    field("top brands", _shares(p["top_brands"]))
    field("keywords", ", ".join(p["top_keywords"]) if len(p["top_keywords"]) else None)
    if pd.notna(p["sentiment"]):
        trend = f", trend {p['sentiment_trend']:+.2f}" if pd.notna(p["sentiment_trend"]) else ""
        field("sentiment", f"{p['sentiment_label']} ({p['sentiment']:+.2f}{trend})")
    field("intents", _shares(p["intents"]))
    if pd.notna(p["price_index"]):
        field("price", f"{p['price_band']} (paid {p['price_index']:.2f}x the category median; "
                       f"{p['price_sensitivity']:.0%} of purchases at a bargain)")
    field("demographics", ", ".join(f"{k} {p[k]}" for k in ("age", "gender", "region") if p[k] is not None) or None)
    field("interest vector", "yes" if p["has_interest"] else "none (nothing the user touched has an embedding)")
    propensity = _optional(con, "user_propensity", "propensity", user_id)
    horizon = _optional(con, "user_propensity", "horizon_days", user_id)
    if propensity is not None:
        field("propensity", f"{propensity:.0%} chance of buying in the next {horizon} days")
    segment = _optional(con, "user_segments", "segment", user_id)
    field("segment", segment)

    if explain:
        config = con.execute("SELECT config FROM profile_meta").fetchall()[0][0]
        from assets.profiles import ProfileConfig

        settings = ProfileConfig.model_validate_json(config).decay()
        lines += ["", "Why:"]
        for kind, entries in (("category", p["top_categories"]), ("brand", p["top_brands"])):
            for entry in entries if entries is not None else []:
                lines.append(f"  {kind} {entry['name']} ({entry['share']:.0%} of the user's {kind} weight), mostly from:")
                for ts, event_type, item_id, title, weight in _evidence(con, user_id, kind, entry["name"],
                                                                       settings.half_life_days, settings.event_weights):
                    lines.append(f"    {ts:%Y-%m-%d} {event_type:<11} {item_id} {title or ''} (weight {weight:.2f})")
        model = load_model(store)
        if propensity is not None and model is not None:
            pipeline, names, card = model
            lines.append(f"  propensity ({card['model']}, AUC {card['model_auc']:.3f} vs baseline "
                         f"{card['baseline_auc']:.3f}); largest effects on the log-odds:")
            row = features(_portrait(con, user_id))
            for name, value, effect in contributions(pipeline, names, row)[:5]:
                lines.append(f"    {name:<22} = {value:8.3f}  effect {effect:+.3f}")
    return "\n".join(lines)

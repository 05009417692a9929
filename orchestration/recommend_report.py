"""`portrait recommend USER`: a user's recommendations as text, optionally with the blend's arithmetic."""

import duckdb
import numpy as np

from assets.recommendations import contributions
from assets.recommender_model import load_model
from resources.model_store import ModelStore
from resources.warehouse import table_exists


class NoRecommendations(LookupError):
    pass


def describe(con: duckdb.DuckDBPyConnection, user: str, n: int, explain: bool, store: ModelStore) -> str:
    if not table_exists(con, "recommendations"):
        raise NoRecommendations("the warehouse has no recommendations yet: run `portrait run` (or materialize "
                                "recommendations in the UI)")
    rows = con.execute("""
        SELECT r.rank, r.item_id, coalesce(i.title, r.item_id), r.score, r.reason, r.member, r.source, r.model_version
        FROM recommendations r LEFT JOIN items i USING (item_id)
        WHERE r.user_id = ? AND r.rank <= ? ORDER BY r.rank""", [user, n]).fetchall()
    if not rows:
        raise NoRecommendations(f"no recommendations for user {user!r}: check the id (`portrait profile {user}`); "
                                "users appear after their first event is ingested and recommendations are rebuilt")
    source, version = rows[0][6], rows[0][7]
    lines = [f"Recommendations for {user} ({'model ' + version if source == 'model' else source})"]
    width = max(len(r[2]) for r in rows)
    for rank, item, title, score, reason, _, _, _ in rows:
        lines.append(f"{rank:>3}. {title:<{width}}  {item:<12} {score:7.3f}  {reason}")
    if explain:
        lines += [""] + _explain(user, [r[1] for r in rows], store)
    return "\n".join(lines)


def _explain(user: str, items: list[str], store: ModelStore) -> list[str]:
    """Each member's weighted, standardized score for the listed items (the score is their sum)."""
    loaded = store.latest("recommender") and load_model(store)
    if not loaded:
        return ["No recommender model is published yet: these come from the best baseline alone."]
    model, card = loaded
    if user not in set(model.user_index):
        return [f"{user} had no interactions when the model was trained: the list comes from their portrait's "
                "interest vector (or popularity), not the blend."]
    names, parts = contributions(model, [user])
    positions = np.asarray(model.item_index.get_indexer(items))
    weights = ", ".join(f"{name} {card['weights'][name]:g}" for name in names)
    lines = [f"Blend weights (chosen on validation): {weights}", "Per item, each member's contribution:",
             "item          " + "".join(f"{name[:18]:>20}" for name in names)]
    for item, position in zip(items, positions):
        values = "".join(f"{part[0, position]:20.3f}" if position >= 0 else f"{'-':>20}" for part in parts)
        lines.append(f"{item:<14}{values}")
    return lines

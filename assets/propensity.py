"""`purchase_propensity`: the probability that a user buys in the next N days.

Trained honestly with a time split: portraits are rebuilt as they stood at a cut
(`as_of - horizon`, from events before the cut only), labels are whether the user bought
in the horizon after it. A quarter of the users (by a hash of the id) is held out to
measure AUC, Brier score and calibration of the model and of a recency-frequency baseline
trained on the same rows. Current portraits are then scored with whichever of the two did
better on the held-out users, so a shop never gets a model worse than the baseline.

A shop that records no purchases (a review data set) uses reviews as its conversions.
"""

import hashlib
import pickle
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from assets.automation import AUTOMATION, WAREHOUSE_POOL
from assets.metadata import markdown_table
from assets.profile_state import fold
from assets.profiles import ProfileConfig, profile_select, user_profiles
from resources.model_store import ModelStore
from resources.warehouse import Warehouse, table_exists

MODEL_NAME = "purchase_propensity"
COUNTS = ("events", "n_view", "n_click", "n_add_to_cart", "n_favorite", "n_purchase", "n_review", "n_search", "n_chat")
FEATURES = ("log_recency", "log_tenure", "active_share", "log_engagement", "bought_before", "log_purchase_recency",
            "log_monetary", "cart_gap", "sentiment", "has_sentiment", "price_index") + tuple(f"log_{c}" for c in COUNTS)
BASELINE_FEATURES = ("log_recency", "log_frequency")


class NotEnoughHistory(ValueError):
    """The data cannot support a time split yet (too few days, users or buyers)."""


class PropensityConfig(dg.Config):
    horizon_days: int = Field(default=7, description="predict a purchase within this many days")
    test_share: float = Field(default=0.25, description="share of users held out (by a hash of the id)")
    regularization: float = Field(default=1.0, description="inverse L2 strength of the logistic regression")
    calibration_bins: int = Field(default=10, description="quantile bins of the calibration table")


def features(profiles: pd.DataFrame) -> pd.DataFrame:
    """Model inputs from portrait columns; missing values get documented neutral fills."""
    p = profiles
    tenure = p["tenure_days"].astype(float).clip(lower=0)
    frame = pd.DataFrame(index=p.index)
    frame["log_recency"] = np.log1p(p["recency_days"].astype(float).clip(lower=0))
    frame["log_tenure"] = np.log1p(tenure)
    frame["active_share"] = p["active_days"].astype(float) / np.ceil(tenure + 1e-9).clip(lower=1)
    frame["log_engagement"] = np.log1p(p["engagement"].astype(float).clip(lower=0))
    frame["bought_before"] = (p["n_purchase"] > 0).astype(float)
    # never bought: as if the last purchase were before the user's first event
    frame["log_purchase_recency"] = np.log1p(p["purchase_recency_days"].astype(float).fillna(tenure + 1).clip(lower=0))
    frame["log_monetary"] = np.log1p(p["monetary"].astype(float).fillna(0).clip(lower=0))
    frame["cart_gap"] = np.log1p((p["n_add_to_cart"] - p["n_purchase"]).clip(lower=0).astype(float))
    frame["sentiment"] = p["sentiment"].astype(float).fillna(0.0)
    frame["has_sentiment"] = p["sentiment"].notna().astype(float)
    frame["price_index"] = p["price_index"].astype(float).fillna(1.0)
    for column in COUNTS:
        frame[f"log_{column}"] = np.log1p(p[column].astype(float))
    frame["log_frequency"] = frame["log_n_purchase"]
    return frame


def stored_profile_config(con: duckdb.DuckDBPyConnection) -> ProfileConfig:
    """The configuration the current portraits were built with, so features at the cut match them."""
    if not table_exists(con, "profile_meta"):
        raise RuntimeError("no portraits yet: materialize user_profiles first")
    return ProfileConfig.model_validate_json(con.execute("SELECT config FROM profile_meta").fetchall()[0][0])


def conversion_types(con: duckdb.DuckDBPyConnection) -> tuple[str, ...]:
    purchases = con.execute("SELECT count(*) FROM events WHERE event_type = 'purchase'").fetchall()[0][0]
    return ("purchase",) if purchases else ("review",)


def profiles_at(con: duckdb.DuckDBPyConnection, cut: datetime, config: ProfileConfig) -> pd.DataFrame:
    """Portraits as they stood at `cut`, from the events before it (temporary tables)."""
    for table in ("_cut_state", "_cut_terms"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    fold(con, f"SELECT * FROM events WHERE ts < TIMESTAMP '{cut.isoformat(sep=' ')}'", config.decay(), "_cut", 1,
         temp=True, with_interest=False)
    if not table_exists(con, "category_prices"):
        raise RuntimeError("category_prices is missing: materialize user_profiles first")
    sql = profile_select("_cut", f"TIMESTAMP '{cut.isoformat(sep=' ')}'", config, 1, table_exists(con, "users"))
    frame = con.sql(f"SELECT * EXCLUDE (interest) FROM ({sql}) ORDER BY user_id").df()
    for table in ("_cut_state", "_cut_terms"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return frame


def converted(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, types: tuple[str, ...]) -> set[str]:
    rows = con.execute("SELECT DISTINCT user_id FROM events WHERE ts >= ? AND ts < ? AND event_type IN "
                       "(SELECT unnest(?::VARCHAR[]))", [start, end, list(types)]).fetchall()
    return {r[0] for r in rows}


def held_out(user_ids: pd.Series, share: float) -> np.ndarray:
    """A stable split: the same user is always on the same side."""
    buckets = user_ids.map(lambda u: int(hashlib.md5(str(u).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)
    return (buckets < share).to_numpy()


def _fit(x: pd.DataFrame, y: np.ndarray, c: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2_000)).fit(x, y)


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[list[dict], float]:
    """Observed against predicted rate per quantile bin, and the expected calibration error."""
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="quantile")
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    counts = np.histogram(p, bins=edges)[0] if len(edges) > 1 else np.array([len(p)])
    counts = counts[:len(observed)] if len(counts) >= len(observed) else np.full(len(observed), len(p) / len(observed))
    ece = float(np.sum(counts * np.abs(observed - predicted)) / max(np.sum(counts), 1))
    rows = [{"predicted": round(float(a), 3), "observed": round(float(b), 3)} for a, b in zip(predicted, observed)]
    return rows, ece


@dataclass(frozen=True)
class Evaluation:
    auc: float
    brier: float
    ece: float
    calibration: list[dict]


def evaluate(y: np.ndarray, p: np.ndarray, bins: int) -> Evaluation:
    calibration, ece = calibration_table(y, p, bins)
    return Evaluation(float(roc_auc_score(y, p)), float(brier_score_loss(y, p)), ece, calibration)


@dataclass(frozen=True)
class PropensityResult:
    cut: datetime
    horizon_days: int
    conversions: tuple[str, ...]
    train_users: int
    test_users: int
    positive_rate: float
    model: Evaluation
    baseline: Evaluation
    chosen: str
    pipeline: Pipeline
    feature_names: tuple[str, ...]


def train(con: duckdb.DuckDBPyConnection, config: PropensityConfig, profile_config: ProfileConfig) -> PropensityResult:
    """Fit and evaluate the model and the baseline at the time cut; refit the winner on all users."""
    as_of = con.execute("SELECT as_of FROM profile_meta").fetchall()[0][0]
    cut = as_of - timedelta(days=config.horizon_days)
    types = conversion_types(con)
    frame = profiles_at(con, cut, profile_config)
    if len(frame) < 20:
        raise NotEnoughHistory(f"only {len(frame)} users have events before the cut {cut:%Y-%m-%d %H:%M} "
                         f"(as_of minus horizon_days={config.horizon_days}); lower horizon_days or land more days")
    x = features(frame)
    y = frame["user_id"].isin(converted(con, cut, as_of, types)).to_numpy().astype(int)
    test = held_out(frame["user_id"], config.test_share)
    if len(set(y[~test])) < 2 or len(set(y[test])) < 2:
        raise NotEnoughHistory(f"no {'/'.join(types)} events on one side of the split after {cut:%Y-%m-%d} "
                         f"(positives: {int(y.sum())} of {len(y)}); propensity needs buyers and non-buyers")
    model = _fit(x.loc[~test, list(FEATURES)], y[~test], config.regularization)
    baseline = _fit(x.loc[~test, list(BASELINE_FEATURES)], y[~test], config.regularization)
    model_eval = evaluate(y[test], model.predict_proba(x.loc[test, list(FEATURES)])[:, 1], config.calibration_bins)
    baseline_eval = evaluate(y[test], baseline.predict_proba(x.loc[test, list(BASELINE_FEATURES)])[:, 1],
                             config.calibration_bins)
    chosen = "model" if model_eval.auc > baseline_eval.auc else "baseline"
    names = FEATURES if chosen == "model" else BASELINE_FEATURES
    final = _fit(x[list(names)], y, config.regularization)
    return PropensityResult(cut, config.horizon_days, types, int((~test).sum()), int(test.sum()), float(y.mean()),
                            model_eval, baseline_eval, chosen, final, names)


def contributions(pipeline: Pipeline, names: tuple[str, ...], row: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(feature, value, contribution to the log-odds) for one user, largest effect first."""
    scaler, regression = pipeline[0], pipeline[-1]
    values = row[list(names)].iloc[0].to_numpy(dtype=float)
    effect = (values - scaler.mean_) / scaler.scale_ * regression.coef_[0]
    order = np.argsort(-np.abs(effect))
    return [(names[i], float(values[i]), float(effect[i])) for i in order]


def load_model(store: ModelStore) -> tuple[Pipeline, tuple[str, ...], dict] | None:
    folder = store.latest(MODEL_NAME)
    if folder is None:
        return None
    with open(folder / "model.pkl", "rb") as handle:
        saved = pickle.load(handle)
    return saved["pipeline"], tuple(saved["features"]), store.read_card(folder)


@dg.asset(
    pool=WAREHOUSE_POOL,
    automation_condition=AUTOMATION,
    group_name="portraits",
    kinds={"scikit-learn", "duckdb"},
    owners=["team:portrait"],
    deps=[user_profiles],
    check_specs=[dg.AssetCheckSpec("propensity_beats_baseline", asset="purchase_propensity",
                                   description="On held-out users, the model's AUC beats a recency-frequency "
                                               "baseline fitted on the same rows; otherwise the baseline scores users.")],
)
def purchase_propensity(context: dg.AssetExecutionContext, config: PropensityConfig, warehouse: Warehouse,
                        model_store: ModelStore):
    """P(purchase in the next `horizon_days`) for every user, from a logistic regression on
    portrait features trained with a time split; evaluated against a recency-frequency baseline."""
    with warehouse.transaction() as con:
        try:
            result = train(con, config, stored_profile_config(con))
        except NotEnoughHistory as error:
            context.log.warning(f"purchase_propensity not trained: {error}; previous scores, if any, are kept")
            yield dg.MaterializeResult(metadata={"trained": False, "why_not": str(error)})
            yield dg.AssetCheckResult(check_name="propensity_beats_baseline", passed=False,
                                      severity=dg.AssetCheckSeverity.WARN, metadata={"why_not": str(error)})
            return
        current = con.sql("SELECT * EXCLUDE (interest) FROM user_profiles ORDER BY user_id").df()
        scores = result.pipeline.predict_proba(features(current)[list(result.feature_names)])[:, 1]
        folder = model_store.new_version(MODEL_NAME)
        with open(folder / "model.pkl", "wb") as handle:
            pickle.dump({"pipeline": result.pipeline, "features": list(result.feature_names)}, handle)
        card = {
            "model": "logistic regression on standardized portrait features" if result.chosen == "model"
            else "recency-frequency baseline (the model did not beat it)",
            "chosen": result.chosen, "features": list(result.feature_names), "cut": result.cut,
            "horizon_days": result.horizon_days, "conversions": list(result.conversions),
            "train_users": result.train_users, "test_users": result.test_users,
            "positive_rate": result.positive_rate,
            "model_auc": result.model.auc, "baseline_auc": result.baseline.auc,
            "model_brier": result.model.brier, "baseline_brier": result.baseline.brier,
            "model_ece": result.model.ece, "baseline_ece": result.baseline.ece,
        }
        model_store.write_card(folder, card)
        model_store.publish(MODEL_NAME, folder)
        table = pa.table({"user_id": pa.array(current["user_id"].tolist(), pa.string()),
                          "propensity": pa.array(scores, pa.float64())})
        con.register("_scores", table)
        con.execute("CREATE OR REPLACE TABLE user_propensity AS SELECT user_id, propensity, ?::INTEGER AS horizon_days, "
                    "?::VARCHAR AS model_version, (SELECT as_of FROM profile_meta) AS as_of FROM _scores",
                    [result.horizon_days, folder.name])
        con.unregister("_scores")
    context.log.info(f"propensity: model AUC {result.model.auc:.3f} vs baseline {result.baseline.auc:.3f}; "
                     f"scoring with the {result.chosen}")
    comparison = [
        {"candidate": name, "auc": round(e.auc, 4), "brier": round(e.brier, 4), "calibration_error": round(e.ece, 4)}
        for name, e in (("model", result.model), ("recency-frequency baseline", result.baseline))]
    calibration = [{"bin": i + 1, "model_predicted": m["predicted"], "model_observed": m["observed"]}
                   for i, m in enumerate(result.model.calibration)]
    coefficients = sorted(zip(result.feature_names, result.pipeline[-1].coef_[0]), key=lambda t: -abs(t[1]))
    yield dg.MaterializeResult(metadata={
        "trained": True,
        "dagster/row_count": len(current),
        "model_version": folder.name,
        "scoring_with": result.chosen,
        "model_auc": result.model.auc,
        "baseline_auc": result.baseline.auc,
        "model_brier": result.model.brier,
        "cut": str(result.cut),
        "horizon_days": result.horizon_days,
        "conversions": ", ".join(result.conversions),
        "train_users": result.train_users,
        "test_users": result.test_users,
        "positive_rate": round(result.positive_rate, 4),
        "mean_propensity": float(np.mean(scores)) if len(scores) else 0.0,
        "comparison": dg.MetadataValue.md(markdown_table(comparison)),
        "calibration": dg.MetadataValue.md(markdown_table(calibration, max_rows=20)),
        "coefficients": dg.MetadataValue.md(markdown_table(
            [{"feature": f, "coefficient": round(float(c), 3)} for f, c in coefficients], max_rows=25)),
    })
    yield dg.AssetCheckResult(
        check_name="propensity_beats_baseline",
        passed=result.model.auc > result.baseline.auc,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"model_auc": result.model.auc, "baseline_auc": result.baseline.auc,
                  "test_users": result.test_users, "scoring_with": result.chosen},
    )

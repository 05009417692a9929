"""Jobs: ingestion of event days, the dimension tables, the language-model stage, training, portraits,
the serving snapshot."""

import dagster as dg

events_job = dg.define_asset_job(
    "ingest_events",
    selection=dg.AssetSelection.assets("raw_events", "events", "quarantine"),
    description="Read a range of event days from the landing zone into raw_events, events and quarantine.",
)

dimensions_job = dg.define_asset_job(
    "ingest_dimensions",
    selection=dg.AssetSelection.assets("items", "users"),
    description="Rebuild items and users from landing/items and landing/users.",
)

language_job = dg.define_asset_job(
    "build_language_model",
    selection=dg.AssetSelection.groups("language_model") - dg.AssetSelection.assets("behavior_model"),
    description="Embed new texts, rebuild item vectors and text signals (sentiment from the published behaviour model).",
)

training_job = dg.define_asset_job(
    "train_behavior_model",
    selection=dg.AssetSelection.assets("behavior_model"),
    description="Fine-tune the behaviour model; it is published only if its blocking check passes.",
)

portraits_job = dg.define_asset_job(
    "build_portraits",
    selection=dg.AssetSelection.groups("portraits") | dg.AssetSelection.assets("search_index", "recsys_dataset"),
    description="Update portraits for users with new events, then propensity, segments and summaries; rebuild "
                "the search index and the recommender's dataset.",
)

serving_job = dg.define_asset_job(
    "publish_serving",
    selection=dg.AssetSelection.assets("serving_snapshot"),
    description="Copy the serving tables into a new read-only snapshot and point the API at it.",
)

recommender_job = dg.define_asset_job(
    "train_recommender",
    selection=dg.AssetSelection.assets("recsys_dataset", "recommender_evaluation", "lightfm_model"),
    description="Rebuild the recommender's dataset, evaluate the baselines and the production blend, and retrain "
                "it; the new model is published only if its blocking check passes.",
)

recommendations_job = dg.define_asset_job(
    "recommend",
    selection=dg.AssetSelection.assets("recommendations"),
    description="Rewrite every user's recommendations with the published model (kept apart from training, so "
                "a model refused by its check still leaves fresh recommendations from the previous one).",
)

"""Jobs: ingestion of event days, the dimension tables, the language-model stage, training, portraits."""

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
    selection=dg.AssetSelection.groups("portraits"),
    description="Update portraits for users with new events, then propensity, segments and summaries.",
)

"""Jobs: ingestion of event days, the dimension tables, and the language-model stage."""

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
    selection=dg.AssetSelection.groups("language_model"),
    description="Embed new texts and rebuild item vectors (and whatever else the language_model group holds).",
)

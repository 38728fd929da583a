"""The one Definitions object of the code location."""

from __future__ import annotations

import dagster as dg

from kronos_pipeline.defs import features, ingest, prices, universe
from kronos_pipeline.defs.automation import jobs, schedules, sensors
from kronos_pipeline.defs.resources import default_resources

DATA_ASSETS = [
    ingest.ingest_bars,
    prices.prices_pit_asset,
    universe.universe_asset,
    features.features_asset,
    features.labels_forward_asset,
]

defs = dg.Definitions(
    assets=DATA_ASSETS,
    jobs=jobs(),
    schedules=schedules(),
    sensors=sensors(),
    resources=default_resources(),
)

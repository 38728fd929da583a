"""The one Definitions object of the code location."""

import os

import dagster as dg

from kronos_pipeline.defs import evaluation, features, ingest, kronos, prices, signals, universe
from kronos_pipeline.defs.automation import jobs, sensors
from kronos_pipeline.defs.executor import steps_executor
from kronos_pipeline.defs.heads import HEAD_ASSETS
from kronos_pipeline.defs.resources import default_resources
from kronos_pipeline.deployment import AUTOMATION_ENV

DATA_ASSETS = [
    ingest.ingest_bars,
    prices.prices_pit_asset,
    universe.universe_asset,
    features.features_asset,
    features.labels_forward_asset,
]
# The vendor folder is produced outside the pipeline: an observable source at the top of the
# graph, whose data version is the folder's fingerprint.
SOURCE_ASSETS = [ingest.vendor_files]
# Each data asset's written column schema, compared with its previous materialization.
DATA_CHECKS = dg.build_column_schema_change_checks(assets=DATA_ASSETS)
EVALUATION_ASSETS = [
    evaluation.folds_asset,
    evaluation.lightgbm_models_asset,
    evaluation.baseline_scores_asset,
    evaluation.evaluation_tables,
    evaluation.evaluation_report_asset,
]

KRONOS_ASSETS = kronos.KRONOS_ASSETS + HEAD_ASSETS

defs = dg.Definitions(
    assets=SOURCE_ASSETS
    + DATA_ASSETS
    + EVALUATION_ASSETS
    + KRONOS_ASSETS
    + [signals.signals_asset],
    asset_checks=DATA_CHECKS,
    jobs=jobs(),
    # The automation sensor, unless the location is loaded by the CLI's own short-lived
    # deployment (deployment.AUTOMATION_ENV=off), which exists to run the command's runs.
    sensors=sensors(automation=os.environ.get(AUTOMATION_ENV, "on") != "off"),
    resources=default_resources(),
    # Every job's: multiprocess unless a run's execution config selects in_process or celery.
    executor=steps_executor,
)

"""The runs the pipeline is operated with: which assets each kind of job covers, and the
night as explicit runs for ``kronos-pipeline nightly``.

A deployment with a daemon needs no plan: the assets' automation conditions run the same night
by themselves (``defs/conditions.py``). Without a daemon, :func:`nightly_steps` lists the runs
that take one session from the vendor's file to the published signal, each started when the
one before succeeded. Job and asset names are plain strings here; the jobs themselves are
defined in ``defs/automation.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.settings import Settings

#: Fold-level models: fitted once per fold (or refit period), read by the fold's days.
MODEL_ASSETS = ("lightgbm_models", "kronos_checkpoint", "kronos_heads")
#: Date-level scores, the day's signal last.
SCORE_ASSETS = (
    "baseline_scores",
    "kronos_forecasts",
    "kronos_scores",
    "kronos_head_scores",
    "signals",
)
#: What ``kronos.enabled = false`` leaves out.
KRONOS_ASSETS = (
    "kronos_checkpoint",
    "kronos_forecasts",
    "kronos_scores",
    "kronos_heads",
    "kronos_head_scores",
)
CLI_TAG = "kronos/cli"  # a run the CLI submitted: the CLI starts each next step itself
NIGHTLY_TAG = "kronos/nightly"  # the session a nightly run (and each step after it) is for
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
DAY_FMT, MONTH_FMT = "%Y-%m-%d", "%Y-%m"  # the weekday and fold partition keys


@dataclass(frozen=True)
class NightlyStep:
    """One run of the nightly chain."""

    job: str
    partition_key: str | None = None
    key_range: tuple[str, str] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    assets: tuple[str, ...] | None = None  # a subset of the job's assets; None: all

    def run_tags(self) -> dict[str, str]:
        tags = dict(self.tags)
        if self.key_range is not None:
            tags.update({RANGE_START: self.key_range[0], RANGE_END: self.key_range[1]})
        return tags

    @property
    def label(self) -> str:
        if self.key_range is not None:
            return f"{self.key_range[0]}..{self.key_range[1]}"
        return self.partition_key or ""


def nightly_steps(
    day: dt.date,
    settings: Settings,
    fitted: Callable[[str, str], bool] | None = None,
    evaluable: bool = False,
) -> list[NightlyStep]:
    """The runs that take session ``day`` from the vendor's file to the published signal:

    1. ``nightly_data_job`` on the day's partition: ingest, PIT prices, universe, features,
       then the folds (a new one when ``day`` opens a month);
    2. ``models_job`` on the day's fold, only for the models that fold lacks (a new month):
       ``fitted(asset, fold)`` says whether one is there; without it, every model;
    3. ``scoring_job`` on the day's partition: every model's scores, the Kronos forecasts,
       and the signal (``signals`` table and ``data/signals/<day>.parquet``);
    4. ``nightly_evaluation_job`` on the days from ``max(horizons)`` sessions back (the labels
       that can mature on ``day``, ``day``'s own included), then the rollups and the report.

    Each run starts a worker that imports the code location, so the night is as few runs as
    the partitions allow (three on most nights). ``evaluable``: the warehouse already has a
    scored pair with a matured label. Until it has, step 4 is ``labels_job`` then a separate
    ``evaluation_job``, which the caller runs only if the new labels gave it something to judge
    (``evaluation_job`` fails on nothing to evaluate; the first nights of a deployment have no
    matured label).
    """
    key, horizon = day.strftime(DAY_FMT), max(settings.labels.horizons)
    tags = {NIGHTLY_TAG: str(day)}
    sessions = trading_days(day - dt.timedelta(days=3 * horizon + 30), day, settings.data.calendar)
    back = sessions[-(horizon + 1)].date()
    steps = [NightlyStep("nightly_data_job", key, tags=tags)]
    fold = day.strftime(MONTH_FMT)
    if fold >= settings.folds.first_test_month:
        kronos = settings.kronos.enabled
        models = [a for a in MODEL_ASSETS if kronos or a not in KRONOS_ASSETS]
        if fitted is not None:  # fit only what this fold lacks (a new month)
            models = [a for a in models if not fitted(a, fold)]
        if models:
            steps.append(NightlyStep("models_job", fold, tags=tags, assets=tuple(models)))
        scores = [a for a in SCORE_ASSETS if kronos or a not in KRONOS_ASSETS]
        steps.append(NightlyStep("scoring_job", key, tags=tags, assets=tuple(scores)))
    labels = (back.strftime(DAY_FMT), key)
    if evaluable:
        steps.append(NightlyStep("nightly_evaluation_job", key_range=labels, tags=tags))
    else:
        steps.append(NightlyStep("labels_job", key_range=labels, tags=tags))
        steps.append(NightlyStep("evaluation_job", tags=tags))
    return steps

"""Scores in, every evaluation table out: the chain the Dagster assets and the CLI both run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kronos_pipeline.evaluation import gates as gates_mod
from kronos_pipeline.evaluation import metrics, tripwires
from kronos_pipeline.evaluation.baselines import CONTROL_MODELS, LIGHTGBM_MODEL
from kronos_pipeline.settings import Settings


@dataclass
class Evaluation:
    """Every table of one evaluation run (see :func:`evaluate_scores`)."""

    eval_rows: pd.DataFrame
    per_date: pd.DataFrame
    fold_summaries: pd.DataFrame
    comparison: pd.DataFrame
    deciles: pd.DataFrame
    tripwires: dict[str, Any]
    verdicts: pd.DataFrame
    common: pd.DataFrame  # every compared model on the (date, ticker) pairs all of them scored
    versus_lightgbm: pd.DataFrame  # each model against LightGBM on the pairs both scored
    reference: pd.DataFrame


def evaluate_scores(
    scores: pd.DataFrame,
    labels: pd.DataFrame,
    settings: Settings,
    momentum: pd.DataFrame | None = None,
    market: pd.DataFrame | None = None,
    as_of: pd.Timestamp | None = None,
    pretrained_models: Sequence[str] = (),
    pit: dict[str, Any] | None = None,
    adjustment: dict[str, Any] | None = None,
) -> Evaluation:
    """Join scores to matured labels and compute metrics, summaries, tripwires and gates.

    Args:
        scores: long scores of every model (``model, horizon, date, ticker, score, fold``).
        labels: ``labels_forward`` rows.
        settings: pipeline settings (costs, gates, report references, Kronos pre-train cutoff).
        momentum: ``date, ticker, mom_12_1`` for the momentum-independence metric.
        market: ``date, mkt_ret`` (equal-weight daily return) for the volatility regimes.
        as_of: keep labels with ``available_at <= as_of`` only (None: all given labels).
        pretrained_models: models using published pre-trained weights (contamination split).
        pit, adjustment: results of the data-layer tripwires, if run.
    """
    rows = metrics.eval_rows(scores, labels, as_of)
    per_date = metrics.per_date_metrics(
        rows, settings.costs.cost_bps, momentum, market, calendar=settings.data.calendar,
        book_scores=scores,
    )  # fmt: skip
    folds = metrics.fold_summaries(per_date)
    comparison = metrics.model_comparison(per_date, folds, settings.gates.min_scoring_dates)
    trip = tripwires.run_tripwires(
        per_date, comparison, settings.tripwires,
        pretrained_models=pretrained_models,
        pretrain_cutoff=pd.Timestamp(settings.kronos.pretrain_cutoff),
        pit=pit, adjustment=adjustment,
    )  # fmt: skip
    compared = sorted(set(rows["model"]) - set(CONTROL_MODELS))
    common = metrics.common_comparison(rows, compared, settings.data.calendar)
    versus = metrics.versus_reference(rows, compared, LIGHTGBM_MODEL, settings.data.calendar)
    verdicts = gates_mod.evaluate_gates(
        comparison, settings.gates, leak_models=trip["leak_scan"]["flagged_models"],
        versus_lightgbm=versus,
    )  # fmt: skip
    return Evaluation(
        eval_rows=rows,
        per_date=per_date,
        fold_summaries=folds,
        comparison=comparison,
        deciles=metrics.decile_returns(rows),
        tripwires=trip,
        verdicts=verdicts,
        common=common,
        versus_lightgbm=versus,
        reference=gates_mod.reference_comparison(comparison, settings.report),
    )

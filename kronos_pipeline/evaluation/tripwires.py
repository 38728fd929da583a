"""Leak tripwires (SPEC section 7): negative controls that must read ~0, a positive control that
must fire, the leak scan, and summaries of the data-layer checks (PIT recomputation, adjustment
consistency) and of pre-training contamination.

The controls are models the pipeline itself trains and scores, so a broken pipeline moves them:

- ``lightgbm_shuffled_labels``: LightGBM retrained on its fold's training labels permuted
  across (date, ticker); anything it still finds came through a path other than the labels;
- ``random``: the pipeline's own random baseline;
- ``lightgbm_planted_leak``: LightGBM given the future label plus noise as an input; the leak
  scan must flag it, or the scan is blind.

Each tripwire returns a JSON-friendly dict with ``status`` (``pass`` / ``fail`` / ``not
evaluated``), ``passed`` (True / False, None when not evaluated, never counted as passed),
``reason`` and the numbers behind it; :func:`run_tripwires` bundles them in the layout of
``leak_tripwires.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation.baselines import (
    CONTROL_MODELS,
    PLANTED_LEAK_MODEL,
    RANDOM_MODEL,
    SHUFFLED_MODEL,
)
from kronos_pipeline.evaluation.metrics import min_dates_for_hac
from kronos_pipeline.settings import TripwireSettings

PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not evaluated"
#: Tripwires whose failure (or absence) stops promotion; the others warn.
BLOCKING_TRIPWIRES = (
    "shuffled_labels", "random_scores", "planted_leak", "leak_scan", "pit_recomputation",
    "adjustment_consistency",
)  # fmt: skip


def verdict(status: str, reason: str, **numbers: Any) -> dict[str, Any]:
    """A tripwire result: ``status``, ``passed`` (None unless evaluated) and ``reason``."""
    passed = {PASS: True, FAIL: False}.get(status)
    return {"status": status, "passed": passed, "reason": reason, **numbers}


def not_evaluated(reason: str) -> dict[str, Any]:
    return verdict(NOT_EVALUATED, reason)


def control_fold_ids(fold_ids: Sequence[str], max_folds: int | None) -> list[str]:
    """At most ``max_folds`` of ``fold_ids`` spread evenly (first and last included); all of
    them when ``max_folds`` is None or not smaller."""
    ids = list(fold_ids)
    if max_folds is None or len(ids) <= max_folds:
        return ids
    if max_folds <= 0:
        return []
    picks = np.unique(np.round(np.linspace(0, len(ids) - 1, max_folds)).astype(int))
    return [ids[i] for i in picks]


def within_noise_at_horizon(row: pd.Series, cfg: TripwireSettings) -> dict[str, Any]:
    """A negative control at one horizon (SPEC section 7): within noise of 0 when
    ``|median RankIC| < max_abs_median_rankic`` or ``|NW t| < max_abs_t``, the NW t being the
    one of SPEC section 5 (the comparison's ``nw_t``, lag ``ceil(h / spacing) - 1``).

    Where that t is n/a (fewer than ``4 (lag + 1)`` dates) and the median is not small, the
    control is "not evaluated": no other statistic stands in for the t. A missing median is
    "not evaluated" too. Returns ``horizon, median_rank_ic, nw_t, n_dates, nw_min_dates,
    n_folds, status, reason``.
    """
    h, n = int(row["horizon"]), int(row["n_dates"])
    med, t = float(row["median_rank_ic"]), float(row["nw_t"])
    lag = int(row.get("nw_lag", 0))
    need = int(row.get("nw_min_dates", min_dates_for_hac(lag)))
    numbers = {"horizon": h, "median_rank_ic": med, "nw_t": t, "n_dates": n,
               "nw_min_dates": need, "n_folds": int(row.get("n_folds", 0))}  # fmt: skip
    small_median = np.isfinite(med) and abs(med) < cfg.max_abs_median_rankic
    if not np.isfinite(med):
        status, why = NOT_EVALUATED, f"{h}d no median RankIC"
    elif small_median:
        status, why = PASS, f"{h}d |median| {abs(med):.4f} < {cfg.max_abs_median_rankic}"
    elif not np.isfinite(t):
        status = NOT_EVALUATED
        why = f"{h}d median {med:+.4f} and NW t n/a ({n} dates, {need} needed at lag {lag})"
    else:
        ok = abs(t) < cfg.max_abs_t
        status = PASS if ok else FAIL
        why = f"{h}d median {med:+.4f}, NW t {t:+.2f}"
    return {**numbers, "status": status, "passed": status == PASS, "reason": why}


def _within_noise(model: str, comparison: pd.DataFrame, cfg: TripwireSettings) -> dict[str, Any]:
    """A negative control passes when it is within noise of 0 at every horizon
    (:func:`within_noise_at_horizon`), fails when it is not at one, and is not evaluated when
    it was not scored or a horizon could not be judged (and none failed). ``too_few_dates`` is
    True when only the dates the NW t needs were missing (a SMOKE-sized run), not the control
    itself or its figures."""
    rows = comparison[comparison["model"] == model]
    if rows.empty:
        return not_evaluated(f"{model} was not scored in this run")
    by_horizon = [
        within_noise_at_horizon(r, cfg) for _, r in rows.sort_values("horizon").iterrows()
    ]
    limits = f"|median| < {cfg.max_abs_median_rankic} or |NW t| < {cfg.max_abs_t}"
    failed = [r["reason"] for r in by_horizon if r["status"] == FAIL]
    unjudged = [r["reason"] for r in by_horizon if r["status"] == NOT_EVALUATED]
    if failed:
        return verdict(FAIL, f"{model} is not noise ({limits}): " + "; ".join(failed),
                       model=model, by_horizon=by_horizon)  # fmt: skip
    if unjudged:
        short = all(
            np.isfinite(r["median_rank_ic"]) and r["n_dates"] < r["nw_min_dates"]
            for r in by_horizon if r["status"] == NOT_EVALUATED
        )  # fmt: skip
        return verdict(NOT_EVALUATED, f"{model} could not be judged ({limits}): "
                       + "; ".join(unjudged), model=model, by_horizon=by_horizon,
                       too_few_dates=short)  # fmt: skip
    return verdict(PASS, f"{model} within noise of 0 at every horizon ({limits})",
                   model=model, by_horizon=by_horizon)  # fmt: skip


def shuffled_labels(comparison: pd.DataFrame, cfg: TripwireSettings) -> dict[str, Any]:
    """LightGBM retrained on permuted training labels (``lightgbm_shuffled_labels``) must be
    within noise of 0 on the test months; a leak that does not go through the training labels
    survives the permutation and trips it."""
    return _within_noise(SHUFFLED_MODEL, comparison, cfg)


def random_scores_control(comparison: pd.DataFrame, cfg: TripwireSettings) -> dict[str, Any]:
    """The pipeline's own ``random`` baseline must be within noise of 0."""
    return _within_noise(RANDOM_MODEL, comparison, cfg)


def leak_scan(comparison: pd.DataFrame, cfg: TripwireSettings) -> dict[str, Any]:
    """Flag any model whose median RankIC reaches ``cfg.max_plausible_median_rankic`` at some
    horizon (a leak). Fails when a model other than the planted-leak control is flagged;
    ``flagged_models`` (controls excluded) feeds the gates."""
    limit = cfg.max_plausible_median_rankic
    if comparison.empty:
        return not_evaluated("no model was scored")
    flagged = comparison[comparison["median_rank_ic"] >= limit]
    real = flagged[~flagged["model"].isin(CONTROL_MODELS)]
    numbers = {
        "max_plausible_median_rank_ic": limit,
        "flagged": [
            {"model": r.model, "horizon": int(r.horizon), "median_rank_ic": float(r.median_rank_ic)}
            for r in flagged.itertuples()
        ],
        "flagged_models": sorted(real["model"].unique().tolist()),
    }
    if not real.empty:
        return verdict(FAIL, "implausibly high median RankIC: " + ", ".join(
            f"{r.model} {r.horizon}d {r.median_rank_ic:.3f}" for r in real.itertuples()), **numbers)  # fmt: skip
    return verdict(PASS, f"no model reaches median RankIC {limit}", **numbers)


def planted_leak(comparison: pd.DataFrame, scan: dict[str, Any]) -> dict[str, Any]:
    """Positive control: the leak scan must flag ``lightgbm_planted_leak`` at every horizon it
    was evaluated at; otherwise the scan (or the metric) is blind and the tripwire fails."""
    rows = comparison[comparison["model"] == PLANTED_LEAK_MODEL]
    if rows.empty:
        return not_evaluated(f"{PLANTED_LEAK_MODEL} was not scored in this run")
    if scan.get("status") == NOT_EVALUATED:
        return not_evaluated("the leak scan did not run")
    hits = {f["horizon"] for f in scan["flagged"] if f["model"] == PLANTED_LEAK_MODEL}
    by_h = [
        {"horizon": int(r.horizon), "median_rank_ic": float(r.median_rank_ic),
         "fired": int(r.horizon) in hits}
        for r in rows.sort_values("horizon").itertuples()
    ]  # fmt: skip
    missed = [r["horizon"] for r in by_h if not r["fired"]]
    limit = scan["max_plausible_median_rank_ic"]
    if missed:
        return verdict(FAIL, f"the leak scan (median RankIC >= {limit}) missed the planted leak "
                       f"at horizons {missed}", by_horizon=by_h)  # fmt: skip
    return verdict(PASS, "the leak scan flagged the planted leak at every horizon", by_horizon=by_h)


def pit_recomputation_summary(
    full: pd.DataFrame,
    truncated: pd.DataFrame,
    as_of: pd.Timestamp,
    keys: Sequence[str] = ("date", "ticker"),
    atol: float = 1e-12,
) -> dict[str, Any]:
    """Compare values as of ``as_of`` computed on all data (``full``) and on data cut after
    ``as_of`` (``truncated``).

    Both tables hold ``keys`` plus the same value columns; only rows dated ``<= as_of`` are
    compared. Passes when the key sets match and every value agrees within ``atol`` (NaN equals
    NaN). Reports the worst column and difference.
    """
    keys = list(keys)
    a = full[pd.to_datetime(full["date"]) <= pd.Timestamp(as_of)]
    b = truncated[pd.to_datetime(truncated["date"]) <= pd.Timestamp(as_of)]
    values = [c for c in a.columns if c not in keys and pd.api.types.is_numeric_dtype(a[c])]
    m = a.merge(b, on=keys, how="outer", suffixes=("_full", "_cut"), indicator=True)
    missing = int((m["_merge"] != "both").sum())
    worst_col, worst = None, 0.0
    mismatched = 0
    both = m[m["_merge"] == "both"]
    for c in values:
        x = both[f"{c}_full"].to_numpy(float)
        y = both[f"{c}_cut"].to_numpy(float)
        same_nan = np.isnan(x) & np.isnan(y)
        diff = np.where(same_nan, 0.0, np.abs(x - y))
        diff = np.where(np.isnan(diff), np.inf, diff)
        bad = int((diff > atol).sum())
        mismatched += bad
        if len(diff) and float(diff.max()) > worst:
            worst_col, worst = c, float(diff.max())
    return {
        "as_of": str(pd.Timestamp(as_of).date()),
        "rows_compared": int(len(both)),
        "rows_missing_on_one_side": missing,
        "values_mismatched": mismatched,
        "worst_column": worst_col,
        "max_abs_diff": worst,
        "passed": bool(missing == 0 and mismatched == 0),
    }


def contamination_split(
    per_date: pd.DataFrame, pretrained_models: Sequence[str], cutoff: pd.Timestamp
) -> dict[str, Any]:
    """Median RankIC before and after the pre-training cutoff for models using published weights.

    Dates ``<= cutoff`` were (possibly) seen during pre-training: contaminated. ``passed`` is
    informational (always True); ``contaminated_models`` lists pretrained models with any
    evaluated date on or before the cutoff.
    """
    cutoff = pd.Timestamp(cutoff)
    rows, contaminated = [], []
    for (model, horizon), g in per_date[per_date["model"].isin(list(pretrained_models))].groupby(
        ["model", "horizon"]
    ):
        before = g.loc[pd.to_datetime(g["date"]) <= cutoff, "rank_ic"].dropna()
        after = g.loc[pd.to_datetime(g["date"]) > cutoff, "rank_ic"].dropna()
        if len(before):
            contaminated.append(model)
        rows.append(
            {
                "model": model,
                "horizon": int(horizon),
                "n_dates_before_cutoff": int(len(before)),
                "median_rank_ic_before_cutoff": float(before.median()) if len(before) else None,
                "n_dates_after_cutoff": int(len(after)),
                "median_rank_ic_after_cutoff": float(after.median()) if len(after) else None,
            }
        )
    return verdict(
        PASS,
        "informational: metrics split at the pre-training cutoff",
        pretrain_cutoff=str(cutoff.date()),
        by_model=rows,
        contaminated_models=sorted(set(contaminated)),
    )


def run_tripwires(
    per_date: pd.DataFrame,
    comparison: pd.DataFrame,
    cfg: TripwireSettings,
    pretrained_models: Sequence[str] = (),
    pretrain_cutoff: pd.Timestamp | None = None,
    pit: dict[str, Any] | None = None,
    adjustment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All tripwires in the layout of ``leak_tripwires.json``.

    ``pit`` and ``adjustment`` are results computed upstream from raw data (see
    ``data_tripwires``); absent ones are "not evaluated". ``passed`` at the top is True only
    when every blocking tripwire passed (one not evaluated does not count as passed).
    """
    scan = leak_scan(comparison, cfg)
    result: dict[str, Any] = {
        "shuffled_labels": shuffled_labels(comparison, cfg),
        "random_scores": random_scores_control(comparison, cfg),
        "planted_leak": planted_leak(comparison, scan),
        "leak_scan": scan,
        "pit_recomputation": pit or not_evaluated("PIT recomputation did not run"),
        "adjustment_consistency": adjustment or not_evaluated("adjustment check did not run"),
    }
    if pretrained_models and pretrain_cutoff is not None:
        result["contamination"] = contamination_split(per_date, pretrained_models, pretrain_cutoff)
    else:
        result["contamination"] = verdict(PASS, "no pretrained checkpoint evaluated")
    result["passed"] = all(result[name].get("passed") is True for name in BLOCKING_TRIPWIRES)
    return result

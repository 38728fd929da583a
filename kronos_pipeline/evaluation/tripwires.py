"""Leak tripwires (SPEC section 7): negative controls that must read ~0, a positive control that
must fire, and summaries of the data-layer checks (PIT recomputation, adjustment consistency) and
of pre-training contamination.

Each tripwire returns a JSON-friendly dict with at least ``passed`` (bool) and the numbers behind
it; :func:`run_tripwires` bundles them in the layout of ``leak_tripwires.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kronos_pipeline.evaluation.baselines import stable_seed
from kronos_pipeline.evaluation.metrics import MIN_NAMES_PER_DATE
from kronos_pipeline.settings import GateSettings

#: Fewest permutations / random draws averaged per date. More are drawn when needed so that the
#: sampling error of the median, ~ 1.2533 / sqrt((n_names - 1) * n_dates * draws), is at most
#: 1 / CONTROL_SIGMAS of the tolerance: a correct pipeline then fails a control with odds ~1e-4.
CONTROL_DRAWS = 20
CONTROL_SIGMAS = 4.0
MAX_CONTROL_DRAWS = 2000
#: A real model whose median RankIC reaches this is treated as leaking. Proposed as
#: ``GateSettings.tripwire_max_plausible_median_rankic``; read from there once it exists.
MAX_PLAUSIBLE_MEDIAN_RANKIC = 0.5
TRIPWIRE_SEED = 20240611


def control_draws(n_names: float, n_dates: int, tolerance: float) -> int:
    """Draws per date so the control's median RankIC has standard error <= tolerance / 4.

    ``se(median) ~ 1.2533 / sqrt((n_names - 1) * n_dates * draws)`` under the null (the
    per-date RankIC of independent ranks has variance ``1 / (n_names - 1)``).
    """
    if n_dates <= 0 or n_names <= 1:
        return CONTROL_DRAWS
    need = (CONTROL_SIGMAS * 1.2533 / tolerance) ** 2 / ((n_names - 1) * n_dates)
    return int(min(MAX_CONTROL_DRAWS, max(CONTROL_DRAWS, np.ceil(need))))


def _max_plausible(gates: GateSettings) -> float:
    return float(
        getattr(gates, "tripwire_max_plausible_median_rankic", MAX_PLAUSIBLE_MEDIAN_RANKIC)
    )


def _ranked_groups(rows: pd.DataFrame, value: str):
    """Yield ``(model, horizon, date, centred ranks of score, centred ranks of value)``."""
    for (model, horizon, date), g in rows.groupby(["model", "horizon", "date"], sort=True):
        ok = g["score"].notna() & g[value].notna()
        if ok.sum() < MIN_NAMES_PER_DATE:
            continue
        rs = stats.rankdata(g.loc[ok, "score"].to_numpy(float))
        ry = stats.rankdata(g.loc[ok, value].to_numpy(float))
        yield model, int(horizon), date, rs - rs.mean(), ry - ry.mean()


def _corr_rows(rs: np.ndarray, ry_draws: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``rs`` (n,) with each row of ``ry_draws`` (k, n), both centred."""
    num = ry_draws @ rs
    den = np.sqrt((rs * rs).sum() * (ry_draws * ry_draws).sum(axis=1))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _control_verdict(per_date: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    by_model = []
    for (model, horizon), g in per_date.groupby(["model", "horizon"], sort=True):
        med = float(g["rank_ic"].median())
        by_model.append(
            {
                "model": model,
                "horizon": horizon,
                "median_rank_ic": med,
                "n_dates": int(len(g)),
                "draws_per_date": int(g["draws"].iloc[0]),
                "passed": bool(abs(med) < tolerance),
            }
        )
    return {
        "tolerance_abs_median_rank_ic": tolerance,
        "by_model": by_model,
        "passed": all(r["passed"] for r in by_model),
    }


def shuffled_labels(
    rows: pd.DataFrame, gates: GateSettings, seed: int = TRIPWIRE_SEED
) -> dict[str, Any]:
    """RankIC of every model against labels permuted across names within each date.

    Per date: the mean RankIC over :func:`control_draws` seeded permutations of
    ``excess_return``; per model and horizon: the median over dates. Passes when ``|median| <
    gates.tripwire_max_abs_median_rankic`` for every model and horizon.
    """
    tol = gates.tripwire_max_abs_median_rankic
    sizes = rows.groupby(["model", "horizon", "date"]).size().groupby(["model", "horizon"])
    draws = {k: control_draws(v.mean(), len(v), tol) for k, v in sizes}
    out = []
    for model, horizon, date, rs, ry in _ranked_groups(rows, "excess_return"):
        k = draws[(model, horizon)]
        rng = np.random.default_rng(stable_seed(seed, "shuffle", model, horizon, date))
        shuffled = rng.permuted(np.broadcast_to(ry, (k, len(ry))), axis=1)
        out.append((model, horizon, date, float(np.nanmean(_corr_rows(rs, shuffled))), k))
    per_date = pd.DataFrame(out, columns=["model", "horizon", "date", "rank_ic", "draws"])
    return _control_verdict(per_date, gates.tripwire_max_abs_median_rankic)


def random_scores_control(
    rows: pd.DataFrame, gates: GateSettings, seed: int = TRIPWIRE_SEED
) -> dict[str, Any]:
    """RankIC of seeded random scores against the real labels of each horizon's scoring dates.

    Per date: the mean RankIC over :func:`control_draws` standard normal score vectors; per
    horizon: the median over dates. Passes when ``|median| <
    gates.tripwire_max_abs_median_rankic``. (The ``random`` baseline model is one such draw and is
    reported in the comparison table.)
    """
    labels = rows.drop_duplicates(["horizon", "date", "ticker"])[
        ["horizon", "date", "ticker", "excess_return"]
    ].assign(model="random_control", score=0.0)
    tol = gates.tripwire_max_abs_median_rankic
    sizes = labels.groupby(["horizon", "date"]).size().groupby("horizon")
    n_draws = {h: control_draws(v.mean(), len(v), tol) for h, v in sizes}
    out = []
    for (horizon, date), g in labels.groupby(["horizon", "date"], sort=True):
        y = g["excess_return"].to_numpy(float)
        y = y[np.isfinite(y)]
        if len(y) < MIN_NAMES_PER_DATE:
            continue
        ry = stats.rankdata(y)
        ry -= ry.mean()
        rng = np.random.default_rng(stable_seed(seed, "random", horizon, date))
        k = n_draws[horizon]
        rd = stats.rankdata(rng.standard_normal((k, len(y))), axis=1)
        rd -= rd.mean(axis=1, keepdims=True)
        out.append(("random_control", int(horizon), date, float(np.nanmean(_corr_rows(ry, rd))), k))
    per_date = pd.DataFrame(out, columns=["model", "horizon", "date", "rank_ic", "draws"])
    return _control_verdict(per_date, gates.tripwire_max_abs_median_rankic)


def planted_leak(rows: pd.DataFrame, gates: GateSettings) -> dict[str, Any]:
    """Positive control: a "model" whose score is the future label itself must score RankIC near 1.

    Uses the eval rows' ``excess_return`` as the score, per horizon; fires (``passed`` = it fired)
    when the median RankIC ``>= gates.tripwire_planted_leak_min_rankic``, proving the metric and
    the leak scan can detect a leak.
    """
    leak = rows.drop_duplicates(["horizon", "date", "ticker"]).copy()
    leak["model"] = "planted_leak"
    leak["score"] = leak["excess_return"]
    meds = []
    for _, horizon, _, rs, ry in _ranked_groups(leak, "excess_return"):
        meds.append((horizon, float((rs @ ry) / np.sqrt((rs @ rs) * (ry @ ry)))))
    per_h = (
        pd.DataFrame(meds, columns=["horizon", "rank_ic"]).groupby("horizon")["rank_ic"].median()
    )
    threshold = gates.tripwire_planted_leak_min_rankic
    by_h = [
        {"horizon": int(h), "median_rank_ic": float(v), "fired": bool(v >= threshold)}
        for h, v in per_h.items()
    ]
    return {
        "min_rank_ic_to_fire": threshold,
        "by_horizon": by_h,
        "passed": bool(by_h) and all(r["fired"] for r in by_h),
    }


def leak_scan(comparison: pd.DataFrame, gates: GateSettings) -> dict[str, Any]:
    """Flag any model whose median RankIC is implausibly high for a real signal (a leak).

    A model and horizon is flagged when ``median_rank_ic >= MAX_PLAUSIBLE_MEDIAN_RANKIC`` (see
    module constant). Passes when nothing is flagged; ``flagged_models`` feeds the gates.
    """
    limit = _max_plausible(gates)
    flagged = comparison[comparison["median_rank_ic"] >= limit]
    return {
        "max_plausible_median_rank_ic": limit,
        "flagged": [
            {"model": r.model, "horizon": int(r.horizon), "median_rank_ic": float(r.median_rank_ic)}
            for r in flagged.itertuples()
        ],
        "flagged_models": sorted(flagged["model"].unique().tolist()),
        "passed": bool(flagged.empty),
    }


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


def adjustment_consistency(returns: pd.DataFrame, atol: float = 1e-6) -> dict[str, Any]:
    """The pipeline's adjusted daily returns vs the vendor's ``adjusted_close`` returns on days
    without a corporate action.

    ``returns`` columns: ``date, ticker, adj_return`` (pipeline), ``vendor_adj_return`` (from
    ``adjusted_close``), ``corporate_action`` (bool: a split or dividend that day). Passes when
    every non-action day agrees within ``atol`` (fraction); reports the share matching and the
    worst ticker-date.
    """
    r = returns[~returns["corporate_action"].astype(bool)]
    r = r.dropna(subset=["adj_return", "vendor_adj_return"])
    diff = (r["adj_return"] - r["vendor_adj_return"]).abs()
    worst = r.loc[diff.idxmax()] if len(r) else None
    return {
        "days_compared": int(len(r)),
        "share_within_tolerance": float((diff <= atol).mean()) if len(r) else float("nan"),
        "tolerance": atol,
        "max_abs_diff": float(diff.max()) if len(r) else 0.0,
        "worst": None
        if worst is None
        else {"ticker": str(worst["ticker"]), "date": str(pd.Timestamp(worst["date"]).date())},
        "passed": bool(len(r) == 0 or (diff <= atol).all()),
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
    return {
        "pretrain_cutoff": str(cutoff.date()),
        "by_model": rows,
        "contaminated_models": sorted(set(contaminated)),
        "passed": True,
    }


def run_tripwires(
    rows: pd.DataFrame,
    per_date: pd.DataFrame,
    comparison: pd.DataFrame,
    gates: GateSettings,
    pretrained_models: Sequence[str] = (),
    pretrain_cutoff: pd.Timestamp | None = None,
    pit: dict[str, Any] | None = None,
    adjustment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All tripwires in the layout of ``leak_tripwires.json``.

    ``pit`` and ``adjustment`` are the results of :func:`pit_recomputation_summary` and
    :func:`adjustment_consistency` computed upstream (they need raw data); absent ones are recorded
    as ``{"passed": None, "status": "not run"}``. ``passed`` at the top is True when every tripwire
    that ran passed.
    """
    result: dict[str, Any] = {
        "shuffled_labels": shuffled_labels(rows, gates),
        "random_scores": random_scores_control(rows, gates),
        "planted_leak": planted_leak(rows, gates),
        "leak_scan": leak_scan(comparison, gates),
        "pit_recomputation": pit or {"passed": None, "status": "not run"},
        "adjustment_consistency": adjustment or {"passed": None, "status": "not run"},
    }
    if pretrained_models and pretrain_cutoff is not None:
        result["contamination"] = contamination_split(per_date, pretrained_models, pretrain_cutoff)
    else:
        result["contamination"] = {"passed": True, "status": "no pretrained checkpoint evaluated"}
    result["passed"] = all(v.get("passed") is not False for v in result.values())
    return result

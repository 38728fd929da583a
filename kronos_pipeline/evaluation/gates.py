"""Gates 1 to 3 (SPEC section 6) and the comparison with the reference study's frozen numbers.

Verdicts are computed for every model in the comparison table so the report can mark them;
only candidate models (anything that is not a baseline) block promotion.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation.baselines import (
    BASELINE_MODELS,
    COMPOSITE_MODEL,
    CONTROL_MODELS,
    LIGHTGBM_MODEL,
)
from kronos_pipeline.evaluation.tripwires import FAIL, NOT_EVALUATED, PASS
from kronos_pipeline.settings import GateSettings, ReportSettings


@dataclass(frozen=True)
class GateResult:
    """One gate verdict for one model (``horizon`` is None for gates judged across horizons).

    ``status`` is ``pass``, ``fail`` or ``not evaluated`` (missing data, NaN, no candidate, a
    tripwire that did not run); ``passed`` is True for ``pass`` only, so a verdict that could
    not be reached never counts as passed.
    """

    gate: str
    model: str
    horizon: int | None
    status: str
    candidate: bool
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


def candidate_models(models: Iterable[str]) -> list[str]:
    """Models the gates judge for promotion: everything that is neither a baseline nor a
    tripwire control."""
    return sorted({m for m in models if m not in BASELINE_MODELS and m not in CONTROL_MODELS})


def _fmt(x: float | None) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.4f}"


def _finite(x: object) -> bool:
    return x is not None and bool(np.isfinite(float(x)))


def gate1(rows: pd.DataFrame, gates: GateSettings) -> tuple[str, str]:
    """Zero-shot signal: ``median_rank_ic >= gate1_min_median_rankic`` for at least
    ``gate1_min_horizons`` horizons, and ``median_momentum_corr < gate1_max_momentum_corr`` at every
    horizon. ``rows``: one model's comparison rows. A NaN median RankIC or momentum correlation
    at any horizon is "not evaluated" unless the horizons that were evaluated already fail."""
    med = rows["median_rank_ic"].to_numpy(float)
    mom = rows["median_momentum_corr"].to_numpy(float)
    horizons = rows["horizon"].astype(int).tolist()
    ok_h = [
        h
        for h, v in zip(horizons, med, strict=True)
        if np.isfinite(v) and v >= gates.gate1_min_median_rankic
    ]
    missing = [
        h
        for h, a, b in zip(horizons, med, mom, strict=True)
        if not (np.isfinite(a) and np.isfinite(b))
    ]
    mom_bad = [
        h
        for h, v in zip(horizons, mom, strict=True)
        if np.isfinite(v) and v >= gates.gate1_max_momentum_corr
    ]
    reason = (
        f"median RankIC >= {gates.gate1_min_median_rankic} at horizons {ok_h} "
        f"(need {gates.gate1_min_horizons}); max median momentum corr "
        f"{_fmt(float(np.nanmax(mom)) if np.isfinite(mom).any() else None)} "
        f"(< {gates.gate1_max_momentum_corr} needed)"
    )
    if mom_bad:
        return FAIL, reason
    if missing or rows.empty:
        if len(ok_h) + len(missing) < gates.gate1_min_horizons:
            return FAIL, reason
        return (
            NOT_EVALUATED,
            f"no median RankIC or momentum correlation at horizons {missing}; {reason}",
        )
    return (PASS if len(ok_h) >= gates.gate1_min_horizons else FAIL), reason


def gate2(row: pd.Series, versus: pd.Series | None, gates: GateSettings) -> tuple[str, str]:
    """ML comparison at one horizon: ``median_rank_ic >= gate2_min_median_rankic`` (over the
    model's own dates), or within ``gate2_max_gap_to_lightgbm`` of the LightGBM baseline, the
    gap taken on the (date, ticker) pairs both scored (``versus``: a row of
    :func:`metrics.versus_reference`; None without a LightGBM baseline). A NaN median is "not
    evaluated"."""
    med = float(row["median_rank_ic"])
    if not np.isfinite(med):
        return NOT_EVALUATED, "no median RankIC (no scored date with a matured label)"
    abs_ok = med >= gates.gate2_min_median_rankic
    gap = float(versus["gap"]) if versus is not None else float("nan")
    if not np.isfinite(gap):
        return (PASS if abs_ok else FAIL), (
            f"median RankIC {_fmt(med)} vs {gates.gate2_min_median_rankic}; no LightGBM "
            "baseline on common pairs"
        )
    passed = abs_ok or gap <= gates.gate2_max_gap_to_lightgbm
    return (PASS if passed else FAIL), (
        f"median RankIC {_fmt(med)} (>= {gates.gate2_min_median_rankic}?) or gap to LightGBM "
        f"{_fmt(gap)} on {int(versus['n_common_dates'])} common dates "
        f"(<= {gates.gate2_max_gap_to_lightgbm}?)"
    )


def gate3(rows: pd.DataFrame, gates: GateSettings) -> tuple[str, str]:
    """Practical: ``churn <= gate3_max_churn`` at every horizon; ``positive_fold_share >=
    gate3_min_positive_fold_share`` at each of ``gate3_cost_horizons``; every volatility regime's
    median RankIC ``>= gate3_min_regime_median_rankic``. A failure anywhere fails the gate;
    otherwise a NaN figure or a missing cost horizon makes it "not evaluated"."""
    failures, missing = [], []
    for r in rows.itertuples():
        if not _finite(r.churn):
            missing.append(f"churn at {r.horizon}d")
        elif r.churn > gates.gate3_max_churn:
            failures.append(f"churn {_fmt(r.churn)} at {r.horizon}d > {gates.gate3_max_churn}")
        if r.horizon in gates.gate3_cost_horizons:
            if not _finite(r.positive_fold_share):
                missing.append(f"positive net folds at {r.horizon}d")
            elif r.positive_fold_share < gates.gate3_min_positive_fold_share:
                failures.append(
                    f"positive net folds {_fmt(r.positive_fold_share)} at {r.horizon}d < "
                    f"{gates.gate3_min_positive_fold_share}"
                )
        if not _finite(r.min_regime_median_rank_ic):
            missing.append(f"volatility regimes at {r.horizon}d")
        elif r.min_regime_median_rank_ic < gates.gate3_min_regime_median_rankic:
            failures.append(
                f"worst volatility regime median RankIC {_fmt(r.min_regime_median_rank_ic)} at "
                f"{r.horizon}d < {gates.gate3_min_regime_median_rankic}"
            )
    absent = [h for h in gates.gate3_cost_horizons if h not in set(rows["horizon"])]
    if absent:
        missing.append(f"no cost-survival result at horizons {absent}")
    if failures:
        return FAIL, "; ".join(failures)
    if missing:
        return NOT_EVALUATED, "not evaluated: " + "; ".join(missing)
    return PASS, "churn, cost survival, regimes ok"


def gate2_strict(row: pd.Series, gates: GateSettings) -> str:
    """Informational: the research plan's stricter per-horizon bar for gate 2 (pass / fail /
    not evaluated)."""
    bar = gates.gate2_strict_min_median_rankic.get(int(row["horizon"]))
    med = float(row["median_rank_ic"])
    if bar is None or not np.isfinite(med):
        return NOT_EVALUATED
    return PASS if med >= bar else FAIL


#: Comparison figures a gate reads; blanked (NaN: "not evaluated") on too few scoring dates.
JUDGED_FIGURES = ("median_rank_ic", "median_momentum_corr", "churn", "positive_fold_share",
                  "min_regime_median_rank_ic")  # fmt: skip


def _too_few_dates_unjudged(comparison: pd.DataFrame, gates: GateSettings) -> pd.DataFrame:
    """Rows scored on fewer than ``gates.min_scoring_dates`` dates lose the figures the gates
    read, so their verdicts are "not evaluated" instead of decided by a handful of dates."""
    out = comparison.copy()
    few = out["n_dates"] < gates.min_scoring_dates
    for col in JUDGED_FIGURES:
        if col in out:
            out.loc[few, col] = np.nan
    return out


def evaluate_gates(
    comparison: pd.DataFrame,
    gates: GateSettings,
    leak_models: Sequence[str] = (),
    versus_lightgbm: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Gate 1-3 verdicts for every model of the comparison table (tripwire controls excluded).

    ``versus_lightgbm`` (:func:`metrics.versus_reference` against LightGBM) gives gate 2 its gap
    on common (date, ticker) pairs; without it, each model's own median is compared with
    LightGBM's own median (same dates by construction only when both score the same pairs).

    A model flagged by the leak scan (``leak_models``) fails every gate with the reason
    "leak tripwire fired". Columns: ``gate, model, horizon, status, passed, candidate, reason``
    (and ``gate2_strict`` on gate 2 rows, informational).
    """
    results: list[dict[str, object]] = []
    if versus_lightgbm is None:
        lgbm = comparison[comparison["model"] == LIGHTGBM_MODEL].set_index("horizon")
        own = comparison.set_index(["model", "horizon"])["median_rank_ic"]
        versus_lightgbm = pd.DataFrame([
            {"model": m, "horizon": h, "n_common_dates": 0,
             "gap": float(lgbm.loc[h, "median_rank_ic"]) - float(own[(m, h)])}
            for m, h in own.index if m != LIGHTGBM_MODEL and h in lgbm.index
        ], columns=["model", "horizon", "n_common_dates", "gap"])  # fmt: skip
    versus = versus_lightgbm.set_index(["model", "horizon"])
    judged = _too_few_dates_unjudged(comparison[~comparison["model"].isin(CONTROL_MODELS)], gates)
    candidates = set(candidate_models(judged["model"]))
    leak_reason = "leak tripwire fired: median RankIC implausibly high"

    def add(gate: str, model: str, horizon: int | None, verdict: tuple[str, str], **extra):
        status, why = (FAIL, leak_reason) if model in set(leak_models) else verdict
        result = GateResult(gate, model, horizon, status, model in candidates, why)
        results.append({**result.to_dict(), **extra})

    for model, rows in judged.groupby("model", sort=True):
        add("gate1", model, None, gate1(rows, gates))
        for r in rows.sort_values("horizon").itertuples(index=False):
            row = pd.Series(r._asdict())
            key = (model, r.horizon)
            ref = versus.loc[key] if key in versus.index and model != LIGHTGBM_MODEL else None
            verdict = gate2(row, ref, gates)
            add("gate2", model, int(r.horizon), verdict, gate2_strict=gate2_strict(row, gates))
        add("gate3", model, None, gate3(rows, gates))
    columns = [
        "gate",
        "model",
        "horizon",
        "status",
        "passed",
        "candidate",
        "reason",
        "gate2_strict",
    ]
    return pd.DataFrame(results, columns=columns)


def stop_rule(comparison: pd.DataFrame, gates: GateSettings) -> list[dict[str, object]]:
    """The research plan's stop rule, per zero-shot model (published weights, model name with
    ``zero_shot``): "stop: no zero-shot signal" when its median RankIC is below
    ``stop_min_zero_shot_median_rankic`` at every horizon; "continue" when it reaches it at one;
    "not evaluated" when a horizon has no median."""
    out = []
    bar = gates.stop_min_zero_shot_median_rankic
    for model, rows in comparison[comparison["model"].str.contains("zero_shot")].groupby("model"):
        med = rows["median_rank_ic"].to_numpy(float)
        if (med[np.isfinite(med)] >= bar).any():
            verdict = "continue"
        elif not np.isfinite(med).all() or not len(med):
            verdict = NOT_EVALUATED
        else:
            verdict = "stop: no zero-shot signal"
        out.append({"model": model, "decision": verdict, "bar": bar,
                    "medians": {int(h): float(v) for h, v in zip(rows["horizon"], med, strict=True)}})  # fmt: skip
    return out


def gate_marks(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per model: ``gate1, gate2, gate3`` as ``pass`` / ``fail`` / ``not evaluated``
    (gate 2 passes when every horizon passes, fails when any fails)."""

    def combine(statuses: pd.Series) -> str:
        if (statuses == FAIL).any():
            return FAIL
        return PASS if (statuses == PASS).all() else NOT_EVALUATED

    per = verdicts.groupby(["model", "gate"])["status"].agg(combine).unstack("gate")
    return per.reset_index()


@dataclass(frozen=True)
class GateCheck:
    """What a gate's asset check reports: ``status`` over the candidates, and why."""

    status: str
    description: str
    failed: pd.DataFrame


def gate_check(verdicts: pd.DataFrame, gate: str) -> GateCheck:
    """Outcome of one gate for promotion: ``fail`` when any candidate failed, ``not evaluated``
    when there is no candidate or a candidate could not be judged, else ``pass``."""
    v = verdicts[(verdicts["gate"] == gate) & verdicts["candidate"].astype(bool)]
    failed = v[v["status"] == FAIL]
    if not failed.empty:
        return GateCheck(
            FAIL, "; ".join(f"{r.model}: {r.reason}" for r in failed.itertuples()), failed
        )
    if v.empty:
        return GateCheck(NOT_EVALUATED, "not evaluated: no candidate model was scored", failed)
    unjudged = v[v["status"] != PASS]
    if not unjudged.empty:
        return GateCheck(
            NOT_EVALUATED,
            "; ".join(f"{r.model}: {r.reason}" for r in unjudged.itertuples()),
            unjudged,
        )
    return GateCheck(PASS, f"{v['model'].nunique()} candidate(s) passed", failed)


def reference_comparison(comparison: pd.DataFrame, report: ReportSettings) -> pd.DataFrame:
    """This run's median RankIC next to the reference study's frozen numbers (different data).

    Per horizon: ``reference_factor_floor`` vs this run's ``factor_composite``, and
    ``reference_lightgbm`` vs this run's ``lightgbm``, with the differences.
    """
    med = comparison.set_index(["model", "horizon"])["median_rank_ic"]
    horizons = sorted(set(report.reference_factor_floor) | set(report.reference_lightgbm))
    rows = []
    for h in horizons:
        ours_f = float(med.get((COMPOSITE_MODEL, h), np.nan))
        ours_l = float(med.get((LIGHTGBM_MODEL, h), np.nan))
        ref_f = report.reference_factor_floor.get(h, np.nan)
        ref_l = report.reference_lightgbm.get(h, np.nan)
        rows.append(
            {
                "horizon": h,
                "reference_factor_floor": ref_f,
                "this_run_factor_composite": ours_f,
                "factor_diff": ours_f - ref_f,
                "reference_lightgbm": ref_l,
                "this_run_lightgbm": ours_l,
                "lightgbm_diff": ours_l - ref_l,
            }
        )
    return pd.DataFrame(rows)

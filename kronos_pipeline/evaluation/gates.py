"""Gates 1 to 3 (SPEC section 6) and the comparison with the reference study's frozen numbers.

Verdicts are computed for every model in the comparison table so the report can mark them;
only candidate models (anything that is not a baseline) block promotion.

No verdict on noise: every figure a gate reads rests on at least ``gates.min_scoring_dates``
scoring dates (inside each fold and volatility regime too), and every "median RankIC >= x"
claim also needs its NW t to be a number (``4 (lag + 1)`` dates) and at least
``gates.min_nw_t`` (:func:`rankic_leg`). What cannot be judged is "not evaluated", with the
dates it had and needed, and never counts as passed.
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
from kronos_pipeline.evaluation.metrics import (
    MAX_IMPUTED_HOLD_SHARE,
    REGIME_LABELS,
    min_dates_for_hac,
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


def _get(row: pd.Series | object, name: str, default: object = None) -> object:
    value = row.get(name, default) if isinstance(row, pd.Series) else getattr(row, name, default)
    return default if value is None or (isinstance(value, float) and np.isnan(value)) else value


def nw_needed_dates(row: pd.Series) -> int:
    """Fewest scoring dates for which the row's NW t is a number: ``4 (nw_lag + 1)``
    (:func:`metrics.min_dates_for_hac`; SPEC section 5)."""
    need = _get(row, "nw_min_dates")
    return int(need) if need is not None else min_dates_for_hac(int(_get(row, "nw_lag", 0)))


def required_dates(row: pd.Series, gates: GateSettings) -> int:
    """Fewest scoring dates a "median RankIC >= x" leg needs at the row's horizon and cadence:
    ``max(gates.min_scoring_dates, 4 (nw_lag + 1))``, so that the median rests on enough
    dates and the NW t of SPEC section 5 is a number (80 / 240 / 360 daily and 16 / 48 / 72
    weekly dates at 20 / 60 / 90 days with the default floor of 15)."""
    return max(gates.min_scoring_dates, nw_needed_dates(row))


def rankic_leg(
    row: pd.Series, bar: float, gates: GateSettings, strict: bool = False
) -> tuple[str, str]:
    """One "median RankIC >= bar" leg for one model and horizon (SPEC section 6, "no verdict
    on noise"): a claim that the model ranks better than ``bar`` must be significant.

    - not evaluated: fewer than :func:`required_dates` scoring dates, or no NW t (a constant
      series): the claim cannot be judged;
    - pass: ``median_rank_ic >= bar`` (``> bar`` when ``strict``) and ``nw_t >=
      gates.min_nw_t`` (one-sided: the mean RankIC is positive and significant);
    - fail: the median is below the bar (the claim is false whatever the noise), or the
      mean RankIC is significantly negative (``nw_t <= -min_nw_t``);
    - not evaluated: the median reaches the bar but ``|nw_t| < min_nw_t`` (SPEC section 6:
      a leg is judged only where its t reaches the bar; an insignificant median says
      nothing either way).
    """
    n, h = int(_get(row, "n_dates", 0)), int(row["horizon"])
    need = required_dates(row, gates)
    med, t = float(_get(row, "median_rank_ic", np.nan)), float(_get(row, "nw_t", np.nan))
    if n < need:
        return NOT_EVALUATED, (
            f"{n} dates, {need} needed (NW t at {h}d, lag {int(_get(row, 'nw_lag', 0))})"
        )
    if not np.isfinite(med) or not np.isfinite(t):
        return NOT_EVALUATED, f"no median RankIC or NW t on {n} dates"
    above = med > bar if strict else med >= bar
    sign = ">" if strict else ">="
    why = f"median RankIC {_fmt(med)} ({sign} {bar}?), NW t {t:+.2f} (>= {gates.min_nw_t}?)"
    if not above or t <= -gates.min_nw_t:
        return FAIL, why
    return (PASS if t >= gates.min_nw_t else NOT_EVALUATED), why


def _enough_dates(row: pd.Series, gates: GateSettings) -> tuple[bool, str]:
    """Whether a figure without a t (momentum correlation, churn, cost survival, regimes) rests
    on at least ``gates.min_scoring_dates`` dates at this row's horizon."""
    n = int(_get(row, "n_dates", 0))
    return n >= gates.min_scoring_dates, f"{n} dates, {gates.min_scoring_dates} needed"


def gate1(rows: pd.DataFrame, gates: GateSettings) -> tuple[str, str]:
    """Zero-shot signal: :func:`rankic_leg` with ``gate1_min_median_rankic`` passes at
    ``gate1_min_horizons`` horizons or more, and ``median_momentum_corr <
    gate1_max_momentum_corr`` at every horizon (each on at least ``min_scoring_dates`` dates).

    Fails when the momentum correlation is too high somewhere, or when even the horizons that
    could not be judged would not make up ``gate1_min_horizons``; passes when enough horizons
    pass and every momentum correlation was judged; otherwise not evaluated. ``rows``: one
    model's comparison rows.
    """
    passed, unjudged, mom_bad, mom_unjudged, parts = [], [], [], [], []
    for _, r in rows.sort_values("horizon").iterrows():
        h = int(r["horizon"])
        status, why = rankic_leg(r, gates.gate1_min_median_rankic, gates)
        if status == PASS:
            passed.append(h)
        elif status == NOT_EVALUATED:
            unjudged.append(h)
        parts.append(f"{h}d {status.upper()}: {why}")
        enough, few = _enough_dates(r, gates)
        mom = float(_get(r, "median_momentum_corr", np.nan))
        if not enough or not np.isfinite(mom):
            mom_unjudged.append(h)
            parts.append(f"{h}d momentum corr not evaluated ({few if not enough else 'nan'})")
        elif mom >= gates.gate1_max_momentum_corr:
            mom_bad.append(h)
            parts.append(f"{h}d momentum corr {_fmt(mom)} >= {gates.gate1_max_momentum_corr}")
    need = gates.gate1_min_horizons
    reason = f"RankIC legs passed at {passed} (need {need}); " + "; ".join(parts)
    if mom_bad or len(passed) + len(unjudged) < need:
        return FAIL, reason
    if len(passed) >= need and not mom_unjudged:
        return PASS, reason
    return NOT_EVALUATED, reason


def gate2(row: pd.Series, versus: pd.Series | None, gates: GateSettings) -> tuple[str, str]:
    """ML comparison at one horizon: passes on either leg.

    - absolute: :func:`rankic_leg` with ``gate2_min_median_rankic`` (median over the model's
      own dates, NW t >= ``min_nw_t``);
    - tolerance: ``diff >= -gate2_max_gap_to_lightgbm``, ``diff`` being the model's median
      RankIC minus LightGBM's on the (date, ticker) pairs both scored (``versus``: a row of
      :func:`metrics.versus_reference`; None without a LightGBM baseline, when only the
      absolute leg applies), on at least :func:`required_dates` common dates, and only for a
      model whose own median RankIC is positive with NW t >= ``min_nw_t``: being as poor as
      LightGBM is no signal.

    Not evaluated when the model's own dates cannot carry the absolute leg, or when the
    tolerance leg is the only one left and cannot be judged.
    """
    status, why = rankic_leg(row, gates.gate2_min_median_rankic, gates)
    if status != FAIL:
        return status, why
    tol = gates.gate2_max_gap_to_lightgbm
    diff = float(_get(versus, "diff", np.nan)) if versus is not None else np.nan
    if not np.isfinite(diff):
        return FAIL, f"{why}; no LightGBM tolerance (LightGBM itself, or none on common pairs)"
    own, own_why = rankic_leg(row, 0.0, gates, strict=True)
    if own != PASS:
        return FAIL, (
            f"{why}; the LightGBM tolerance needs a positive, significant own median RankIC: "
            f"{own_why}"
        )
    n_common, need = int(versus["n_common_dates"]), required_dates(row, gates)
    if n_common < need:
        return NOT_EVALUATED, f"{why}; model - LightGBM on {n_common} common dates, {need} needed"
    return (PASS if diff >= -tol else FAIL), (
        f"{why}; model - LightGBM median RankIC {diff:+.4f} on {n_common} common dates (>= -{tol}?)"
    )


def gate3(rows: pd.DataFrame, gates: GateSettings) -> tuple[str, str]:
    """Practical, every figure on at least ``gates.min_scoring_dates`` dates:

    - ``churn <= gate3_max_churn`` at every horizon (top-decile turnover over the same 5
      sessions for every cadence, over ``n_churn_dates`` dates);
    - ``positive_fold_share >= gate3_min_positive_fold_share`` at each of
      ``gate3_cost_horizons``, over the folds of at least ``min_scoring_dates`` dates; "n/a
      (imputed)" (not evaluated) when more than half the hold turnovers are imputed;
    - every volatility regime's median RankIC ``>= gate3_min_regime_median_rankic``, each
      regime on at least ``min_scoring_dates`` dates.

    A failure anywhere fails the gate; otherwise a figure that could not be judged makes it
    not evaluated.
    """
    floor = gates.min_scoring_dates
    failures, missing = [], []
    for _, r in rows.sort_values("horizon").iterrows():
        h = int(r["horizon"])
        enough, few = _enough_dates(r, gates)
        if not enough:
            missing.append(f"{h}d: {few}")
            continue
        churn, n_churn = float(_get(r, "churn", np.nan)), int(_get(r, "n_churn_dates", 0))
        if not np.isfinite(churn) or n_churn < floor:
            missing.append(f"churn at {h}d on {n_churn} dates 5 sessions apart, {floor} needed")
        elif churn > gates.gate3_max_churn:
            failures.append(f"churn {_fmt(churn)} at {h}d > {gates.gate3_max_churn}")
        if h in gates.gate3_cost_horizons:
            share = float(_get(r, "positive_fold_share", np.nan))
            imputed = float(_get(r, "hold_imputed_share", 0.0))
            if imputed > MAX_IMPUTED_HOLD_SHARE:
                missing.append(
                    f"positive net folds at {h}d n/a (imputed): {imputed:.0%} of hold "
                    "turnovers imputed"
                )
            elif not np.isfinite(share):
                missing.append(
                    f"positive net folds at {h}d: no fold with {floor} dates and a measured "
                    f"net spread ({int(_get(r, 'n_folds', 0))} folds)"
                )
            elif share < gates.gate3_min_positive_fold_share:
                failures.append(
                    f"positive net folds {_fmt(share)} at {h}d < "
                    f"{gates.gate3_min_positive_fold_share} "
                    f"({int(_get(r, 'n_folds_judged', 0))} folds)"
                )
        worst = float(_get(r, "min_regime_median_rank_ic", np.nan))
        if np.isfinite(worst) and worst < gates.gate3_min_regime_median_rankic:
            failures.append(
                f"worst volatility regime median RankIC {_fmt(worst)} at {h}d < "
                f"{gates.gate3_min_regime_median_rankic}"
            )
        elif int(_get(r, "n_regimes_judged", 0)) < len(REGIME_LABELS):
            counts = "/".join(str(int(_get(r, f"regime_n_dates_{x}", 0))) for x in REGIME_LABELS)
            missing.append(
                f"volatility regimes at {h}d: {counts} dates (low/mid/high), {floor} needed each"
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
    """Informational: the research plan's stricter per-horizon bar for gate 2, judged as
    :func:`rankic_leg` (pass / fail / not evaluated)."""
    bar = gates.gate2_strict_min_median_rankic.get(int(row["horizon"]))
    if bar is None:
        return NOT_EVALUATED
    return rankic_leg(row, bar, gates)[0]


def evaluate_gates(
    comparison: pd.DataFrame,
    gates: GateSettings,
    leak_models: Sequence[str] = (),
    versus_lightgbm: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Gate 1-3 verdicts for every model of the comparison table (tripwire controls excluded).

    ``versus_lightgbm`` (:func:`metrics.versus_reference` against LightGBM) gives gate 2 its
    difference on common (date, ticker) pairs; without it (hand-made tables), each model's own
    median is compared with LightGBM's own median, on the fewer of the two date counts.

    A model flagged by the leak scan (``leak_models``) fails every gate with the reason
    "leak tripwire fired". Columns: ``gate, model, horizon, status, passed, candidate, reason``
    (and ``gate2_strict`` on gate 2 rows, informational).
    """
    results: list[dict[str, object]] = []
    if versus_lightgbm is None:
        lgbm = comparison[comparison["model"] == LIGHTGBM_MODEL].set_index("horizon")
        own = comparison.set_index(["model", "horizon"])
        versus_lightgbm = pd.DataFrame([
            {"model": m, "horizon": h,
             "n_common_dates": int(min(own.loc[(m, h), "n_dates"], lgbm.loc[h, "n_dates"])),
             "diff": float(own.loc[(m, h), "median_rank_ic"]) - float(lgbm.loc[h, "median_rank_ic"])}
            for m, h in own.index if m != LIGHTGBM_MODEL and h in lgbm.index
        ], columns=["model", "horizon", "n_common_dates", "diff"])  # fmt: skip
    versus = versus_lightgbm.set_index(["model", "horizon"])
    judged = comparison[~comparison["model"].isin(CONTROL_MODELS)]
    candidates = set(candidate_models(judged["model"]))
    leak_reason = "leak tripwire fired: median RankIC implausibly high"

    def add(gate: str, model: str, horizon: int | None, verdict: tuple[str, str], **extra):
        status, why = (FAIL, leak_reason) if model in set(leak_models) else verdict
        result = GateResult(gate, model, horizon, status, model in candidates, why)
        results.append({**result.to_dict(), **extra})

    for model, rows in judged.groupby("model", sort=True):
        add("gate1", model, None, gate1(rows, gates))
        for _, row in rows.sort_values("horizon").iterrows():
            key = (model, row["horizon"])
            ref = versus.loc[key] if key in versus.index and model != LIGHTGBM_MODEL else None
            verdict = gate2(row, ref, gates)
            add("gate2", model, int(row["horizon"]), verdict,
                gate2_strict=gate2_strict(row, gates))  # fmt: skip
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
    "not evaluated" when a horizon has no median, or one on fewer than ``min_scoring_dates``
    dates (``n_dates``)."""
    out = []
    bar = gates.stop_min_zero_shot_median_rankic
    for model, rows in comparison[comparison["model"].str.contains("zero_shot")].groupby("model"):
        med = rows["median_rank_ic"].to_numpy(float)
        if "n_dates" in rows:
            med = np.where(rows["n_dates"].to_numpy() >= gates.min_scoring_dates, med, np.nan)
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

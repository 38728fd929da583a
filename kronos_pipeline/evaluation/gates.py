"""Gates 1 to 3 (SPEC section 6) and the comparison with the reference study's frozen numbers.

Verdicts are computed for every model in the comparison table so the report can mark them;
only candidate models (anything that is not a baseline) block promotion.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation.baselines import BASELINE_MODELS, COMPOSITE_MODEL, LIGHTGBM_MODEL
from kronos_pipeline.settings import GateSettings, ReportSettings


@dataclass(frozen=True)
class GateResult:
    """One gate verdict for one model (``horizon`` is None for gates judged across horizons)."""

    gate: str
    model: str
    horizon: int | None
    passed: bool
    candidate: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def candidate_models(models: Iterable[str]) -> list[str]:
    """Models the gates judge for promotion: everything that is not a baseline."""
    return sorted({m for m in models if m not in BASELINE_MODELS})


def _fmt(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.4f}"


def gate1(rows: pd.DataFrame, gates: GateSettings) -> tuple[bool, str]:
    """Zero-shot signal: ``median_rank_ic >= gate1_min_median_rankic`` for at least
    ``gate1_min_horizons`` horizons, and ``median_momentum_corr < gate1_max_momentum_corr`` at every
    horizon. ``rows``: one model's comparison rows."""
    ok_h = rows.loc[rows["median_rank_ic"] >= gates.gate1_min_median_rankic, "horizon"].tolist()
    mom = rows["median_momentum_corr"].to_numpy(float)
    mom_ok = bool(np.all(np.nan_to_num(mom, nan=0.0) < gates.gate1_max_momentum_corr))
    passed = len(ok_h) >= gates.gate1_min_horizons and mom_ok
    reason = (
        f"median RankIC >= {gates.gate1_min_median_rankic} at horizons {ok_h} "
        f"(need {gates.gate1_min_horizons}); max median momentum corr "
        f"{_fmt(float(np.nanmax(mom)) if np.isfinite(mom).any() else float('nan'))} "
        f"(< {gates.gate1_max_momentum_corr} needed)"
    )
    return passed, reason


def gate2(row: pd.Series, lightgbm_median: float | None, gates: GateSettings) -> tuple[bool, str]:
    """ML comparison at one horizon: ``median_rank_ic >= gate2_min_median_rankic`` or within
    ``gate2_max_gap_to_lightgbm`` of the LightGBM baseline's median RankIC."""
    med = float(row["median_rank_ic"])
    abs_ok = med >= gates.gate2_min_median_rankic
    if lightgbm_median is None or not np.isfinite(lightgbm_median):
        return abs_ok, (
            f"median RankIC {_fmt(med)} vs {gates.gate2_min_median_rankic}; no LightGBM baseline"
        )
    gap = lightgbm_median - med
    passed = abs_ok or gap <= gates.gate2_max_gap_to_lightgbm
    return passed, (
        f"median RankIC {_fmt(med)} (>= {gates.gate2_min_median_rankic}?) or gap to LightGBM "
        f"{_fmt(gap)} (<= {gates.gate2_max_gap_to_lightgbm}?)"
    )


def gate3(rows: pd.DataFrame, gates: GateSettings) -> tuple[bool, str]:
    """Practical: ``churn <= gate3_max_churn`` at every horizon; ``positive_fold_share >=
    gate3_min_positive_fold_share`` at each of ``gate3_cost_horizons``; every volatility regime's
    median RankIC ``>= gate3_min_regime_median_rankic``."""
    failures = []
    for r in rows.itertuples():
        if not r.churn <= gates.gate3_max_churn:
            failures.append(f"churn {_fmt(r.churn)} at {r.horizon}d > {gates.gate3_max_churn}")
        if r.horizon in gates.gate3_cost_horizons and not (
            r.positive_fold_share >= gates.gate3_min_positive_fold_share
        ):
            failures.append(
                f"positive net folds {_fmt(r.positive_fold_share)} at {r.horizon}d < "
                f"{gates.gate3_min_positive_fold_share}"
            )
        if np.isfinite(r.min_regime_median_rank_ic) and (
            r.min_regime_median_rank_ic < gates.gate3_min_regime_median_rankic
        ):
            failures.append(
                f"worst volatility regime median RankIC {_fmt(r.min_regime_median_rank_ic)} at "
                f"{r.horizon}d < {gates.gate3_min_regime_median_rankic}"
            )
    missing = [h for h in gates.gate3_cost_horizons if h not in set(rows["horizon"])]
    if missing:
        failures.append(f"no cost-survival result at horizons {missing}")
    return (not failures), ("; ".join(failures) if failures else "churn, cost survival, regimes ok")


def evaluate_gates(
    comparison: pd.DataFrame, gates: GateSettings, leak_models: Sequence[str] = ()
) -> pd.DataFrame:
    """Gate 1-3 verdicts for every model of the comparison table.

    A model flagged by the leak scan (``leak_models``) fails every gate with the reason
    "leak tripwire fired". Columns: ``gate, model, horizon, passed, candidate, reason``.
    """
    results: list[GateResult] = []
    lgbm = comparison[comparison["model"] == LIGHTGBM_MODEL].set_index("horizon")["median_rank_ic"]
    candidates = set(candidate_models(comparison["model"]))
    for model, rows in comparison.groupby("model", sort=True):
        cand = model in candidates
        leak = model in set(leak_models)
        leak_reason = "leak tripwire fired: median RankIC implausibly high"
        p, why = gate1(rows, gates)
        results.append(
            GateResult("gate1", model, None, p and not leak, cand, leak_reason if leak else why)
        )
        for r in rows.sort_values("horizon").itertuples(index=False):
            row = pd.Series(r._asdict())
            ref = float(lgbm[r.horizon]) if r.horizon in lgbm.index else None
            p, why = gate2(row, None if model == LIGHTGBM_MODEL else ref, gates)
            results.append(
                GateResult(
                    "gate2",
                    model,
                    int(r.horizon),
                    p and not leak,
                    cand,
                    leak_reason if leak else why,
                )
            )
        p, why = gate3(rows, gates)
        results.append(
            GateResult("gate3", model, None, p and not leak, cand, leak_reason if leak else why)
        )
    return pd.DataFrame([r.to_dict() for r in results])


def gate_marks(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per model: ``gate1, gate2, gate3`` as True/False (gate2 = every horizon passed)."""
    per = verdicts.groupby(["model", "gate"])["passed"].all().unstack("gate")
    return per.reset_index()


def blocking_failures(verdicts: pd.DataFrame, gate: str) -> pd.DataFrame:
    """Failed verdicts of candidate models for one gate: what a blocking asset check reports."""
    v = verdicts[(verdicts["gate"] == gate) & verdicts["candidate"]]
    return v[~v["passed"]]


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

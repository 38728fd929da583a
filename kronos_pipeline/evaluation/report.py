"""The run folder of SPEC section 8: ``REPORT_SUMMARY.md`` with tables and embedded PNG plots,
``fold_summaries.csv``, ``per_date_metrics.csv``, ``eval_rows.parquet``, ``leak_tripwires.json``.

The only module of ``evaluation/`` that writes files.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation.baselines import CONTROL_MODELS
from kronos_pipeline.evaluation.metrics import (
    CHURN_INTERVAL_SESSIONS,
    MAX_IMPUTED_HOLD_SHARE,
    NON_OVERLAP_MIN_DATES,
    REGIME_LABELS,
)
from kronos_pipeline.settings import GateSettings

REPORT_FILES = (
    "REPORT_SUMMARY.md",
    "fold_summaries.csv",
    "per_date_metrics.csv",
    "eval_rows.parquet",
    "leak_tripwires.json",
    "cumulative_rank_ic.png",
    "rank_ic_by_fold.png",
    "decile_returns.png",
    "turnover.png",
)

SURVIVORSHIP_NOTE = {
    "vendor": (
        "**Survivorship bias.** The dataset holds only names that were index members when the "
        "files were downloaded; names that left the index or were delisted earlier are missing. "
        "Returns, spreads and cost survival here overstate what a real investor could have "
        "earned."
    ),
    "tidy": (
        "**Survivorship bias.** Unless the supplied table includes delisted names, it is "
        "survivor-only and the results overstate what a real investor could have earned."
    ),
    "synthetic": (
        "**Survivorship bias.** None by construction: the synthetic market keeps listings and "
        "delistings. Synthetic results say nothing about real markets."
    ),
}


@functools.cache
def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the headless Agg backend (workers have no display), imported on
    the first plot: the code location, which every run imports, loads faster without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, pd.Timestamp):
        return str(obj.date())
    return str(obj)


def clean_json(obj: Any) -> Any:
    """Replace NaN / inf floats by None so the JSON is standard."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    if isinstance(x, bool | np.bool_):
        return "PASS" if x else "FAIL"
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in r) + " |"
            for r in frame.itertuples(index=False)]  # fmt: skip
    return "\n".join([header, rule, *body])


def _horizon_axes(horizons: Sequence[int]):
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(horizons), figsize=(5.5 * len(horizons), 4), squeeze=False)
    return fig, dict(zip(horizons, axes[0], strict=True))


_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "<", ">")


def model_styles(models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A colour, line style and marker per model, the same in every plot of a report: model
    ``i`` (sorted) gets colour ``i mod 10``, line style ``i mod 4`` and marker ``i mod 11``,
    so no two of the first 20 models share colour and line style, and none of the first 110
    all three."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    return {
        m: {"color": colours[i % 10], "linestyle": _LINE_STYLES[i % 4],
            "marker": _MARKERS[i % len(_MARKERS)]}
        for i, m in enumerate(sorted(set(models)))
    }  # fmt: skip


def cadence_of(spacing: float) -> str:
    """Name of a scoring cadence from the median number of sessions between scoring dates:
    ``daily`` (1), ``weekly`` (3-7), ``monthly`` (15-25), else ``every N sessions``."""
    if not np.isfinite(spacing) or spacing <= 1.5:
        return "daily"
    if 3 <= spacing <= 7:
        return "weekly"
    if 15 <= spacing <= 25:
        return "monthly"
    return f"every {spacing:g} sessions"


def model_cadences(per_date: pd.DataFrame) -> dict[str, str]:
    """Cadence of each model (:func:`cadence_of` of its median session spacing over all
    horizons)."""
    out = {}
    for model, g in per_date.groupby("model"):
        gaps = [
            np.diff(np.sort(x["session"].dropna().to_numpy(float))) for _, x in g.groupby("horizon")
        ]
        gaps = np.concatenate(gaps) if gaps else np.zeros(0)
        out[model] = cadence_of(float(np.median(gaps)) if len(gaps) else float("nan"))
    return out


def _verdict_rows(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Gate verdicts for the report: horizons as whole trading days ("all" for cross-horizon
    gates), statuses in capitals."""
    out = verdicts.drop(columns=["passed"], errors="ignore").copy()
    out["horizon"] = [("all" if pd.isna(h) else str(int(h))) for h in out["horizon"]]
    for col in ("status", "gate2_strict"):
        if col in out:
            out[col] = out[col].fillna("n/a").astype(str).str.upper()
    out["candidate"] = out["candidate"].map({True: "yes", False: "no"})
    return out


def _date_axis(ax) -> None:
    """Calendar dates on the x axis whatever the span (a short one would otherwise show hours)."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.tick_params(axis="x", labelrotation=45)


def plot_cumulative_rank_ic(per_date: pd.DataFrame, path: Path) -> None:
    """:func:`cumulative_rank_ic_figure` saved as a PNG at ``path``."""
    plt = _pyplot()
    fig = cumulative_rank_ic_figure(per_date)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cumulative_rank_ic_figure(per_date: pd.DataFrame):
    """Cumulative sum of RankIC over scoring dates, one row of panels per scoring cadence (a
    weekly model's sum is not comparable with a daily one's) and one for the tripwire
    controls (whose planted leak would flatten every other line), one column per horizon.
    Every model keeps its :func:`model_styles` style in every panel."""
    plt = _pyplot()
    horizons = sorted(per_date["horizon"].unique())
    cadence = model_cadences(per_date)
    rows = [*sorted({c for m, c in cadence.items() if m not in CONTROL_MODELS})]
    if set(per_date["model"]) & set(CONTROL_MODELS):
        rows.append("controls")
    rows = rows or ["none"]
    fig, axes = plt.subplots(
        len(rows), len(horizons), figsize=(5.5 * len(horizons), 3.8 * len(rows)), squeeze=False
    )
    styles = model_styles(per_date["model"].unique())
    for (model, h), g in per_date.sort_values("date").groupby(["model", "horizon"]):
        row = "controls" if model in CONTROL_MODELS else cadence[model]
        ax = axes[rows.index(row), horizons.index(h)]
        ax.plot(g["date"], g["rank_ic"].fillna(0).cumsum(), label=model, lw=1.2, ms=3,
                markevery=max(1, len(g) // 8), **styles[model])  # fmt: skip
    for i, row in enumerate(rows):
        for j, h in enumerate(horizons):
            ax = axes[i, j]
            ax.set_title(f"Cumulative RankIC, {int(h)}d, {row}")
            ax.axhline(0, color="grey", lw=0.5)
            _date_axis(ax)
        handles = {t: hd for a in axes[i] for hd, t in zip(*a.get_legend_handles_labels(),
                                                            strict=True)}  # fmt: skip
        if handles:
            axes[i, 0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    return fig


def plot_rank_ic_by_fold(fold_summaries: pd.DataFrame, path: Path) -> None:
    """Median RankIC of each fold per model, one panel per horizon."""
    plt = _pyplot()
    horizons = sorted(fold_summaries["horizon"].unique())
    fig, axes = _horizon_axes(horizons)
    styles = model_styles(fold_summaries["model"].unique())
    for (model, h), g in fold_summaries.sort_values("fold").groupby(["model", "horizon"]):
        axes[h].plot(g["fold"], g["median_rank_ic"], ms=3, label=model, **styles[model])
    for h, ax in axes.items():
        ax.set_title(f"Median RankIC by fold, {int(h)}d")
        ax.axhline(0, color="grey", lw=0.5)
        ax.tick_params(axis="x", labelrotation=90, labelsize=6)
    axes[horizons[0]].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_decile_returns(deciles: pd.DataFrame, path: Path) -> None:
    """Mean forward return (%) per score decile per model, one panel per horizon."""
    plt = _pyplot()
    horizons = sorted(deciles["horizon"].unique())
    fig, axes = _horizon_axes(horizons)
    styles = model_styles(deciles["model"].unique())
    for (model, h), g in deciles.groupby(["model", "horizon"]):
        axes[h].plot(g["quantile"], 100 * g["mean_fwd_return"], ms=3, label=model,
                     **styles[model])  # fmt: skip
    for h, ax in axes.items():
        ax.set_title(f"Mean {int(h)}d return by score decile (%)")
        ax.set_xticks(range(1, 11))
    axes[horizons[0]].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_turnover(comparison: pd.DataFrame, path: Path) -> None:
    """Top-decile churn over 5 sessions per model and horizon (bars)."""
    plt = _pyplot()
    pivot = comparison.pivot(index="model", columns="horizon", values="churn")
    fig, ax = plt.subplots(figsize=(8, 4))
    pivot.plot.bar(ax=ax)
    ax.set_title(f"Top-decile churn over {CHURN_INTERVAL_SESSIONS} sessions (every cadence)")
    ax.set_ylabel("share of names replaced")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_plot(calibration: pd.DataFrame, path: Path) -> None:
    """Nominal vs observed quantile level (:func:`forecast_metrics.calibration_table`), one
    panel per horizon, one line per sampled model, the diagonal for reference. Written under a
    temporary name and renamed, so ``path`` is whole or absent."""
    plt = _pyplot()
    path = Path(path)
    sampled = calibration[np.isfinite(calibration["observed"].astype(float))]
    horizons = sorted(int(h) for h in calibration["horizon"].unique()) or [0]
    fig, axes = _horizon_axes(horizons)
    for (model, h), g in sampled.sort_values("nominal").groupby(["model", "horizon"]):
        axes[int(h)].plot(g["nominal"], g["observed"], marker="o", ms=3, label=model)
    for h, ax in axes.items():
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="calibrated")
        ax.set_title(f"Reliability, {h}d" if h else "Reliability (no sampled forecasts)")
        ax.set_xlabel("nominal quantile level")
        ax.set_ylabel("share of realized <= quantile")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _gate_status(verdicts: pd.DataFrame, gate: str, model: str, horizon: int | None = None) -> str:
    v = verdicts[(verdicts["gate"] == gate) & (verdicts["model"] == model)]
    if horizon is not None:
        v = v[v["horizon"] == horizon]
    if v.empty:
        return "n/a"
    return str(v["status"].iloc[0]).upper() if len(v) == 1 else "n/a"


IMPUTED = "n/a (imputed)"


def _finite(v: Any) -> bool:
    return v is not None and not isinstance(v, str) and bool(np.isfinite(float(v)))


def _with_dates(values: pd.Series, have: pd.Series, need: pd.Series | int) -> list:
    """Numbers where they stand on at least ``need`` dates (and are finite), else
    "n/a (N of M dates)": how many dates there were and how many were needed."""
    need = pd.Series(need, index=values.index) if np.isscalar(need) else need
    return [
        v if n >= m and _finite(v) else f"n/a ({int(n)} of {int(m)} dates)"
        for v, n, m in zip(values, have, need, strict=True)
    ]


def _measured(values: pd.Series, imputed: pd.Series, otherwise: list | None = None) -> list:
    """Cost figures where at most half of the hold turnovers were measured, else
    "n/a (imputed)" (SPEC section 6); ``otherwise``: the cell to show where the figure is
    missing for another reason."""
    otherwise = otherwise if otherwise is not None else ["n/a"] * len(values)
    return [
        IMPUTED if share > MAX_IMPUTED_HOLD_SHARE else (v if _finite(v) else other)
        for v, share, other in zip(values, imputed, otherwise, strict=True)
    ]


def _regime_cells(c: pd.DataFrame, floor: int) -> list:
    """Worst volatility regime's median RankIC over the regimes of at least ``floor`` dates;
    says how many regimes that is when not all three, and their dates when none."""
    out = []
    for r in c.itertuples():
        judged = int(getattr(r, "n_regimes_judged", 0))
        worst = getattr(r, "min_regime_median_rank_ic", np.nan)
        if judged == len(REGIME_LABELS) and _finite(worst):
            out.append(worst)
        elif judged and _finite(worst):
            out.append(f"{float(worst):.4f} ({judged} of {len(REGIME_LABELS)} regimes)")
        else:
            counts = "/".join(str(int(getattr(r, f"regime_n_dates_{x}", 0))) for x in REGIME_LABELS)
            out.append(f"n/a ({counts} of {floor} dates)")
    return out


def comparison_table(
    comparison: pd.DataFrame,
    verdicts: pd.DataFrame,
    horizon: int,
    gates: GateSettings | None = None,
) -> pd.DataFrame:
    """The markdown comparison table of the given rows at one horizon (call it once per
    cadence), gates marked (PASS / FAIL / NOT EVALUATED; n/a for tripwire controls, which are
    never judged). Every "n/a" says why: dates had and needed, or "(imputed)"."""
    floor = (gates or GateSettings()).min_scoring_dates
    c = comparison[comparison["horizon"] == horizon].sort_values("median_rank_ic", ascending=False)
    n = c["n_dates"].astype(int)
    imputed = c["hold_imputed_share"]
    folds = [
        f"n/a ({int(j)} of {int(k)} folds with {floor} dates)"
        for j, k in zip(c["n_folds_judged"], c["n_folds"], strict=True)
    ]
    out = pd.DataFrame(
        {
            "model": c["model"],
            "dates": n,
            # Descriptive figures are shown on any number of dates (the `dates` column says
            # how many); what a gate reads needs the floor, and the gate columns say so.
            "median RankIC": _with_dates(c["median_rank_ic"], n, 1),
            "mean RankIC": _with_dates(c["mean_rank_ic"], n, 1),
            "IC-IR": _with_dates(c["ic_ir"], n, 2),
            "hit rate": _with_dates(c["hit_rate"], n, 1),
            "NW t": _with_dates(c["nw_t"], n, c["nw_min_dates"]),
            "t non-overlap": _with_dates(
                c["t_non_overlapping"], c["n_dates_non_overlapping"], NON_OVERLAP_MIN_DATES
            ),
            "churn 5 sessions": _with_dates(c["churn"], c["n_churn_dates"], floor),
            "hold turnover": c["mean_hold_turnover"],
            "hold imputed": imputed,
            "net spread": _measured(c["mean_net_spread_return"], imputed),
            "positive folds": _measured(c["positive_fold_share"], imputed, folds),
            "break-even bps": _measured(c["break_even_cost_bps"], imputed),
            "corr mom 12-1": _with_dates(c["median_momentum_corr"], n, floor),
            "worst regime": _regime_cells(c, floor),
        }
    )
    out["gate 1"] = [_gate_status(verdicts, "gate1", m) for m in c["model"]]
    out["gate 2"] = [_gate_status(verdicts, "gate2", m, horizon) for m in c["model"]]
    out["gate 3"] = [_gate_status(verdicts, "gate3", m) for m in c["model"]]
    strict = verdicts[(verdicts["gate"] == "gate2") & (verdicts["horizon"] == horizon)]
    strict = strict.set_index("model")["gate2_strict"] if "gate2_strict" in strict else {}
    out["gate2_strict"] = [str(strict.get(m, "n/a")).upper() for m in c["model"]]
    return out


def horizon_section(
    comparison: pd.DataFrame,
    verdicts: pd.DataFrame,
    horizon: int,
    cadences: dict[str, str],
    gates: GateSettings | None = None,
) -> list[str]:
    """One comparison table per scoring cadence at ``horizon`` (a 14-date weekly row and a
    64-date daily row are not ranked together), then the tripwire controls in their own
    table."""
    c = comparison[comparison["horizon"] == horizon]
    controls = c["model"].isin(CONTROL_MODELS)
    lines: list[str] = []
    kinds = c.loc[~controls, "model"].map(lambda m: cadences.get(m, "daily"))
    for kind in sorted(set(kinds)):
        rows = c.loc[~controls][kinds == kind]
        lines += [
            f"Scored {kind}: each model over all of its own scoring dates (`dates`):",
            "",
            markdown_table(comparison_table(rows, verdicts, horizon, gates)),
            "",
        ]
    if controls.any():
        table = comparison_table(c[controls], verdicts, horizon, gates)
        lines += [
            "Tripwire controls (never judged by the gates; see Leak tripwires):",
            "",
            markdown_table(table.drop(columns=["gate 1", "gate 2", "gate 3", "gate2_strict"])),
            "",
        ]
    return lines


def common_section(
    common: pd.DataFrame | None, versus: pd.DataFrame | None, horizon: int
) -> list[str]:
    """The cross-model comparison of one horizon on common (date, ticker) pairs."""
    if common is None or common.empty:
        return []
    c = common[common["horizon"] == horizon].sort_values("median_rank_ic", ascending=False)
    if c.empty:
        return []
    n = c["n_common_dates"].astype(int)
    need = c["nw_min_dates"] if "nw_min_dates" in c else pd.Series(0, index=c.index)
    table = pd.DataFrame({
        "model": c["model"], "common dates": n,
        "median RankIC": c["median_rank_ic"], "mean RankIC": c["mean_rank_ic"],
        "NW t": _with_dates(c["nw_t"], n, need),
    })  # fmt: skip
    lines = [
        "Cross-model comparison on the (date, ticker) pairs that every compared model scored "
        f"({int(c['n_common_pairs'].iloc[0])} pairs per model):",
        "",
        markdown_table(table),
        "",
    ]
    v = versus[versus["horizon"] == horizon] if versus is not None else pd.DataFrame()
    if len(v):
        vs = pd.DataFrame({
            "model": v["model"], "common dates": v["n_common_dates"].astype(int),
            "median RankIC": v["median_rank_ic"], "LightGBM on the same pairs":
            v["reference_median_rank_ic"], "model - LightGBM": v["diff"],
        })  # fmt: skip
        lines += ["Versus LightGBM, each model on the pairs both scored (gate 2's tolerance "
                  "reads `model - LightGBM`):", "", markdown_table(vs), ""]  # fmt: skip
    return lines


FORECAST_FILES = ("forecast_metrics.csv", "forecast_calibration.csv", "forecast_reliability.png")
GREEDY = "n/a (greedy)"


def _greedy_cells(values: pd.Series, sample_count: pd.Series) -> list:
    """Quantile metrics as numbers, "n/a (greedy)" where a model decoded one path."""
    return [GREEDY if int(c) == 1 else v for v, c in zip(values, sample_count, strict=True)]


def forecast_section(metrics: pd.DataFrame | None, calibration: pd.DataFrame | None) -> str:
    """Markdown of the forecast-accuracy section (:mod:`forecast_metrics`): one table per
    horizon and the calibration table; says so when the run has no forecasts."""
    lines = ["## Forecast accuracy (beside ranking)", ""]
    if metrics is None or metrics.empty:
        return "\n".join([*lines, "No Kronos forecasts in this run.", ""])
    lines += [
        "Forecast return = mean over sample paths of predicted close at t+h / close at t - 1, "
        "against the realized split-adjusted h-day price return (no dividends). Errors in "
        "return units (fractions) and in price (last close x (1 + return)); MAPE = mean "
        "|error| / |realized| over realized != 0. Direction = share of matching signs over "
        "pairs where neither is 0. Coverage = share of realized inside the 10 %-90 % sample "
        "quantiles (0.80 if calibrated), width in return units, CRPS from the sample paths "
        "(lower is better). Naive baselines: random walk (0) and trailing-year drift, with the "
        "trailing-year h-day returns as their spread.",
        "",
    ]
    for h in sorted(int(h) for h in metrics["horizon"].unique()):
        m = metrics[metrics["horizon"] == h].sort_values("mae_return")
        count = m["sample_count"]
        table = pd.DataFrame({
            "model": m["model"], "pairs": m["n"].astype(int), "MAE": m["mae_return"],
            "RMSE": m["rmse_return"], "MAPE": m["mape_return"], "MAE price": m["mae_price"],
            "RMSE price": m["rmse_price"], "MAPE price": m["mape_price"],
            "direction": m["directional_accuracy"],
            "coverage 10-90": _greedy_cells(m["coverage_10_90"], count),
            "width 10-90": _greedy_cells(m["interval_width_10_90"], count),
            "CRPS": _greedy_cells(m["crps"], count), "samples": count.astype(int),
        })  # fmt: skip
        lines += [f"### Horizon {h} trading days", "", markdown_table(table), ""]
    if calibration is not None and not calibration.empty:
        c = calibration.assign(horizon=calibration["horizon"].astype(int))
        c["cell"] = _greedy_cells(c["observed"], c["sample_count"])
        wide = c.pivot_table(
            index=["model", "horizon"], columns="nominal", values="cell", aggfunc="first"
        )
        wide.columns = [f"p={p:g}" for p in wide.columns]
        wide = wide.reset_index()
        wide["horizon"] = wide["horizon"].astype(str)
        lines += [
            "Calibration: share of realized returns at or below each sample quantile "
            "(equal to p if calibrated):",
            "",
            markdown_table(wide),
            "",
            "![Reliability](forecast_reliability.png)",
            "",
        ]
    return "\n".join(lines)


def write_forecast_files(
    folder: Path, metrics: pd.DataFrame, calibration: pd.DataFrame
) -> dict[str, Path]:
    """Write :data:`FORECAST_FILES` into the report ``folder``, each under a temporary name
    then renamed. Returns: file name -> path."""
    folder = Path(folder)
    paths = {name: folder / name for name in FORECAST_FILES}
    for name, table in (("forecast_metrics.csv", metrics),
                        ("forecast_calibration.csv", calibration)):  # fmt: skip
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        table.to_csv(tmp, index=False)
        os.replace(tmp, paths[name])
    reliability_plot(calibration, paths["forecast_reliability.png"])
    return paths


def key_figures(comparison: pd.DataFrame, verdicts: pd.DataFrame) -> dict[str, float | str]:
    """Flat ``{"<model>/<h>d/median_rank_ic": value, ...}`` for Dagster asset metadata."""
    figures: dict[str, float | str] = {}
    for r in comparison.itertuples():
        for col in ("median_rank_ic", "nw_t", "churn", "positive_fold_share"):
            figures[f"{r.model}/{r.horizon}d/{col}"] = float(getattr(r, col))
    for r in verdicts.itertuples():
        suffix = f"/{int(r.horizon)}d" if pd.notna(r.horizon) else ""
        figures[f"{r.model}/{r.gate}{suffix}"] = str(r.status)
    return figures


def limitations(
    data_source: str, tripwires: dict[str, Any], sector_features: Sequence[str], sectors_used: bool
) -> list[str]:
    """The report's limitations section: survivorship, sectors and contamination together."""
    lines = [
        "## Limitations",
        "",
        "- " + SURVIVORSHIP_NOTE.get(data_source, SURVIVORSHIP_NOTE["tidy"]),
    ]
    names = ", ".join(sector_features) if sector_features else "none"
    lines.append(
        "- **Sectors are as of download time.** One sector mapping (the source's "
        "`constituents.csv`, taken when the files were downloaded) is applied to all history, so "
        "later reclassifications reach earlier dates. Features that use it: "
        f"{names}. They {'are' if sectors_used else 'are not'} model inputs in this run "
        "(`features.use_sector_relative`)."
    )
    contaminated = tripwires.get("contamination", {}).get("contaminated_models", [])
    if contaminated:
        cutoff = tripwires["contamination"].get("pretrain_cutoff")
        lines.append(
            f"- **Contamination.** {', '.join(contaminated)} use(s) published weights pre-trained "
            f"on data up to {cutoff}; evaluated dates on or before it may have been seen in "
            "pre-training. The split before/after the cutoff is in leak_tripwires.json."
        )
    else:
        lines.append("- **Contamination.** No pretrained checkpoint was evaluated in this run.")
    return [*lines, ""]


def _publish(staging: Path, out_dir: Path) -> None:
    """Make ``staging`` visible as ``out_dir`` in one step: ``out_dir`` is a symbolic link that
    is atomically replaced, so a reader sees the previous report or the new one, never a mix."""
    link = out_dir.parent / f".{out_dir.name}.link-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(staging.name)
    if out_dir.exists() and not out_dir.is_symlink():
        shutil.rmtree(out_dir)  # a report folder from before reports were published by link
    old = out_dir.resolve() if out_dir.is_symlink() else None
    os.replace(link, out_dir)
    if old is not None and old != staging.resolve() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def write_report(
    out_dir: Path,
    *,
    comparison: pd.DataFrame,
    fold_summaries: pd.DataFrame,
    per_date: pd.DataFrame,
    eval_rows: pd.DataFrame,
    deciles: pd.DataFrame,
    tripwires: dict[str, Any],
    verdicts: pd.DataFrame,
    reference: pd.DataFrame,
    data_source: str,
    run_info: dict[str, Any] | None = None,
    sector_features: Sequence[str] = (),
    sectors_used: bool = True,
    common: pd.DataFrame | None = None,
    versus_lightgbm: pd.DataFrame | None = None,
    stop_rules: Sequence[dict[str, Any]] = (),
    frozen: tuple[str, pd.DataFrame] | None = None,
    forecast_accuracy: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    gates: GateSettings | None = None,
) -> dict[str, Path]:
    """Write the SPEC section 8 folder as ``out_dir``: every file goes to a staging folder
    beside it, which then replaces the previous report in one rename (see :func:`_publish`).

    Args:
        data_source: ``vendor``, ``tidy`` or ``synthetic``: picks the survivorship statement.
        run_info: free ``key: value`` lines for the header (mode, folds, universe, wall time...).
        sector_features: the feature columns built from the sector mapping (limitations).
        sectors_used: whether they were model inputs (``features.use_sector_relative``).
        common: every compared model on the (date, ticker) pairs all of them scored.
        versus_lightgbm: each model against LightGBM on the pairs both scored.
        stop_rules: :func:`gates.stop_rule` decisions for zero-shot models.
        frozen: (when, :func:`freeze.against_floor`) of the last freeze, if there is one.
        forecast_accuracy: (:func:`forecast_metrics.forecast_metrics`,
            :func:`forecast_metrics.calibration_table`) of the run's forecasts; adds
            :data:`FORECAST_FILES`. None: the section says the run has no forecasts.
        gates: the gate settings the verdicts were judged with (the dates each "n/a" needed);
            None: the defaults.

    Returns: file name -> path of everything written.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the report is for every reader
    paths = {name: staging / name for name in REPORT_FILES}
    fold_summaries.to_csv(paths["fold_summaries.csv"], index=False)
    per_date.to_csv(paths["per_date_metrics.csv"], index=False)
    eval_rows.to_parquet(paths["eval_rows.parquet"], index=False)
    paths["leak_tripwires.json"].write_text(
        json.dumps(clean_json(tripwires), indent=2, default=json_default) + "\n"
    )
    plot_cumulative_rank_ic(per_date, paths["cumulative_rank_ic.png"])
    plot_rank_ic_by_fold(fold_summaries, paths["rank_ic_by_fold.png"])
    plot_decile_returns(deciles, paths["decile_returns.png"])
    plot_turnover(comparison, paths["turnover.png"])
    if forecast_accuracy is not None:
        paths.update(write_forecast_files(staging, *forecast_accuracy))

    lines = ["# Walk-forward evaluation report", ""]
    for key, value in (run_info or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", *limitations(data_source, tripwires, sector_features, sectors_used)]
    g = gates or GateSettings()
    lines += [
        "Metrics: RankIC = Spearman(score, excess return) per scoring date; medians over dates. "
        "NW t = HAC t of the mean RankIC (truncated kernel, lag = ceil(h / spacing) - 1 scoring "
        "dates, small-sample corrected so that |t| > 1.96 is a 5 % test); n/a with fewer than "
        "4 x (lag + 1) dates. t non-overlap = t over dates at least h sessions apart (n/a with "
        f"fewer than {NON_OVERLAP_MIN_DATES}). Churn = share of top-decile names new since the "
        f"model's scoring date {CHURN_INTERVAL_SESSIONS} sessions earlier, the same interval "
        "for every cadence (not a cost). Hold turnover = top plus bottom decile share replaced "
        "when the portfolio formed at t is rolled into the one formed h sessions later; where "
        "no later portfolio exists it is imputed as 1 per leg, and `hold imputed` is the share "
        "of dates imputed. Net spread = top-minus-bottom decile h-day return minus cost_bps x 2 "
        "x hold turnover; positive folds and break-even cost use it; all three read "
        f'"{IMPUTED}" when more than {MAX_IMPUTED_HOLD_SHARE:.0%} of the dates are imputed.',
        "",
        f"No verdict on noise (SPEC section 6): a figure a gate reads needs at least "
        f"{g.min_scoring_dates} scoring dates (`gates.min_scoring_dates`), inside each fold and "
        'volatility regime too; a "median RankIC >= x" claim also needs its NW t to be a '
        f"number and >= {g.min_nw_t} (one-sided), and gate 2's LightGBM tolerance passes only a "
        "model whose own median RankIC is positive with that t. A gate that cannot be judged is "
        'NOT EVALUATED, never PASS; "n/a (N of M dates)" says how many dates a cell had and '
        "needed. Only candidate models block promotion. gate2_strict (informational): the "
        "same leg at 0.08 / 0.10 / 0.15 at 20 / 60 / 90 days.",
        "",
        "Sign convention: every difference in this report is this model (or this run) minus "
        "its comparator (LightGBM, the reference study, the last freeze); negative = behind.",
        "",
        "Tables are split by scoring cadence: a model scored weekly is ranked only against "
        "models scored weekly.",
        "",
    ]
    cadences = model_cadences(per_date)
    for h in sorted(comparison["horizon"].unique()):
        lines += [f"## Horizon {int(h)} trading days", ""]
        lines += horizon_section(comparison, verdicts, int(h), cadences, g)
        lines += common_section(common, versus_lightgbm, int(h))
    lines += [forecast_section(*(forecast_accuracy or (None, None))), ""]
    if frozen is not None:
        when, table = frozen
        lines += [
            f"## Against the last freeze ({when})",
            "",
            "Baseline median RankIC frozen by `kronos-pipeline freeze`, beside this run's:",
            "",
            markdown_table(table.assign(horizon=table["horizon"].astype(int).astype(str))),
            "",
        ]
    lines += [
        "## Reference study (frozen numbers, different data)",
        "",
        markdown_table(reference),
        "",
    ]
    failed = verdicts[verdicts["candidate"].astype(bool) & (verdicts["status"] != "pass")]
    lines += ["## Gate verdicts of candidate models", ""]
    if verdicts["candidate"].any():
        lines += [markdown_table(_verdict_rows(verdicts[verdicts["candidate"].astype(bool)]))]
        lines += ["", f"{len(failed)} verdict(s) failed or not evaluated.", ""]
    else:
        lines += [
            "No candidate (non-baseline) model in this run; gates marked for information.",
            "",
        ]
    if stop_rules:
        lines += ["## Decision rules", ""]
        for r in stop_rules:
            lines.append(
                f"- {r['model']}: **{r['decision']}** (median RankIC {r['bar']} needed at one "
                "horizon at least: "
                + ", ".join(f"{h}d {_fmt(v)}" for h, v in r["medians"].items())
                + ")"
            )
        lines.append("")
    lines += ["## Leak tripwires", ""]
    for name, result in tripwires.items():
        if isinstance(result, dict):
            status = str(result.get("status", "not evaluated")).upper()
            lines.append(f"- {name}: {status}: {result.get('reason', '')}")
    lines += ["", "## Plots", ""]
    for name, title in [
        ("cumulative_rank_ic.png", "Cumulative RankIC"),
        ("rank_ic_by_fold.png", "RankIC by fold"),
        ("decile_returns.png", "Decile returns"),
        ("turnover.png", "Turnover"),
    ]:
        lines += [f"![{title}]({name})", ""]
    paths["REPORT_SUMMARY.md"].write_text("\n".join(lines))
    _publish(staging, out_dir)
    return {name: out_dir / name for name in paths}

"""The run folder of SPEC section 8: ``REPORT_SUMMARY.md`` with tables and embedded PNG plots,
``fold_summaries.csv``, ``per_date_metrics.csv``, ``eval_rows.parquet``, ``leak_tripwires.json``.

The only module of ``evaluation/`` that writes files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the report is written by workers without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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
    fig, axes = plt.subplots(1, len(horizons), figsize=(5.5 * len(horizons), 4), squeeze=False)
    return fig, dict(zip(horizons, axes[0], strict=True))


def plot_cumulative_rank_ic(per_date: pd.DataFrame, path: Path) -> None:
    """Cumulative sum of daily RankIC per model, one panel per horizon."""
    horizons = sorted(per_date["horizon"].unique())
    fig, axes = _horizon_axes(horizons)
    for (model, h), g in per_date.sort_values("date").groupby(["model", "horizon"]):
        axes[h].plot(g["date"], g["rank_ic"].fillna(0).cumsum(), label=model)
    for h, ax in axes.items():
        ax.set_title(f"Cumulative RankIC, {h}d")
        ax.axhline(0, color="grey", lw=0.5)
        ax.tick_params(axis="x", labelrotation=45)
    axes[horizons[0]].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rank_ic_by_fold(fold_summaries: pd.DataFrame, path: Path) -> None:
    """Median RankIC of each fold per model, one panel per horizon."""
    horizons = sorted(fold_summaries["horizon"].unique())
    fig, axes = _horizon_axes(horizons)
    for (model, h), g in fold_summaries.sort_values("fold").groupby(["model", "horizon"]):
        axes[h].plot(g["fold"], g["median_rank_ic"], marker="o", ms=3, label=model)
    for h, ax in axes.items():
        ax.set_title(f"Median RankIC by fold, {h}d")
        ax.axhline(0, color="grey", lw=0.5)
        ax.tick_params(axis="x", labelrotation=90, labelsize=6)
    axes[horizons[0]].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_decile_returns(deciles: pd.DataFrame, path: Path) -> None:
    """Mean forward return (%) per score decile per model, one panel per horizon."""
    horizons = sorted(deciles["horizon"].unique())
    fig, axes = _horizon_axes(horizons)
    for (model, h), g in deciles.groupby(["model", "horizon"]):
        axes[h].plot(g["quantile"], 100 * g["mean_fwd_return"], marker="o", ms=3, label=model)
    for h, ax in axes.items():
        ax.set_title(f"Mean {h}d return by score decile (%)")
        ax.set_xticks(range(1, 11))
    axes[horizons[0]].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_turnover(comparison: pd.DataFrame, path: Path) -> None:
    """Top-decile churn per model and horizon (bars)."""
    pivot = comparison.pivot(index="model", columns="horizon", values="churn")
    fig, ax = plt.subplots(figsize=(8, 4))
    pivot.plot.bar(ax=ax)
    ax.set_title("Top-decile turnover between scoring dates")
    ax.set_ylabel("share of names replaced")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def comparison_table(
    comparison: pd.DataFrame, verdicts: pd.DataFrame, horizon: int
) -> pd.DataFrame:
    """The markdown comparison table of one horizon, gates marked."""
    c = comparison[comparison["horizon"] == horizon].sort_values("median_rank_ic", ascending=False)
    v = verdicts.set_index(["gate", "model"])
    g2 = verdicts[(verdicts["gate"] == "gate2") & (verdicts["horizon"] == horizon)]
    g2 = g2.set_index("model")["passed"]
    out = pd.DataFrame(
        {
            "model": c["model"],
            "median RankIC": c["median_rank_ic"],
            "mean RankIC": c["mean_rank_ic"],
            "IC-IR": c["ic_ir"],
            "hit rate": c["hit_rate"],
            "NW t": c["nw_t"],
            "churn": c["churn"],
            "rank autocorr": c["rank_autocorr"],
            "net spread": c["mean_net_spread_return"],
            "positive folds": c["positive_fold_share"],
            "break-even bps": c["break_even_cost_bps"],
            "corr mom 12-1": c["median_momentum_corr"],
            "worst regime": c["min_regime_median_rank_ic"],
        }
    )
    out["gate 1"] = [bool(v["passed"].get(("gate1", m), False)) for m in c["model"]]
    out["gate 2"] = [bool(g2.get(m, False)) for m in c["model"]]
    out["gate 3"] = [bool(v["passed"].get(("gate3", m), False)) for m in c["model"]]
    return out


def key_figures(comparison: pd.DataFrame, verdicts: pd.DataFrame) -> dict[str, float | bool]:
    """Flat ``{"<model>/<h>d/median_rank_ic": value, ...}`` for Dagster asset metadata."""
    figures: dict[str, float | bool] = {}
    for r in comparison.itertuples():
        for col in ("median_rank_ic", "nw_t", "churn", "positive_fold_share"):
            figures[f"{r.model}/{r.horizon}d/{col}"] = float(getattr(r, col))
    for r in verdicts.itertuples():
        suffix = f"/{r.horizon}d" if pd.notna(r.horizon) else ""
        figures[f"{r.model}/{r.gate}{suffix}"] = bool(r.passed)
    return figures


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
) -> dict[str, Path]:
    """Write the SPEC section 8 folder into ``out_dir`` (created; files overwritten).

    Args:
        data_source: ``vendor``, ``tidy`` or ``synthetic``: picks the survivorship statement.
        run_info: free ``key: value`` lines for the header (mode, folds, universe, wall time...).

    Returns: file name -> path of everything written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in REPORT_FILES}
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

    lines = ["# Walk-forward evaluation report", ""]
    for key, value in (run_info or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", SURVIVORSHIP_NOTE.get(data_source, SURVIVORSHIP_NOTE["tidy"]), ""]
    contaminated = tripwires.get("contamination", {}).get("contaminated_models", [])
    if contaminated:
        cutoff = tripwires["contamination"].get("pretrain_cutoff")
        lines += [
            f"**Contamination.** {', '.join(contaminated)} use(s) published weights pre-trained on "
            f"data up to {cutoff}; evaluated dates on or before it may have been seen in "
            "pre-training. The split before/after the cutoff is in leak_tripwires.json.",
            "",
        ]
    else:
        lines += ["**Contamination.** No pretrained checkpoint was evaluated in this run.", ""]
    lines += [
        "Metrics: RankIC = Spearman(score, excess return) per scoring date; medians over dates. "
        "NW t = Newey-West t of the mean RankIC, lag h-1. Churn = share of top-decile names new "
        "since the previous scoring date. Net spread = top-minus-bottom decile h-day return minus "
        "cost_bps x 2 x (top + bottom churn). Gates: SPEC section 6; only non-baseline models "
        "block promotion.",
        "",
    ]
    for h in sorted(comparison["horizon"].unique()):
        lines += [
            f"## Horizon {h} trading days",
            "",
            markdown_table(comparison_table(comparison, verdicts, h)),
            "",
        ]
    lines += [
        "## Reference study (frozen numbers, different data)",
        "",
        markdown_table(reference),
        "",
    ]
    failed = verdicts[verdicts["candidate"] & ~verdicts["passed"]]
    lines += ["## Gate verdicts of candidate models", ""]
    if verdicts["candidate"].any():
        lines += [
            markdown_table(
                verdicts[verdicts["candidate"]].astype({"horizon": "object"}).fillna("all")
            )
        ]
        lines += ["", f"{len(failed)} failed verdict(s).", ""]
    else:
        lines += [
            "No candidate (non-baseline) model in this run; gates marked for information.",
            "",
        ]
    lines += ["## Leak tripwires", ""]
    for name, result in tripwires.items():
        if isinstance(result, dict):
            status = {True: "PASS", False: "FAIL", None: "not run"}[result.get("passed")]
            lines.append(f"- {name}: {status}")
    lines += ["", "## Plots", ""]
    for name, title in [
        ("cumulative_rank_ic.png", "Cumulative RankIC"),
        ("rank_ic_by_fold.png", "RankIC by fold"),
        ("decile_returns.png", "Decile returns"),
        ("turnover.png", "Turnover"),
    ]:
        lines += [f"![{title}]({name})", ""]
    paths["REPORT_SUMMARY.md"].write_text("\n".join(lines))
    return paths

"""Frozen baselines: the baseline floor and per-fold numbers of one evaluation, kept so that
later runs are compared against them (the research plan's "freeze" step).

``BASELINE_FLOOR.json`` holds, per baseline model and horizon, the comparison figures;
``fold_summaries.json`` the per-fold rows of every baseline. Both are written to a staging
name and renamed, so a reader sees the previous freeze or the new one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation.baselines import BASELINE_MODELS

FLOOR_FILE = "BASELINE_FLOOR.json"
FOLDS_FILE = "fold_summaries.json"
FROZEN_COLUMNS = ("n_dates", "median_rank_ic", "mean_rank_ic", "nw_t", "churn",
                  "mean_net_spread_return", "positive_fold_share", "break_even_cost_bps")  # fmt: skip


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    clean = frame.astype(object).where(frame.notna(), None)
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in clean.to_dict("records")]  # fmt: skip


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def freeze(
    comparison: pd.DataFrame, fold_summaries: pd.DataFrame, folder: Path, run: dict[str, Any]
) -> dict[str, Path]:
    """Write the baselines of ``comparison`` and ``fold_summaries`` into ``folder``.

    ``run`` (mode, folds, source, settings fingerprint...) is stored beside the numbers.
    Raises ValueError when no baseline was evaluated.
    """
    base = comparison[comparison["model"].isin(BASELINE_MODELS)]
    if base.empty:
        raise ValueError("freeze: no baseline model in the comparison table; run the evaluation")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    cols = ["model", "horizon", *[c for c in FROZEN_COLUMNS if c in base.columns]]
    paths = {FLOOR_FILE: folder / FLOOR_FILE, FOLDS_FILE: folder / FOLDS_FILE}
    folds = fold_summaries[fold_summaries["model"].isin(BASELINE_MODELS)]
    _write_atomic(paths[FOLDS_FILE], {"frozen_at": stamp, "run": run, "folds": _records(folds)})
    # The floor is written last: it is what marks a freeze as complete.
    _write_atomic(
        paths[FLOOR_FILE], {"frozen_at": stamp, "run": run, "floor": _records(base[cols])}
    )
    return paths


def load_floor(folder: Path) -> dict[str, Any] | None:
    """The last freeze's floor, or None when nothing was frozen yet."""
    path = folder / FLOOR_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def against_floor(comparison: pd.DataFrame, floor: dict[str, Any]) -> pd.DataFrame:
    """This run's median RankIC beside the frozen one, per baseline model and horizon:
    ``model, horizon, frozen_median_rank_ic, median_rank_ic, change``."""
    frozen = pd.DataFrame(floor["floor"])[["model", "horizon", "median_rank_ic"]]
    frozen = frozen.rename(columns={"median_rank_ic": "frozen_median_rank_ic"})
    now = comparison[["model", "horizon", "median_rank_ic"]]
    out = frozen.merge(now, on=["model", "horizon"], how="left")
    out["change"] = out["median_rank_ic"] - out["frozen_median_rank_ic"]
    return out.sort_values(["horizon", "model"], ignore_index=True)

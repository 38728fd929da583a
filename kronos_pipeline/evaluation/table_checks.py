"""Checks of the evaluation tables against what they must be derived from: the scores and
labels they join, the calendar the folds are cut on, and the files a report folder holds.

Each function returns ``(passed, description, metadata)``; the Dagster wiring turns them into
asset check results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation.folds import Fold
from kronos_pipeline.evaluation.metrics import MIN_NAMES_PER_DATE, session_positions

CheckOutcome = tuple[bool, str, dict[str, Any]]


def folds_purged(folds: Sequence[Fold], calendar: str = "XNYS") -> CheckOutcome:
    """Every fold's training end for horizon ``h`` lies at least ``h + 1`` sessions of the
    exchange calendar before its test month, and the test months are consecutive."""
    bad = []
    for f in folds:
        for h, end in f.train_end.items():
            gap = int(np.diff(session_positions([end, f.test_start], calendar))[0])
            if gap < h + 1:
                bad.append(f"{f.fold_id} h={h}: {gap} sessions")
    months = pd.PeriodIndex([f.fold_id for f in folds], freq="M")
    gaps = [str(m) for m, d in zip(months[1:], np.diff(months.asi8), strict=True) if d != 1]
    passed = not bad and not gaps
    desc = (f"{len(folds)} folds purged by h + 1 sessions, consecutive months" if passed else
            "; ".join([*bad[:5], *(f"month gap before {m}" for m in gaps[:5])]))  # fmt: skip
    return passed, desc, {"folds": len(folds), "violations": len(bad) + len(gaps)}


def eval_rows_reconcile(eval_rows: pd.DataFrame, expected_rows: int) -> CheckOutcome:
    """The eval rows are exactly the (score, matured label) pairs: their count equals the join
    counted independently in the warehouse, with no duplicate key."""
    keys = ["model", "horizon", "date", "ticker"]
    dupes = int(eval_rows.duplicated(keys).sum())
    passed = len(eval_rows) == expected_rows and dupes == 0 and expected_rows > 0
    return (
        passed,
        (
            f"{len(eval_rows)} eval rows for {expected_rows} scored (date, ticker) pairs with a "
            f"matured label; {dupes} duplicates"
        ),
        {"rows": len(eval_rows), "expected": int(expected_rows), "duplicates": dupes},
    )


def per_date_complete(per_date: pd.DataFrame, eval_rows: pd.DataFrame) -> CheckOutcome:
    """One per-date row per (model, horizon, date) of the eval rows, and a RankIC on every date
    with at least 3 names whose scores and labels vary."""
    keys = ["model", "horizon", "date"]
    expected = eval_rows[keys].drop_duplicates()
    g = eval_rows.groupby(keys)
    varied = (g["score"].nunique() > 1) & (g["excess_return"].nunique() > 1)
    varied &= g.size() >= MIN_NAMES_PER_DATE
    ic = per_date.set_index(keys)["rank_ic"]
    missing_ic = [k for k in varied[varied].index if not np.isfinite(ic.get(k, np.nan))]
    passed = len(per_date) == len(expected) and not missing_ic
    return (
        passed,
        (
            f"{len(per_date)} per-date rows for {len(expected)} scored dates; "
            f"{len(missing_ic)} dates with data but no RankIC"
        ),
        {"rows": len(per_date), "expected": len(expected), "nan_rank_ic": len(missing_ic)},
    )


def summaries_complete(fold_summaries: pd.DataFrame, per_date: pd.DataFrame) -> CheckOutcome:
    """One fold summary per (model, horizon, fold) of the per-date table, with a median RankIC
    wherever one of its dates had a RankIC."""
    return _one_row_each(fold_summaries, per_date, ["model", "horizon", "fold"], "fold summaries")


def comparison_complete(comparison: pd.DataFrame, per_date: pd.DataFrame) -> CheckOutcome:
    """One comparison row per (model, horizon) of the per-date table, with a median RankIC
    wherever one of its dates had a RankIC."""
    return _one_row_each(comparison, per_date, ["model", "horizon"], "comparison rows")


def _one_row_each(table: pd.DataFrame, per_date: pd.DataFrame, keys: list[str], what: str):
    has_ic = per_date.groupby(keys)["rank_ic"].apply(lambda s: s.notna().any())
    med = table.groupby(keys)["median_rank_ic"].first() if len(table) else pd.Series(dtype=float)
    nan_med = [k for k in has_ic[has_ic].index if not np.isfinite(med.get(k, np.nan))]
    dupes = int(table.duplicated(keys).sum())
    passed = len(table) == len(has_ic) and not nan_med and dupes == 0
    return (
        passed,
        (
            f"{len(table)} {what} for {len(has_ic)} groups; {len(nan_med)} without a median RankIC, "
            f"{dupes} duplicates"
        ),
        {"rows": len(table), "expected": len(has_ic), "nan_median": len(nan_med)},
    )


def report_files_present(folder: Path, expected: Sequence[str]) -> CheckOutcome:
    """The report folder holds every expected file, none of them empty."""
    missing = [n for n in expected if not (folder / n).is_file()]
    empty = [n for n in expected if (folder / n).is_file() and (folder / n).stat().st_size == 0]
    passed = not missing and not empty
    return (
        passed,
        (
            f"{len(expected) - len(missing) - len(empty)} of {len(expected)} files present"
            + (f"; missing {missing}" if missing else "")
            + (f"; empty {empty}" if empty else "")
        ),
        {"missing": len(missing), "empty": len(empty)},
    )


def scores_complete(
    scores: pd.DataFrame,
    members: pd.DataFrame,
    models: Sequence[str],
    horizons: Sequence[int],
    always_scored: Sequence[str] = (),
) -> CheckOutcome:
    """A date-level score step against the universe members it had to score: at most one row
    per (model, horizon, date, ticker), every score finite, and every member of every scored
    date scored by each of ``always_scored`` (models with no missing input, e.g. LightGBM and
    random) at every horizon; ``models`` must all be present when there was a member."""
    keys = ["model", "horizon", "date", "ticker"]
    dupes = int(scores.duplicated(keys).sum()) if len(scores) else 0
    bad = int((~np.isfinite(scores["score"].to_numpy(dtype=float))).sum()) if len(scores) else 0
    present = set(scores["model"]) if len(scores) else set()
    absent = sorted(set(models) - present) if len(members) else []
    expected = (
        members[["date", "ticker"]]
        .drop_duplicates()
        .assign(date=lambda f: pd.to_datetime(f["date"]))
    )
    unscored = []
    for model in always_scored:
        for h in horizons:
            got = scores.loc[
                (scores["model"] == model) & (scores["horizon"] == h), ["date", "ticker"]
            ]
            got = got.assign(date=pd.to_datetime(got["date"]))
            miss = expected.merge(got, how="left", indicator=True)
            miss = miss[miss["_merge"] == "left_only"]
            unscored += [f"{model} h{h} {r.date.date()} {r.ticker}" for r in miss.itertuples()]
    passed = dupes == 0 and bad == 0 and not absent and not unscored
    desc = (f"{len(scores)} scores of {len(expected)} member-dates by {len(present)} models"
            if passed else
            f"{dupes} duplicates, {bad} non-finite, models missing {absent}, "
            f"{len(unscored)} member-dates unscored (e.g. {unscored[:5]})")  # fmt: skip
    return passed, desc, {"rows": len(scores), "duplicates": dupes, "non_finite": bad,
                          "unscored": len(unscored)}  # fmt: skip

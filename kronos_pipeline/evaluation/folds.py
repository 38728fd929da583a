"""Walk-forward folds (SPEC section 3).

A fold is one test month. For horizon ``h`` (trading days) the training rows of a fold end
``purge = h + 1`` trading days before the first test day, so the last training label (close
``t`` to close ``t + h``) matures on the trading day before the test month starts and no training
label overlaps a test label. Everything here is a pure function of the sorted trading dates
present in the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

Window = Literal["expanding", "rolling"]
Cadence = Literal["daily", "weekly", "monthly"]
Mode = Literal["smoke", "full"]


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold.

    Attributes:
        fold_id: test month as ``"YYYY-MM"``; also the Dagster partition key.
        test_start: first trading day of the test month (the fold's cut).
        test_end: last trading day of the test month.
        train_start: first date a training row may have (expanding: first trading date in the
            data; rolling: ``rolling_days`` trading days before ``test_start``).
        train_end: per horizon ``h`` (trading days), the last date a training row may have,
            ``h + 1`` trading days before ``test_start``.
    """

    fold_id: str
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    train_start: pd.Timestamp
    train_end: dict[int, pd.Timestamp] = field(hash=False)

    @property
    def cut(self) -> pd.Timestamp:
        """The fold's cut: a training label must be available strictly before this date."""
        return self.test_start


def _as_trading_index(trading_dates: Sequence | pd.DatetimeIndex | np.ndarray) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(pd.to_datetime(np.asarray(trading_dates))).normalize()
    idx = idx.unique().sort_values()
    if len(idx) == 0:
        raise ValueError("make_folds: no trading dates given; load prices before building folds.")
    return idx


def make_folds(
    trading_dates: Sequence | pd.DatetimeIndex | np.ndarray,
    first_month: str,
    last_month: str | None,
    horizons: Sequence[int],
    window: Window = "expanding",
    rolling_days: int | None = None,
) -> list[Fold]:
    """Monthly test folds from ``first_month`` to ``last_month`` inclusive (``"YYYY-MM"``).

    Args:
        trading_dates: the trading dates available in the data (any order, duplicates allowed).
        first_month, last_month: first and last test month, ``"YYYY-MM"``; ``last_month``
            None: the month of the newest trading date.
        horizons: label horizons in trading days; each gets its own purge of ``h + 1`` days.
        window: ``"expanding"`` (train from the first date) or ``"rolling"``.
        rolling_days: trading days of history before ``test_start`` kept when rolling
            (``FoldSettings.rolling_train_days``); required when ``window == "rolling"``.

    Raises:
        ValueError: a test month has no trading day in the data, or too little history precedes
            it for the longest purge.
    """
    dates = _as_trading_index(trading_dates)
    if last_month is None:  # through the newest month the data reach (folds grow with the data)
        last_month = str(dates[-1].to_period("M"))
    months = pd.period_range(pd.Period(first_month, "M"), pd.Period(last_month, "M"), freq="M")
    if len(months) == 0:
        raise ValueError(f"make_folds: empty month range {first_month}..{last_month}.")
    if window == "rolling" and (rolling_days is None or rolling_days <= 0):
        raise ValueError("make_folds: window='rolling' needs a positive rolling_days.")
    date_months = dates.to_period("M")
    folds: list[Fold] = []
    for month in months:
        positions = np.flatnonzero(date_months == month)
        if len(positions) == 0:
            raise ValueError(
                f"make_folds: test month {month} has no trading day in the data "
                f"({dates[0].date()}..{dates[-1].date()}); narrow FoldSettings.first_test_month/"
                "last_test_month to the data's range."
            )
        i0 = int(positions[0])
        train_end: dict[int, pd.Timestamp] = {}
        for h in sorted(horizons):
            i_end = i0 - (int(h) + 1)
            if i_end < 0:
                raise ValueError(
                    f"make_folds: fold {month} needs {h + 1} trading days of history before "
                    f"{dates[i0].date()} for horizon {h}, but the data starts {dates[0].date()}."
                )
            train_end[int(h)] = dates[i_end]
        if window == "rolling":
            assert rolling_days is not None
            train_start = dates[max(0, i0 - rolling_days)]
        else:
            train_start = dates[0]
        folds.append(
            Fold(
                fold_id=str(month),
                test_start=dates[i0],
                test_end=dates[int(positions[-1])],
                train_start=train_start,
                train_end=train_end,
            )
        )
    return folds


def matured(fold: Fold, trading_dates: Sequence | pd.DatetimeIndex, horizon: int) -> bool:
    """Whether the label of the fold's last test day at ``horizon`` trading days has matured
    within ``trading_dates`` (the data's sessions): every test date can then be judged."""
    dates = _as_trading_index(trading_dates)
    return int((dates > fold.test_end).sum()) >= horizon


def select_folds(
    folds: Sequence[Fold],
    mode: Mode,
    smoke_folds: int,
    trading_dates: Sequence | pd.DatetimeIndex | None = None,
    horizon: int | None = None,
) -> list[Fold]:
    """SMOKE: the last ``smoke_folds`` folds whose labels have matured at ``horizon`` (the
    longest) within ``trading_dates`` (all folds when either is None); FULL: every fold."""
    if mode == "full":
        return list(folds)
    if mode == "smoke":
        judged = list(folds)
        if trading_dates is not None and horizon is not None:
            judged = [f for f in judged if matured(f, trading_dates, horizon)]
        return judged[-smoke_folds:] if smoke_folds > 0 else []
    raise ValueError(f"select_folds: unknown mode {mode!r}; use 'smoke' or 'full'.")


def test_dates(fold: Fold, trading_dates: Sequence | pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Every trading day of the fold's test month."""
    dates = _as_trading_index(trading_dates)
    return dates[(dates >= fold.test_start) & (dates <= fold.test_end)]


# pytest would otherwise collect ``test_dates`` when a test module imports it.
test_dates.__test__ = False  # type: ignore[attr-defined]


def scoring_dates(
    fold: Fold, trading_dates: Sequence | pd.DatetimeIndex, cadence: Cadence = "daily"
) -> pd.DatetimeIndex:
    """Dates of the test month on which models are scored.

    ``daily``: every trading day; ``weekly``: the first trading day of each calendar week
    (weeks start Monday) inside the month; ``monthly``: the first trading day of the month.
    """
    days = test_dates(fold, trading_dates)
    if cadence == "daily":
        return days
    if cadence == "monthly":
        return days[:1]
    if cadence == "weekly":
        week = days.to_period("W-SUN")
        keep = np.r_[True, week[1:] != week[:-1]]
        return days[keep]
    raise ValueError(f"scoring_dates: unknown cadence {cadence!r}; use daily, weekly or monthly.")


def fold_of_date(folds: Sequence[Fold], dates: pd.Series) -> pd.Series:
    """The fold id whose test month contains each date (``None`` outside every fold)."""
    ids = pd.Series(pd.NA, index=dates.index, dtype="object")
    d = pd.to_datetime(dates)
    for fold in folds:
        ids[(d >= fold.test_start) & (d <= fold.test_end)] = fold.fold_id
    return ids


def folds_to_frame(folds: Sequence[Fold]) -> pd.DataFrame:
    """Long table of fold definitions, one row per fold and horizon (for the warehouse and UI).

    Columns: ``fold_id, horizon, train_start, train_end, test_start, test_end, purge_days``
    (``purge_days = horizon + 1`` trading days).
    """
    rows = [
        {
            "fold_id": f.fold_id,
            "horizon": h,
            "train_start": f.train_start,
            "train_end": end,
            "test_start": f.test_start,
            "test_end": f.test_end,
            "purge_days": h + 1,
        }
        for f in folds
        for h, end in sorted(f.train_end.items())
    ]
    cols = ["fold_id", "horizon", "train_start", "train_end", "test_start", "test_end"]
    frame = pd.DataFrame(rows, columns=[*cols, "purge_days"])
    for c in ["train_start", "train_end", "test_start", "test_end"]:
        frame[c] = pd.to_datetime(frame[c])
    return frame


def folds_from_frame(frame: pd.DataFrame) -> list[Fold]:
    """Inverse of :func:`folds_to_frame`, ordered by ``test_start``."""
    folds = []
    for fold_id, g in frame.groupby("fold_id", sort=False):
        first = g.iloc[0]
        folds.append(
            Fold(
                fold_id=str(fold_id),
                test_start=pd.Timestamp(first["test_start"]),
                test_end=pd.Timestamp(first["test_end"]),
                train_start=pd.Timestamp(first["train_start"]),
                train_end={int(r.horizon): pd.Timestamp(r.train_end) for r in g.itertuples()},
            )
        )
    return sorted(folds, key=lambda f: f.test_start)

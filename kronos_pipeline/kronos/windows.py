"""Point-in-time training windows for Kronos: cutting, time split, sampling, normalisation.

A *window* is ``lookback + horizon`` consecutive bars of one ticker. Windows are cut only from
bars dated at or before the training cut, and split by time into a training part and a later
validation part:

* ``val_start`` is the first trading date of the last ``val_fraction`` of the distinct dates in
  ``(first date, train_cut]``;
* a training window lies entirely before ``val_start`` (its last bar is dated ``< val_start``);
* a validation window lies entirely in ``[val_start, train_cut]``.

No bar is therefore shared between a training and a validation window (neither as context nor as
target): the purge gap is one window length per ticker. Every window is normalised on its own
with the statistics of its first ``lookback`` bars (the context), exactly as a forecast normalises
its context at inference; the ``horizon`` bars reuse the context statistics, so no future bar
leaks into the scaling.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
FEATURE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "amount")
STAMP_COLUMNS: tuple[str, ...] = ("minute", "hour", "weekday", "day", "month")
NORM_EPS: float = 1e-5  # added to the context standard deviation before dividing
DEFAULT_CLIP: float = 5.0  # normalised values are clipped to [-clip, clip]


def _to_pandas(bars: object) -> pd.DataFrame:
    """Accept a pandas or polars DataFrame of bars; return a pandas copy."""
    if isinstance(bars, pd.DataFrame):
        return bars.copy()
    to_pandas = getattr(bars, "to_pandas", None)
    if to_pandas is None:
        raise TypeError(f"bars must be a pandas or polars DataFrame, got {type(bars).__name__}")
    return to_pandas()


def _as_date(value: dt.date | str | pd.Timestamp | np.datetime64) -> np.datetime64:
    return np.datetime64(pd.Timestamp(value).date(), "D")


def prepare_bars(bars: object) -> pd.DataFrame:
    """Validate and tidy long bars for windowing.

    Args:
        bars: pandas or polars DataFrame with columns ``ticker, date, open, high, low, close,
            volume`` and optionally ``amount`` (split-adjusted prices in currency units,
            volume in shares, amount in currency units). When ``amount`` is missing it is
            filled as ``volume * mean(open, high, low, close)``, as the reference predictor does.

    Returns:
        A pandas DataFrame sorted by ``(ticker, date)`` with ``date`` as ``datetime64[ns]``
        (normalised to midnight) and float64 feature columns.

    Raises:
        ValueError: on missing columns or duplicated ``(ticker, date)`` rows.
    """
    df = _to_pandas(bars)
    required = {"ticker", "date", "open", "high", "low", "close", "volume"}
    missing = required - set(df.columns)
    if missing:
        raise ValueError(f"bars is missing columns {sorted(missing)}")
    df["date"] = pd.to_datetime(df["date"]).dt.normalize()
    df["ticker"] = df["ticker"].astype(str)
    for col in ("open", "high", "low", "close", "volume"):
        df[col] = df[col].astype(np.float64)
    if "amount" not in df.columns:
        df["amount"] = df["volume"] * df[list(PRICE_COLUMNS)].mean(axis=1)
    else:
        df["amount"] = df["amount"].astype(np.float64)
    df = df.sort_values(["ticker", "date"], kind="mergesort").reset_index(drop=True)
    if df.duplicated(["ticker", "date"]).any():
        raise ValueError("bars holds duplicated (ticker, date) rows")
    return df[["ticker", "date", *FEATURE_COLUMNS]]


def calendar_stamps(dates: np.ndarray) -> np.ndarray:
    """Time features of each bar, in the order of ``STAMP_COLUMNS``.

    Args:
        dates: array of ``datetime64`` values.

    Returns:
        float32 array ``(len(dates), 5)``: minute, hour, weekday (Monday = 0), day of month,
        month (1-12). Daily bars carry minute = hour = 0.
    """
    idx = pd.DatetimeIndex(dates)
    return np.stack([idx.minute, idx.hour, idx.weekday, idx.day, idx.month], axis=-1).astype(
        np.float32
    )


def normalize_windows(
    raw: np.ndarray, lookback: int, clip: float = DEFAULT_CLIP
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise each window with the mean and standard deviation of its context.

    Args:
        raw: float array ``(batch, length, features)`` in raw units.
        lookback: number of leading bars of each window that form the context; the statistics
            come from these bars only.
        clip: normalised values are clipped to ``[-clip, clip]``.

    Returns:
        ``(x, mean, std)``: float32 normalised windows ``(batch, length, features)`` and the
        float32 per-window context statistics ``(batch, features)`` (population std, ddof 0).
    """
    raw32 = raw.astype(np.float32, copy=False)
    context = raw32[:, :lookback, :]
    mean = context.mean(axis=1)
    std = context.std(axis=1)
    x = (raw32 - mean[:, None, :]) / (std[:, None, :] + NORM_EPS)
    return np.clip(x, -clip, clip).astype(np.float32, copy=False), mean, std


@dataclass(frozen=True)
class WindowSet:
    """Training and validation windows over one set of PIT bars.

    Attributes:
        values: float64 ``(n_bars, 6)`` raw features of every kept bar, grouped by ticker and
            sorted by date within a ticker (``FEATURE_COLUMNS`` order).
        dates: ``datetime64[D]`` ``(n_bars,)`` bar dates.
        stamps: float32 ``(n_bars, 5)`` calendar features (``STAMP_COLUMNS`` order).
        ticker_codes: int32 ``(n_bars,)`` index into ``tickers`` of each bar.
        tickers: sorted ticker symbols.
        train_starts: int64 row indices (into ``values``) of the first bar of each training
            window, ascending.
        val_starts: int64 row indices of the first bar of each validation window, ascending.
        lookback: context bars per window.
        horizon: target bars per window after the context.
        train_cut: last date any window may touch.
        val_start: first date of the validation part (no training window reaches it).
    """

    values: np.ndarray
    dates: np.ndarray
    stamps: np.ndarray
    ticker_codes: np.ndarray
    tickers: tuple[str, ...]
    train_starts: np.ndarray
    val_starts: np.ndarray
    lookback: int
    horizon: int
    train_cut: dt.date
    val_start: dt.date

    @property
    def window_length(self) -> int:
        """Bars per window (``lookback + horizon``)."""
        return self.lookback + self.horizon

    def window_bounds(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last bar dates (``datetime64[D]``) of the windows starting at ``starts``."""
        starts = np.asarray(starts, dtype=np.int64)
        return self.dates[starts], self.dates[starts + self.window_length - 1]

    def raw_batch(self, starts: np.ndarray) -> np.ndarray:
        """Raw float64 windows ``(len(starts), window_length, 6)``."""
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.window_length)
        return self.values[idx]

    def batch(
        self, starts: np.ndarray, clip: float = DEFAULT_CLIP
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised windows and their calendar stamps.

        Returns:
            ``(x, stamps)``: float32 ``(len(starts), window_length, 6)`` normalised features and
            float32 ``(len(starts), window_length, 5)`` calendar features.
        """
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.window_length)
        x, _, _ = normalize_windows(self.values[idx], self.lookback, clip)
        return x, self.stamps[idx]

    def summary(self) -> dict[str, object]:
        """JSON-ready description of the data window (dates as ISO strings)."""

        def _span(starts: np.ndarray) -> dict[str, object]:
            if len(starts) == 0:
                return {"windows": 0, "first_date": None, "last_date": None}
            first, last = self.window_bounds(starts)
            return {
                "windows": int(len(starts)),
                "first_date": str(first.min()),
                "last_date": str(last.max()),
            }

        return {
            "train_cut": self.train_cut.isoformat(),
            "val_start": self.val_start.isoformat(),
            "lookback": self.lookback,
            "horizon": self.horizon,
            "n_tickers": len(self.tickers),
            "n_bars": int(len(self.values)),
            "train": _span(self.train_starts),
            "val": _span(self.val_starts),
        }


def cut_windows(
    bars: object,
    train_cut: dt.date | str,
    lookback: int,
    horizon: int,
    val_fraction: float = 0.2,
    stride: int = 1,
) -> WindowSet:
    """Cut training and validation windows from PIT bars, ending at or before ``train_cut``.

    Args:
        bars: long bars, see :func:`prepare_bars`.
        train_cut: last date (inclusive) whose bars may be used; later bars are dropped first.
        lookback: context bars per window (>= 2).
        horizon: bars after the context per window (>= 0).
        val_fraction: share (0-1) of the distinct dates up to ``train_cut`` that forms the
            validation period at the end; 0 leaves no validation windows.
        stride: step, in bars, between consecutive window starts of one ticker.

    Returns:
        A :class:`WindowSet`. Windows containing any non-finite feature are left out.

    Raises:
        ValueError: on bad arguments, or when no bar is dated at or before ``train_cut``.
    """
    if lookback < 2 or horizon < 0 or stride < 1:
        raise ValueError("need lookback >= 2, horizon >= 0, stride >= 1")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    cut = _as_date(train_cut)
    df = prepare_bars(bars)
    df = df[df["date"].values.astype("datetime64[D]") <= cut].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"no bars dated at or before train_cut {cut}")

    tickers = tuple(sorted(df["ticker"].unique()))
    codes = pd.Categorical(df["ticker"], categories=list(tickers)).codes.astype(np.int32)
    dates = df["date"].values.astype("datetime64[D]")
    values = df[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float64)

    all_dates = np.unique(dates)
    if val_fraction > 0:
        n_val_dates = max(1, int(round(len(all_dates) * val_fraction)))
        val_start = all_dates[len(all_dates) - n_val_dates]
    else:
        val_start = cut + np.timedelta64(1, "D")

    length = lookback + horizon
    bad = ~np.isfinite(values).all(axis=1)
    bad_prefix = np.concatenate([[0], np.cumsum(bad)])
    boundaries = np.flatnonzero(np.diff(codes)) + 1
    seg_start = np.concatenate([[0], boundaries])
    seg_end = np.concatenate([boundaries, [len(codes)]])
    starts_list = [
        np.arange(a, b - length + 1, stride, dtype=np.int64)
        for a, b in zip(seg_start, seg_end, strict=True)
        if b - a >= length
    ]
    starts = np.concatenate(starts_list) if starts_list else np.zeros(0, dtype=np.int64)
    clean = bad_prefix[starts + length] - bad_prefix[starts] == 0
    starts = starts[clean]
    first = dates[starts]
    last = dates[starts + length - 1]
    train_starts = starts[last < val_start]
    val_starts = starts[(first >= val_start) & (last <= cut)]

    return WindowSet(
        values=values,
        dates=dates,
        stamps=calendar_stamps(dates),
        ticker_codes=codes,
        tickers=tickers,
        train_starts=train_starts,
        val_starts=val_starts,
        lookback=lookback,
        horizon=horizon,
        train_cut=pd.Timestamp(cut).date(),
        val_start=pd.Timestamp(val_start).date(),
    )


def epoch_order(
    starts: np.ndarray, rng: np.random.Generator, max_windows: int | None = None
) -> np.ndarray:
    """A seeded random order of window starts for one epoch.

    Args:
        starts: candidate window starts.
        rng: the run's numpy Generator (advanced by this call).
        max_windows: keep only the first ``max_windows`` of the permutation (None: all).
    """
    order = rng.permutation(len(starts))
    if max_windows is not None:
        order = order[:max_windows]
    return starts[order]


def fixed_subset(
    starts: np.ndarray, rng: np.random.Generator, max_windows: int | None
) -> np.ndarray:
    """A seeded subset of at most ``max_windows`` starts, returned in ascending order."""
    if max_windows is None or len(starts) <= max_windows:
        return np.sort(starts)
    return np.sort(rng.choice(starts, size=max_windows, replace=False))

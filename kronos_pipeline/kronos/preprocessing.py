"""Input preparation for Kronos, following the reference predictor step for step.

* Columns: ``open, high, low, close, volume, amount`` (:data:`FEATURE_COLUMNS`). A missing
  ``volume`` makes volume and amount zero; a missing ``amount`` is ``volume * mean(open,
  high, low, close)``. NaNs in these columns are an error.
* Per-window normalisation: every column is standardised with the window's own mean and
  population standard deviation, ``(x - mean) / (std + 1e-5)``, then clipped to
  ``[-clip, clip]`` (clip 5 by default). All arithmetic is float32.
* Calendar features from timestamps: ``minute, hour, weekday (Mon=0), day, month``.
* Forecasts are mapped back with ``y * (std + 1e-5) + mean`` (units of the input columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
VOLUME_COLUMN = "volume"
AMOUNT_COLUMN = "amount"
FEATURE_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, VOLUME_COLUMN, AMOUNT_COLUMN)
TIME_FEATURES: tuple[str, ...] = ("minute", "hour", "weekday", "day", "month")
STD_EPS = 1e-5


def bars_array(df: pd.DataFrame, name: str = "window") -> np.ndarray:
    """The six model columns of ``df`` as float32 [T, 6], filling volume/amount as above.

    Raises ``ValueError`` when price columns are missing or any used value is NaN.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name} is not a pandas DataFrame")
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks the price columns {missing}")
    # Columns as arrays of their own precision (no copy of the frame: this runs once per
    # series), so the derived amount has the bits pandas' row mean gives it.
    dtype = np.result_type(*(df[c].dtype for c in PRICE_COLUMNS))
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
    prices = np.stack([df[c].to_numpy(dtype) for c in PRICE_COLUMNS], axis=1)
    if VOLUME_COLUMN in df.columns:
        volume = df[VOLUME_COLUMN].to_numpy()
        if AMOUNT_COLUMN in df.columns:
            amount = df[AMOUNT_COLUMN].to_numpy()
        else:  # the four prices summed left to right, then / 4: pandas' row mean
            amount = volume * prices.mean(axis=1)
    else:
        volume = amount = np.zeros(len(df))
    # Column-major [T, 6], as a frame's ``.values`` is: the normaliser's statistics over time
    # then sum each column contiguously (pairwise), with the reference's rounding.
    values = np.stack([*prices.T, volume, amount]).T
    if np.isnan(values).any():
        raise ValueError(f"{name} contains NaN in {list(FEATURE_COLUMNS)}")
    return values.astype(np.float32)


def time_features(timestamps: pd.DatetimeIndex | pd.Series | Sequence) -> np.ndarray:
    """Calendar features float32 [T, 5]: minute, hour, weekday (Mon=0), day, month."""
    index = pd.DatetimeIndex(timestamps)
    if index.tz is not None:
        index = index.tz_localize(None)  # the wall-clock fields, as pandas reports them
    # Integer calendar arithmetic on datetime64 (the fields pandas computes, without its
    # per-field overhead: this runs for every window and every forecast).
    ns = index.to_numpy("datetime64[ns]")
    days = ns.astype("datetime64[D]")
    months = ns.astype("datetime64[M]")
    since_midnight = (ns - days).astype("timedelta64[m]").astype(np.int64)
    fields = (
        since_midnight % 60,  # minute
        since_midnight // 60,  # hour
        (days.astype(np.int64) + 3) % 7,  # weekday, Monday = 0 (1970-01-01 was a Thursday)
        (days - months.astype("datetime64[D]")).astype(np.int64) + 1,  # day of month
        months.astype(np.int64) % 12 + 1,  # month
    )
    return np.stack(fields, axis=1).astype(np.float32)


@dataclass(frozen=True)
class Normalizer:
    """Per-window statistics, float32 [6] each; ``std`` is the population std."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Normalizer:
        """Statistics of a window ``x`` [T, 6] over time."""
        return cls(mean=np.mean(x, axis=0), std=np.std(x, axis=0))

    def transform(self, x: np.ndarray, clip: float = 5.0) -> np.ndarray:
        """``clip((x - mean) / (std + 1e-5), -clip, clip)``, float32 [..., 6]."""
        return np.clip((x - self.mean) / (self.std + STD_EPS), -clip, clip).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """``y * (std + 1e-5) + mean``: model outputs [..., 6] back to input units."""
        return (y * (self.std + STD_EPS) + self.mean).astype(np.float32)


def prepare_window(
    df: pd.DataFrame,
    timestamps: pd.DatetimeIndex | pd.Series | Sequence,
    clip: float = 5.0,
    name: str = "window",
) -> tuple[np.ndarray, np.ndarray, Normalizer]:
    """Normalised bars [T, 6], calendar features [T, 5] and the normaliser of one window."""
    x = bars_array(df, name)
    stamps = time_features(timestamps)
    if stamps.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}: {x.shape[0]} rows but {stamps.shape[0]} timestamps; they must match"
        )
    norm = Normalizer.fit(x)
    return norm.transform(x, clip), stamps, norm

"""Synthetic panels for the evaluation tests: NYSE trading dates, features with a planted signal,
and long-format labels with ``available_at``."""

from __future__ import annotations

from dataclasses import dataclass

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest


def nyse_dates(start: str, end: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(xcals.get_calendar("XNYS").sessions_in_range(start, end)).tz_localize(
        None
    )


@dataclass
class Panel:
    dates: pd.DatetimeIndex
    features: pd.DataFrame
    labels: pd.DataFrame
    market: pd.DataFrame


def make_panel(
    start: str = "2015-01-02",
    end: str = "2017-12-29",
    n_tickers: int = 60,
    horizons: tuple[int, ...] = (20, 60, 90),
    signal: float = 0.3,
    seed: int = 0,
    delisted: int = 2,
) -> Panel:
    """``signal`` = correlation between feature ``alpha`` at t and each horizon's excess label.

    The last ``delisted`` tickers stop trading 30 trading days before ``end``; their labels run to
    their last close and mature ``h`` trading days after it (the foundation's convention).
    """
    rng = np.random.default_rng(seed)
    dates = nyse_dates(start, end)
    tickers = [f"T{i:03d}" for i in range(n_tickers)]
    n_d, n_t = len(dates), n_tickers
    alpha = rng.standard_normal((n_d, n_t))
    feats = {
        "alpha": alpha,
        "mom_12_1": rng.standard_normal((n_d, n_t)) * 0.3,
        "mom_1m": rng.standard_normal((n_d, n_t)) * 0.08,
        "vol_60d": np.abs(rng.standard_normal((n_d, n_t))) * 0.2 + 0.1,
        "noise_a": rng.standard_normal((n_d, n_t)),
        "noise_b": rng.standard_normal((n_d, n_t)),
    }
    last_idx = np.full(n_t, n_d - 1)
    if delisted:
        last_idx[-delisted:] = n_d - 31
    d_idx, t_idx = np.meshgrid(np.arange(n_d), np.arange(n_t), indexing="ij")
    alive = d_idx <= last_idx[t_idx]
    features = pd.DataFrame(
        {"date": dates[d_idx.ravel()], "ticker": np.array(tickers)[t_idx.ravel()]}
        | {k: v.ravel() for k, v in feats.items()}
    )[alive.ravel()].reset_index(drop=True)

    label_parts = []
    for h in horizons:
        noise = rng.standard_normal((n_d, n_t))
        excess = signal * alpha + np.sqrt(1 - signal**2) * noise
        excess = excess * 0.05
        excess -= excess.mean(axis=1, keepdims=True)
        common = rng.standard_normal(n_d)[:, None] * 0.03
        end_idx = np.minimum(d_idx + h, last_idx[t_idx])
        matured_idx = np.where(d_idx + h <= last_idx[t_idx], d_idx + h, last_idx[t_idx] + h)
        ok = alive & (matured_idx < n_d) & (end_idx > d_idx)
        lab = pd.DataFrame(
            {
                "date": dates[d_idx[ok]],
                "ticker": np.array(tickers)[t_idx[ok]],
                "horizon": h,
                "fwd_return": (excess + common)[ok],
                "excess_return": excess[ok],
                "available_at": dates[np.clip(matured_idx[ok], 0, n_d - 1)],
            }
        )
        label_parts.append(lab)
    labels = pd.concat(label_parts, ignore_index=True)
    market = pd.DataFrame({"date": dates, "mkt_ret": rng.standard_normal(n_d) * 0.01})
    return Panel(dates=dates, features=features, labels=labels, market=market)


@pytest.fixture(scope="session")
def panel() -> Panel:
    return make_panel()

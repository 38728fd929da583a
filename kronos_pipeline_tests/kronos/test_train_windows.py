"""Training windows: no window crosses the training cut, the time split is purged, and the
normalisation is the engine's inference normalisation of the context."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from kronos_pipeline.kronos.preprocessing import Normalizer
from kronos_pipeline.kronos.windows import (
    FEATURE_COLUMNS,
    cut_windows,
    epoch_order,
    fixed_subset,
)


def random_bars(seed: int, n_tickers: int, max_bars: int, nan_rate: float) -> pd.DataFrame:
    """Tickers with different listing dates, lengths, holes in the calendar and NaN bars."""
    rng = np.random.default_rng(seed)
    calendar = pd.bdate_range("2005-01-03", periods=max_bars + 60)
    frames = []
    for k in range(n_tickers):
        first = int(rng.integers(0, 60))
        n = int(rng.integers(1, max_bars + 1))
        dates = calendar[first : first + n]
        keep = rng.random(len(dates)) > 0.05  # missing days
        dates = dates[keep]
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, len(dates))))
        df = pd.DataFrame(
            {
                "ticker": f"X{k}",
                "date": dates,
                "open": close * (1 + rng.normal(0, 0.005, len(dates))),
                "high": close * 1.01,
                "low": close * 0.99,
                "close": close,
                "volume": rng.lognormal(12, 1, len(dates)),
            }
        )
        df.loc[rng.random(len(df)) < nan_rate, "close"] = np.nan
        frames.append(df)
    return pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_tickers=st.integers(1, 6),
    max_bars=st.integers(5, 300),
    nan_rate=st.sampled_from([0.0, 0.0, 0.01]),
    cut_offset=st.integers(0, 400),
    lookback=st.integers(2, 40),
    horizon=st.integers(0, 20),
    val_fraction=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
    stride=st.integers(1, 5),
)
def test_no_window_crosses_the_training_cut(
    seed: int,
    n_tickers: int,
    max_bars: int,
    nan_rate: float,
    cut_offset: int,
    lookback: int,
    horizon: int,
    val_fraction: float,
    stride: int,
) -> None:
    bars = random_bars(seed, n_tickers, max_bars, nan_rate)
    cut = (pd.Timestamp("2005-01-03") + pd.Timedelta(days=cut_offset)).date()
    if (bars["date"].dt.date <= cut).sum() == 0:
        return
    ws = cut_windows(bars, cut, lookback, horizon, val_fraction, stride)
    cut64 = np.datetime64(cut, "D")
    length = lookback + horizon
    for starts in (ws.train_starts, ws.val_starts):
        if len(starts) == 0:
            continue
        idx = starts[:, None] + np.arange(length)
        # Every bar of every window is dated at or before the cut ...
        assert (ws.dates[idx] <= cut64).all()
        # ... belongs to one ticker, in consecutive bars, dates strictly increasing ...
        assert (ws.ticker_codes[idx] == ws.ticker_codes[starts][:, None]).all()
        assert (np.diff(ws.dates[idx], axis=1) > np.timedelta64(0, "D")).all()
        # ... and is finite.
        assert np.isfinite(ws.values[idx]).all()
        assert (np.diff(starts) > 0).all()
    val_start = np.datetime64(ws.val_start, "D")
    if len(ws.train_starts):
        assert (ws.dates[ws.train_starts + length - 1] < val_start).all()
    if len(ws.val_starts):
        assert (ws.dates[ws.val_starts] >= val_start).all()
    if val_fraction == 0.0:
        assert len(ws.val_starts) == 0
    # The windows do not depend on any bar after the cut.
    before = bars[bars["date"].dt.date <= cut]
    ws2 = cut_windows(before, cut, lookback, horizon, val_fraction, stride)
    assert np.array_equal(ws.train_starts, ws2.train_starts)
    assert np.array_equal(ws.val_starts, ws2.val_starts)
    assert np.array_equal(ws.values, ws2.values, equal_nan=True)
    # Brute-force oracle: every ticker's runs of `length` clean bars, every `stride` bars.
    expected_train, expected_val = set(), set()
    for ticker, grp in before.sort_values("date").groupby("ticker"):
        grp = grp.reset_index(drop=True)
        for i in range(0, len(grp) - length + 1, stride):
            win = grp.iloc[i : i + length]
            if win[["open", "high", "low", "close", "volume"]].isna().any().any():
                continue
            first, last = win["date"].iloc[0], win["date"].iloc[-1]
            if last < pd.Timestamp(ws.val_start):
                expected_train.add((ticker, first))
            elif first >= pd.Timestamp(ws.val_start):
                expected_val.add((ticker, first))

    def as_set(starts: np.ndarray) -> set:
        return {(ws.tickers[ws.ticker_codes[s]], pd.Timestamp(ws.dates[s])) for s in starts}

    assert as_set(ws.train_starts) == expected_train
    assert as_set(ws.val_starts) == expected_val


def test_window_contents_and_split_on_known_data() -> None:
    dates = pd.bdate_range("2010-01-04", periods=100)
    bars = pd.DataFrame(
        {
            "ticker": "A",
            "date": dates,
            "open": np.arange(100.0) + 1,
            "high": np.arange(100.0) + 2,
            "low": np.arange(100.0),
            "close": np.arange(100.0) + 1.5,
            "volume": np.full(100, 1000.0),
        }
    )
    ws = cut_windows(
        pl.from_pandas(bars), dates[89].date(), lookback=8, horizon=2, val_fraction=0.2
    )
    # 90 dates up to the cut; the last 18 form the validation period.
    assert ws.val_start == dates[72].date()
    assert ws.train_cut == dates[89].date()
    assert list(ws.train_starts) == list(range(0, 63))  # last bar index 62 + 9 = 71 < 72
    assert list(ws.val_starts) == list(range(72, 81))  # last bar index 80 + 9 = 89 = cut
    raw = ws.raw_batch(np.array([5]))
    assert raw.shape == (1, 10, 6)
    assert raw[0, 0, 3] == 6.5 and raw[0, -1, 3] == 15.5
    # amount = volume * mean(open, high, low, close), as the engine fills it
    assert raw[0, 0, 5] == 1000.0 * np.mean([6.0, 7.0, 5.0, 6.5])
    summary = ws.summary()
    assert summary["train"]["last_date"] == str(dates[71].date())
    assert summary["val"]["first_date"] == str(dates[72].date())


def test_normalisation_is_the_engines_context_normalisation() -> None:
    bars = random_bars(3, 4, 400, 0.0)
    ws = cut_windows(bars, dt.date(2006, 6, 30), lookback=60, horizon=20, val_fraction=0.2)
    starts = np.concatenate([ws.train_starts[::37], ws.val_starts[::11]])
    x, stamps = ws.batch(starts)
    for row, start in enumerate(starts):
        raw = ws.values[start : start + ws.window_length].astype(np.float32)
        norm = Normalizer.fit(raw[: ws.lookback])  # inference sees only the context
        np.testing.assert_array_equal(x[row], norm.transform(raw, clip=5.0))
        day = pd.Timestamp(ws.dates[start])
        assert list(stamps[row, 0]) == [0, 0, day.weekday(), day.day, day.month]
    # Changing the horizon bars does not change the normalised context (no look-ahead).
    values = ws.values.copy()
    for start in starts:
        values[start + ws.lookback : start + ws.window_length] *= 3.0
    moved = type(ws)(**{**ws.__dict__, "values": values})
    x2, _ = moved.batch(starts)
    np.testing.assert_array_equal(x2[:, : ws.lookback], x[:, : ws.lookback])
    assert tuple(FEATURE_COLUMNS) == ("open", "high", "low", "close", "volume", "amount")


def test_sampling_is_seeded() -> None:
    starts = np.arange(1000, dtype=np.int64) * 3
    a = epoch_order(starts, np.random.default_rng(5), 100)
    b = epoch_order(starts, np.random.default_rng(5), 100)
    c = epoch_order(starts, np.random.default_rng(6), 100)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a)) == 100 and np.isin(a, starts).all()
    sub = fixed_subset(starts, np.random.default_rng(0), 50)
    assert len(sub) == 50 and (np.diff(sub) > 0).all()
    assert np.array_equal(fixed_subset(starts[:10], np.random.default_rng(0), 50), starts[:10])

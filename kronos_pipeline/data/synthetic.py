"""A seeded synthetic market, so that everything runs offline with nothing configured.

Daily total returns follow a factor model on NYSE trading days::

    r(i, t) = beta_i * m(t) + s(sector_i, t) + a(i, t) + sigma_i * regime(t) * eps(i, t)

with a market factor ``m`` and sector factors ``s``, Student-t(4) shocks (fat tails), a
two-state volatility regime (calm / stressed, Markov switching), and a slowly mean-reverting
per-name drift ``a`` (AR(1), so past returns carry a weak, plantable momentum signal).
Names list late and some delist early; quarterly dividends and splits (when a price passes a
threshold) are emitted in the vendor convention, and a handful of defective rows are planted.
The output is the string-typed line frame of :mod:`kronos_pipeline.data.ingest`, so synthetic
data goes through exactly the same validation and quarantine as vendor files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.data.ingest import VENDOR_COLUMNS, tidy_to_lines

SECTORS = (
    "Information Technology",
    "Health Care",
    "Financials",
    "Consumer Discretionary",
    "Industrials",
    "Energy",
    "Utilities",
    "Materials",
    "Consumer Staples",
    "Real Estate",
    "Communication Services",
)
SYNTHETIC_SOURCE = "synthetic_market"


@dataclass(frozen=True)
class SyntheticMarket:
    """Lines to validate, the sector map, and what was planted (for tests)."""

    lines: pl.DataFrame
    constituents: pl.DataFrame  # ticker, name, sector
    planted_defects: pl.DataFrame  # line, ticker, kind
    splits: pl.DataFrame  # ticker, date, ratio
    dividends: pl.DataFrame  # ticker, date, amount
    delistings: pl.DataFrame  # ticker, delisted_on (last session of names that delist early)


def _ticker_names(n: int) -> list[str]:
    names = [f"S{i:03d}" for i in range(n)]
    if n > 2:
        names[1] = "SYN.B"  # a dotted ticker, as in BRK.B
    return names


def synthetic_market(
    n_tickers: int = 120,
    start: dt.date = dt.date(2008, 1, 2),
    end: dt.date = dt.date(2019, 12, 31),
    seed: int = 7,
    alpha_strength: float = 1.0,
) -> SyntheticMarket:
    """Generate the market. ``alpha_strength`` scales the persistent drift (0 = no signal)."""
    rng = np.random.default_rng(seed)
    days = trading_days(start, end)
    n_days, names = len(days), _ticker_names(n_tickers)

    # Volatility regime: Markov chain, calm (1.0) or stressed (2.2).
    stressed = np.zeros(n_days, dtype=bool)
    for t in range(1, n_days):
        stay = 0.995 if stressed[t - 1] else 0.998
        stressed[t] = stressed[t - 1] if rng.random() < stay else not stressed[t - 1]
    regime = np.where(stressed, 2.2, 1.0)

    sector_of = rng.integers(0, len(SECTORS), n_tickers)
    beta = rng.normal(1.0, 0.3, n_tickers).clip(0.2, 2.0)
    sigma = rng.uniform(0.008, 0.022, n_tickers)
    market = 0.0006 + 0.009 * regime * rng.standard_t(4, n_days) / np.sqrt(2.0)
    sector_f = 0.004 * regime[:, None] * rng.standard_t(4, (n_days, len(SECTORS))) / np.sqrt(2.0)
    eps = rng.standard_t(4, (n_days, n_tickers)) / np.sqrt(2.0)
    # Persistent per-name drift: AR(1) with a half-life of about 6 months.
    drift = np.zeros((n_days, n_tickers))
    phi, drift_sd = 0.996, 0.00006 * alpha_strength
    for t in range(1, n_days):
        drift[t] = phi * drift[t - 1] + drift_sd * rng.standard_normal(n_tickers)
    returns = (
        beta * market[:, None] + sector_f[:, sector_of] + drift + sigma * regime[:, None] * eps
    )
    returns = returns.clip(-0.5, 1.0)

    # Listings and delistings: a quarter of names list late, a tenth delist early.
    first = np.where(rng.random(n_tickers) < 0.25, rng.integers(0, n_days // 2, n_tickers), 0)
    last = np.where(
        rng.random(n_tickers) < 0.10,
        rng.integers(n_days // 2, n_days - 30, n_tickers),
        n_days - 1,
    )
    last = np.maximum(last, first + 300).clip(max=n_days - 1)

    rows, split_rows, dividend_rows = [], [], []
    pays_dividend = rng.random(n_tickers) < 0.6
    for i, ticker in enumerate(names):
        span = slice(first[i], last[i] + 1)
        r = returns[span, i]
        n = len(r)
        close = np.empty(n)
        split = np.ones(n)
        dividend = np.zeros(n)
        price = rng.uniform(15, 120)
        for t in range(n):
            if t == 0:
                close[t] = price
                continue
            prev = close[t - 1]
            if pays_dividend[i] and t % 63 == 30:
                dividend[t] = round(prev * 0.005, 4)
            # Split the day after the price passes 250: the new close is in post-split shares.
            k = 1.0
            if prev > 250:
                k = 3.0 if prev > 600 else 2.0
            split[t] = k
            # total return: k * (close + dividend) / prev - 1 == r
            close[t] = max(prev * (1 + r[t]) / k - dividend[t], 0.01)
        close = close.round(4)
        gap = 0.003 * rng.standard_t(4, n)
        open_ = np.r_[close[0], close[:-1] / split[1:]] * (1 + gap)
        hi = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.006, n)))
        lo = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.006, n)))
        volume = np.round(
            np.exp(rng.normal(13.5, 0.4) + 0.35 * rng.standard_normal(n) + 25 * np.abs(r))
        )
        # The vendor's adjusted close: the total-return index scaled to end at the last close.
        gross = np.r_[1.0, split[1:] * (close[1:] + dividend[1:]) / close[:-1]]
        tri = np.cumprod(gross)
        adjusted = tri * close[-1] / tri[-1]
        dates = days[span]
        rows.append(
            pl.DataFrame(
                {
                    "ticker": ticker,
                    "date": pl.Series(dates.values).cast(pl.Date),
                    "open": open_.round(4),
                    "high": hi.round(4),
                    "low": lo.round(4),
                    "close": close,
                    "adjusted_close": adjusted,
                    "volume": volume,
                    "dividend": dividend,
                    "split": split,
                }
            )
        )
        for t in np.flatnonzero(split != 1.0):
            split_rows.append((ticker, dates[t].date(), split[t]))
        for t in np.flatnonzero(dividend > 0):
            dividend_rows.append((ticker, dates[t].date(), dividend[t]))

    table = pl.concat(rows).with_columns(pl.col("date").cast(pl.Date))
    # OHLC were rounded after the fact; keep the range consistent with the rounded values.
    table = table.with_columns(
        high=pl.max_horizontal("high", "open", "close"),
        low=pl.min_horizontal("low", "open", "close"),
    )
    lines = tidy_to_lines(table, SYNTHETIC_SOURCE, first_line=2)
    lines, planted = _plant_defects(lines, rng)
    constituents = pl.DataFrame(
        {
            "ticker": names,
            "name": [f"Synthetic {t}" for t in names],
            "sector": [SECTORS[s] for s in sector_of],
        }
    )
    return SyntheticMarket(
        lines=lines,
        constituents=constituents,
        planted_defects=planted,
        splits=pl.DataFrame(split_rows, schema=["ticker", "date", "ratio"], orient="row"),
        dividends=pl.DataFrame(dividend_rows, schema=["ticker", "date", "amount"], orient="row"),
        delistings=pl.DataFrame(
            {
                "ticker": [names[i] for i in range(n_tickers) if last[i] < n_days - 1],
                "delisted_on": pl.Series(
                    [days[last[i]].date() for i in range(n_tickers) if last[i] < n_days - 1],
                    dtype=pl.Date,
                ),
            },
            schema={"ticker": pl.String, "delisted_on": pl.Date},
        ),
    )


def _plant_defects(
    lines: pl.DataFrame, rng: np.random.Generator
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Corrupt a few lines in place and append one duplicate; return them for the tests."""
    picks = rng.choice(lines.height, size=4, replace=False)
    kinds = ["non_numeric_close", "high_below_low", "negative_volume", "bad_timestamp"]
    edits = {
        "non_numeric_close": {"close": "n/a"},
        "high_below_low": {"high": "0.5", "low": "1000"},
        "negative_volume": {"volume": "-100"},
        "bad_timestamp": {"timestamp": "2013-02-30"},
    }
    lines = lines.with_row_index("_row")
    for row, kind in zip(picks, kinds, strict=True):
        for column, value in edits[kind].items():
            lines = lines.with_columns(
                pl.when(pl.col("_row") == int(row))
                .then(pl.lit(value))
                .otherwise(pl.col(column))
                .alias(column)
            )
    # A duplicated line (same ticker and date) appended at the end of the source.
    dup_src = int(rng.integers(0, lines.height))
    duplicate = lines.filter(pl.col("_row") == dup_src).with_columns(
        line=pl.lit(lines["line"].max() + 1, dtype=pl.Int64)
    )
    lines = pl.concat([lines, duplicate]).drop("_row")
    # Rebuild the raw text so it shows the planted values.
    fields = ["ticker", *VENDOR_COLUMNS]
    lines = lines.with_columns(
        raw=pl.concat_str([pl.col(c).fill_null("") for c in fields], separator=",")
    )
    planted_lines = [int(lines["line"][int(r)]) for r in picks] + [int(duplicate["line"][0])]
    planted = pl.DataFrame(
        {
            "line": planted_lines,
            "ticker": [lines["ticker"][int(r)] for r in picks] + [duplicate["ticker"][0]],
            "kind": kinds + ["duplicate_date"],
        }
    )
    return lines, planted

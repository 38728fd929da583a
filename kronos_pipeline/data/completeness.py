"""Which bars a window must hold: the trading calendar x the tickers alive, never the data.

A ticker is alive on every session from its first bar (``ticker_history.first_date``) to its
declared delisting (``delisted_on``; open-ended when none is declared). Each expected
(ticker, date) must be an accepted bar or a dated quarantine row (rejected, with its reason).
What is neither is missing, in one of two kinds:

- ``absent``: the ticker has no accepted bar after the date in the whole source: the vendor
  files stop early, a day is late, or the ticker vanished without a delisting. Blocking.
- ``hole``: the ticker trades again later; an isolated vendor gap (the real sample has 27).
  Reported, not blocking.

Bars on dates where the ticker is not expected (a non-session, after a declared delisting)
are ``unexpected``: blocking as well.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from kronos_pipeline.data.calendar import trading_days


@dataclass(frozen=True)
class Completeness:
    expected: int  # (ticker, date) pairs the calendar and the ticker list call for
    accepted: int
    quarantined: int  # expected pairs whose line was rejected (in bars_quarantine)
    missing: pl.DataFrame  # ticker, date, kind ("absent" or "hole")
    unexpected: pl.DataFrame  # ticker, date of bars nobody expected

    @property
    def absent(self) -> pl.DataFrame:
        return self.missing.filter(pl.col("kind") == "absent")

    @property
    def holes(self) -> pl.DataFrame:
        return self.missing.filter(pl.col("kind") == "hole")

    @property
    def passed(self) -> bool:
        return self.absent.height == 0 and self.unexpected.height == 0

    def describe(self) -> str:
        head = (
            f"{self.expected} bars expected (sessions x tickers alive): {self.accepted} "
            f"accepted, {self.quarantined} quarantined"
        )
        parts = [head]
        if self.absent.height:
            parts.append(f"{self.absent.height} missing: {name_pairs(self.absent)}")
        if self.unexpected.height:
            parts.append(f"{self.unexpected.height} unexpected: {name_pairs(self.unexpected)}")
        if self.holes.height:
            parts.append(f"{self.holes.height} isolated vendor gaps: {name_pairs(self.holes)}")
        return "; ".join(parts)


def name_pairs(pairs: pl.DataFrame, max_tickers: int = 8) -> str:
    """``AAPL 2019-12-02..2019-12-31 (21 sessions), KO 2019-12-31 (1 session)`` style."""
    per = (
        pairs.group_by("ticker")
        .agg(first=pl.col("date").min(), last=pl.col("date").max(), n=pl.len())
        .sort("ticker")
    )
    items = [
        f"{t} {a}" + (f"..{b}" if b != a else "") + f" ({n} session{'s' if n > 1 else ''})"
        for t, a, b, n in per.head(max_tickers).iter_rows()
    ]
    more = per.height - max_tickers
    return ", ".join(items) + (f" and {more} more tickers" if more > 0 else "")


def expected_bars(
    tickers: pl.DataFrame, start: dt.date, end: dt.date, calendar: str = "XNYS"
) -> pl.DataFrame:
    """(ticker, date) for every session in [start, end] on which a ticker is alive."""
    sessions = pl.DataFrame(
        {"date": pl.Series(trading_days(start, end, calendar).values).cast(pl.Date)}
    )
    return (
        tickers.select("ticker", "first_date", "delisted_on")
        .join(sessions, how="cross")
        .filter(
            (pl.col("date") >= pl.col("first_date"))
            & (pl.col("delisted_on").is_null() | (pl.col("date") <= pl.col("delisted_on")))
        )
        .select("ticker", "date")
        .sort("ticker", "date")
    )


def completeness(
    expected: pl.DataFrame,
    bars: pl.DataFrame,
    quarantine: pl.DataFrame,
    source_last_bar: pl.DataFrame,
) -> Completeness:
    """Compare the window's ``bars`` and dated ``quarantine`` rows with ``expected``.

    ``source_last_bar`` (ticker, last_date) over the whole source tells holes from absences.
    """
    keys = ["ticker", "date"]
    got = bars.select(keys)
    rejected = quarantine.filter(pl.col("date").is_not_null()).select(keys).unique()
    missing = expected.join(got, on=keys, how="anti").join(rejected, on=keys, how="anti")
    missing = (
        missing.join(source_last_bar.select("ticker", "last_date"), on="ticker", how="left")
        .with_columns(
            kind=pl.when(pl.col("last_date") > pl.col("date"))
            .then(pl.lit("hole"))
            .otherwise(pl.lit("absent"))
        )
        .select("ticker", "date", "kind")
        .sort("ticker", "date")
    )
    return Completeness(
        expected=expected.height,
        accepted=got.join(expected, on=keys, how="semi").height,
        quarantined=expected.join(rejected, on=keys, how="semi").height,
        missing=missing,
        unexpected=got.join(expected, on=keys, how="anti").sort(keys),
    )

"""Tradable universe per date: history, price and liquidity filters, optional top-N."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import polars as pl

UNIVERSE_COLUMNS = (
    "date",
    "ticker",
    "history_days",
    "close",
    "median_dollar_volume",
    "eligible",
    "liquidity_rank",
    "in_universe",
)


def liquidity_history_start(start: dt.date, liquidity_window_days: int) -> dt.date:
    """Where to start reading prices for a universe from ``start`` on: twice the liquidity
    window in calendar days plus a month before it (150 days, about 100 sessions, for the
    default 60-bar window). Whether that read holds every bar a median needs is
    :func:`has_liquidity_history`'s question."""
    return start - dt.timedelta(days=2 * liquidity_window_days + 30)


def has_liquidity_history(prices: pl.DataFrame, start: dt.date, liquidity_window_days: int) -> bool:
    """Whether ``prices`` (``ticker, date, bar_index``) holds, for every name with a row from
    ``start`` on, the ``liquidity_window_days - 1`` bars before its first such row, or the
    name's first bar (``bar_index`` 0). A rolling median is exact, so then the universe from
    ``start`` on is the same as from the whole history; a name with a long gap before
    ``start`` needs a longer read."""
    spans = prices.group_by("ticker").agg(
        first=pl.col("bar_index").min(),
        needed=pl.col("bar_index").filter(pl.col("date") >= start).min()
        - (liquidity_window_days - 1),
    )
    # Short: the read starts after the bar the first median needs (or, for a name with fewer
    # bars than the window by then, after its first bar). Names without a row from start on
    # have no median to compute (null ``needed``).
    short = spans.filter(pl.col("first") > pl.col("needed").clip(lower_bound=0))
    return short.height == 0


def universe_prices(
    read: Callable[[dt.date | None], pl.DataFrame], start: dt.date, liquidity_window_days: int
) -> pl.DataFrame:
    """The prices a universe from ``start`` on needs: ``read(since)`` of the prices dated from
    :func:`liquidity_history_start` on, or ``read(None)``, the whole history, when that read
    leaves a median short of bars (:func:`has_liquidity_history`). The medians are exact, so
    either gives the whole table's rows from ``start`` on."""
    prices = read(liquidity_history_start(start, liquidity_window_days))
    if has_liquidity_history(prices, start, liquidity_window_days):
        return prices
    return read(None)


def universe(
    prices: pl.DataFrame,
    min_history_days: int,
    min_price: float,
    min_median_dollar_volume: float,
    liquidity_window_days: int,
    top_n: int | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> pl.DataFrame:
    """One row per (date, ticker) with a bar on that date.

    Eligible when the name has at least ``min_history_days`` bars up to and including the date,
    a raw close >= ``min_price`` (USD), and a median dollar volume over its last
    ``liquidity_window_days`` bars >= ``min_median_dollar_volume`` (USD). ``liquidity_rank`` ranks
    eligible names by that median (1 = most liquid; ties broken by ticker); ``in_universe`` keeps
    the ``top_n`` most liquid (all eligible names when ``top_n`` is None). Uses rows <= date only.

    ``start``/``end``: only the rows dated in [start, end]; the rolling medians still run over
    every row of ``prices``, and the rest (eligibility, the date's ranking) is per date, so the
    rows are those of the whole table.
    """
    out = prices.sort("ticker", "date").with_columns(
        history_days=(pl.col("bar_index") + 1).cast(pl.Int64),
        median_dollar_volume=pl.col("dollar_volume")
        .rolling_median(liquidity_window_days, min_samples=liquidity_window_days)
        .over("ticker"),
    )
    if start is not None:
        out = out.filter(pl.col("date") >= start)
    if end is not None:
        out = out.filter(pl.col("date") <= end)
    out = out.with_columns(
        eligible=(
            (pl.col("history_days") >= min_history_days)
            & (pl.col("close") >= min_price)
            & (pl.col("median_dollar_volume") >= min_median_dollar_volume)
        ).fill_null(False)
    )
    ranked = (
        out.filter("eligible")
        .sort(["date", "median_dollar_volume", "ticker"], descending=[False, True, False])
        .with_columns(liquidity_rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("date"))
        .select("date", "ticker", "liquidity_rank")
    )
    out = out.join(ranked, on=["date", "ticker"], how="left").with_columns(
        in_universe=pl.col("eligible")
        & (pl.lit(True) if top_n is None else (pl.col("liquidity_rank") <= top_n)).fill_null(False)
    )
    return out.select(UNIVERSE_COLUMNS).sort("date", "ticker")

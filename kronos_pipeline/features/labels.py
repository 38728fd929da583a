"""Forward total-return labels at several horizons, with the date each one becomes known.

For a bar of ``ticker`` on trading day t and a horizon of h trading days (NYSE calendar)::

    fwd_return(t, h)    = tri(last bar <= t+h) / tri(t) - 1
    excess_return(t, h) = fwd_return(t, h) - mean(fwd_return(., t, h) over the universe at t)
    available_at(t, h)  = trading day t+h

A name that stops trading inside the horizon keeps a label computed to its last close
(``end_date`` < ``available_at`` marks it); labels whose t+h lies after the last date of the
data are not yet known and are not written.
"""

from __future__ import annotations

import polars as pl

from kronos_pipeline.data.calendar import trading_days

LABEL_COLUMNS = (
    "date",
    "ticker",
    "horizon",
    "fwd_return",
    "excess_return",
    "available_at",
    "end_date",
    "in_universe",
)


def labels_forward(
    prices: pl.DataFrame,
    universe: pl.DataFrame,
    horizons: tuple[int, ...],
    calendar: str = "XNYS",
) -> pl.DataFrame:
    """Long label table: one row per (date, ticker, horizon) whose horizon has matured.

    ``prices`` is ``prices_pit`` (ticker, date, tri); ``universe`` gives ``in_universe`` per
    (date, ticker). Horizons are in trading days.
    """
    data_end = prices["date"].max()
    sessions = pl.DataFrame(
        {"date": pl.Series(trading_days(prices["date"].min(), data_end).values).cast(pl.Date)}
    ).with_row_index("pos")
    base = prices.select("ticker", "date", "tri").join(sessions, on="date", how="inner")
    closes = prices.select("ticker", end_date="date", tri_end="tri").sort("end_date")
    members = universe.select("date", "ticker", "in_universe")
    parts = []
    for h in horizons:
        target = base.with_columns(target_pos=pl.col("pos") + h).join(
            sessions.select(target_pos="pos", available_at="date"), on="target_pos", how="inner"
        )
        matched = target.sort("available_at").join_asof(
            closes,
            left_on="available_at",
            right_on="end_date",
            by="ticker",
            strategy="backward",
            check_sortedness=False,
        )
        parts.append(
            matched.select(
                "date",
                "ticker",
                horizon=pl.lit(h, dtype=pl.Int32),
                fwd_return=pl.col("tri_end") / pl.col("tri") - 1.0,
                available_at="available_at",
                end_date="end_date",
            )
        )
    out = pl.concat(parts).join(members, on=["date", "ticker"], how="left")
    # Sorted before the universe mean: its float sum then adds a date's returns in ticker
    # order, whatever rows ``prices`` held before the date (a window or the whole history).
    out = out.with_columns(pl.col("in_universe").fill_null(False)).sort("date", "ticker", "horizon")
    universe_mean = (
        pl.col("fwd_return").filter(pl.col("in_universe")).mean().over("date", "horizon")
    )
    out = out.with_columns(excess_return=pl.col("fwd_return") - universe_mean)
    return out.select(LABEL_COLUMNS)


def labels_due(keys: pl.DataFrame, data_end: object, calendar: str = "XNYS") -> pl.DataFrame:
    """``keys`` (date, horizon, ...) with ``due``: True when trading day date+horizon <= data_end,
    i.e. the label should exist by the end of the data."""
    if keys.height == 0:
        return keys.with_columns(due=pl.lit(False))
    sessions = pl.DataFrame(
        {"date": pl.Series(trading_days(keys["date"].min(), data_end).values).cast(pl.Date)}
    ).with_row_index("pos")
    last = sessions.height - 1
    return (
        keys.join(sessions, on="date", how="left")
        .with_columns(due=(pl.col("pos") + pl.col("horizon") <= last).fill_null(False))
        .drop("pos")
    )

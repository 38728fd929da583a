"""Universe rules: history, price and liquidity thresholds, liquidity rank and top-N."""

from __future__ import annotations

import polars as pl
import pytest

from kronos_pipeline.features.universe import universe

# Thresholds chosen so that each one binds somewhere on the small synthetic market.
MIN_HISTORY, MIN_PRICE, MIN_MDV, WINDOW, TOP_N = 100, 30.0, 2e7, 20, 5


@pytest.fixture(scope="module")
def members(small_market) -> pl.DataFrame:
    return universe(small_market.prices, MIN_HISTORY, MIN_PRICE, MIN_MDV, WINDOW, TOP_N)


def test_one_row_per_priced_date_and_ticker(members, small_market):
    assert members.height == small_market.prices.height
    assert members.select("date", "ticker").is_duplicated().sum() == 0


def test_in_universe_implies_eligible(members):
    assert members.filter(pl.col("in_universe") & ~pl.col("eligible")).height == 0
    assert members["in_universe"].sum() > 0


def test_top_n_most_liquid_eligible_names_per_date(members):
    per_date = members.group_by("date").agg(
        n_eligible=pl.col("eligible").sum(),
        n_members=pl.col("in_universe").sum(),
        ranks=pl.col("liquidity_rank").drop_nulls().sort(),
    )
    assert (per_date["n_members"] == per_date["n_eligible"].clip(upper_bound=TOP_N)).all()
    assert (per_date["n_eligible"] > TOP_N).any()  # the cap binds on some dates
    for n, ranks in zip(per_date["n_eligible"], per_date["ranks"], strict=True):
        assert ranks.to_list() == list(range(1, n + 1))
    # Rank 1 is the highest median dollar volume; members are exactly ranks 1..TOP_N.
    eligible = members.filter("eligible")
    assert (eligible["in_universe"] == (eligible["liquidity_rank"] <= TOP_N)).all()
    by_rank = eligible.sort("date", "liquidity_rank").group_by("date", maintain_order=True)
    for _, group in by_rank:
        mdv = group["median_dollar_volume"].to_list()
        assert mdv == sorted(mdv, reverse=True)
    assert (
        members.filter(~pl.col("eligible"))["liquidity_rank"].null_count()
        == members.filter(~pl.col("eligible")).height
    )


def test_eligibility_is_exactly_history_and_price_and_liquidity(members):
    rule = (
        (pl.col("history_days") >= MIN_HISTORY)
        & (pl.col("close") >= MIN_PRICE)
        & (pl.col("median_dollar_volume") >= MIN_MDV)
    ).fill_null(False)
    assert (members["eligible"] == members.select(rule).to_series()).all()
    # Each threshold alone excludes some rows that pass the other two.
    history_ok = pl.col("history_days") >= MIN_HISTORY
    price_ok = pl.col("close") >= MIN_PRICE
    liquid_ok = (pl.col("median_dollar_volume") >= MIN_MDV).fill_null(False)
    assert members.filter(~history_ok & price_ok & liquid_ok).height > 0
    assert members.filter(history_ok & ~price_ok & liquid_ok).height > 0
    assert members.filter(history_ok & price_ok & ~liquid_ok).height > 0


def test_history_days_counts_the_tickers_own_bars(members, small_market):
    ticker = members.filter("eligible")["ticker"][0]
    own = members.filter(pl.col("ticker") == ticker).sort("date")
    assert own["history_days"].to_list() == list(range(1, own.height + 1))
    assert not own.filter(pl.col("history_days") < MIN_HISTORY)["eligible"].any()
    first_eligible = own.filter("eligible")["history_days"].min()
    assert first_eligible >= MIN_HISTORY


def test_median_dollar_volume_is_the_median_of_the_last_window_bars(members, small_market):
    ticker = small_market.prices["ticker"][0]
    prices = small_market.prices.filter(pl.col("ticker") == ticker).sort("date")
    own = members.filter(pl.col("ticker") == ticker).sort("date")
    dv = prices["dollar_volume"].to_list()
    assert own["median_dollar_volume"][: WINDOW - 1].null_count() == WINDOW - 1
    for t in (WINDOW - 1, WINDOW + 37, len(dv) - 1):
        expected = pl.Series(dv[t - WINDOW + 1 : t + 1]).median()
        assert own["median_dollar_volume"][t] == pytest.approx(expected, rel=1e-12)


def test_price_threshold_uses_the_raw_close_of_the_date():
    # One liquid, long-lived name whose raw close dips below the threshold for one day.
    n = 12
    close = [10.0] * n
    close[9] = 4.99
    prices = pl.DataFrame(
        {
            "ticker": "DIP",
            "date": pl.date_range(pl.date(2020, 1, 1), pl.date(2020, 1, n), eager=True),
            "close": close,
            "dollar_volume": [1e7] * n,
            "bar_index": list(range(n)),
        }
    )
    out = universe(prices, min_history_days=5, min_price=5.0, min_median_dollar_volume=1e6,
                   liquidity_window_days=3, top_n=None)  # fmt: skip
    assert out["eligible"].to_list() == [False] * 4 + [True] * 5 + [False] + [True] * 2
    assert out["in_universe"].to_list() == out["eligible"].to_list()


def test_a_window_of_dates_has_the_whole_tables_rows(members, small_market):
    """``universe(start=, end=)``: the whole table's rows of those dates, ranks included (the
    rolling medians run over every earlier bar; eligibility and ranking are per date)."""
    days = members["date"].unique().sort()
    for lo, hi in ((days[300], days[300]), (days[200], days[400]), (days[-3], None)):
        window = universe(
            small_market.prices, MIN_HISTORY, MIN_PRICE, MIN_MDV, WINDOW, TOP_N, start=lo, end=hi
        )
        expected = members.filter(pl.col("date").is_between(lo, hi or days[-1]))
        assert window.height == expected.height > 0
        assert window.equals(expected)


def test_a_read_of_a_few_months_is_enough_unless_a_gap_needs_more(small_market):
    """From ``liquidity_history_start`` on, the rows from ``start`` are the whole table's (the
    medians are exact). A name whose bars stop for months before ``start`` lacks bars in that
    read: ``has_liquidity_history`` says so (the universe asset then reads the whole history),
    and the short read would indeed give other medians."""
    from kronos_pipeline.features.universe import (
        has_liquidity_history,
        liquidity_history_start,
        universe_prices,
    )

    def reader(table):  # read(since): the rows from since on, the whole table for None
        return lambda since: table if since is None else table.filter(pl.col("date") >= since)

    prices = small_market.prices
    days = prices["date"].unique().sort()
    start = days[300]
    whole = universe(prices, MIN_HISTORY, MIN_PRICE, MIN_MDV, WINDOW, TOP_N, start=start)
    read = prices.filter(pl.col("date") >= liquidity_history_start(start, WINDOW))
    assert read.height < prices.height
    assert has_liquidity_history(read, start, WINDOW)
    assert universe(read, MIN_HISTORY, MIN_PRICE, MIN_MDV, WINDOW, TOP_N, start=start).equals(whole)
    assert universe_prices(reader(prices), start, WINDOW).equals(read)

    # One name's bars stop for the 40 sessions before start (its bar_index runs on over the gap).
    name = prices.filter(pl.col("date") == days[0])["ticker"][0]
    gapped = (
        prices.filter(
            ~((pl.col("ticker") == name) & pl.col("date").is_between(days[260], days[299]))
        )
        .sort("ticker", "date")
        .with_columns(bar_index=pl.int_range(pl.len(), dtype=pl.Int64).over("ticker"))
    )
    read = gapped.filter(pl.col("date") >= liquidity_history_start(start, WINDOW))
    assert not has_liquidity_history(read, start, WINDOW)
    assert has_liquidity_history(gapped, start, WINDOW)
    assert universe_prices(reader(gapped), start, WINDOW).equals(gapped)  # the whole history
    cols = ["date", "ticker", "median_dollar_volume"]
    short = universe(read, MIN_HISTORY, MIN_PRICE, MIN_MDV, WINDOW, None, start=start)
    full = universe(gapped, MIN_HISTORY, MIN_PRICE, MIN_MDV, WINDOW, None, start=start)
    assert not short.select(cols).equals(full.select(cols))

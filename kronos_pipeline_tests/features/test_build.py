"""Feature builders: the column set, and exact values of the factor-floor inputs on a
hand-made series."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.data.ingest import tidy_to_lines, validate_lines
from kronos_pipeline.data.pit import prices_pit
from kronos_pipeline.features.build import MONTH, feature_names, features

N_DAYS = 320
SPLIT_DAY = 150  # a 2-for-1 split in the middle of the momentum window


@pytest.fixture(scope="module")
def hand_made() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two names on NYSE sessions; HAND has a split and quarterly dividends."""
    rng = np.random.default_rng(5)
    days = [d.date() for d in trading_days(dt.date(2017, 1, 3), dt.date(2018, 12, 31))[:N_DAYS]]
    frames = []
    for ticker, start in (("HAND", 80.0), ("PEER", 40.0)):
        gross = 1.0 + rng.normal(0.0004, 0.015, N_DAYS)
        close = (start * np.cumprod(gross)).round(4)
        split = np.ones(N_DAYS)
        dividend = np.zeros(N_DAYS)
        if ticker == "HAND":
            split[SPLIT_DAY] = 2.0
            close[SPLIT_DAY:] = (close[SPLIT_DAY:] / 2.0).round(4)
            dividend[60::63] = 0.25
        frames.append(
            pl.DataFrame(
                {
                    "ticker": ticker,
                    "date": days,
                    "open": close,
                    "high": close * 1.01,
                    "low": close * 0.99,
                    "close": close,
                    "volume": rng.integers(100_000, 200_000, N_DAYS).astype(float),
                    "dividend": dividend,
                    "split": split,
                }
            )
        )
    ingest = validate_lines(tidy_to_lines(pl.concat(frames), "hand.csv"))
    assert ingest.quarantine.height == 0
    prices = prices_pit(ingest.bars)
    return prices, features(prices)


def test_a_window_of_dates_has_the_whole_tables_values(hand_made):
    """``features(start=, end=)`` returns the whole table's rows of those dates, bit for bit:
    each year's rows come from the bars dated ``history_start`` of that year on, whatever the
    window (a float sum over another span would differ in its last bits)."""
    prices, table = hand_made
    days = table["date"].unique().sort()
    for lo, hi in ((days[0], days[0]), (days[200], days[260]), (days[-1], days[-1])):
        window = features(prices, None, lo, hi)
        expected = table.filter(pl.col("date").is_between(lo, hi))
        assert window.height == expected.height > 0
        assert window.equals(expected)
    assert features(prices, None, start=days[-5]).equals(table.filter(pl.col("date") >= days[-5]))


def _one(table: pl.DataFrame, ticker: str) -> pl.DataFrame:
    return table.filter(pl.col("ticker") == ticker).sort("date")


def test_feature_table_has_at_least_40_named_features(hand_made):
    _, table = hand_made
    names = feature_names(table)
    assert len(names) >= 40
    assert len(set(names)) == len(names)
    assert table.columns[:3] == ["date", "ticker", "sector"]
    assert {"mom_12_1", "mom_1m", "vol_60d", "beta_60d", "rsi_14d", "amihud_1m"} <= set(names)
    assert all(table[c].dtype == pl.Float64 for c in names)


def test_mom_12_1_is_tri_21_days_ago_over_tri_252_days_ago(hand_made):
    prices, table = hand_made
    tri = _one(prices, "HAND")["tri"].to_list()
    mom = _one(table, "HAND")["mom_12_1"].to_list()
    assert mom[: 12 * MONTH] == [None] * (12 * MONTH)
    for t in range(12 * MONTH, N_DAYS):
        assert mom[t] == tri[t - MONTH] / tri[t - 12 * MONTH] - 1.0
    # The split is inside every window from t=252 on, and tri carries through it unchanged.
    assert tri[SPLIT_DAY] / tri[SPLIT_DAY - 1] == pytest.approx(
        _one(prices, "HAND")["total_return"][SPLIT_DAY] + 1.0, rel=1e-15
    )


def test_vol_60d_is_the_annualised_std_of_the_last_60_returns(hand_made):
    prices, table = hand_made
    r = np.array(_one(prices, "HAND")["total_return"].to_list()[1:], dtype=float)
    vol = _one(table, "HAND")["vol_60d"].to_list()
    # The first bar has no return, so the first full 60-return window ends on bar 60.
    assert vol[:60] == [None] * 60
    for t in (60, 61, SPLIT_DAY, SPLIT_DAY + 59, N_DAYS - 1):
        window = r[t - 60 : t]  # returns of bars t-59..t
        assert vol[t] == pytest.approx(np.std(window, ddof=1) * math.sqrt(252.0), rel=1e-9)


def test_sector_relative_features_average_zero_within_date_and_sector(small_market):
    table = features(small_market.prices, small_market.sectors)
    assert table["sector"].null_count() == 0
    means = (
        table.filter(pl.col("sector_rel_vol_60d").is_not_null())
        .group_by("date", "sector")
        .agg(pl.col("sector_rel_vol_60d").mean())
    )
    assert means["sector_rel_vol_60d"].abs().max() < 1e-12
    assert table.select("date", "ticker").is_duplicated().sum() == 0


def test_a_bar_whose_high_equals_its_low_passes_the_declared_feature_schema(hand_made):
    # Real files hold such bars (910 in the shared sample): close_location_1d is undefined
    # there, and the schema must say so rather than fail the whole features step.
    from kronos_pipeline import quality

    prices, _ = hand_made
    last = pl.col("date") == pl.col("date").max()
    flat = prices.with_columns(
        adj_high=pl.when(last).then(pl.col("adj_close")).otherwise(pl.col("adj_high")),
        adj_low=pl.when(last).then(pl.col("adj_close")).otherwise(pl.col("adj_low")),
    )
    table = features(flat)
    assert table["close_location_1d"].null_count() == 2
    report = quality.validate(table, "features", quality.features_suite(table.height))
    assert report.success, report.failures


@pytest.mark.parametrize("path", ["one suite run", "per column group"])
def test_the_feature_suite_names_each_broken_rule_in_suite_order(hand_made, path, monkeypatch):
    # quality.validate runs a small frame in one suite run and a large one per group of the
    # columns an expectation reads: on either path a null key, a duplicated key, an
    # out-of-range value, a missing column and a wrong row count must each fail on their own
    # expectation, counted on the right rows, in the suite's order.
    from kronos_pipeline import quality

    if path == "per column group":
        monkeypatch.setattr(quality, "WHOLE_FRAME_CELLS", 0)

    prices, _ = hand_made
    table = features(prices)
    n = table.height
    broken = (
        pl.concat([table, table.head(1)])
        .with_columns(
            ticker=pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("ticker")),
            rsi_14d=pl.when(pl.int_range(pl.len()) < 2).then(150.0).otherwise(pl.col("rsi_14d")),
        )
        .drop("log_price")
    )
    suite = quality.features_suite(n)
    runs, run_suite = [], quality._run_suite
    monkeypatch.setattr(quality, "_run_suite", lambda *a: runs.append(a[1]) or run_suite(*a))
    report = quality.validate(broken, "features", suite, quality.FEATURES)
    assert (len(runs) == 1) == (path == "one suite run")
    assert [r["expectation"] for r in report.results[1:]] == [e.expectation_type for e in suite]
    failed = {(r["expectation"], r["column"]): r["unexpected_count"] for r in report.failures}
    names = ",".join(quality.FEATURES.names)
    assert failed[("declared_schema", names)] == 0
    assert failed[("expect_table_columns_to_match_ordered_list", names)] == 0
    assert failed[("expect_column_values_to_not_be_null", "ticker")] == 1
    assert failed[("expect_column_values_to_not_be_null", "log_price")] == 0  # no such column
    assert failed[("expect_compound_columns_to_be_unique", "date,ticker")] == 2
    assert failed[("expect_column_values_to_be_between", "rsi_14d")] == 2
    assert ("expect_table_row_count_to_equal", "table") in failed
    assert len(failed) == 7
    assert quality.validate(table, "features", suite, quality.FEATURES).success


def test_the_market_return_does_not_depend_on_the_order_of_the_rows(small_market):
    """Each date's equal-weight mean adds its returns in ticker order: the same bits from any
    row order (polars' parallel group_by mean varied in the last bits with the CPU's load)."""
    from kronos_pipeline.features.build import market_returns

    prices = small_market.prices
    base = market_returns(prices)
    for seed in range(5):
        assert market_returns(prices.sample(fraction=1.0, seed=seed)).equals(base)
    check = (
        prices.filter(pl.col("total_return").is_not_null())
        .group_by("date")
        .agg(m=pl.col("total_return").mean(), n=pl.len())
    )
    joined = base.join(check, on="date")
    assert joined.height == base.height == check.height > 0
    assert (joined["mkt_names"] == joined["n"]).all()
    np.testing.assert_allclose(joined["mkt_ret"], joined["m"], rtol=0, atol=1e-15)


@pytest.fixture(scope="module")
def five_years() -> pl.DataFrame:
    """prices_pit of a seeded synthetic market over five calendar years (names list and delist
    inside it), long enough for a year's warm-up to cut earlier bars off."""
    from kronos_pipeline.data.synthetic import synthetic_market

    market = synthetic_market(n_tickers=12, start=dt.date(2010, 1, 4), end=dt.date(2014, 12, 31))
    return prices_pit(validate_lines(market.lines).bars)


def test_a_read_from_history_start_gives_the_whole_tables_rows(five_years):
    """A night reads the prices from ``history_start(day)`` on: the features of its dates are
    the whole table's, bit for bit, on the first and last session of a year and mid-year, and
    for a window that spans a new year."""
    from kronos_pipeline.features.build import history_start

    table = features(five_years)
    days = table["date"].unique().sort()
    firsts = table.group_by(pl.col("date").dt.year().alias("year")).agg(pl.col("date").min())
    firsts = firsts["date"].sort()
    picks = [(d, d) for d in (*firsts[2:], days[700], days[-1])] + [(days[740], days[780])]
    assert any(lo.year != hi.year for lo, hi in picks)
    for lo, hi in picks:
        read = five_years.filter(pl.col("date") >= history_start(lo))
        assert read.height < five_years.height  # the read cuts earlier bars off
        window = features(read, None, lo, hi)
        expected = table.filter(pl.col("date").is_between(lo, hi))
        assert window.height == expected.height > 0
        assert window.equals(expected), (lo, hi)


def test_the_warm_up_covers_the_longest_window(five_years):
    """With the year's warm-up, every value that the whole history gives exists and agrees to
    the PIT tolerance (1e-12): no feature turns null on a name with full bars (a warm-up
    shorter than 253 bars would null the 12-month and 252-day windows early in each year)."""
    from kronos_pipeline.features.build import _features_of

    by_year = features(five_years)
    whole = _features_of(five_years, None, None, None)
    assert by_year.select("date", "ticker").equals(whole.select("date", "ticker"))
    aged = five_years.filter(pl.col("bar_index") >= 300).select("date", "ticker")
    long_windows = by_year.join(aged, on=["date", "ticker"]).select("mom_12m", "beta_252d")
    assert long_windows.height > 0 and long_windows.null_count().sum_horizontal().item() == 0
    for name in feature_names(whole):
        a, b = by_year[name], whole[name]
        assert (a.is_null() == b.is_null()).all(), name
        both = a.is_not_null()
        np.testing.assert_allclose(a.filter(both), b.filter(both), rtol=1e-10, atol=1e-12)

"""The point-in-time law (SPEC section 2): cut every raw bar after t, recompute, and every value
dated <= t is unchanged, bit for bit, nulls included."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kronos_pipeline.data.ingest import read_vendor_dir, validate_lines
from kronos_pipeline.data.pit import prices_pit
from kronos_pipeline.data.synthetic import synthetic_market
from kronos_pipeline.features.build import features
from kronos_pipeline.features.universe import universe
from kronos_pipeline.settings import UniverseSettings

UNIVERSE = UniverseSettings()
TOP_N = 10  # small enough that the liquidity rank decides membership on most dates


def _pipeline(bars: pl.DataFrame, sectors: pl.DataFrame | None) -> dict[str, pl.DataFrame]:
    prices = prices_pit(bars)
    members = universe(
        prices,
        UNIVERSE.min_history_days,
        UNIVERSE.min_price,
        UNIVERSE.min_median_dollar_volume,
        UNIVERSE.liquidity_window_days,
        TOP_N,
    )
    return {"prices_pit": prices, "universe": members, "features": features(prices, sectors)}


def _assert_pit(bars: pl.DataFrame, sectors: pl.DataFrame | None, full: dict, cut: dt.date) -> None:
    recomputed = _pipeline(bars.filter(pl.col("date") <= cut), sectors)
    for name, table in full.items():
        expected = table.filter(pl.col("date") <= cut)
        assert expected.height > 0, f"{name}: no rows dated <= {cut}"
        assert_frame_equal(recomputed[name], expected, check_exact=True)


# --- synthetic market ------------------------------------------------------------------------

SYN_START, SYN_END = dt.date(2015, 1, 2), dt.date(2016, 12, 30)


@pytest.fixture(scope="module")
def synthetic() -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    market = synthetic_market(n_tickers=30, start=SYN_START, end=SYN_END, seed=11)
    bars = validate_lines(market.lines).bars
    sectors = market.constituents.select("ticker", "sector")
    return bars, sectors, _pipeline(bars, sectors)


def test_synthetic_pipeline_has_splits_dividends_and_members(synthetic):
    bars, _, full = synthetic
    assert (bars["split"] != 1.0).sum() > 0
    assert (bars["dividend"] > 0).sum() > 0
    assert full["universe"]["in_universe"].sum() > 0
    assert full["features"]["mom_12_1"].is_not_null().sum() > 0


@given(data=st.data())
@settings(max_examples=12, deadline=None)
def test_synthetic_values_as_of_t_unchanged_when_rows_after_t_are_cut(synthetic, data):
    bars, sectors, full = synthetic
    dates = sorted(bars["date"].unique().to_list())
    cut = data.draw(st.sampled_from(dates[:-1]), label="cut")
    _assert_pit(bars, sectors, full, cut)


# --- real slice of the shared data -----------------------------------------------------------


@pytest.fixture(scope="module")
def real_slice(vendor_slice_dir: Path) -> tuple[pl.DataFrame, dict, list[dt.date], list[dt.date]]:
    ingest = read_vendor_dir(vendor_slice_dir)
    bars = ingest.bars
    full = _pipeline(bars, None)
    dates = sorted(bars["date"].unique().to_list())
    split_days = bars.filter(pl.col("split") != 1.0)["date"].unique().sort().to_list()
    # Cut dates on, just before and just after every split day.
    near = sorted(
        {dates[i] for d in split_days for i in range(dates.index(d) - 2, dates.index(d) + 3)}
    )
    return bars, full, dates, near


def test_real_slice_holds_the_known_aapl_splits(real_slice):
    bars = real_slice[0]
    aapl = bars.filter((pl.col("ticker") == "AAPL") & (pl.col("split") != 1.0))
    assert aapl["date"].to_list() == [
        dt.date(2000, 6, 21),
        dt.date(2005, 2, 28),
        dt.date(2014, 6, 9),
    ]
    assert aapl["split"].to_list() == pytest.approx([2.0, 2.0, 7.0], rel=1e-5)


@given(data=st.data())
@settings(max_examples=10, deadline=None)
def test_real_values_as_of_t_unchanged_when_rows_after_t_are_cut(real_slice, data):
    bars, full, dates, near = real_slice
    cut = data.draw(st.one_of(st.sampled_from(near), st.sampled_from(dates[:-1])), label="cut")
    _assert_pit(bars, None, full, cut)

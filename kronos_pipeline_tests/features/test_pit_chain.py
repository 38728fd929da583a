"""The PIT law for the whole chain on real data, side tables included: ticker_history,
sector_history, prices, universe, features (sectors as of each date) and the labels known at t
are unchanged when every vendor row after t is removed."""

from __future__ import annotations

import datetime as dt
import shutil

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kronos_pipeline.data.ingest import read_vendor_dir
from kronos_pipeline.data.pit import prices_pit
from kronos_pipeline.data.side_tables import (
    merge_sector_history,
    merge_ticker_history,
    sector_segments,
)
from kronos_pipeline.data.sources import DELISTINGS_SCHEMA, read_constituents
from kronos_pipeline.features.build import features
from kronos_pipeline.features.labels import labels_forward
from kronos_pipeline.features.universe import universe
from kronos_pipeline.quality import SECTOR_HISTORY, TICKER_HISTORY
from kronos_pipeline_tests.data.conftest import shared_vendor_dir, vendor_file

# A sample of real tickers: splits (AAPL, NVDA), a late listing (ABBV, 2013), vendor gaps (KIM).
SAMPLE = ("AAPL", "NVDA", "ABBV", "KIM", "KO", "XOM")
FROM = dt.date(2011, 1, 1)  # keeps the test to seconds; ABBV lists inside the range
HORIZONS = (20, 60)


def _chain(bars: pl.DataFrame, mapping: pl.DataFrame) -> dict[str, pl.DataFrame]:
    tickers = merge_ticker_history(
        TICKER_HISTORY.empty(), bars, pl.DataFrame(schema=DELISTINGS_SCHEMA)
    )
    sectors = merge_sector_history(
        SECTOR_HISTORY.empty(), mapping, "constituents.csv", tickers, None
    ).history
    prices = prices_pit(bars)
    members = universe(prices, 252, 5.0, 5e6, 60, 4)
    start, end = bars["date"].min(), bars["date"].max()
    feats = pl.concat(
        [
            features(prices.filter(pl.col("date") <= b), m).filter(pl.col("date").is_between(a, b))
            for a, b, m in sector_segments(sectors, start, end)
        ]
    )
    labels = labels_forward(prices.select("ticker", "date", "tri"), members, HORIZONS)
    return {
        "ticker_history": tickers,
        "sector_history": sectors,
        "prices_pit": prices,
        "universe": members,
        "features": feats,
        "labels_forward": labels,
    }


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pit_chain")
    for ticker in SAMPLE:
        shutil.copy(vendor_file(ticker), folder)
    bars = read_vendor_dir(folder).bars.filter(pl.col("date") >= FROM)
    mapping = read_constituents(shared_vendor_dir() / "constituents.csv")
    return bars, mapping, _chain(bars, mapping)


def _as_of(name: str, table: pl.DataFrame, cut: dt.date) -> pl.DataFrame:
    if name == "labels_forward":  # a label is known on its available_at
        return table.filter(pl.col("available_at") <= cut)
    if name in ("ticker_history", "sector_history"):
        column = "first_date" if name == "ticker_history" else "valid_from"
        return table.filter(pl.col(column) <= cut)
    return table.filter(pl.col("date") <= cut)


@given(data=st.data())
@settings(max_examples=6, deadline=None)
def test_whole_chain_as_of_t_unchanged_when_rows_after_t_are_cut(real, data):
    bars, mapping, full = real
    dates = sorted(bars["date"].unique().to_list())
    # anywhere after the first 300 sessions (so a universe exists), drawn by hypothesis
    cut = data.draw(st.sampled_from(dates[300:-1]), label="cut")
    recomputed = _chain(bars.filter(pl.col("date") <= cut), mapping)
    for name, table in full.items():
        expected = _as_of(name, table, cut)
        got = _as_of(name, recomputed[name], cut)
        assert expected.height > 0, name
        assert_frame_equal(got, expected, check_exact=True)


def test_the_sample_covers_a_listing_sectors_and_matured_labels(real):
    _, _, full = real
    first = dict(full["ticker_history"].select("ticker", "first_date").rows())
    assert first["ABBV"] == dt.date(2013, 1, 2)
    assert full["sector_history"]["sector"].null_count() == 0
    assert full["features"].filter(pl.col("sector_rel_mom_1m").is_not_null()).height > 0
    assert full["labels_forward"].height > 0

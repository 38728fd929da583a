"""A small seeded synthetic market (30 names, two years) shared by the feature tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl
import pytest

from kronos_pipeline.data.ingest import validate_lines
from kronos_pipeline.data.pit import prices_pit
from kronos_pipeline.data.synthetic import synthetic_market

START, END = dt.date(2015, 1, 2), dt.date(2016, 12, 30)
SEED = 11  # seven of the thirty names delist inside the range, six list late


@dataclass(frozen=True)
class SmallMarket:
    prices: pl.DataFrame  # prices_pit
    sectors: pl.DataFrame  # ticker, sector


@pytest.fixture(scope="session")
def small_market() -> SmallMarket:
    market = synthetic_market(n_tickers=30, start=START, end=END, seed=SEED)
    bars = validate_lines(market.lines).bars
    return SmallMarket(prices_pit(bars), market.constituents.select("ticker", "sector"))

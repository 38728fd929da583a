"""The PIT recomputation tripwire rebuilds the chain from raw bars as of sampled dates and must
fire when any stage looks ahead: a leaky feature, a label shifted by one day, a universe chosen
with tomorrow's volume. The warehouse values are computed with the same (broken) code on all
the data, as the pipeline would, so only the look-ahead can make the two sides differ."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
import pytest

from kronos_pipeline.data.ingest import validate_lines
from kronos_pipeline.data.pit import prices_pit
from kronos_pipeline.data.synthetic import synthetic_market
from kronos_pipeline.evaluation import baselines, data_tripwires
from kronos_pipeline.features import build, labels, universe
from kronos_pipeline.settings import load_settings

SETTINGS = load_settings(environ={}, universe={"top_n": 10})


@pytest.fixture(scope="module")
def market():
    m = synthetic_market(n_tickers=24, start=dt.date(2015, 1, 2), end=dt.date(2016, 12, 30), seed=5)
    return validate_lines(m.lines).bars, m.constituents.select("ticker", "sector")


def _members(prices: pl.DataFrame) -> pl.DataFrame:
    u = SETTINGS.universe
    return data_tripwires.universe(
        prices.select("ticker", "date", "close", "dollar_volume", "bar_index"),
        u.min_history_days, u.min_price, u.min_median_dollar_volume, u.liquidity_window_days,
        SETTINGS.effective_top_n,
    )  # fmt: skip


def _stored(bars: pl.DataFrame, sectors: pl.DataFrame, dates) -> data_tripwires.StoredAsOf:
    """The warehouse as the pipeline builds it: every table from all the data."""
    prices = prices_pit(bars)
    members = _members(prices)
    feats = data_tripwires.features(prices, sectors).to_pandas()
    labs = data_tripwires.labels_forward(
        prices.select("ticker", "date", "tri"), members, SETTINGS.labels.horizons
    ).to_pandas()
    day_set = pd.DatetimeIndex(dates)
    on = feats[pd.to_datetime(feats["date"]).isin(day_set[-1:])]
    scores = baselines.factor_scores(on, SETTINGS.labels.horizons, "f")
    return data_tripwires.StoredAsOf(
        features=feats[pd.to_datetime(feats["date"]).isin(day_set)],
        universe=members.to_pandas()[lambda d: pd.to_datetime(d["date"]).isin(day_set)],
        labels=labs,
        scores=scores[["model", "horizon", "date", "ticker", "score"]],
    )


def _run(bars, sectors):
    dates = sorted(bars["date"].unique().to_list())
    picks = data_tripwires.sample_dates(dates, dates[-80:-60], count=3, skip=260)
    return data_tripwires.pit_chain_tripwire(
        bars, sectors, _stored(bars, sectors, picks), picks, SETTINGS
    )


def test_a_sound_chain_passes_on_dates_spread_over_the_range(market):
    bars, sectors = market
    result = _run(bars, sectors)
    assert result["status"] == "pass", result["reason"]
    assert len(result["dates"]) >= 4
    assert set(result["tables_compared"]) == {
        "features", "universe", "labels_forward", "baseline_scores",
    }  # fmt: skip
    assert result["rows_compared"] > 1000
    assert result["side_tables"] == "sector_history"


def test_a_leaky_feature_trips_it(market, monkeypatch):
    real = build.features

    def with_tomorrow(prices, sectors=None, start=None, end=None):
        out = real(prices, sectors)
        out = out.with_columns(
            peek=(pl.col("mom_1m").shift(-1).over("ticker", order_by="date")).fill_null(0.0)
        )
        return out.filter(pl.col("date").is_between(start or dt.date.min, end or dt.date.max))

    monkeypatch.setattr(data_tripwires, "features", with_tomorrow)
    result = _run(*market)
    assert result["status"] == "fail"
    assert result["worst_table"] == "features" and result["worst_column"] == "peek"
    assert result["examples"] and {"date", "ticker"} <= set(result["examples"][0])


def test_a_label_shifted_by_one_day_trips_it(market, monkeypatch):
    real = labels.labels_forward

    def shifted(prices, members, horizons, calendar="XNYS"):
        # the label of t is the one of t+1, but still claims to mature on t + h
        out = real(prices, members, horizons, calendar)
        return out.with_columns(
            fwd_return=pl.col("fwd_return").shift(-1).over("ticker", "horizon", order_by="date"),
            excess_return=pl.col("excess_return")
            .shift(-1)
            .over("ticker", "horizon", order_by="date"),
        ).drop_nulls("fwd_return")

    monkeypatch.setattr(data_tripwires, "labels_forward", shifted)
    result = _run(*market)
    assert result["status"] == "fail"
    assert result["worst_table"] == "labels_forward"


def test_a_universe_chosen_with_tomorrows_volume_trips_it(market, monkeypatch):
    real = universe.universe

    def tomorrow(prices, *args, **kwargs):
        ahead = prices.sort("ticker", "date").with_columns(
            dollar_volume=pl.col("dollar_volume").shift(-1).over("ticker").fill_null(0.0)
        )
        return real(ahead, *args, **kwargs)

    monkeypatch.setattr(data_tripwires, "universe", tomorrow)
    result = _run(*market)
    assert result["status"] == "fail"
    assert "universe" in {c["table"] for c in result["checks"] if not c["passed"]}


def test_labels_from_a_date_on_need_only_the_bars_from_that_date_on(market):
    # The tripwire recomputes labels from the bars after its comparison window's start only
    # (a label of d reads the bars d..d+h and the universe on d): that must change nothing.
    bars, _ = market
    prices = prices_pit(bars)
    members = _members(prices)
    tri = prices.select("ticker", "date", "tri")
    horizons = SETTINGS.labels.horizons
    full = data_tripwires.labels_forward(tri, members, horizons)
    for start in (dt.date(2015, 9, 1), dt.date(2016, 3, 15)):
        since = pl.col("date") >= start
        part = data_tripwires.labels_forward(tri.filter(since), members.filter(since), horizons)
        assert part.height > 0
        assert part.equals(full.filter(since))

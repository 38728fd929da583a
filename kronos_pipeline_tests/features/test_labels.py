"""Forward total-return labels: exact values, maturity dates, delisted names kept, excess
returns centred on the universe."""

from __future__ import annotations

import polars as pl
import pytest

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.features.labels import labels_forward
from kronos_pipeline.features.universe import universe
from kronos_pipeline.settings import LabelSettings, UniverseSettings

N_DAYS = 30
DELIST_AT = 14  # C's last bar is on session index 14
HORIZONS = (5, 10)


def _tri(ticker: str, i: int) -> float:
    return {"A": 1.01**i, "B": 0.99**i, "C": 1.0 + 0.02 * i}[ticker]


@pytest.fixture(scope="module")
def hand_labels() -> tuple[list, pl.DataFrame]:
    days = [d.date() for d in trading_days("2019-01-02", "2019-03-29")[:N_DAYS]]
    rows = [
        (t, days[i], _tri(t, i))
        for t in ("A", "B", "C")
        for i in range(N_DAYS)
        if t != "C" or i <= DELIST_AT
    ]
    prices = pl.DataFrame(rows, schema=["ticker", "date", "tri"], orient="row")
    # B is outside the universe on even sessions, so the mean there is over A and C only.
    members = prices.select(
        "date",
        "ticker",
        in_universe=~((pl.col("ticker") == "B") & (pl.col("date").rank("dense") % 2 == 1)),
    )
    return days, labels_forward(prices, members, HORIZONS)


def _label(labels: pl.DataFrame, ticker: str, date, horizon: int) -> dict:
    row = labels.filter(
        (pl.col("ticker") == ticker) & (pl.col("date") == date) & (pl.col("horizon") == horizon)
    )
    assert row.height == 1
    return row.row(0, named=True)


def test_forward_return_runs_from_close_t_to_close_t_plus_h(hand_labels):
    days, labels = hand_labels
    row = _label(labels, "A", days[3], 5)
    assert row["fwd_return"] == pytest.approx(1.01**5 - 1.0, rel=1e-12)
    assert row["available_at"] == days[8]
    assert row["end_date"] == days[8]


def test_name_that_stops_trading_inside_horizon_keeps_label_to_last_close(hand_labels):
    days, labels = hand_labels
    row = _label(labels, "C", days[10], 10)
    assert row["available_at"] == days[20]
    assert row["end_date"] == days[DELIST_AT]
    assert row["end_date"] < row["available_at"]
    assert row["fwd_return"] == pytest.approx(_tri("C", DELIST_AT) / _tri("C", 10) - 1.0, rel=1e-12)
    # Never dropped: every C bar has a label at both horizons (all horizons end inside the data).
    c = labels.filter(pl.col("ticker") == "C")
    assert c.group_by("horizon").len().sort("horizon").rows() == [(5, 15), (10, 15)]
    delisted = c.filter(pl.col("end_date") < pl.col("available_at"))
    assert delisted.filter(pl.col("horizon") == 10)["date"].to_list() == days[5 : DELIST_AT + 1]


def test_labels_past_the_end_of_the_data_are_not_written(hand_labels):
    days, labels = hand_labels
    a = labels.filter(pl.col("ticker") == "A")
    assert a.group_by("horizon").len().sort("horizon").rows() == [
        (5, N_DAYS - 5),
        (10, N_DAYS - 10),
    ]
    assert a["available_at"].max() == days[-1]


def test_excess_return_subtracts_the_universe_mean_of_the_date(hand_labels):
    days, labels = hand_labels
    # session 2 (even): B is out, the mean is over A and C
    fwd = {t: _tri(t, 7) / _tri(t, 2) - 1.0 for t in "ABC"}
    mean_ac = (fwd["A"] + fwd["C"]) / 2
    for t in "ABC":
        row = _label(labels, t, days[2], 5)
        assert row["excess_return"] == pytest.approx(fwd[t] - mean_ac, rel=1e-12)
    assert _label(labels, "B", days[2], 5)["in_universe"] is False
    # session 3 (odd): all three are members
    fwd3 = {t: _tri(t, 8) / _tri(t, 3) - 1.0 for t in "ABC"}
    mean_abc = sum(fwd3.values()) / 3
    assert _label(labels, "B", days[3], 5)["excess_return"] == pytest.approx(
        fwd3["B"] - mean_abc, rel=1e-12
    )


def test_synthetic_excess_returns_average_zero_over_members_per_date_and_horizon(small_market):
    cfg = UniverseSettings()
    members = universe(
        small_market.prices,
        cfg.min_history_days,
        cfg.min_price,
        cfg.min_median_dollar_volume,
        cfg.liquidity_window_days,
        None,
    )
    horizons = LabelSettings().horizons
    labels = labels_forward(small_market.prices, members, horizons)
    assert sorted(labels["horizon"].unique().to_list()) == list(horizons)
    means = (
        labels.filter("in_universe")
        .group_by("date", "horizon")
        .agg(mean=pl.col("excess_return").mean(), n=pl.len())
    )
    assert means.height > 0
    assert means["mean"].abs().max() < 1e-12
    assert labels.select("date", "ticker", "horizon").is_duplicated().sum() == 0
    assert (labels["available_at"] > labels["date"]).all()
    # end_date < available_at: either the name delisted inside the horizon, or its bar on
    # available_at was quarantined (a planted defect), so the last close before it is used.
    tri = small_market.prices.select("ticker", "date", "tri")
    last_bar = tri.group_by("ticker").agg(last=pl.col("date").max())
    delisted = last_bar.filter(pl.col("last") < pl.col("last").max())
    assert delisted.height == 7
    cut_short = labels.filter(pl.col("end_date") < pl.col("available_at"))
    check = cut_short.join(tri, on=["ticker", "date"]).join(
        tri.rename({"date": "end_date", "tri": "tri_last"}), on=["ticker", "end_date"]
    )
    assert check.height == cut_short.height
    assert (check["fwd_return"] - (check["tri_last"] / check["tri"] - 1.0)).abs().max() < 1e-15
    after_delisting = check.join(delisted, on="ticker").filter(
        pl.col("available_at") > pl.col("last")
    )
    assert after_delisting["ticker"].n_unique() == 7
    assert (after_delisting["end_date"] == after_delisting["last"]).all()
    gaps = check.join(delisted, on="ticker", how="anti")
    assert (
        gaps.join(tri, left_on=["ticker", "available_at"], right_on=["ticker", "date"]).height == 0
    )


def test_labels_from_the_prices_dated_on_or_after_a_day_equal_the_whole_historys(small_market):
    """The labels step reads only the prices dated from its window's first day on: the labels
    of those days must come out bit for bit as from the whole history (a label reads the prices
    from its own date on; the universe mean adds a date's returns in ticker order)."""
    cfg = UniverseSettings()
    members = universe(
        small_market.prices, cfg.min_history_days, cfg.min_price,
        cfg.min_median_dollar_volume, cfg.liquidity_window_days, None,
    )  # fmt: skip
    horizons = LabelSettings().horizons
    whole = labels_forward(small_market.prices, members, horizons)
    days = whole["date"].unique().sort()
    for start in (days[len(days) // 3], days[-max(horizons) - 5]):
        # Rows shuffled too: the labels may not depend on the order the prices arrive in.
        window = small_market.prices.filter(pl.col("date") >= start).sample(fraction=1.0, seed=3)
        got = labels_forward(window, members.filter(pl.col("date") >= start), horizons)
        expected = whole.filter(pl.col("date") >= start)
        assert got.height == expected.height > 0
        assert got.equals(expected)

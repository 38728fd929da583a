"""PIT adjustment: a planted split and dividend give exactly the expected series; on the real
sample our returns agree with the vendor's adjusted_close on ordinary days."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos_pipeline.data.ingest import tidy_to_lines, validate_lines
from kronos_pipeline.data.pit import (
    adjustment_agreement,
    as_of_adjusted,
    ordered_by_ticker_and_date,
    prices_pit,
)

# Six NYSE sessions; a 2-for-1 split effective on day 3 and a 0.50 dividend ex on day 5.
DAYS = [dt.date(2019, 3, d) for d in (4, 5, 6, 7, 8, 11)]
CLOSE = [100.0, 102.0, 52.0, 53.0, 52.8, 53.5]  # day 3 on is in post-split shares
VOLUME = [1000.0, 1100.0, 2400.0, 2000.0, 2100.0, 1900.0]
SPLIT = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0]
DIVIDEND = [0.0, 0.0, 0.0, 0.0, 0.5, 0.0]


@pytest.fixture(scope="module")
def planted() -> pl.DataFrame:
    tidy = pl.DataFrame(
        {
            "ticker": "PLNT",
            "date": DAYS,
            "open": CLOSE,
            "high": [c + 1.0 for c in CLOSE],
            "low": [c - 1.0 for c in CLOSE],
            "close": CLOSE,
            "volume": VOLUME,
            "dividend": DIVIDEND,
            "split": SPLIT,
        }
    )
    ingest = validate_lines(tidy_to_lines(tidy, "planted.csv"))
    assert ingest.quarantine.height == 0
    return prices_pit(ingest.bars)


def test_planted_split_sets_the_cumulative_split_factor_from_its_day_on(planted):
    assert planted["split_factor"].to_list() == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert planted["corporate_action"].to_list() == [False, False, True, False, True, False]
    assert planted["bar_index"].to_list() == [0, 1, 2, 3, 4, 5]


def test_planted_split_gives_a_continuous_forward_adjusted_close(planted):
    assert planted["adj_close"].to_list() == pytest.approx(
        [100.0, 102.0, 104.0, 106.0, 105.6, 107.0], rel=1e-12
    )
    assert planted["adj_volume"].to_list() == pytest.approx(
        [1000.0, 1100.0, 1200.0, 1000.0, 1050.0, 950.0], rel=1e-12
    )
    # dollar volume is as traded: raw close times raw volume
    assert planted["dollar_volume"].to_list() == pytest.approx(
        [c * v for c, v in zip(CLOSE, VOLUME, strict=True)], rel=1e-12
    )


def test_planted_split_and_dividend_give_the_exact_total_return_and_index(planted):
    expected = [None]
    for t in range(1, len(CLOSE)):
        expected.append(SPLIT[t] * (CLOSE[t] + DIVIDEND[t]) / CLOSE[t - 1] - 1.0)
    returns = planted["total_return"].to_list()
    assert returns[0] is None
    assert returns[1:] == pytest.approx(expected[1:], rel=1e-12)
    # By hand: the split day is 2*52/102 - 1, the dividend day (52.8 + 0.5)/53 - 1.
    assert returns[2] == pytest.approx(104.0 / 102.0 - 1.0, rel=1e-12)
    assert returns[4] == pytest.approx(53.3 / 53.0 - 1.0, rel=1e-12)
    tri, level = [], 1.0
    for r in [0.0, *expected[1:]]:
        level *= 1.0 + r
        tri.append(level)
    assert planted["tri"].to_list() == pytest.approx(tri, rel=1e-12)
    # Without the dividend the index would track adj_close; the 0.50 adds 1.0 per pre-split share.
    assert planted["tri"][-1] == pytest.approx(107.0 / 100.0 * 53.3 / 52.8, rel=1e-12)


def test_as_of_adjusted_restates_history_in_the_share_units_of_the_as_of_day(planted):
    before = as_of_adjusted(planted, DAYS[1])
    assert before["asof_close"].to_list() == pytest.approx([100.0, 102.0], rel=1e-12)
    after = as_of_adjusted(planted, DAYS[3])
    assert after["asof_close"].to_list() == pytest.approx([50.0, 51.0, 52.0, 53.0], rel=1e-12)
    assert after["asof_high"].to_list() == pytest.approx([50.5, 51.5, 53.0, 54.0], rel=1e-12)
    assert after["asof_volume"].to_list() == pytest.approx(
        [2000.0, 2200.0, 2400.0, 2000.0], rel=1e-12
    )
    # The last row of any as-of view is the traded bar itself.
    last = as_of_adjusted(planted, DAYS[-1])
    assert last["asof_close"][-1] == CLOSE[-1]


def test_real_returns_agree_with_vendor_adjusted_close_on_ordinary_days(full_vendor_ingest):
    agreement = adjustment_agreement(prices_pit(full_vendor_ingest.bars), rel_tol=1e-6)
    # Measured on the shared sample: 3 ordinary ticker-days disagree out of 2,211,184.
    assert agreement["checked"] == 2_211_184
    assert agreement["agree"] == 2_211_181
    assert agreement["share"] >= 0.999


def test_prices_pit_gives_the_same_frame_for_bars_in_any_order():
    """prices_pit skips its sort when the bars already come by ticker and date; any other
    order (tickers out of order, a date out of order, a (ticker, date) twice) is sorted."""
    days = [dt.date(2019, 3, d) for d in (4, 5, 6, 7, 8)]
    bars = pl.DataFrame(
        {
            "ticker": ["B"] * 5 + ["A"] * 5,
            "date": days * 2,
            **{c: [10.0 + i for i in range(10)] for c in ("open", "high", "low", "close")},
            "adjusted_close": [10.0 + i for i in range(10)],
            "volume": [1000.0] * 10,
            "dividend": [0.0, 0.0, 0.3, 0.0, 0.0] * 2,
            "split": [1.0, 2.0, 1.0, 1.0, 1.0] * 2,
        }
    )
    ordered = bars.sort("ticker", "date")
    assert ordered_by_ticker_and_date(ordered)
    assert not ordered_by_ticker_and_date(bars)  # tickers out of order
    swapped = pl.concat([ordered[:1], ordered[2:3], ordered[1:2], ordered[3:]])
    assert not ordered_by_ticker_and_date(swapped)  # a date out of order within A
    assert not ordered_by_ticker_and_date(pl.concat([ordered[:1], ordered]))  # a day twice
    expected = prices_pit(ordered)
    assert expected["date"].to_list()[:5] == days and expected["ticker"][0] == "A"
    assert expected["split_factor"].to_list()[:5] == [1.0, 2.0, 2.0, 2.0, 2.0]
    for shuffled in (bars, swapped, bars.sample(fraction=1.0, shuffle=True, seed=7)):
        assert_frame_equal(prices_pit(shuffled), expected)

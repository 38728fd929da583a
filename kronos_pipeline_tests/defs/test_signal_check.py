"""The signal's check compares with the universe members of the date, which the signal did not
produce: a non-member, ranks that are not 1..n, or a member LightGBM left unranked fail it."""

import datetime as dt

import polars as pl

from kronos_pipeline.defs.signals import signal_problems

DAY = dt.date(2019, 11, 1)
MEMBERS = pl.DataFrame({"date": [DAY] * 3, "ticker": ["A", "B", "C"]})


def _signal(tickers=("A", "B", "C"), ranks=(1, 2, 3), model="lightgbm") -> pl.DataFrame:
    return pl.DataFrame({"date": [DAY] * len(tickers), "model": model, "horizon": 20,
                         "ticker": list(tickers), "rank": list(ranks)})  # fmt: skip


def test_a_complete_signal_passes():
    assert signal_problems(_signal(), MEMBERS) == []


def test_a_non_member_broken_ranks_or_an_unranked_member_fail():
    assert "not members ['Z']" in signal_problems(_signal(("A", "B", "Z")), MEMBERS)[0]
    assert "ranks are not 1..3" in signal_problems(_signal(ranks=(1, 1, 3)), MEMBERS)[0]
    assert "unranked members ['C']" in signal_problems(_signal(("A", "B"), (1, 2)), MEMBERS)[0]
    # a factor may skip a name whose input is missing
    assert signal_problems(_signal(("A", "B"), (1, 2), "factor_low_vol"), MEMBERS) == []

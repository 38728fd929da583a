"""The signal's check compares with the universe members of the date, which the signal did not
produce: a non-member, ranks that are not 1..n, or a member LightGBM left unranked fail it."""

import datetime as dt

import polars as pl

from kronos_pipeline.evaluation.signal import signal_problems

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


def test_a_kronos_derived_row_without_ordered_quantiles_fails():
    signal = _signal(model="kronos_head").with_columns(
        pred_return_q10=pl.Series([-0.02, -0.01, None]),
        pred_return_q50=pl.Series([0.00, 0.00, None]),
        pred_return_q90=pl.Series([0.03, -0.02, None]),
    )
    problems = signal_problems(signal, MEMBERS, kronos_derived={"kronos_head"})
    assert problems == [
        "2019-11-01 kronos_head h20: 2 rows without their forecast quantiles (q10 <= q50 <= q90)"
    ]
    complete = signal.with_columns(
        pred_return_q10=pl.Series([-0.02, -0.01, -0.03]),
        pred_return_q50=pl.Series([0.00, 0.00, 0.01]),
        pred_return_q90=pl.Series([0.03, 0.02, 0.04]),
    )
    assert signal_problems(complete, MEMBERS, kronos_derived={"kronos_head"}) == []
    # a baseline carries no quantiles, and needs none
    assert signal_problems(_signal(), MEMBERS, kronos_derived={"kronos_head"}) == []


def test_a_session_with_members_and_no_score_has_a_reason_a_holiday_has_none(tmp_path):
    """The one-day signal fails when its session has universe members but no model scored
    it (the scoring runs were skipped); a holiday, with no member, is "no session"."""
    from kronos_pipeline.evaluation.signal import no_signal_reason
    from kronos_pipeline.warehouse import Warehouse

    db = Warehouse(tmp_path / "lake")
    db.replace_table("universe", MEMBERS.with_columns(in_universe=pl.lit(True)))
    reason = no_signal_reason(db, DAY, DAY)
    assert reason is not None and "3 universe rows" in reason and str(DAY) in reason
    holiday = dt.date(2019, 11, 28)
    assert no_signal_reason(db, holiday, holiday) is None

import pandas as pd
import pytest

from kronos_pipeline.evaluation.folds import (
    folds_from_frame,
    folds_to_frame,
    make_folds,
    scoring_dates,
    select_folds,
)
from kronos_pipeline.settings import FoldSettings, LabelSettings

from .conftest import nyse_dates


@pytest.fixture(scope="module")
def dates() -> pd.DatetimeIndex:
    return nyse_dates("2009-01-02", "2019-12-31")


def test_default_range_gives_108_monthly_folds(dates):
    fs = FoldSettings()
    folds = make_folds(dates, fs.first_test_month, fs.last_test_month, LabelSettings().horizons)
    assert len(folds) == 108
    assert folds[0].fold_id == "2011-01" and folds[-1].fold_id == "2019-12"
    assert folds[0].test_start == pd.Timestamp("2011-01-03")
    assert folds[-1].test_end == pd.Timestamp("2019-12-31")


def test_purge_is_h_plus_one_trading_days_before_test_start(dates):
    folds = make_folds(dates, "2019-01", "2019-12", (20, 60, 90))
    pos = {d: i for i, d in enumerate(dates)}
    for f in folds:
        for h, end in f.train_end.items():
            assert pos[f.test_start] - pos[end] == h + 1
            # The last training label (close end -> close end+h) matures before the test month.
            assert dates[pos[end] + h] < f.test_start
            assert dates[pos[end] + h + 1] == f.test_start
    # Hand-counted: Dec 2018 has 19 sessions (12-05 Bush funeral and 12-25 closed), so 21 sessions
    # before 2019-01-02 is 2018-11-29; its 20-day label matures on 2018-12-31.
    assert folds[0].train_end[20] == pd.Timestamp("2018-11-29")


def test_expanding_and_rolling_train_start(dates):
    exp = make_folds(dates, "2019-06", "2019-06", (20,))[0]
    assert exp.train_start == dates[0]
    roll = make_folds(dates, "2019-06", "2019-06", (20,), window="rolling", rolling_days=250)[0]
    assert list(dates).index(exp.test_start) - list(dates).index(roll.train_start) == 250


def test_smoke_selects_last_three_folds(dates):
    folds = make_folds(dates, "2011-01", "2019-12", (20,))
    smoke = select_folds(folds, "smoke", FoldSettings().smoke_folds)
    assert [f.fold_id for f in smoke] == ["2019-10", "2019-11", "2019-12"]
    assert len(select_folds(folds, "full", 3)) == 108


def test_scoring_cadence(dates):
    fold = make_folds(dates, "2019-12", "2019-12", (20,))[0]
    assert len(scoring_dates(fold, dates, "daily")) == 21
    assert list(scoring_dates(fold, dates, "monthly")) == [pd.Timestamp("2019-12-02")]
    weekly = scoring_dates(fold, dates, "weekly")
    assert list(weekly) == list(
        pd.to_datetime(["2019-12-02", "2019-12-09", "2019-12-16", "2019-12-23", "2019-12-30"])
    )


def test_frame_round_trip(dates):
    folds = make_folds(dates, "2019-10", "2019-12", (20, 60, 90))
    frame = folds_to_frame(folds)
    assert len(frame) == 9 and set(frame["purge_days"]) == {21, 61, 91}
    assert folds_from_frame(frame) == folds


def test_errors_name_the_problem(dates):
    with pytest.raises(ValueError, match="no trading day"):
        make_folds(dates, "2020-01", "2020-02", (20,))
    with pytest.raises(ValueError, match="history"):
        make_folds(dates, "2009-01", "2009-02", (90,))

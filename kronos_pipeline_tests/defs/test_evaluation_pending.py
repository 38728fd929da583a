"""A deployment's first sessions have scores but no matured label: the nightly chain and
``backfill --folds`` skip the evaluation with the reason, while an explicit evaluation run
still fails on it (a check that has nothing to judge never passes)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pandas as pd
import polars as pl
import pytest

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.evaluation import folds
from kronos_pipeline.warehouse import Warehouse

HORIZONS = (5, 10)
MONTH = "2019-10"


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    """Folds from 2019-10, features through ``last``, a baseline score on every October
    session so far, labels for those that matured by ``last``: ``build(last)``."""
    from kronos_pipeline.settings import get_settings

    monkeypatch.setenv("KRONOS_MODE", "full")
    monkeypatch.setenv("KRONOS_LABELS__HORIZONS", "[5, 10]")
    monkeypatch.setenv("KRONOS_FOLDS__FIRST_TEST_MONTH", MONTH)
    monkeypatch.setenv("KRONOS_WAREHOUSE__DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()

    def build(last: dt.date) -> Warehouse:
        db = Warehouse(tmp_path / "data" / "lake")
        sessions = trading_days("2018-01-02", last)
        table = folds.folds_to_frame(folds.make_folds(sessions, MONTH, None, HORIZONS))
        scored = [d for d in sessions if d >= pd.Timestamp(f"{MONTH}-01")]
        scores = pl.DataFrame({
            "model": "factor_momentum_12_1", "horizon": 5, "ticker": "AAA",
            "date": [d.date() for d in scored], "score": 0.5, "fold": MONTH,
        })  # fmt: skip
        # A label of date d at horizon h exists once the session h after d has its bar.
        position = {d: i for i, d in enumerate(sessions)}
        matured = [d for d in scored if position[d] + 5 < len(sessions)]
        labels = pl.DataFrame({
            "date": [d.date() for d in matured], "ticker": "AAA", "horizon": 5,
            "fwd_return": 0.01, "excess_return": 0.0,
        }, schema_overrides={"date": pl.Date})  # fmt: skip
        with db.transaction() as tx:
            tx.replace_table("folds", pl.from_pandas(table))
            tx.replace_table("features", pl.DataFrame({"date": [d.date() for d in sessions]}))
            tx.replace_table("baseline_scores", scores)
            tx.replace_table("labels_forward", labels)
        return db

    yield build
    get_settings.cache_clear()


def test_nothing_is_pending_once_the_first_label_has_matured(warehouse):
    from kronos_pipeline.defs.evaluation import evaluation_pending

    october = trading_days("2019-10-01", "2019-10-31")
    early = warehouse(october[4].date())  # five sessions scored, none matured at 5 days
    reason = evaluation_pending(early)
    assert reason and "nothing to evaluate yet" in reason and "5-session" in reason
    assert evaluation_pending(warehouse(october[5].date())) is None  # 10-01's label exists


def test_an_evaluation_with_nothing_matured_fails_with_its_reason(warehouse):
    from kronos_pipeline.defs.evaluation import evaluation_tables
    from kronos_pipeline.defs.resources import warehouse_resources

    day = trading_days("2019-10-01", "2019-10-31")[2].date()
    with dg.instance_for_test() as instance:
        db = warehouse(day)
        explicit = dg.materialize(
            [evaluation_tables], instance=instance, raise_on_error=False,
            resources=warehouse_resources(str(db.path)),
        )  # fmt: skip
        assert not explicit.success
        failure = next(e for e in explicit.all_events if e.event_type_value == "STEP_FAILURE")
        assert "nothing to evaluate yet" in str(failure.event_specific_data.error.message)

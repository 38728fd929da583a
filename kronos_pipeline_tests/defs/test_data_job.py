"""The data job through Dagster: a ranged run on the synthetic market, then reruns of a
sub-range, leave identical tables, no duplicate keys, and every check passing; a partition the
source cannot fill, or a run from another source, fails and writes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos_pipeline.definitions import DATA_ASSETS, DATA_CHECKS, SOURCE_ASSETS
from kronos_pipeline.defs.automation import data_job
from kronos_pipeline.defs.resources import warehouse_resources
from kronos_pipeline.settings import get_settings
from kronos_pipeline.warehouse import Warehouse

FULL_RANGE = ("2017-03-01", "2018-05-31")
# Inside the full range, after every name has its 253 bars of history.
RERUN_RANGE = ("2018-04-02", "2018-05-31")
ENV = {
    "KRONOS_DATA__SYNTHETIC_START": FULL_RANGE[0],
    "KRONOS_DATA__SYNTHETIC_END": FULL_RANGE[1],
    "KRONOS_DATA__SYNTHETIC_TICKERS": "40",
    # mom_12_1 needs 253 bars; members with less would fail the factor_coverage check.
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "253",
}
TABLE_KEYS = {
    "raw_bars": ("ticker", "date"),
    "bars_quarantine": ("source_file", "line"),
    "prices_pit": ("ticker", "date"),
    "universe": ("date", "ticker"),
    "features": ("date", "ticker"),
    "labels_forward": ("date", "ticker", "horizon"),
    "ingest_files": ("source_file",),
    "ticker_sectors": ("ticker",),
    "ticker_history": ("ticker",),
    "sector_history": ("ticker", "valid_from"),
    "source_tickers": ("ticker",),
}
# Memorial Day, a weekday partition with no session.
HOLIDAY = ("2018-05-28", "2018-05-28")
# Checks emitted by the data assets themselves (the schema-change checks run as their own steps).
N_ASSET_CHECKS = 20
# The synthetic market plants a line with an unparseable date for S013 on 2017-11-17: the bar
# is quarantined undated, so that session is an isolated gap, reported (not blocking).
PLANTED_GAP = "S013 2017-11-17"


def _snapshot(db: Warehouse) -> dict[str, pl.DataFrame]:
    return {
        table: db.read_table(table).sort(list(keys), nulls_last=True)
        for table, keys in TABLE_KEYS.items()
    }


def _run(
    job: dg.JobDefinition, start: str, end: str, instance: dg.DagsterInstance, ok: bool = True
) -> dg.ExecuteInProcessResult:
    # The weekday partitions of start..end, one run (the CLI's backfill --dates A:B).
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
        },
        raise_on_error=False,
    )
    assert result.success is ok
    return result


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        f"{e.asset_key.to_user_string()}.{e.check_name}": e.passed
        for e in result.get_asset_check_evaluations()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    folder: Path = tmp_path_factory.mktemp("warehouse")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**ENV, "KRONOS_WAREHOUSE__DATA_DIR": str(folder)}.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            db_path = folder / "lake"
            # Resources built here: defs.resources read settings once, at import.
            defs = dg.Definitions(
                assets=SOURCE_ASSETS + DATA_ASSETS,
                asset_checks=DATA_CHECKS,
                jobs=[data_job],
                resources=warehouse_resources(str(db_path)),
            )
            job = defs.resolve_job_def("data_job")
            db = Warehouse(db_path)
            instance = dg.DagsterInstance.ephemeral()
            full = _run(job, *FULL_RANGE, instance)
            after_full = _snapshot(db)
            rerun_1 = _run(job, *RERUN_RANGE, instance)
            after_rerun_1 = _snapshot(db)
            rerun_2 = _run(job, *RERUN_RANGE, instance)
            after_rerun_2 = _snapshot(db)
            holiday = _run(job, *HOLIDAY, instance)
            after_holiday = _snapshot(db)
            # Two sessions after the synthetic market's last day: no vendor day exists.
            late = _run(job, "2018-06-01", "2018-06-04", instance, ok=False)
            after_late = _snapshot(db)
            mp.setenv("KRONOS_DATA__SYNTHETIC_SEED", "8")
            get_settings.cache_clear()
            other = _run(job, *RERUN_RANGE, instance, ok=False)
            after_other = _snapshot(db)
        finally:
            get_settings.cache_clear()
    get_settings.cache_clear()
    yield {
        "full": full,
        "rerun_1": rerun_1,
        "rerun_2": rerun_2,
        "after_full": after_full,
        "after_rerun_1": after_rerun_1,
        "after_rerun_2": after_rerun_2,
        "holiday": holiday,
        "after_holiday": after_holiday,
        "late": late,
        "after_late": after_late,
        "other": other,
        "after_other": after_other,
    }
    get_settings.cache_clear()


def test_data_job_writes_every_data_table(runs):
    tables = runs["after_full"]
    assert tables["raw_bars"]["ticker"].n_unique() == 40
    assert tables["raw_bars"]["date"].min().isoformat() == FULL_RANGE[0]
    assert tables["raw_bars"]["date"].max().isoformat() == FULL_RANGE[1]
    # the five planted synthetic defects, undated ones included
    assert tables["bars_quarantine"].height == 5
    assert tables["prices_pit"].height == tables["raw_bars"].height
    assert tables["universe"]["in_universe"].sum() > 0
    assert sorted(tables["labels_forward"]["horizon"].unique().to_list()) == [20, 60, 90]


def test_rerunning_a_sub_range_twice_leaves_identical_tables(runs):
    for table in TABLE_KEYS:
        assert_frame_equal(
            runs["after_rerun_1"][table], runs["after_full"][table], check_exact=True
        )
        assert_frame_equal(
            runs["after_rerun_2"][table], runs["after_full"][table], check_exact=True
        )


def test_no_table_holds_a_duplicate_key_after_reruns(runs):
    for table, keys in TABLE_KEYS.items():
        frame = runs["after_rerun_2"][table]
        assert frame.height > 0, table
        assert frame.select(keys).is_duplicated().sum() == 0, table


def _failed(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        f"{e.asset_key.to_user_string()}.{e.check_name}": e.description or ""
        for e in result.get_asset_check_evaluations()
        if not e.passed
    }


def test_every_check_passes_on_the_reruns(runs):
    for name in ("rerun_1", "rerun_2"):
        checks = _checks(runs[name])
        # the asset checks plus one schema-change check per data table
        assert len(checks) == N_ASSET_CHECKS + 8
        assert all(checks.values()), _failed(runs[name])


def test_full_range_passes_every_check_but_names_the_planted_gap(runs):
    checks = _checks(runs["full"])
    assert len(checks) == N_ASSET_CHECKS + 8
    # The first 253 sessions have no eligible names by construction (min history 253 bars):
    # the breadth warning counts only dates where some name could qualify.
    failed = _failed(runs["full"])
    assert list(failed) == ["raw_bars.bars_gaps"]
    assert PLANTED_GAP in failed["raw_bars.bars_gaps"]


def test_a_partition_after_the_last_vendor_day_fails_naming_the_missing_bars(runs):
    failed = _failed(runs["late"])
    assert "raw_bars.bars_complete" in failed
    description = failed["raw_bars.bars_complete"]
    assert description.startswith("78 bars expected (sessions x tickers alive): 0 accepted")
    assert "S000 2018-06-01..2018-06-04 (2 sessions)" in description
    step_failures = [e for e in runs["late"].all_events if e.is_step_failure]
    assert "a blocking check failed" in step_failures[0].event_specific_data.error.message
    # Nothing was written: the tables are the clean ones.
    for table in TABLE_KEYS:
        assert_frame_equal(runs["after_late"][table], runs["after_full"][table], check_exact=True)


def test_a_run_from_another_source_refuses_to_write_and_says_how_to_start_anew(runs):
    step_failures = [e for e in runs["other"].all_events if e.is_step_failure]
    message = step_failures[0].event_specific_data.error.message
    assert "was built from the synthetic market seed=7" in message
    assert "this run reads the synthetic market seed=8" in message
    assert "KRONOS_WAREHOUSE__DATA_DIR" in message
    for table in TABLE_KEYS:
        assert_frame_equal(runs["after_other"][table], runs["after_full"][table], check_exact=True)


def test_an_exchange_holiday_materializes_as_no_session_and_its_checks_pass(runs):
    result = runs["holiday"]
    assert all(_checks(result).values()), _checks(result)
    materialized = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
    }
    assert set(materialized) >= {"raw_bars", "prices_pit", "universe", "features", "labels_forward"}
    bars = materialized["raw_bars"]
    assert bars.partition == HOLIDAY[0]
    assert bars.metadata["sessions"].value == 0
    assert bars.metadata["dagster/row_count"].value == 0
    for table, frame in runs["after_holiday"].items():
        assert_frame_equal(frame, runs["after_rerun_2"][table], check_row_order=False)


def test_the_universe_says_which_prices_its_medians_read(runs):
    """A sub-range reads the prices from a few months before its start (the medians are
    exact); the metadata names that day, so the UI shows when a gap made it read all."""
    from kronos_pipeline.features.universe import liquidity_history_start

    def read_from(result):  # one materialization per weekday of the run, the same value
        (value,) = {
            e.step_materialization_data.materialization.metadata["prices_read_from"].value
            for e in result.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "universe"
        }
        return value

    window = get_settings().universe.liquidity_window_days
    start = dt.date.fromisoformat(RERUN_RANGE[0])
    assert read_from(runs["rerun_1"]) == str(liquidity_history_start(start, window))
    assert read_from(runs["full"]) in (
        str(liquidity_history_start(dt.date.fromisoformat(FULL_RANGE[0]), window)),
        "the first bar (whole history)",
    )

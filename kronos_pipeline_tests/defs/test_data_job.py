"""The data job through Dagster: a ranged run on the synthetic market, then reruns of a
sub-range, leave identical tables, no duplicate keys, and every check passing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos_pipeline.definitions import DATA_ASSETS
from kronos_pipeline.defs.automation import data_job
from kronos_pipeline.defs.resources import WarehouseResource
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
}


def _snapshot(db: Warehouse) -> dict[str, pl.DataFrame]:
    return {
        table: db.read_table(table).sort(list(keys), nulls_last=True)
        for table, keys in TABLE_KEYS.items()
    }


def _run(job: dg.JobDefinition, start: str, end: str) -> dg.ExecuteInProcessResult:
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        tags={
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
        },
    )
    assert result.success
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
            db_path = folder / "warehouse.duckdb"
            # Resources built here: defs.resources read settings once, at import.
            defs = dg.Definitions(
                assets=DATA_ASSETS,
                jobs=[data_job],
                resources={"warehouse": WarehouseResource(path=str(db_path), lock_timeout_s=60)},
            )
            job = defs.resolve_job_def("data_job")
            db = Warehouse(db_path)
            full = _run(job, *FULL_RANGE)
            after_full = _snapshot(db)
            rerun_1 = _run(job, *RERUN_RANGE)
            after_rerun_1 = _snapshot(db)
            rerun_2 = _run(job, *RERUN_RANGE)
            after_rerun_2 = _snapshot(db)
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


def test_every_check_passes_on_the_reruns(runs):
    for name in ("rerun_1", "rerun_2"):
        checks = _checks(runs[name])
        assert len(checks) == 12
        assert all(checks.values()), {k: v for k, v in checks.items() if not v}


def test_full_range_passes_every_check_with_warm_up_dates_excluded_from_breadth(runs):
    checks = _checks(runs["full"])
    assert len(checks) == 12
    # The first 253 sessions have no eligible names by construction (min history 253 bars):
    # the breadth warning counts only dates where some name could qualify.
    assert all(checks.values()), {k: v for k, v in checks.items() if not v}

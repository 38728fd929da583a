"""The batched SQLite event log (``dagster_home/dagster.yaml``) records a ranged run exactly as
Dagster's own one-event-at-a-time path does: every partition's materialization, its tags, the
asset's newest materialization and the partitions the UI shows as materialized."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from kronos_pipeline.event_log import BatchedSqliteEventLogStorage
from kronos_pipeline.instance import BOOKKEEPING_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
DAYS = dg.TimeWindowPartitionsDefinition(
    start="2019-01-01", cron_schedule="30 22 * * 1-5", fmt="%Y-%m-%d",
    timezone="America/New_York", end_offset=1,
)  # fmt: skip
RANGE = ("2019-01-01", "2019-12-31")


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def bars() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"window": f"{RANGE[0]}..{RANGE[1]}"})


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[bars])
def prices() -> None:
    return None


DEFS = dg.Definitions(
    assets=[bars, prices], jobs=[dg.define_asset_job("days", partitions_def=DAYS)]
)


def _record(home: Path, monkeypatch: pytest.MonkeyPatch, batch_size: str) -> dict:
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", batch_size)
    monkeypatch.setenv(
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS",
        BOOKKEEPING_ENV["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"],
    )
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, BatchedSqliteEventLogStorage)
        result = DEFS.resolve_job_def("days").execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": RANGE[0],
                  "dagster/asset_partition_range_end": RANGE[1]},
        )  # fmt: skip
        assert result.success
        out = {}
        for key in (dg.AssetKey("bars"), dg.AssetKey("prices")):
            records = instance.fetch_materializations(key, limit=1000).records
            newest = instance.get_latest_materialization_event(key)
            out[key.to_user_string()] = {
                "partitions": sorted(instance.get_materialized_partitions(key)),
                "records": sorted(r.asset_materialization.partition for r in records),
                "windows": {r.asset_materialization.metadata.get("window") for r in records},
                "newest": newest.dagster_event.partition,
                "one_day": len(instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key, asset_partitions=["2019-07-05"]), limit=5
                ).records),
                # Its data version (a hash of the run's own id) is there, one per event.
                "tags": [sorted(t) for t in instance.get_event_tags_for_asset(
                    key, filter_event_id=records[0].storage_id)],
            }  # fmt: skip
    return out


def test_a_ranged_run_is_recorded_alike_in_batches_and_one_by_one(tmp_path, monkeypatch):
    (tmp_path / "batched").mkdir()
    (tmp_path / "single").mkdir()
    batched = _record(
        tmp_path / "batched", monkeypatch, BOOKKEEPING_ENV["DAGSTER_EVENT_BATCH_SIZE"]
    )
    single = _record(tmp_path / "single", monkeypatch, "0")
    assert batched == single
    days = DAYS.get_partition_keys_in_range(dg.PartitionKeyRange(*RANGE))
    assert len(days) == 261  # every weekday of 2019, holidays included
    assert batched["bars"]["partitions"] == sorted(days) == batched["prices"]["records"]
    assert batched["bars"]["newest"] == "2019-12-31" and batched["bars"]["one_day"] == 1
    assert (tmp_path / "batched" / "history" / "runs" / "index.db").is_file()

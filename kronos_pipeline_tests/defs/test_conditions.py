"""The automation conditions, evaluated the way the daemon does (``evaluate_automation_conditions``)
at chosen times on an instance whose events the test writes: what runs at 22:30, what runs
when the vendor folder changes, what does not run again after a failure, and when a fold's
models are fitted."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from kronos_pipeline.definitions import defs

NY = ZoneInfo("America/New_York")
DAY = dt.date(2019, 12, 31)  # a Tuesday session
BARS = ("raw_bars", "bars_quarantine", "ticker_history", "sector_history")
DAILY = ("prices_pit", "universe", "features")


def _at(day: dt.date, hour: int, minute: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY)


def _materialize(instance: dg.DagsterInstance, assets, days) -> None:
    for asset in assets:
        for day in days:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=str(day)))


class Ticks:
    """Successive evaluations of the conditions of ``assets``, each from the last's cursor."""

    def __init__(self, instance: dg.DagsterInstance, assets) -> None:
        self.instance, self.cursor = instance, None
        self.selection = dg.AssetSelection.assets(*assets)

    def __call__(self, when: dt.datetime) -> dict[str, list[str]]:
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=self.instance, asset_selection=self.selection,
            evaluation_time=when, cursor=self.cursor,
        )  # fmt: skip
        self.cursor = result.cursor
        requested = {}
        for r in result.results:
            if r.true_subset.size:
                keys = r.true_subset.get_internal_subset_value()
                requested[r.key.to_user_string()] = (
                    sorted(keys.get_partition_keys()) if hasattr(keys, "get_partition_keys")
                    else [])  # fmt: skip
        return requested


def test_the_sessions_bars_run_when_due_and_again_when_the_vendor_folder_changes():
    recent = [DAY - dt.timedelta(days=d) for d in (1, 4, 5, 6, 7)]  # the week's other weekdays
    with dg.instance_for_test() as instance:
        _materialize(instance, (*BARS, *DAILY), recent)
        tick = Ticks(instance, (*BARS, *DAILY))
        assert tick(_at(DAY, 22, 0)) == {}  # the first evaluation only starts the clock
        assert tick(_at(DAY, 22, 20)) == {}  # not due yet: the day's partition does not exist
        due = tick(_at(DAY, 22, 31))
        assert due == {a: [str(DAY)] for a in (*BARS, *DAILY)}  # the day, in one run
        # The run failed (the file was late): nothing is materialized, nothing is retried...
        assert tick(_at(DAY, 22, 45)) == {}
        assert tick(_at(DAY, 23, 30)) == {}
        # ...until the folder changes: the observation records a new data version.
        instance.report_runless_asset_event(
            dg.AssetObservation("vendor_files", tags={"dagster/data_version": "late-file"})
        )
        again = tick(_at(DAY, 23, 45))
        assert again["raw_bars"] == [str(DAY)] and again["features"] == [str(DAY)]
        _materialize(instance, (*BARS, *DAILY), [DAY])
        assert tick(_at(DAY, 23, 50)) == {}  # done: a materialized day is not rerun


def test_a_late_day_of_the_last_week_runs_when_its_file_lands():
    late = DAY - dt.timedelta(days=1)
    with dg.instance_for_test() as instance:
        _materialize(instance, (*BARS, *DAILY), [DAY - dt.timedelta(days=d) for d in (4, 5, 6, 7)])
        _materialize(instance, (*BARS, *DAILY), [DAY])
        tick = Ticks(instance, BARS)
        assert tick(_at(DAY, 23, 0)) == {}
        assert tick(_at(DAY, 23, 5)) == {}
        instance.report_runless_asset_event(
            dg.AssetObservation("vendor_files", tags={"dagster/data_version": "v2"})
        )
        assert tick(_at(DAY, 23, 10)) == {a: [str(late)] for a in BARS}


def test_a_folds_model_is_fitted_once_when_the_fold_lacks_it():
    models = ("lightgbm_models", "kronos_checkpoint", "kronos_heads")
    with dg.instance_for_test() as instance:
        tick = Ticks(instance, models)
        first = _at(dt.date(2020, 1, 2), 23, 0)
        assert tick(first) == {}
        instance.report_runless_asset_event(dg.AssetMaterialization("folds"))  # Jan 2: new fold
        fitted = tick(first + dt.timedelta(minutes=1))
        assert fitted == {m: ["2020-01"] for m in models}
        _materialize(instance, models, ["2020-01"])
        instance.report_runless_asset_event(dg.AssetMaterialization("folds"))  # Jan 3
        assert tick(first + dt.timedelta(days=1)) == {}  # never refitted by a later session


def test_a_published_days_scores_are_not_rerun_as_its_labels_mature():
    day = DAY - dt.timedelta(days=1)
    inputs = ("features", "universe", "labels_forward")
    with dg.instance_for_test() as instance:
        _materialize(instance, inputs, [day])
        _materialize(instance, ("lightgbm_models",), ["2019-12"])
        _materialize(instance, ("baseline_scores",), [day])
        tick = Ticks(instance, ("baseline_scores",))
        assert tick(_at(DAY, 23, 0)) == {}
        _materialize(instance, ("labels_forward",), [day])  # its 5-day label matured tonight
        assert tick(_at(DAY, 23, 5)) == {}
        _materialize(instance, ("features",), [day])  # a restated input does rescore it
        assert tick(_at(DAY, 23, 10)) == {"baseline_scores": [str(day)]}


def test_the_vendor_folder_is_observed_only_when_it_changed(tmp_path, monkeypatch):
    from kronos_pipeline.defs.conditions import observe_vendor_folder
    from kronos_pipeline.settings import get_settings

    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "DA-AAA-T-1.csv").write_text("timestamp,open\n")
    monkeypatch.setenv("KRONOS_DATA__VENDOR_DIR", str(vendor))
    get_settings.cache_clear()
    try:
        with dg.instance_for_test() as instance:

            def tick(cursor):
                return observe_vendor_folder.evaluate_tick(
                    dg.build_sensor_context(instance=instance, cursor=cursor)
                )

            first = tick(None)
            (event,) = first.asset_events
            assert event.asset_key == dg.AssetKey("vendor_files")
            assert event.tags["dagster/data_version"] == first.cursor
            unchanged = tick(first.cursor)
            assert not unchanged.asset_events and unchanged.skip_message
            (vendor / "DA-BBB-T-1.csv").write_text("timestamp,open\n")  # a delivered file
            second = tick(first.cursor)
            assert second.cursor != first.cursor and len(second.asset_events) == 1
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

"""``kronos-pipeline full`` as backfills that resume (:mod:`kronos_pipeline.full`).

Fast tests drive one stage against a temporary instance, with a stand-in deployment whose
"backfill" materializes the partitions it was asked for at once, as the daemon's runs would:
what a resumed stage asks for, that a stage in flight is followed rather than asked again,
that a finished stage is skipped. The end-to-end test runs the real command on a tiny
synthetic market, kills it during its first backfill, starts it again, and counts every
partition's materializations in the instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.tags import BACKFILL_ID_TAG

from kronos_pipeline import cli, full
from kronos_pipeline.settings import REPO_ROOT

FINGERPRINT = "0123456789abcdef"
DAYS = dg.DailyPartitionsDefinition(start_date="2019-01-01", end_date="2019-01-11")  # 10 days


@dg.asset(partitions_def=DAYS)
def daily() -> None:
    return None


@dg.asset(partitions_def=DAYS, deps=[daily])
def daily_child() -> None:
    return None


ASSETS = {"daily": daily, "daily_child": daily_child}
GRAPH = dg.Definitions(assets=[daily, daily_child]).resolve_asset_graph()
STAGE = full.Stage("data", DAYS, {a: DAYS.get_partition_keys() for a in ASSETS})


def _materialize(instance, asset: str, key: str, tags: dict[str, str]) -> None:
    result = dg.materialize([ASSETS[asset]], partition_key=key, instance=instance, tags=tags)
    assert result.success


def _add_backfill(instance, status: BulkActionStatus, ranges: dict) -> PartitionBackfill:
    """A backfill of the stage's assets in the instance, as the webserver stores one."""
    from dagster._core.definitions.selector import (
        PartitionRangeSelector,
        PartitionsByAssetSelector,
        PartitionsSelector,
    )

    backfill = PartitionBackfill.from_partitions_by_assets(
        backfill_id=f"b{len(instance.get_backfills())}",
        asset_graph=GRAPH,
        backfill_timestamp=time.time(),
        tags={full.FULL_TAG: FINGERPRINT, full.STAGE_TAG: "data"},
        dynamic_partitions_store=instance,
        partitions_by_assets=[
            PartitionsByAssetSelector(
                asset_key=dg.AssetKey(asset),
                partitions=PartitionsSelector(
                    ranges=[PartitionRangeSelector(start=a, end=b) for a, b in pieces]
                ),
            )
            for asset, pieces in ranges.items()
        ],
        title="kronos-pipeline full data",
        description=None,
        run_config=None,
    ).with_status(status)
    instance.add_backfill(backfill)
    return backfill


def _run_backfill(instance, backfill_id: str, ranges: dict) -> None:
    """What the daemon does with a backfill: a run per partition, then the backfill ends."""
    for asset, pieces in ranges.items():
        keys = DAYS.get_partition_keys()
        for first, last in pieces:
            for key in keys[keys.index(first) : keys.index(last) + 1]:
                _materialize(instance, asset, key, {full.FULL_TAG: FINGERPRINT,
                                                    BACKFILL_ID_TAG: backfill_id})  # fmt: skip
    backfill = instance.get_backfill(backfill_id)
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))


class StandInDeployment:
    """Takes a backfill as the webserver does and runs it at once, as the daemon would."""

    owns_daemon = True
    url = "http://127.0.0.1:0"

    def __init__(self, instance):
        self.instance = instance
        self.launched: list[dict] = []

    def launch_backfill(self, ranges, run_config, tags, title) -> str:
        self.launched.append(ranges)
        backfill = _add_backfill(self.instance, BulkActionStatus.REQUESTED, ranges)
        _run_backfill(self.instance, backfill.backfill_id, ranges)
        return backfill.backfill_id

    def raise_if_dead(self) -> None:
        pass


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOS_WAREHOUSE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(full, "POLL_S", 0.1)
    monkeypatch.setattr(cli, "_session", cli.Session())
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def _materializations(instance, asset: str) -> Counter:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    return Counter(r.partition_key for r in records if r.run_id in _fingerprint_runs(instance))


def _fingerprint_runs(instance) -> set[str]:
    return set(instance.get_run_ids(dg.RunsFilter(tags={full.FULL_TAG: FINGERPRINT})))


def test_key_ranges_are_the_fewest_contiguous_runs_of_the_definitions_keys():
    keys = DAYS.get_partition_keys()
    picked = [keys[i] for i in (0, 1, 2, 5, 7, 8, 9)]
    assert full.key_ranges(list(reversed(picked)), keys) == [
        ("2019-01-01", "2019-01-03"), ("2019-01-06", "2019-01-06"), ("2019-01-08", "2019-01-10")
    ]  # fmt: skip
    assert full.key_ranges([], keys) == []


def test_a_canceled_backfill_is_resumed_with_exactly_the_partitions_not_done(instance, capsys):
    keys = DAYS.get_partition_keys()
    done = {full.FULL_TAG: FINGERPRINT}
    for key in keys[:4]:  # what the canceled backfill's runs finished
        _materialize(instance, "daily", key, done)
        _materialize(instance, "daily_child", key, done)
    _materialize(instance, "daily", keys[4], done)  # its child was canceled
    # Other settings, and no settings at all, do not count as done.
    _materialize(instance, "daily", keys[5], {full.FULL_TAG: "other-settings"})
    _materialize(instance, "daily_child", keys[6], {})
    _add_backfill(instance, BulkActionStatus.CANCELED, {a: [(keys[0], keys[-1])] for a in ASSETS})

    deployment = StandInDeployment(instance)
    assert full.run_stage(deployment, STAGE, FINGERPRINT, {}, {}) is True
    assert deployment.launched == [{
        "daily": [("2019-01-06", "2019-01-10")],
        "daily_child": [("2019-01-05", "2019-01-10")],
    }]  # fmt: skip
    # Every partition materialized once with these settings: nothing done was recomputed.
    for asset in ASSETS:
        assert _materializations(instance, asset) == Counter(keys)
    out = capsys.readouterr().out
    assert "-> data: backfill b1 of 6 of 10 partitions (2 assets" in out
    assert "data: 10/10 partitions" in out
    assert "data: backfill b1 COMPLETED_SUCCESS" in out
    assert [r.success for r in cli._session.runs] == [True] * 11  # one line per finished run

    # Started again: the stage is done, so it is skipped and nothing is asked for.
    assert full.run_stage(deployment, STAGE, FINGERPRINT, {}, {}) is False
    assert len(deployment.launched) == 1
    assert "data: all 10 partitions already materialized with these settings" in (
        capsys.readouterr().out
    )


def test_a_backfill_still_in_flight_is_followed_not_asked_for_again(instance, capsys):
    keys = DAYS.get_partition_keys()
    everything = {a: [(keys[0], keys[-1])] for a in ASSETS}
    # A killed command left its backfill requested; the next daemon carries it on.
    in_flight = _add_backfill(instance, BulkActionStatus.REQUESTED, everything)
    assert full.unfinished_backfill(instance, FINGERPRINT, "data").backfill_id == "b0"
    assert full.unfinished_backfill(instance, "other-settings", "data") is None
    assert full.unfinished_backfill(instance, FINGERPRINT, "scores") is None
    daemon = threading.Thread(
        target=_run_backfill, args=(instance, in_flight.backfill_id, everything)
    )
    deployment = StandInDeployment(instance)
    daemon.start()
    try:
        assert full.run_stage(deployment, STAGE, FINGERPRINT, {}, {}) is True
    finally:
        daemon.join()
    assert deployment.launched == []
    assert "-> data: continuing backfill b0 (REQUESTED" in capsys.readouterr().out
    for asset in ASSETS:
        assert _materializations(instance, asset) == Counter(keys)
    assert full.unfinished_backfill(instance, FINGERPRINT, "data") is None


# A tiny synthetic market: 40 names from 2016, three folds (2019-03..2019-05), no Kronos.
TINY_FULL = {
    "KRONOS_DATA__SYNTHETIC_TICKERS": "40",
    "KRONOS_DATA__SYNTHETIC_START": "2016-01-04",
    "KRONOS_DATA__PARTITIONS_START": "2016-01-01",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": "2019-03",
    "KRONOS_FOLDS__LAST_TEST_MONTH": "2019-05",
}


def _dagster_processes(home: Path) -> list[int]:
    """Pids of this user's ``dagster dev`` processes of the instance at ``home``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dev" in cmdline and f"DAGSTER_HOME={home}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGINT)  # dagster dev stops its webserver, daemon and code server
        for _ in range(600):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the left dagster dev in /proc")
def test_full_killed_during_its_first_backfill_goes_on_where_it_stopped(tmp_path, monkeypatch):
    from kronos_pipeline.instance import instance_at

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")},
        **TINY_FULL,
        "DAGSTER_HOME": str(home),
        "KRONOS_WAREHOUSE__DATA_DIR": str(tmp_path / "data"),
        "KRONOS_REPORT__OUTPUT_ROOT": str(tmp_path / "runs"),
        # The deployment's processes import this checkout's package, whatever is installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    command = [sys.executable, "-m", "kronos_pipeline.cli", "full", "--without-kronos"]
    instance = instance_at(home)
    first_out = tmp_path / "first.log"
    try:
        with first_out.open("w") as out:
            first = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 600
        while not any(  # the data backfill's run is under way
            r.status == dg.DagsterRunStatus.STARTED
            for r in instance.get_runs(dg.RunsFilter(tags={full.STAGE_TAG: "data"}))
        ):
            assert first.poll() is None, first_out.read_text()
            assert time.monotonic() < deadline, first_out.read_text()
            time.sleep(0.5)
        time.sleep(3)
        os.killpg(first.pid, signal.SIGKILL)  # the CLI's process group: no cleanup at all
        first.wait()
        killed = [b for b in instance.get_backfills() if b.tags.get(full.STAGE_TAG) == "data"]
        assert [b.status.value for b in killed] == ["REQUESTED"]

        left = _dagster_processes(home)
        assert len(left) == 1  # the killed command's dagster dev goes on with the backfill

        second = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=1200)  # fmt: skip
        out = second.stdout + second.stderr
        assert second.returncode == 0, out
        # ... which the second command used and stopped at its end.
        assert f"the `dagster dev` a killed kronos-pipeline command left (pid {left[0]})" in out
        assert f"stopped the dagster dev a killed command left (pid {left[0]})" in out
        assert _dagster_processes(home) == []
    finally:
        for pid in _dagster_processes(home):
            _stop(pid)
    # The killed command's backfill went on, and nothing was asked for twice.
    assert f"-> data: continuing backfill {killed[0].backfill_id} (REQUESTED" in out
    assert "-> data: backfill" not in out
    backfills = {b.tags[full.STAGE_TAG]: b for b in instance.get_backfills()}
    assert sorted(backfills) == ["data", "models", "scores"]  # one backfill per stage
    assert {b.status.value for b in backfills.values()} == {"COMPLETED_SUCCESS"}
    fingerprint = backfills["data"].tags[full.FULL_TAG]
    # Every partition materialized exactly once, by a run that received the settings.
    sizes = {"data": 0, "models": 0, "scores": 0}
    for run in instance.get_runs(dg.RunsFilter(tags={full.FULL_TAG: fingerprint})):
        assert run.tags["kronos/settings_fingerprint"] == fingerprint, run.run_id
    for asset, stage in (("raw_bars", "data"), ("features", "data"), ("labels_forward", "data"),
                         ("lightgbm_models", "models"), ("baseline_scores", "scores")):  # fmt: skip
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records
        counts = Counter(r.partition_key for r in records)
        assert set(counts.values()) == {1}, (asset, counts.most_common(3))
        sizes[stage] = len(counts)
    assert sizes["models"] == 3 and sizes["scores"] == 66  # 2019-03..2019-05's weekdays
    assert f"data: {sizes['data']}/{sizes['data']} partitions" in out
    assert "scores: 66/66 partitions" in out
    # ... and the evaluation ran once everything was scored.
    [evaluation] = instance.get_runs(dg.RunsFilter(job_name="evaluation_job"))
    assert evaluation.status == dg.DagsterRunStatus.SUCCESS
    assert (tmp_path / "runs" / "latest" / "REPORT_SUMMARY.md").exists()
    instance.dispose()


def test_ctrl_c_cancels_the_backfill_and_exits_130(instance, capsys):
    import _thread

    keys = DAYS.get_partition_keys()
    _add_backfill(instance, BulkActionStatus.REQUESTED, {a: [(keys[0], keys[-1])] for a in ASSETS})
    canceled = []

    class Canceling(StandInDeployment):
        def cancel_backfill(self, backfill_id: str) -> None:  # as the daemon ends it
            canceled.append(backfill_id)
            backfill = self.instance.get_backfill(backfill_id)
            self.instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))

    threading.Timer(1.0, _thread.interrupt_main).start()  # Ctrl-C while it follows b0
    with pytest.raises(SystemExit) as stopped:
        full.run_stage(Canceling(instance), STAGE, FINGERPRINT, {}, {})
    assert stopped.value.code == 130
    assert canceled == ["b0"]
    assert instance.get_backfill("b0").status == BulkActionStatus.CANCELED
    out, err = capsys.readouterr()
    assert "interrupted: canceling backfill b0" in out
    assert "data: backfill b0 canceled; `kronos-pipeline full` again goes on" in err


def test_a_failed_backfill_exits_non_zero_and_the_next_full_asks_for_the_rest(instance, capsys):
    keys = DAYS.get_partition_keys()

    class Failing(StandInDeployment):
        """The daemon's runs: the first six days' succeed, the rest fail."""

        def launch_backfill(self, ranges, run_config, tags, title) -> str:
            self.launched.append(ranges)
            backfill = _add_backfill(self.instance, BulkActionStatus.REQUESTED, ranges)
            _run_backfill(self.instance, backfill.backfill_id,
                          {a: [(keys[0], keys[5])] for a in ranges})  # fmt: skip
            failed = self.instance.get_backfill(backfill.backfill_id)
            self.instance.update_backfill(failed.with_status(BulkActionStatus.COMPLETED_FAILED))
            return backfill.backfill_id

    with pytest.raises(SystemExit) as stopped:
        full.run_stage(Failing(instance), STAGE, FINGERPRINT, {}, {})
    assert "data: backfill b0 ended COMPLETED_FAILED with 4 partitions not materialized" in str(
        stopped.value.code
    )
    deployment = StandInDeployment(instance)
    assert full.run_stage(deployment, STAGE, FINGERPRINT, {}, {}) is True
    assert deployment.launched == [{a: [("2019-01-07", "2019-01-10")] for a in ASSETS}]
    for asset in ASSETS:
        assert _materializations(instance, asset) == Counter(keys)

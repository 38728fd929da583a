"""Pools that fit the work, and a killed writer that blocks nothing.

- Model fitting has its own pool (``model_fitting``), so a fold backfill trains one model
  at a time; the warehouse's writers are in no pool (each day is its own lake partition).
- Concurrency is configuration: the yaml queues runs (``max_concurrent_runs``);
  ``kronos-pipeline instance-setup`` sizes ``model_fitting`` to the machine's devices or CPUs
  (rerunning it changes nothing); ``lightgbm_models`` fits
  with the CPUs of one slot of that pool, not all of the machine's.
- ``dagster_home/dagster.yaml`` turns run monitoring on: a run whose worker was killed with
  SIGKILL is marked failed and its pool slot is freed. The test kills a pooled warehouse
  writer run in the middle of a write transaction, runs the daemon's own monitoring
  iterations on the instance, and reruns: the rerun gets the slot at once and leaves every
  row exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import polars as pl
import pytest
import yaml

from kronos_pipeline import cli, concurrency
from kronos_pipeline.definitions import defs
from kronos_pipeline.instance import instance_at, pool_limit, set_pool_limits
from kronos_pipeline.settings import get_settings
from kronos_pipeline.warehouse import Warehouse

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_YAML = REPO_ROOT / "dagster_home" / "dagster.yaml"


def test_model_fitting_has_its_own_pool_and_the_warehouse_writers_are_in_none():
    graph = defs.resolve_asset_graph()
    pools = {
        k.to_user_string(): set(graph.get(k).pools or ())
        for k in graph.get_all_asset_keys()
        if graph.get(k).is_materializable
    }
    # Fitting and Kronos inference hold the compute pool; the lake's writers need none, so
    # the nightly data job never waits for a training, a forecast or another writer.
    compute = {"kronos_checkpoint", "lightgbm_models", "kronos_forecasts", "kronos_heads"}
    assert {name for name, p in pools.items() if "model_fitting" in p} == compute
    assert all(pools[name] == {"model_fitting"} for name in compute)
    writers = ["raw_bars", "prices_pit", "universe", "features", "labels_forward", "folds"]
    writers += ["baseline_scores", "kronos_scores", "signals", "eval_rows", "gate_verdicts"]
    assert all(pools[name] == set() for name in writers)
    assert all(p == set() for name, p in pools.items() if name not in compute)


@pytest.fixture
def instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    return home


def test_the_instance_has_run_monitoring_and_one_slot_per_pool(instance_home):
    instance = instance_at(instance_home)
    try:
        assert instance.run_monitoring_enabled
        settings = instance.run_monitoring_settings
        assert settings["free_slots_after_run_end_seconds"] > 0
        assert settings["max_resume_run_attempts"] == 0  # the default launcher cannot resume
        instance.event_log_storage.initialize_concurrency_limit_to_default("model_fitting")
        assert instance.event_log_storage.get_concurrency_info("model_fitting").slot_count == 1
    finally:
        instance.dispose()


def test_the_instance_queues_runs_up_to_the_configured_max_concurrent_runs(instance_home):
    configured = yaml.safe_load(INSTANCE_YAML.read_text())["concurrency"]["runs"]
    assert configured["max_concurrent_runs"] == 4
    instance = instance_at(instance_home)
    try:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        # What the queue daemon reads (`concurrency: runs` over the coordinator's own config).
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
    finally:
        instance.dispose()


def _limits(home: Path) -> dict[str, tuple[int, int]]:
    """pool -> (limit, slot rows) as a fresh instance reads them."""
    instance = instance_at(home)
    try:
        info = instance.event_log_storage.get_concurrency_info("model_fitting")
        return {"model_fitting": (info.limit, info.slot_count)}
    finally:
        instance.dispose()


@pytest.mark.parametrize(
    ("cpus", "devices", "slots"),
    [(8, 0, 4), (2, 0, 1), (3, 0, 1), (16, 2, 2)],
    ids=["8-cpus", "2-cpus", "3-cpus", "2-gpus"],
)
def test_instance_setup_sizes_model_fitting_to_the_machine_and_a_rerun_changes_nothing(
    instance_home, monkeypatch, capsys, cpus, devices, slots
):
    monkeypatch.setenv("DAGSTER_HOME", str(instance_home))
    monkeypatch.delenv("KRONOS_LIGHTGBM__THREADS_PER_FIT", raising=False)  # default: 2
    monkeypatch.setattr(concurrency, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(concurrency, "cuda_devices", lambda: devices)
    for _ in range(2):
        cli.main(["instance-setup"])
        assert _limits(instance_home) == {"model_fitting": (slots, slots)}
    assert capsys.readouterr().out.splitlines()[-1:] == [f"pool model_fitting: {slots} slot(s)"]


def test_set_pool_limits_replaces_a_limit_and_setting_it_again_is_idempotent(instance_home):
    instance = instance_at(instance_home)
    try:
        assert pool_limit(instance, "model_fitting") == 1  # the yaml's default_limit
        assert set_pool_limits(instance, 3) == {"model_fitting": 3}
        assert set_pool_limits(instance, 3) == {"model_fitting": 3}
        assert set_pool_limits(instance, 2) == {"model_fitting": 2}
        with pytest.raises(ValueError, match="must be >= 1, got 0"):
            set_pool_limits(instance, 0)
    finally:
        instance.dispose()
    assert _limits(instance_home) == {"model_fitting": (2, 2)}


@pytest.mark.parametrize(
    ("pool_slots", "num_threads", "threads"),
    [(4, None, 2), (1, None, 8), (3, None, 2), (4, "3", 3)],
    ids=["4-slots", "1-slot", "3-slots", "num_threads-set"],
)
def test_lightgbm_models_fits_with_the_cpus_of_one_model_fitting_slot(
    instance_home, monkeypatch, pool_slots, num_threads, threads
):
    """The asset runs on an instance whose model_fitting pool has ``pool_slots`` slots, in a
    process whose affinity mask holds 8 CPUs; everything but the thread count is stubbed
    (the fit itself is LightGBM's, tested in evaluation/test_baselines.py)."""
    from kronos_pipeline.defs import evaluation
    from kronos_pipeline.defs.resources import SettingsResource, WarehouseResource

    if num_threads is None:
        monkeypatch.delenv("KRONOS_LIGHTGBM__NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("KRONOS_LIGHTGBM__NUM_THREADS", num_threads)
    get_settings.cache_clear()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    month = get_settings().folds.first_test_month
    cut = pd.Timestamp(f"{month}-01")
    fold = SimpleNamespace(fold_id=month, cut=cut, test_start=cut, train_start=cut,
                           train_end={h: cut for h in get_settings().labels.horizons})  # fmt: skip
    fitted_with: list[int] = []

    def fit_fold_models(*args, num_threads, **kwargs):
        fitted_with.append(num_threads)
        return []

    empty = SimpleNamespace(read=lambda *a, **k: pl.DataFrame())
    monkeypatch.setattr(WarehouseResource, "get", lambda self: empty)
    monkeypatch.setattr(evaluation, "get_fold", lambda db, fold_id: fold)
    monkeypatch.setattr(evaluation, "_control_plan", lambda *a, **k: SimpleNamespace(
        shuffled_labels=False, future_labels=None))  # fmt: skip
    monkeypatch.setattr(evaluation.baselines, "fit_fold_models", fit_fold_models)
    monkeypatch.setattr(evaluation.model_store, "write_models", lambda *a, **k: None)
    monkeypatch.setattr(evaluation.model_store, "load_models", lambda *a, **k: [])

    instance = instance_at(instance_home)
    try:
        set_pool_limits(instance, pool_slots)
        context = dg.build_asset_context(partition_key=month, instance=instance)
        warehouse = WarehouseResource(
            path=str(instance_home / "unused_lake"), settings=SettingsResource()
        )
        results = list(evaluation.lightgbm_models_asset(context, warehouse=warehouse))
    finally:
        instance.dispose()
        get_settings.cache_clear()
    assert fitted_with == [threads]
    (materialization,) = [r for r in results if isinstance(r, dg.MaterializeResult)]
    assert materialization.metadata["lightgbm_threads"] == threads


# A warehouse writer as a Dagster asset in a pool: it rewrites WINDOWS windows of five days.
# With HANG set it stops in the middle of the last window's transaction (half of the window
# staged, nothing published, the pool slot held) and waits to be killed.
WRITER_JOB = textwrap.dedent(
    """
    import datetime as dt, os, sys, time
    import dagster as dg
    import polars as pl
    from kronos_pipeline.warehouse import Warehouse

    DB, WINDOWS, HANG = sys.argv[1], int(sys.argv[2]), os.environ.get("HANG")

    def window(w):
        start = dt.date(2020, 1, 1) + dt.timedelta(days=5 * w)
        frame = pl.DataFrame({
            "date": [start + dt.timedelta(days=d) for d in range(5) for _ in range(3)],
            "ticker": ["A", "B", "C"] * 5,
            "value": [float(w)] * 15,
        })
        return frame, start, start + dt.timedelta(days=4)

    @dg.asset(pool="model_fitting")
    def writer() -> None:
        db = Warehouse(DB)
        for w in range(WINDOWS):
            frame, start, end = window(w)
            if HANG and w == WINDOWS - 1:
                with db.transaction() as tx:
                    tx.replace_window("t", frame.head(7), start, end)
                    open(HANG, "w").write(str(os.getpid()))
                    time.sleep(300)  # killed here
            db.replace_window("t", frame, start, end)

    started = time.monotonic()
    result = dg.materialize(
        [writer], instance=dg.DagsterInstance.get(), tags={"dagster/max_runtime": "1"}
    )
    print(result.run_id, result.success, round(time.monotonic() - started, 2))
    """
)
WINDOWS = 6


def _writer(home: Path, db: Path, hang: Path | None) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    if hang is not None:
        env["HANG"] = str(hang)
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_JOB, str(db), str(WINDOWS)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _daemon_monitoring_pass(instance: dg.DagsterInstance, monkeypatch) -> None:
    """What the daemon of `dagster dev` does on its next ticks: run monitoring marks the dead
    run failed, then the concurrency pass frees the slots it still holds (its delay skipped)."""
    from dagster._daemon.monitoring import concurrency, run_monitoring

    context = SimpleNamespace(instance=instance, create_request_context=lambda: None)
    logger = logging.getLogger("test_pools")
    # The run's 1 s max runtime is counted from its start as the instance recorded it: tick
    # again, as the daemon would, until monitoring has seen it run past (bounded).
    deadline = time.monotonic() + 60
    while True:
        list(run_monitoring.execute_run_monitoring_iteration(context, logger))
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        if not runs or time.monotonic() > deadline:
            break
        time.sleep(1)
    delay = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]
    later = concurrency.get_current_datetime() + dt.timedelta(seconds=delay + 1)
    monkeypatch.setattr(concurrency, "get_current_datetime", lambda: later)
    list(concurrency.execute_concurrency_slots_iteration(context, logger))


def test_a_sigkilled_writer_run_frees_its_slot_and_the_rerun_writes_every_row_once(
    instance_home, tmp_path, monkeypatch
):
    db_path, marker = tmp_path / "lake", tmp_path / "hanging"
    killed = _writer(instance_home, db_path, marker)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the writer never reached its last window"
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)

    instance = instance_at(instance_home)
    try:
        (record,) = instance.get_run_records()
        run_id = record.dagster_run.run_id
        assert record.dagster_run.status == dg.DagsterRunStatus.STARTED  # nobody reported
        claimed = instance.event_log_storage.get_concurrency_info("model_fitting")
        assert [c.run_id for c in claimed.claimed_slots] == [run_id]

        _daemon_monitoring_pass(instance, monkeypatch)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        freed = instance.event_log_storage.get_concurrency_info("model_fitting")
        assert freed.claimed_slots == [] and freed.pending_steps == []
    finally:
        instance.dispose()

    # The half-written window was never published: the lake holds the first windows only.
    assert Warehouse(db_path).read_table("t").height == (WINDOWS - 1) * 15

    rerun = _writer(instance_home, db_path, None)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err[-3000:]
    rerun_id, success, seconds = out.split()[-3:]
    assert success == "True", err[-3000:]
    assert rerun_id != run_id
    # The slot did not hold it: a held slot blocks the run past communicate's timeout.
    # (No wall-clock bound here: on a loaded machine the run itself can take longer.)
    assert float(seconds) < 120

    table = Warehouse(db_path).read_table("t")
    assert table.height == WINDOWS * 15
    assert table.select("date", "ticker").is_duplicated().sum() == 0
    per_window = table.group_by("value").len().sort("value")
    assert per_window.rows() == [(float(w), 15) for w in range(WINDOWS)]
    assert table.filter(pl.col("value") == WINDOWS - 1)["date"].min() == dt.date(
        2020, 1, 1
    ) + dt.timedelta(days=5 * (WINDOWS - 1))

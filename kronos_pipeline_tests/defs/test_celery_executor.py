"""A fold's steps on a real Celery cluster (``dagster-celery``), chosen by run config alone.

A Redis broker and two workers run on 127.0.0.1 (``celery_cluster``), started and stopped by
the test. The runs are started as an operator starts them, ``dagster job execute`` on the code
location with ``deploy/celery_run.yaml``, on a SQLite instance in a temporary DAGSTER_HOME (the
shipped ``dagster.yaml``; its pools sized for two fits) that the workers share: the fold's
``models_job`` (LightGBM and the Kronos checkpoint, two steps ready at once), then its
``baseline_scores_job`` over the fold's weekdays. Every step executes in a worker's process,
the two model fits on two different workers at the same time, and the warehouse ends equal,
table by table, to an in-process run of the same partitions on a copy of the same data.

Runtime: ~95 s of CPU (five imports of the code location: the test, two workers, two run
processes; a tiny Kronos fit); 3 min wall on a shared 2-core machine at load 7.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from kronos_pipeline.settings import REPO_ROOT
from kronos_pipeline_tests.celery_cluster import CeleryCluster, celery_cluster

RUN_YAML = REPO_ROOT / "deploy" / "celery_run.yaml"
SQLITE_YAML = REPO_ROOT / "dagster_home" / "dagster.yaml"
FULL_RANGE = ("2017-03-01", "2018-05-31")
FOLD = "2018-05"
WORKERS = ("w1", "w2")
ENV = {
    "KRONOS_DATA__SYNTHETIC_START": FULL_RANGE[0],
    "KRONOS_DATA__SYNTHETIC_END": FULL_RANGE[1],
    "KRONOS_DATA__SYNTHETIC_TICKERS": "16",
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "60",
    "KRONOS_LABELS__HORIZONS": "[5, 10]",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": FOLD,
    "KRONOS_FOLDS__LAST_TEST_MONTH": FOLD,
    "KRONOS_LIGHTGBM__NUM_BOOST_ROUND": "30",
    "KRONOS_LIGHTGBM__MIN_DATA_IN_LEAF": "20",
    "KRONOS_LIGHTGBM__NUM_THREADS": "1",
    "KRONOS_KRONOS__DEVICE": "cpu",
    "KRONOS_KRONOS__LOOKBACK": "40",
    "KRONOS_KRONOS__TRAIN_TICKERS": "8",
    "KRONOS_KRONOS__TRAIN_MAX_MINUTES": "0.05",
    "KRONOS_KRONOS__TRAIN_EPOCHS": "1",
    "KRONOS_KRONOS__TRAIN_WINDOWS_PER_EPOCH": "32",
    "KRONOS_KRONOS__TRAIN_BATCH_SIZE": "16",
    "KRONOS_KRONOS__TRAIN_HORIZON": "10",
    # The Dagster switches README "Deployment" exports for every process that executes runs.
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
}
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def _build_data(data_dir: Path) -> None:
    """The data and the folds, in this process (the runs under test start from them)."""
    from kronos_pipeline.definitions import DATA_ASSETS
    from kronos_pipeline.defs.automation import data_job
    from kronos_pipeline.defs.evaluation import folds_asset
    from kronos_pipeline.defs.resources import warehouse_resources

    resources = warehouse_resources(str(data_dir / "lake"))
    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(assets=DATA_ASSETS, jobs=[data_job], resources=resources)
    data = defs.resolve_job_def("data_job").execute_in_process(
        instance=instance, tags=dict(zip(RANGE_TAGS, FULL_RANGE, strict=True))
    )
    assert data.success
    assert dg.materialize([folds_asset], resources=resources, instance=instance).success


def _run_in_process(data_dir: Path) -> None:
    """The fold's LightGBM fit and baseline scores of its weekdays, in this process."""
    from kronos_pipeline.defs.evaluation import baseline_scores_asset, lightgbm_models_asset
    from kronos_pipeline.defs.resources import warehouse_resources
    from kronos_pipeline_tests.fold_runs import materialize_fold

    resources = warehouse_resources(str(data_dir / "lake"))
    run = materialize_fold(
        [lightgbm_models_asset, baseline_scores_asset], FOLD, resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert run.success


@dataclass
class DagsterExecute:
    """``dagster job execute`` of the code location's ``job`` with ``deploy/celery_run.yaml``,
    started in its own process (it orchestrates; its steps go to the broker); its output goes
    to ``log``."""

    process: subprocess.Popen
    log: Path
    started: float

    def wait(self) -> float:
        """Seconds the run took; fails the test with its output when it failed."""
        self.process.wait(timeout=600)
        assert self.process.returncode == 0, self.log.read_text()[-5000:]
        return time.perf_counter() - self.started


def _dagster_execute(job: str, tags: dict, env: dict, log: Path, *selection: str) -> DagsterExecute:
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "kronos_pipeline.definitions",
               "-a", "defs", "-j", job, "-c", str(RUN_YAML), "--tags", json.dumps(tags)]  # fmt: skip
    if selection:
        command += ["-o", ",".join(selection)]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    return DagsterExecute(process, log, time.perf_counter())


def _tables(data_dir: Path) -> dict:
    from kronos_pipeline.warehouse import Warehouse

    db = Warehouse(data_dir / "lake")
    frames = {name: db.read(f"select * from {name}") for name in db.tables()}
    return {name: f.sort(f.columns, nulls_last=True) for name, f in frames.items()}


@pytest.fixture(scope="module")
def fold_on_celery(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from kronos_pipeline.defs.partitions import weekdays_of
    from kronos_pipeline.instance import instance_at, set_pool_limits
    from kronos_pipeline.settings import get_settings

    folder = tmp_path_factory.mktemp("celery_fold")
    home, on_celery, in_process = folder / "dagster_home", folder / "celery", folder / "in_process"
    home.mkdir()
    shutil.copy(SQLITE_YAML, home / "dagster.yaml")
    # Created before the workers open it (concurrent first opens race on SQLite's schema).
    with instance_at(home) as instance:
        set_pool_limits(instance, 2)  # instance-setup for two fits at once
    env = {**ENV, "DAGSTER_HOME": str(home), "KRONOS_WAREHOUSE__DATA_DIR": str(on_celery)}
    out: dict = {"test_pid": os.getpid()}
    runs: list[DagsterExecute] = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**env, "KRONOS_WAREHOUSE__DATA_DIR": str(in_process)}.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            with celery_cluster(WORKERS, env) as cluster:
                # While the workers import the code location: the data, copied for both sides.
                _build_data(in_process)
                shutil.copytree(in_process, on_celery)
                cluster.wait_until_ready()
                run_env = {**os.environ, **env, **cluster.env(), "PYTHONPATH": str(REPO_ROOT)}
                runs.append(_dagster_execute(
                    "models_job", {"dagster/partition": FOLD}, run_env, folder / "models.log",
                    "lightgbm_models", "kronos_checkpoint",
                ))  # fmt: skip
                _run_in_process(in_process)  # meanwhile, the same partitions in this process
                out["models_s"] = runs[-1].wait()
                window = dict(zip(RANGE_TAGS, weekdays_of(FOLD), strict=True))
                runs.append(_dagster_execute(
                    "baseline_scores_job", window, run_env, folder / "scores.log"
                ))  # fmt: skip
                out["scores_s"] = runs[-1].wait()
                with instance_at(home) as instance:
                    out["runs"] = _run_facts(instance, cluster)
            out["cluster"] = cluster
        finally:
            for run in runs:  # a run process left by a failure: it would wait on the broker
                if run.process.poll() is None:
                    run.process.kill()
                    run.process.wait()
            get_settings.cache_clear()
    out["celery_tables"], out["in_process_tables"] = _tables(on_celery), _tables(in_process)
    return out


def _run_facts(instance: dg.DagsterInstance, cluster: CeleryCluster) -> dict[str, dict]:
    """Per job: status, the run process's pid, and per step the pid it executed in, the worker
    that owns that pid (while the workers are alive), the Celery node that reported it, and
    when it started and ended."""
    facts = {}
    for record in instance.get_run_records():
        run = record.dagster_run
        logs = instance.all_logs(run.run_id)
        steps: dict[str, dict] = {}
        run_pid = None
        for entry in logs:
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.RUN_START:
                run_pid = event.pid
            if event.step_key is None:
                continue
            step = steps.setdefault(event.step_key, {})
            if event.event_type == dg.DagsterEventType.STEP_START:
                owners = [w.name for w in cluster.workers if w.owns(event.pid)]
                step.update(pid=event.pid, owner=owners, start=entry.timestamp)
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                step["end"] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.ENGINE_EVENT:
                node = event.engine_event_data.metadata.get("Celery worker")
                if node is not None:
                    step["node"] = node.value
        facts[run.job_name] = {"status": run.status, "pid": run_pid, "steps": steps}
    return facts


def test_both_runs_succeed_with_the_celery_executor(fold_on_celery):
    runs = fold_on_celery["runs"]
    assert {job: r["status"] for job, r in runs.items()} == {
        "models_job": dg.DagsterRunStatus.SUCCESS,
        "baseline_scores_job": dg.DagsterRunStatus.SUCCESS,
    }
    assert set(runs["models_job"]["steps"]) == {"lightgbm_models", "kronos_checkpoint"}
    assert set(runs["baseline_scores_job"]["steps"]) == {"baseline_scores"}
    print(f"celery: models_job {fold_on_celery['models_s']:.1f}s, "
          f"baseline_scores_job {fold_on_celery['scores_s']:.1f}s")  # fmt: skip


def test_every_step_executes_in_a_worker_process_not_the_run_or_the_test(fold_on_celery):
    for job, run in fold_on_celery["runs"].items():
        assert run["pid"] not in (None, fold_on_celery["test_pid"])
        for key, step in run["steps"].items():
            assert step["pid"] not in (run["pid"], fold_on_celery["test_pid"]), (job, key)
            # The step's process is one of a worker's, and that worker's node reported it.
            assert len(step["owner"]) == 1, (job, key, step)
            assert step["node"].split("@")[0] == step["owner"][0], (job, key, step)


def test_the_two_model_fits_run_on_two_workers_at_the_same_time(fold_on_celery):
    steps = fold_on_celery["runs"]["models_job"]["steps"]
    lightgbm, kronos = steps["lightgbm_models"], steps["kronos_checkpoint"]
    assert {lightgbm["owner"][0], kronos["owner"][0]} == set(WORKERS)
    assert lightgbm["start"] < kronos["end"] and kronos["start"] < lightgbm["end"]


def test_the_broker_and_every_worker_process_are_stopped_after_the_runs(fold_on_celery):
    assert fold_on_celery["cluster"].stopped()


def test_the_warehouse_equals_an_in_process_run_of_the_same_partitions(fold_on_celery):
    celery, in_process = fold_on_celery["celery_tables"], fold_on_celery["in_process_tables"]
    assert sorted(celery) == sorted(in_process)
    assert celery["baseline_scores"].height > 0
    assert set(celery["baseline_scores"]["date"].dt.strftime("%Y-%m").unique()) == {FOLD}
    for name in in_process:
        assert celery[name].equals(in_process[name]), name

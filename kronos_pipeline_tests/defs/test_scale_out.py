"""Scale-out, proven on one machine with the real components (issue 21 item 5).

PostgreSQL holds the instance (a throwaway server, ``postgres_server``); ``dagster-daemon`` and
``dagster-webserver`` run as two separate processes over it; a Redis broker and two
``dagster-celery`` workers execute the steps (``celery_cluster``). A six-fold backfill of
``lightgbm_models`` (one run per fold) and ``baseline_scores`` (the folds' weekdays, a run per
23 days) is launched the way the UI's Materialize dialog launches one (GraphQL
``launchPartitionBackfill``, with ``deploy/celery_run.yaml``'s executor as its run config),
while the instance allows three runs at once. The warehouse is the lake of Parquet partitions
(no warehouse lock, no writer pool).

Asserted: the backfill completes; every run succeeds; at least two runs were executing at the
same time (from their RUN_START / RUN_SUCCESS event timestamps), never more than three; every
step ran on a Celery worker; no run's log mentions a lock; and every table equals, row for
row, a serial in-process run of the same folds on a copy of the same data.

Runtime: about 5 min on a shared 2-core machine (the code location imported by the test, the
daemon, the webserver, two workers and a dozen run workers; six small LightGBM fits).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from kronos_pipeline.settings import REPO_ROOT
from kronos_pipeline_tests.celery_cluster import celery_cluster
from kronos_pipeline_tests.postgres_server import postgres_server

POSTGRES_YAML = REPO_ROOT / "dagster_home" / "dagster.postgres.yaml"
WORKSPACE = REPO_ROOT / "workspace.yaml"
FOLDS = ("2018-01", "2018-06")
MAX_RUNS = 3
WORKERS = ("w1", "w2")
ENV = {
    "KRONOS_DATA__SYNTHETIC_START": "2017-01-02",
    "KRONOS_DATA__SYNTHETIC_END": "2018-06-29",
    "KRONOS_DATA__SYNTHETIC_TICKERS": "16",
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "60",
    "KRONOS_LABELS__HORIZONS": "[5, 10]",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": FOLDS[0],
    "KRONOS_FOLDS__LAST_TEST_MONTH": FOLDS[1],
    "KRONOS_LIGHTGBM__NUM_BOOST_ROUND": "30",
    "KRONOS_LIGHTGBM__MIN_DATA_IN_LEAF": "20",
    "KRONOS_LIGHTGBM__NUM_THREADS": "1",
    "KRONOS_KRONOS__ENABLED": "false",
    # The Dagster switches README "Deployment" exports for every process that executes runs.
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
}
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
LOCK_WORDS = ("could not set lock", "lock on", "locktimeout", "database is locked")


def _build_data(data_dir: Path) -> None:
    """The data over the whole synthetic range and the folds, in this process."""
    from kronos_pipeline.definitions import DATA_ASSETS
    from kronos_pipeline.defs.automation import data_job
    from kronos_pipeline.defs.evaluation import folds_asset
    from kronos_pipeline.defs.resources import warehouse_resources

    resources = warehouse_resources(str(data_dir / "lake"))
    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(assets=DATA_ASSETS, jobs=[data_job], resources=resources)
    span = (ENV["KRONOS_DATA__SYNTHETIC_START"], ENV["KRONOS_DATA__SYNTHETIC_END"])
    data = defs.resolve_job_def("data_job").execute_in_process(
        instance=instance, tags=dict(zip(RANGE_TAGS, span, strict=True))
    )
    assert data.success
    assert dg.materialize([folds_asset], resources=resources, instance=instance).success


def _fold_keys() -> list[str]:
    import pandas as pd

    return [str(p) for p in pd.period_range(FOLDS[0], FOLDS[1], freq="M")]


def _run_serially(data_dir: Path) -> float:
    """Each fold's LightGBM fit and its weekdays' baseline scores, one fold after the other, in
    this process; returns the seconds it took."""
    from kronos_pipeline.defs.evaluation import baseline_scores_asset, lightgbm_models_asset
    from kronos_pipeline.defs.resources import warehouse_resources
    from kronos_pipeline_tests.fold_runs import materialize_fold

    resources = warehouse_resources(str(data_dir / "lake"))
    started = time.perf_counter()
    for fold in _fold_keys():
        run = materialize_fold(
            [lightgbm_models_asset, baseline_scores_asset], fold, resources=resources,
            instance=dg.DagsterInstance.ephemeral(),
        )  # fmt: skip
        assert run.success, fold
    return time.perf_counter() - started


def _tables(data_dir: Path) -> dict:
    from kronos_pipeline.warehouse import Warehouse

    db = Warehouse(data_dir / "lake")
    frames = {name: db.read(f"select * from {name}") for name in db.tables()}
    return {name: f.sort(f.columns, nulls_last=True) for name, f in frames.items()}


def _home(folder: Path, max_runs: int) -> Path:
    """A DAGSTER_HOME with the shipped Postgres ``dagster.yaml``, ``max_runs`` runs at once."""
    home = folder / "dagster_home"
    home.mkdir()
    text = POSTGRES_YAML.read_text()
    assert "max_concurrent_runs: 4" in text
    (home / "dagster.yaml").write_text(
        text.replace("max_concurrent_runs: 4", f"max_concurrent_runs: {max_runs}")
    )
    return home


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``command``'s console script of this environment, in its own process group."""
    script = str(Path(sys.executable).parent / command[0])
    with log.open("w") as out:
        return subprocess.Popen(
            [script, *command[1:]], env=env, cwd=REPO_ROOT, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    from kronos_pipeline_tests.defs.test_alerts_daemon import stop_group

    if process.poll() is None:
        stop_group(process)


def _wait_for_daemon(instance: dg.DagsterInstance, daemon: subprocess.Popen, log: Path) -> None:
    from kronos_pipeline.deployment import daemon_alive

    deadline = time.monotonic() + 300
    while not daemon_alive(instance):
        assert daemon.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no daemon heartbeat: {log.read_text()[-4000:]}"
        time.sleep(2)


def _wait_for_backfill(instance: dg.DagsterInstance, backfill_id: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        backfill = instance.get_backfill(backfill_id)
        if backfill.status.value != "REQUESTED":
            runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            if all(r.dagster_run.is_finished for r in runs):
                return backfill
        assert time.monotonic() < deadline, f"backfill {backfill_id}: {backfill.status}"
        time.sleep(3)


def _run_windows(instance: dg.DagsterInstance, backfill_id: str) -> list[dict]:
    """Per run of the backfill: its status, its partition tags, when it started and ended (event
    timestamps), the Celery nodes its steps ran on, and the log lines that mention a lock."""
    out = []
    for record in instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id})):
        run = record.dagster_run
        window: dict = {"status": run.status, "tags": run.tags, "nodes": set(), "locks": []}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            text = (entry.user_message or "").lower()
            if any(word in text for word in LOCK_WORDS):
                window["locks"].append(entry.user_message)
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.RUN_START:
                window["start"] = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.RUN_SUCCESS,
                                      dg.DagsterEventType.RUN_FAILURE):  # fmt: skip
                window["end"] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.ENGINE_EVENT:
                node = event.engine_event_data.metadata.get("Celery worker")
                if node is not None:
                    window["nodes"].add(node.value)
        out.append(window)
    return out


def most_at_once(windows: list[dict]) -> int:
    """The largest number of runs executing at one instant (start inclusive, end exclusive)."""
    edges = sorted([(w["start"], 1) for w in windows] + [(w["end"], -1) for w in windows])
    running = best = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


@pytest.fixture(scope="module")
def backfill_on_postgres(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return concurrent_and_serial(tmp_path_factory.mktemp("scale_out"))


def concurrent_and_serial(folder: Path, max_runs: int = MAX_RUNS, serial_too: bool = True) -> dict:
    """The six-fold backfill on the Postgres deployment with the Celery executor, ``max_runs``
    runs at once, then (``serial_too``) the same folds serially in this process, on two copies
    of one warehouse under ``folder``: the backfill, its runs' windows, the wall times and the
    warehouses' tables (``bench/scale_out.py`` prints them as a table)."""
    from kronos_pipeline.defs.partitions import weekdays_of
    from kronos_pipeline.deployment import Deployment
    from kronos_pipeline.instance import instance_at, set_pool_limits
    from kronos_pipeline.settings import get_settings

    concurrent, serial = folder / "concurrent", folder / "serial"
    out: dict = {}
    processes: list[subprocess.Popen] = []
    with pytest.MonkeyPatch.context() as mp, postgres_server() as pg:
        home = _home(folder, max_runs)
        env = {**ENV, **pg.env(), "DAGSTER_HOME": str(home),
               "KRONOS_WAREHOUSE__DATA_DIR": str(concurrent)}  # fmt: skip
        for key, value in {**env, "KRONOS_WAREHOUSE__DATA_DIR": str(serial)}.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            with celery_cluster(WORKERS, env) as cluster:
                _build_data(serial)  # while the workers import the code location
                shutil.copytree(serial, concurrent)
                cluster.wait_until_ready()
                run_env = {**os.environ, **env, **cluster.env(), "PYTHONPATH": str(REPO_ROOT)}
                with instance_at(home) as instance:
                    set_pool_limits(instance, len(WORKERS))
                    daemon = _start(["dagster-daemon", "run", "-w", str(WORKSPACE)], run_env,
                                    folder / "daemon.log")  # fmt: skip
                    processes.append(daemon)
                    _wait_for_daemon(instance, daemon, folder / "daemon.log")
                    mp.setenv("CELERY_BROKER_URL", cluster.env()["CELERY_BROKER_URL"])
                    mp.setenv("CELERY_RESULT_BACKEND", cluster.env()["CELERY_RESULT_BACKEND"])
                    mp.setenv("KRONOS_WAREHOUSE__DATA_DIR", str(concurrent))
                    # The webserver, separate from the daemon (a live daemon: webserver only).
                    web = Deployment.start(instance, WORKSPACE, folder / "webserver.log",
                                           with_daemon=False)  # fmt: skip
                    processes.append(web.process)
                    days = (weekdays_of(FOLDS[0])[0], weekdays_of(FOLDS[1])[1])
                    run_config = {"execution": {"config": {"celery": {
                        "broker": cluster.env()["CELERY_BROKER_URL"],
                        "backend": cluster.env()["CELERY_RESULT_BACKEND"]}}}}  # fmt: skip
                    started = time.perf_counter()
                    backfill_id = web.launch_backfill(
                        {"lightgbm_models": [FOLDS], "baseline_scores": [days]},
                        run_config, {"kronos/test": "scale_out"}, "six folds, three at once",
                    )  # fmt: skip
                    out["backfill"] = _wait_for_backfill(instance, backfill_id, 1500)
                    out["concurrent_s"] = time.perf_counter() - started
                    out["runs"] = _run_windows(instance, backfill_id)
                    web.stop()
            if serial_too:
                out["serial_s"] = _run_serially(serial)
        finally:
            for process in processes:
                _stop(process)
            get_settings.cache_clear()
    out["concurrent_tables"] = _tables(concurrent)
    if serial_too:
        out["serial_tables"] = _tables(serial)
    return out


def test_the_backfill_completes_with_every_run_successful(backfill_on_postgres):
    assert backfill_on_postgres["backfill"].status.value == "COMPLETED_SUCCESS"
    runs = backfill_on_postgres["runs"]
    assert len(runs) >= 6 + 6  # a run per fold's models, at least one per fold's days
    assert {r["status"] for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    # A backfill run covers a partition range (multi_run policies); a fold's is one month.
    ranges = [tuple(r["tags"].get(t) for t in RANGE_TAGS) for r in runs]
    models = sorted(start for start, end in ranges if len(start or "") == 7 and start == end)
    assert models == _fold_keys()


def test_runs_executed_side_by_side_within_the_instance_limit(backfill_on_postgres):
    at_once = most_at_once(backfill_on_postgres["runs"])
    assert 2 <= at_once <= MAX_RUNS


def test_every_step_ran_on_a_celery_worker_and_no_run_met_a_lock(backfill_on_postgres):
    runs = backfill_on_postgres["runs"]
    assert all(r["nodes"] for r in runs)
    assert {n.split("@")[0] for r in runs for n in r["nodes"]} <= set(WORKERS)
    assert [line for r in runs for line in r["locks"]] == []


def test_every_table_equals_a_serial_run_of_the_same_folds(backfill_on_postgres):
    concurrent = backfill_on_postgres["concurrent_tables"]
    serial = backfill_on_postgres["serial_tables"]
    assert set(concurrent) == set(serial)
    assert "baseline_scores" in serial
    for name, frame in serial.items():
        assert concurrent[name].equals(frame), name


def test_most_at_once_counts_overlapping_windows():
    windows = [{"start": 0, "end": 10}, {"start": 5, "end": 12}, {"start": 10, "end": 11}]
    assert most_at_once(windows) == 2
    assert most_at_once([{"start": 0, "end": 1}, {"start": 1, "end": 2}]) == 1

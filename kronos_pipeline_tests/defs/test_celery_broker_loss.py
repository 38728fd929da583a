"""The Celery broker going away under a run fails the run with a clear message, within a
bound, and leaves nothing behind: no hang of the run, none of the workers.

Redis and one worker run on 127.0.0.1 (``celery_cluster``), on a SQLite instance in a temporary
DAGSTER_HOME (the shipped ``dagster.yaml``). ``held_step_job`` (one step that writes its pid to
a marker file, then holds far longer than the test) is started as an operator starts a run,
``dagster job execute`` with ``deploy/celery_run.yaml``. Once the marker shows the step running
in the worker's process, the broker goes away:

- frozen (SIGSTOP: a host down or cut off, whose connections hang instead of being refused;
  Celery's defaults held such a run 2 minutes per read), thawed once the run has ended;
- killed (SIGKILL), on a second cluster; then a run is started while it is still gone.

Each run process must exit non-zero within ``FAIL_WITHIN_S`` and the instance must record the
run as FAILURE with ``CeleryBrokerLost``: the broker's host:port, what to do, and Redis's own
error chained. Each cluster (its worker still holding a step) must stop on SIGTERM before
``celery_cluster``'s SIGKILL fallback, and no process of the test may be left. A regression to a
hang fails the waits' timeouts, not a sleep.

Runtime: ~20 s of CPU (five imports of the code location: two workers, three run processes);
45 s wall on a shared 2-core machine (the frozen run waits out the 10 s read timeout).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from kronos_pipeline.settings import REPO_ROOT
from kronos_pipeline_tests.celery_cluster import WAIT_S, celery_cluster

RUN_YAML = REPO_ROOT / "deploy" / "celery_run.yaml"
SQLITE_YAML = REPO_ROOT / "dagster_home" / "dagster.yaml"
JOB_FILE = REPO_ROOT / "kronos_pipeline_tests" / "celery_held_step.py"
#: Seconds the run has to exit after the broker dies (the issue: fail, don't hang).
FAIL_WITHIN_S = 60
#: Seconds the step holds: far longer than the test, so only the broker's loss ends the run.
HOLD_S = 900
#: Seconds the cluster has to stop, below celery_cluster's SIGKILL fallback (WAIT_S).
STOP_WITHIN_S = 45


def _execute(home: Path, env: dict, folder: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """``dagster job execute`` of ``held_step_job`` with the deployed run config, its step
    writing ``<folder>/<name>.marker``; output to ``<folder>/<name>.log``."""
    ops = folder / f"{name}.yaml"
    marker = folder / f"{name}.marker"
    ops.write_text(
        json.dumps({"ops": {"hold": {"config": {"marker": str(marker), "seconds": HOLD_S}}}})
    )
    log = folder / f"{name}.log"
    command = [sys.executable, "-m", "dagster", "job", "execute", "-f", str(JOB_FILE),
               "-j", "held_step_job", "-c", str(RUN_YAML), "-c", str(ops)]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    return process, log


def _wait_exit(process: subprocess.Popen, log: Path) -> dict:
    """The run process's exit code and seconds to exit, or a hang (then it is killed)."""
    started = time.monotonic()
    try:
        process.wait(timeout=FAIL_WITHIN_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return {"hang": True, "log": log.read_text()[-5000:]}
    return {"hang": False, "rc": process.returncode, "s": time.monotonic() - started,
            "log": log.read_text()[-5000:]}  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _until_step_runs(process: subprocess.Popen, log: Path, marker: Path) -> int:
    """The held step's pid, once its marker exists; fails the test if the run ends first or
    the step does not start within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the step did not start:\n{log.read_text()[-5000:]}")
        time.sleep(0.1)
    return int(marker.read_text())


def _host_port(cluster) -> str:
    return cluster.broker.split("//")[1].split("/")[0]


def _held_step(cluster, home: Path, env: dict, folder: Path, name: str):
    """Once the workers are ready: a run of ``held_step_job`` whose step is running in a
    worker. Returns the run's environment, its process, its log and the step's pid."""
    cluster.wait_until_ready()
    run_env = {**os.environ, **env, **cluster.env(), "PYTHONPATH": str(REPO_ROOT)}
    process, log = _execute(home, run_env, folder, name)
    try:
        pid = _until_step_runs(process, log, folder / f"{name}.marker")
    except BaseException:
        process.kill()
        raise
    return run_env, process, log, pid


@pytest.fixture(scope="module")
def broker_loss(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from kronos_pipeline.instance import instance_at

    folder = tmp_path_factory.mktemp("celery_broker_loss")
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copy(SQLITE_YAML, home / "dagster.yaml")
    with instance_at(home):  # its schema, before a worker opens it (SQLite's first-open race)
        pass
    env = {"DAGSTER_HOME": str(home)}
    out: dict = {"step_pids": [], "clusters": [], "stop_s": []}
    processes: list[subprocess.Popen] = []
    try:
        # 1. Redis frozen (SIGSTOP: its host down or cut off, so no connection refused) while
        #    the step runs; then thawed, and the cluster stopped.
        with celery_cluster(("w1",), env) as cluster:
            out["frozen_host_port"] = _host_port(cluster)
            run_env, process, log, pid = _held_step(cluster, home, env, folder, "frozen")
            processes.append(process)
            out["step_pids"].append(pid)
            out["frozen_step_on_worker"] = cluster.workers[0].owns(pid)
            os.kill(cluster.redis_server.pid, signal.SIGSTOP)
            try:
                out["frozen"] = _wait_exit(process, log)
            finally:
                os.kill(cluster.redis_server.pid, signal.SIGCONT)
            stopping = time.monotonic()
        out["stop_s"].append(time.monotonic() - stopping)
        out["clusters"].append(cluster)
        # 2. Redis SIGKILLed while the step runs; then a run started while it is still gone.
        with celery_cluster(("w1",), env) as cluster:
            out["host_port"] = _host_port(cluster)
            run_env, process, log, pid = _held_step(cluster, home, env, folder, "mid_step")
            processes.append(process)
            out["step_pids"].append(pid)
            out["step_on_worker"] = cluster.workers[0].owns(pid)
            cluster.redis_server.kill()
            cluster.redis_server.wait()
            out["mid_step"] = _wait_exit(process, log)
            out["step_running_after_run"] = _alive(pid)
            process, log = _execute(home, run_env, folder, "at_start")
            processes.append(process)
            out["at_start"] = _wait_exit(process, log)
            stopping = time.monotonic()
        out["stop_s"].append(time.monotonic() - stopping)
        out["clusters"].append(cluster)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    out["processes"] = processes
    with instance_at(home) as instance:
        out["runs"] = []
        for record in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp):
            failures = instance.all_logs(
                record.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
            )
            out["runs"].append({
                "status": record.dagster_run.status,
                "errors": [f.dagster_event.event_specific_data.error for f in failures],
            })  # fmt: skip
    return out


def _chain(error) -> list[str]:
    """Class names of a serialized error and of its causes, outermost first."""
    names = []
    while error is not None:
        names.append(error.cls_name)
        error = error.cause
    return names


CASES = ("frozen", "mid_step", "at_start")  # the runs, in the order they were started


def test_the_step_was_running_on_the_worker_when_the_broker_went_away(broker_loss):
    assert broker_loss["frozen_step_on_worker"]
    assert broker_loss["step_on_worker"]
    assert broker_loss["step_running_after_run"]  # the run ended, not the step


@pytest.mark.parametrize("case", CASES)
def test_the_run_process_exits_non_zero_within_the_bound(broker_loss, case):
    ended = broker_loss[case]
    assert not ended["hang"], f"no exit within {FAIL_WITHIN_S} s:\n{ended['log']}"
    assert ended["rc"] != 0, ended["log"]
    print(f"{case}: exit {ended['rc']} in {ended['s']:.1f} s")


@pytest.mark.parametrize("case", CASES)
def test_the_instance_records_the_run_failed_with_a_clear_message(broker_loss, case):
    run = broker_loss["runs"][CASES.index(case)]
    assert run["status"] == dg.DagsterRunStatus.FAILURE
    (error,) = run["errors"]
    host_port = broker_loss["frozen_host_port" if case == "frozen" else "host_port"]
    assert error.cls_name == "CeleryBrokerLost", error.to_string()
    assert f"Lost the Celery broker at {host_port}: it did not answer" in error.message
    assert "Restart the broker" in error.message
    assert "re-execute this run from failure" in error.message
    # Redis's own error is kept, chained under the message, and names the same host:port.
    causes = _chain(error)[1:]
    assert {"ConnectionError", "TimeoutError", "RuntimeError"} & set(causes), error.to_string()
    assert host_port in error.to_string().split("caused by", 1)[1]


def test_the_clusters_stop_and_no_process_is_left(broker_loss):
    assert len(broker_loss["runs"]) == len(CASES)
    # Each worker (holding a step, its broker lost) stopped on SIGTERM: no SIGKILL fallback.
    assert all(s < STOP_WITHIN_S for s in broker_loss["stop_s"]), broker_loss["stop_s"]
    assert all(cluster.stopped() for cluster in broker_loss["clusters"])
    assert all(p.poll() is not None for p in broker_loss["processes"])
    assert not any(_alive(pid) for pid in broker_loss["step_pids"])

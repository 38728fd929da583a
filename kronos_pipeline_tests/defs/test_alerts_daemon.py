"""Alerts through a real ``dagster dev`` daemon: a failing WARN check posts exactly once.

``dagster dev`` runs on loopback with a temporary instance (this repository's
``dagster.yaml``) and warehouse, a short sensor interval, and the alert webhook pointed at an
HTTP receiver this test starts on 127.0.0.1. A run of the data stage on a small synthetic
market, recorded in that instance, has a planted WARN failure: ``KRONOS_UNIVERSE__TOP_N=5``
leaves every date with fewer than the 20 members ``universe_breadth`` asks for. The daemon's
sensors, running by default, must post each failed check of the run exactly once (the
planted one with its asset, partition, check, severity and metadata), and no run failure (WARN
checks do not fail a run). The automation sensor is stopped first: it would run today's
partitions, which a 2018 market does not have.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from kronos_pipeline.instance import instance_at
from kronos_pipeline_tests.defs.test_alerts import Receiver

REPO = Path(__file__).resolve().parents[2]
RANGE = ("2018-01-02", "2018-03-29")
MARKET = {
    "KRONOS_DATA__SYNTHETIC_START": RANGE[0],
    "KRONOS_DATA__SYNTHETIC_END": RANGE[1],
    "KRONOS_DATA__SYNTHETIC_TICKERS": "30",
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "20",
    "KRONOS_UNIVERSE__TOP_N": "5",  # the planted failure: universe_breadth wants >= 20
    "KRONOS_ALERTS__CHECK_SENSOR_INTERVAL_S": "2",
}
# The data stage up to the universe, as one ranged run recorded in the dagster dev instance.
DATA_RUN = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from kronos_pipeline.definitions import defs

    selection = dg.AssetSelection.assets("universe").upstream().required_multi_asset_neighbors()
    result = defs.resolve_job_def("data_job").execute_in_process(
        instance=dg.DagsterInstance.get(),
        asset_selection=list(selection.resolve(defs.resolve_asset_graph())),
        tags={"dagster/asset_partition_range_start": sys.argv[1],
              "dagster/asset_partition_range_end": sys.argv[2]},
        raise_on_error=False,
    )
    print("RUN", result.run_id, result.success)
    """
)
START_TIMEOUT_S = 150
POST_TIMEOUT_S = 90
QUIET_S = 10  # several more sensor ticks, to see that nothing is posted twice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Stop ``dagster dev`` (or any process started in its own session) and its children:
    SIGTERM to the group, SIGKILL if it has not ended within ``timeout_s``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_automation(env: dict[str, str]) -> None:
    """Stop ``kronos_automation`` in the instance of ``env``'s DAGSTER_HOME before a daemon
    starts (a stopped sensor stays stopped, whatever its default), for tests that launch their
    own runs and must not see the automation's."""
    dagster = Path(sys.executable).with_name("dagster")
    stop = subprocess.run(
        [str(dagster), "sensor", "stop", "kronos_automation", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]


def _sensor_cursor(home: Path, name: str) -> str | None:
    instance = instance_at(home)
    try:
        for state in instance.all_instigator_state():
            if state.name == name and state.instigator_data is not None:
                return state.instigator_data.cursor
        return None
    finally:
        instance.dispose()


def _wait(what: str, predicate, timeout_s: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def test_a_failing_warn_check_is_posted_exactly_once_by_the_daemon(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    # Create the instance's SQLite storages before `dagster dev` starts: two processes that
    # create them at once can both stamp the schema ("more than one head present").
    instance_at(home).dispose()
    hook = Receiver()
    env = dict(
        os.environ,
        **MARKET,
        DAGSTER_HOME=str(home),
        KRONOS_WAREHOUSE__DATA_DIR=str(tmp_path / "warehouse"),
        KRONOS_ALERTS__WEBHOOK_URL=hook.url,
    )
    log = tmp_path / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    # This test is about alerts: the automation, which would run today's partitions of the
    # 2018 market, is stopped in the instance first.
    stop_automation(env)
    port = str(_free_port())
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Running by default: the daemon ticks the sensor, which stores its starting cursor.
        _wait(
            "the first tick of alert_on_check_failure",
            lambda: _sensor_cursor(home, "alert_on_check_failure") is not None,
            START_TIMEOUT_S,
            proc,
            log,
        )
        run = subprocess.run(
            [sys.executable, "-c", DATA_RUN, *RANGE],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        _, run_id, success = run.stdout.split()[-3:]
        assert success == "True"  # WARN checks do not fail the run

        instance = instance_at(home)
        try:
            failed = sorted(
                (e.asset_key.to_user_string(), e.check_name)
                for e in (
                    ev.dagster_event.event_specific_data
                    for ev in instance.all_logs(
                        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
                    )
                )
                if not e.passed
            )
        finally:
            instance.dispose()
        assert ("universe", "universe_breadth") in failed

        def check_posts() -> list[dict]:
            return [p for p in hook.posts if p["event"] == "check_failed"]

        _wait(
            "one post per failed check",
            lambda: len(check_posts()) >= len(failed),
            POST_TIMEOUT_S,
            proc,
            log,
        )
        time.sleep(QUIET_S)
    finally:
        stop_group(proc)
        hook.server.shutdown()

    posts = check_posts()
    assert sorted((p["asset"], p["check"]) for p in posts) == failed  # each exactly once
    (breadth,) = [p for p in posts if p["check"] == "universe_breadth"]
    assert breadth["asset"] == "universe"
    assert breadth["severity"] == "WARN"
    assert breadth["blocking"] is False
    assert breadth["partition"] == f"{RANGE[0]}..{RANGE[1]}"  # the run's weekdays
    assert breadth["run_id"] == run_id
    assert "fewer than 20 members" in breadth["description"]
    assert breadth["metadata"]["first_thin_dates"]  # the check's own metadata, as JSON
    assert not [p for p in hook.posts if p["event"] == "run_failure"]

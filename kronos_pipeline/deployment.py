"""The Dagster deployment the CLI submits its runs to: the instance's run queue, its daemon and
a run worker per run, as for a run launched from the UI.

Runs are submitted with Dagster's GraphQL client (:class:`dagster_graphql.DagsterGraphQLClient`,
the Launchpad's ``launchRun`` mutation: job, asset subset, partition tags, run config) to a
webserver on loopback that the CLI starts for the command. The instance's run coordinator
queues each run; the daemon dequeues it under ``max_concurrent_runs`` and the run launcher
starts its run worker, whose steps take the pools' slots; run monitoring watches it.

The daemon: when the instance's run queue has a live daemon (a heartbeat in the last
:data:`HEARTBEAT_FRESH_S` seconds, e.g. a ``dagster dev`` of the same ``$DAGSTER_HOME``), its
runs go to that daemon and the CLI starts ``dagster-webserver`` alone. Otherwise the CLI
starts ``dagster dev`` (webserver and daemon over one code server) and stops it when the
command ends, wiping the heartbeats its daemon left, so the next command does not take them
for a live daemon.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg
    from dagster_graphql import DagsterGraphQLClient

#: The daemon that takes runs off the queue (its type in the instance's heartbeats).
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
#: A daemon heartbeats every 30 s (Dagster's interval): one newer than this is a live daemon.
HEARTBEAT_FRESH_S = 75.0
#: Seconds the webserver (and its code location) may take to come up.
START_TIMEOUT_S = 300.0
#: Seconds ``dagster dev`` / the webserver may take to shut down before it is killed.
STOP_TIMEOUT_S = 60.0
_WORKSPACE_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message } } }
"""
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")
#: The UI's "launch backfill" and "cancel backfill" (Overview -> Backfills shows both).
_LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }
"""
_CANCEL_BACKFILL = """
mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) {
    __typename ... on CancelBackfillSuccess { backfillId } ... on Error { message } } }
"""
#: The daemon that submits a backfill's runs (its type in the instance's heartbeats).
BACKFILL_DAEMON = "BACKFILL"
#: In the instance's home: the pids of the ``dagster dev`` a CLI command started and of that
#: command, until it stops the former. A killed command leaves its ``dagster dev`` running (its
#: own session), and the file says which process the next command may stop
#: (:func:`left_dagster_dev`).
DEV_PID_FILE = "kronos-cli-dagster-dev.pid"


class DeploymentError(Exception):
    """The deployment could not start, died, or refused a run; the message says where to look."""


#: The sensor that evaluates the automation conditions (``defs/conditions.py``), the daemon
#: that ticks it (its type in the heartbeats), and how recent a tick shows it running (the
#: sensor ticks every 30 s; a loaded daemon falls behind).
AUTOMATION_SENSOR = "kronos_automation"
AUTOMATION_DAEMON = "ASSET"
AUTOMATION_FRESH_S = 300.0

#: Set to ``off`` in the environment of a code location that must not register the
#: automation sensor (the CLI's own short-lived deployment); read when the location loads.
AUTOMATION_ENV = "PIPELINE_AUTOMATION"


def daemon_alive(
    instance: dg.DagsterInstance, fresh_s: float = HEARTBEAT_FRESH_S, daemon: str = QUEUE_DAEMON
) -> bool:
    """Whether the instance's run queue (or another ``daemon`` type, e.g.
    :data:`BACKFILL_DAEMON`) has a daemon: its heartbeat is newer than ``fresh_s``."""
    beat = instance.get_daemon_heartbeats().get(daemon)
    return beat is not None and time.time() - beat.timestamp < fresh_s


def automation_ticking(
    instance: dg.DagsterInstance, fresh_s: float = AUTOMATION_FRESH_S
) -> float | None:
    """Seconds since the automation sensor (:data:`AUTOMATION_SENSOR`) last ticked, when a
    live daemon of this instance evaluates it: the daemon's heartbeat is fresh, the sensor is
    not stopped, and its newest tick is under ``fresh_s`` old. None otherwise (no daemon, the
    sensor stopped in the UI, or a location that does not register it, as the CLI's own
    ``dagster dev`` does). Such a daemon runs every night by itself."""
    if not daemon_alive(instance, daemon=AUTOMATION_DAEMON):
        return None
    now = time.time()
    for state in instance.all_instigator_state():
        if state.name != AUTOMATION_SENSOR or state.status.value == "STOPPED":
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        if ticks and now - ticks[0].timestamp < fresh_s:
            return now - ticks[0].timestamp
    return None


def left_dagster_dev(instance: dg.DagsterInstance) -> int | None:
    """The pid of a ``dagster dev`` that an earlier CLI command started for this instance and
    did not stop (it was killed), while it still runs; else None (also while the command that
    started it still runs)."""
    path = Path(instance.root_directory) / DEV_PID_FILE
    try:
        pid, command = (int(p) for p in path.read_text().split())
        if Path(f"/proc/{command}").exists():
            return None  # its command is alive and stops it itself
        running = b"dagster" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):  # no file, no such process (or no /proc: not Linux)
        running = False
    if not running:
        path.unlink(missing_ok=True)
        return None
    return pid


def stop_left_dagster_dev(instance: dg.DagsterInstance, pid: int) -> None:
    """Stop the ``dagster dev`` of :func:`left_dagster_dev` as the command that started it
    would have: SIGINT (it stops its webserver, daemon and code server), SIGKILL to its
    process group after :data:`STOP_TIMEOUT_S`; then wipe its daemon's heartbeats."""
    try:
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    (Path(instance.root_directory) / DEV_PID_FILE).unlink(missing_ok=True)
    instance.wipe_daemon_heartbeats()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(
    url: str, query: str, timeout_s: float = 10.0, variables: Mapping | None = None
) -> Mapping:
    request = urllib.request.Request(
        url, data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


@dataclass
class Deployment:
    """A webserver (and, with ``owns_daemon``, a daemon) the CLI started for one command."""

    instance: dg.DagsterInstance
    workspace: Path
    process: subprocess.Popen
    port: int
    owns_daemon: bool
    log_path: Path
    _log: IO = field(repr=False)
    active: set[str] = field(default_factory=set)  # run ids submitted, not yet seen to end
    loaded: bool = False

    @classmethod
    def start(
        cls,
        instance: dg.DagsterInstance,
        workspace: Path,
        log_path: Path,
        with_daemon: bool,
        wait: bool = True,
    ) -> Deployment:
        """Start ``dagster dev`` (``with_daemon``: see :func:`daemon_alive`) or
        ``dagster-webserver`` for ``workspace`` on a free loopback port, its output to
        ``log_path``; with ``wait``, return once its code locations have loaded (else the
        first :meth:`submit` waits). The process runs in its own session: a Ctrl-C in the
        terminal reaches the CLI only, which cancels its run before stopping the deployment."""
        port = _free_port()
        program = ["dagster", "dev"] if with_daemon else ["dagster_webserver"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a", encoding="utf-8")
        process = subprocess.Popen(
            [sys.executable, "-m", *program, "-w", str(workspace), "-h", "127.0.0.1",
             "-p", str(port)],
            cwd=workspace.parent, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            # The instance's own home, whatever this process's environment says. A deployment
            # the CLI owns (its daemon lives for one command) runs the command's runs only:
            # the automation would start the newest partitions' runs beside them.
            env={**os.environ, "DAGSTER_HOME": instance.root_directory,
                 **({AUTOMATION_ENV: "off"} if with_daemon else {})},
        )  # fmt: skip
        if with_daemon:
            (Path(instance.root_directory) / DEV_PID_FILE).write_text(
                f"{process.pid} {os.getpid()}"
            )
        deployment = cls(instance, workspace, process, port, with_daemon, log_path, log)
        if wait:
            deployment.wait_until_loaded()
        return deployment

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return "dagster dev" if self.owns_daemon else "dagster-webserver"

    def wait_until_loaded(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the webserver answers with every code location loaded; on a failure
        (a location that does not load, a process that exits, the timeout) stop the
        deployment and raise :class:`DeploymentError`."""
        try:
            self._wait_until_loaded(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.loaded = True

    def _wait_until_loaded(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.raise_if_dead()
            try:
                data = _graphql(f"{self.url}/graphql", _WORKSPACE_QUERY)["data"]["workspaceOrError"]
            except (OSError, ValueError, KeyError, TypeError):
                data = None  # not listening yet
            if data is not None:
                if data["__typename"] == "PythonError":
                    raise DeploymentError(f"{self.name}: workspace: {data['message'].strip()}")
                entries = data["locationEntries"]
                for entry in entries:
                    error = entry["locationOrLoadError"] or {}
                    if error.get("__typename") == "PythonError":
                        raise DeploymentError(
                            f"{self.name}: code location {entry['name']} failed to load: "
                            f"{error['message'].strip()} (log: {self.log_path})"
                        )
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{self.name} did not load its code location in {timeout_s:.0f} s "
                    f"(log: {self.log_path})"
                )
            time.sleep(0.25)

    def raise_if_dead(self) -> None:
        if self.process.poll() is not None:
            raise DeploymentError(
                f"{self.name} exited with code {self.process.returncode} (log: {self.log_path})"
            )

    @property
    def client(self) -> DagsterGraphQLClient:
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=120)

    def submit(
        self,
        job: str,
        run_config: Mapping,
        tags: Mapping[str, str],
        assets: Sequence[str] | None = None,
    ) -> str:
        """Submit a run of ``job`` (its ``assets`` only, when given) to the instance's queue;
        returns its run id."""
        from dagster_graphql import DagsterGraphQLClientError

        if not self.loaded:
            self.wait_until_loaded()
        self.raise_if_dead()
        try:
            run_id = self.client.submit_job_execution(
                job, run_config=dict(run_config), tags=dict(tags),
                asset_selection=list(assets) if assets else None,
            )  # fmt: skip
        except DagsterGraphQLClientError as exc:
            raise DeploymentError(f"{job}: the run was refused: {exc}") from None
        self.active.add(run_id)
        return run_id

    def launch_backfill(
        self,
        partitions_by_assets: Mapping[str, Sequence[tuple[str, str]]],
        run_config: Mapping,
        tags: Mapping[str, str],
        title: str,
    ) -> str:
        """Submit an asset backfill of each asset's partition ranges (first and last key,
        inclusive) to the instance, as the UI's "Materialize selected" dialog does; the
        daemon's backfill loop launches its runs (each with ``run_config`` and ``tags``) in
        the assets' dependency order. Returns the backfill's id."""
        if not self.loaded:
            self.wait_until_loaded()
        self.raise_if_dead()
        params = {
            "partitionsByAssets": [
                {"assetKey": {"path": [asset]},
                 "partitions": {"ranges": [{"start": a, "end": b} for a, b in ranges]}}
                for asset, ranges in partitions_by_assets.items()
            ],
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
            "title": title,
            "runConfigData": dict(run_config),
        }  # fmt: skip
        answer = self._mutate(_LAUNCH_BACKFILL, {"params": params}, "launchPartitionBackfill")
        return answer["backfillId"]

    def cancel_backfill(self, backfill_id: str) -> None:
        """Cancel a backfill: it requests no more runs and the daemon cancels those in flight."""
        self._mutate(_CANCEL_BACKFILL, {"id": backfill_id}, "cancelPartitionBackfill")

    def _mutate(self, query: str, variables: Mapping, field_name: str) -> Mapping:
        try:
            answer = _graphql(f"{self.url}/graphql", query, 120.0, variables)
        except (OSError, ValueError) as exc:
            raise DeploymentError(
                f"{self.name}: {field_name}: {exc} (log: {self.log_path})"
            ) from None
        if answer.get("errors"):
            raise DeploymentError(f"{field_name}: {answer['errors'][0].get('message')}")
        result = answer["data"][field_name]
        if "message" in result:
            raise DeploymentError(f"{field_name}: {result['__typename']}: {result['message']}")
        return result

    def terminate(self, run_id: str) -> None:
        """Cancel a run: a queued one leaves the queue, a started one's worker is stopped. A
        run that ended meanwhile is left as it ended."""
        from dagster_graphql import DagsterGraphQLClientError

        try:
            self.client.terminate_run(run_id)
        except DagsterGraphQLClientError as exc:
            run = self.instance.get_run_by_id(run_id)
            if run is None or run.status.value not in TERMINAL:
                raise DeploymentError(f"run {run_id} could not be canceled: {exc}") from None

    def check_queue(self, run: dg.DagsterRun, queued_since: float) -> None:
        """While ``run`` waits in the queue: fail when nothing will take it off (our
        deployment died, or the daemon the CLI relied on stopped heartbeating)."""
        self.raise_if_dead()
        if self.owns_daemon or time.monotonic() - queued_since < HEARTBEAT_FRESH_S:
            return
        if not daemon_alive(self.instance):
            raise DeploymentError(
                f"run {run.run_id} is queued and the instance's dagster-daemon has not "
                f"heartbeated for {HEARTBEAT_FRESH_S:.0f} s: start `dagster dev`, or stop "
                "it entirely and rerun (the CLI then starts its own)"
            )

    def stop(self) -> None:
        """Cancel the runs still in flight, stop the processes, and (for our own daemon) wipe
        the heartbeats it left."""
        for run_id in sorted(self.active):
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.status.value not in TERMINAL and self.process.poll() is None:
                try:
                    self.terminate(run_id)
                except Exception:  # noqa: BLE001 - stopping anyway; run monitoring ends it
                    pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # dagster dev stops its children on SIGINT
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        if self.owns_daemon:
            (Path(self.instance.root_directory) / DEV_PID_FILE).unlink(missing_ok=True)
            self.instance.wipe_daemon_heartbeats()


def follow(
    instance: dg.DagsterInstance,
    run_id: str,
    on_record: Callable[[dg.EventLogRecord], None],
    on_queued: Callable[[dg.DagsterRun], None] | None = None,
    poll_s: float = 0.2,
) -> dg.DagsterRun:
    """Hand every event of run ``run_id`` to ``on_record`` as the instance stores it, until the
    run has ended; returns the ended run. ``on_queued`` is called at each poll while the run
    waits in the queue. A poll reads the run and the events after the cursor (about 4 ms on
    SQLite), so every ``poll_s`` costs about 2 % of a core, and a chain's next run is submitted
    ``poll_s / 2`` after the last ended, on average."""
    cursor = None
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise DeploymentError(f"run {run_id} is not in the instance")
        while True:  # every event stored before the status was read
            page = instance.get_records_for_run(run_id, cursor=cursor, limit=1000)
            for record in page.records:
                on_record(record)
            cursor = page.cursor
            if not page.has_more:
                break
        if run.status.value in TERMINAL:
            return run
        if run.status.value == "QUEUED" and on_queued is not None:
            on_queued(run)
        time.sleep(poll_s)

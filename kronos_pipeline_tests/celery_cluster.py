"""A throwaway Celery cluster for tests: a Redis broker and ``dagster-celery`` workers, all on
127.0.0.1, in a temporary folder, stopped on exit (also after a failure).

Redis is Debian's ``redis-server`` (``apt-get install redis-server``; ``KRONOS_TEST_REDIS_SERVER``
names another binary), started on a free port without persistence. Each worker is started the
way README "Deployment" starts one, ``dagster-celery worker start -A dagster_celery.app -y
deploy/celery_worker.yaml -i kronos_pipeline.definitions -n <name>``, in its own process
group, so that every process it forks (the ``celery`` worker and its pool) is known by that
group's id and stopped with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from kronos_pipeline.settings import REPO_ROOT
from kronos_pipeline_tests.postgres_server import free_port

WORKER_YAML = REPO_ROOT / "deploy" / "celery_worker.yaml"
#: Seconds a server or worker has to come up, or to stop after SIGTERM.
WAIT_S = 90
INSTALL_HINT = (
    "install Redis (Debian/Ubuntu: apt-get install redis-server) or point "
    "KRONOS_TEST_REDIS_SERVER at a redis-server binary"
)


@dataclass(frozen=True)
class Worker:
    """A started worker: its Celery node name prefix and the process group of its processes."""

    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pgid(self) -> int:
        return self.process.pid  # the session leader's pid: the group's id

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` (alive) belongs to this worker's process group."""
        try:
            return os.getpgid(pid) == self.pgid
        except ProcessLookupError:
            return False


@dataclass(frozen=True)
class CeleryCluster:
    broker: str
    backend: str
    redis_server: subprocess.Popen
    workers: tuple[Worker, ...]

    def stopped(self) -> bool:
        """Whether Redis and every process of every worker's group have exited."""
        return self.redis_server.poll() is not None and not any(
            _group_members(w.pgid) for w in self.workers
        )

    def wait_until_ready(self) -> None:
        """Until each worker's log says ``<name>@<host> ready.`` (it consumes from the broker);
        fails the test, with the worker's log, when one exits or takes over WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        pending = list(self.workers)
        while pending:
            for worker in list(pending):
                text = worker.log.read_text(errors="replace") if worker.log.exists() else ""
                if f"{worker.name}@" in text and " ready." in text:
                    pending.remove(worker)
                elif worker.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"celery worker {worker.name} did not start:\n{text[-3000:]}")
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """The variables ``deploy/celery_worker.yaml`` and ``deploy/celery_run.yaml`` read."""
        return {"CELERY_BROKER_URL": self.broker, "CELERY_RESULT_BACKEND": self.backend}


def redis_server_binary() -> str:
    found = os.environ.get("KRONOS_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not found or not Path(found).is_file():
        pytest.fail(f"No redis-server binary found: {INSTALL_HINT}")
    return found


def _wait_for_redis(port: int, process: subprocess.Popen, log: Path) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"redis-server did not start on 127.0.0.1:{port}:\n{log.read_text()[-2000:]}"
            )
        time.sleep(0.1)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _stop_worker(worker: Worker) -> None:
    """SIGTERM the celery processes first, so that ``dagster-celery`` (the group's leader,
    their parent) reaps them and exits; then whatever of the group is left is killed."""
    leader = worker.process
    for pid in _group_members(worker.pgid):
        if pid != leader.pid:
            os.kill(pid, signal.SIGTERM)
    try:
        leader.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        pass
    if _group_members(worker.pgid):
        os.killpg(worker.pgid, signal.SIGKILL)
    leader.wait(timeout=10)


@contextmanager
def celery_cluster(names: tuple[str, ...], env: dict[str, str]) -> Iterator[CeleryCluster]:
    """Start Redis on a free loopback port and one worker per name, with ``env`` (the code
    location's settings, ``DAGSTER_HOME``) added to this process's environment; yield the
    cluster as soon as the workers are started (they import the code location first: call
    ``wait_until_ready`` before submitting); on exit stop them all and delete the folder."""
    binary = redis_server_binary()
    root = Path(tempfile.mkdtemp(prefix="kronos-celery-"))
    port = free_port()
    redis_log = root / "redis.log"
    broker, backend = f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/1"
    bin_dir = str(Path(sys.executable).parent)  # dagster-celery, and the celery it starts
    worker_env = {
        **os.environ,
        **env,
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": backend,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO_ROOT),
    }
    redis_server, workers = None, []
    try:
        with redis_log.open("w") as out:
            redis_server = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                 "--appendonly", "no", "--dir", str(root)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_for_redis(port, redis_server, redis_log)
        for name in names:
            log = root / f"{name}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    [str(Path(bin_dir) / "dagster-celery"), "worker", "start",
                     "-A", "dagster_celery.app", "-y", str(WORKER_YAML), "-n", name,
                     "-i", "kronos_pipeline.definitions", "--", "--concurrency=1"],
                    env=worker_env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            workers.append(Worker(name, process, log))
        yield CeleryCluster(broker, backend, redis_server, tuple(workers))
    finally:
        try:
            for worker in workers:
                _stop_worker(worker)
        finally:
            if redis_server is not None:
                redis_server.terminate()
                redis_server.wait(timeout=WAIT_S)
            shutil.rmtree(root, ignore_errors=True)

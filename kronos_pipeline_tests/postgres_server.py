"""A throwaway PostgreSQL server for tests: ``initdb`` and ``pg_ctl`` in a temporary folder,
listening on 127.0.0.1 only, on a free port, stopped and deleted on exit.

The binaries are PostgreSQL's own (Debian: ``apt-get install postgresql``, which puts them in
``/usr/lib/postgresql/<major>/bin``, not on PATH): ``KRONOS_TEST_PG_BINDIR``, else ``pg_ctl``
on PATH, else the newest ``/usr/lib/postgresql/*/bin``. Missing, the test fails and says how to
install them.

PostgreSQL refuses to run as root, so as root (CI) every server command runs as the ``postgres``
user the Debian package creates (``runuser -u postgres``), in a temporary folder made theirs;
as any other user it runs as that user. The superuser is ``kronos`` with a random password
(scram-sha-256 on TCP), so clients connect the way a deployment does: host, port, user,
password, database.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The superuser initdb creates, and the database the tests create for the Dagster instance.
USER = "kronos"
DB_NAME = "dagster"
#: Seconds pg_ctl waits for the server to accept connections, or to stop.
WAIT_S = 60
#: The unprivileged account PostgreSQL runs as when the tests run as root.
SERVICE_USER = "postgres"
INSTALL_HINT = (
    "install PostgreSQL's server (Debian/Ubuntu: apt-get install postgresql) or point "
    "KRONOS_TEST_PG_BINDIR at the folder holding initdb and pg_ctl"
)


@dataclass(frozen=True)
class PostgresServer:
    """Where a running throwaway server listens and how to log in."""

    host: str
    port: int
    user: str
    password: str
    db_name: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server's ``db_name`` database (psycopg2, as dagster-postgres)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{self.db_name}"

    def env(self) -> dict[str, str]:
        """The ``DAGSTER_PG_*`` variables ``dagster_home/dagster.postgres.yaml`` reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }


def _major(bindir: Path) -> tuple[int, ...]:
    found = re.search(r"postgresql/([\d.]+)/bin", str(bindir))
    return tuple(int(part) for part in found.group(1).split(".")) if found else (0,)


def pg_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``; fails the test, saying how to install them."""
    candidates: list[Path] = []
    if os.environ.get("KRONOS_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["KRONOS_TEST_PG_BINDIR"]))
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    pytest.fail(f"No PostgreSQL server binaries (initdb, pg_ctl) found: {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1, right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_service_user() -> list[str]:
    """The command prefix that runs a server command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pytest.fail(
            f"running as root and there is no {SERVICE_USER!r} user to run PostgreSQL as "
            f"(initdb refuses root): {INSTALL_HINT}"
        )
    return ["runuser", "-u", SERVICE_USER, "--"]


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S + 30)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        pytest.fail(
            f"{what} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            + (f"\nserver log:\n{tail}" if tail else "")
        )


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway server on 127.0.0.1 and yield it with an empty ``dagster`` database;
    on exit (also after a failure) stop it and delete its folder."""
    import sqlalchemy

    bindir = pg_bindir()
    prefix = _as_service_user()
    # Not pytest's tmp_path: as root that lies under a 0700 folder the service user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="kronos-pg-"))
    data, log, pwfile = root / "data", root / "server.log", root / "pwfile"
    password = secrets.token_hex(16)
    pwfile.write_text(password + "\n")
    if prefix:
        for path in (root, pwfile):
            shutil.chown(path, SERVICE_USER)
    port = free_port()
    started = False
    try:
        _run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
            "initdb",
        )  # fmt: skip
        # Loopback only, the socket in our folder (not /var/run/postgresql), no fsync: a test.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = True
        _run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
             "-w", "-t", str(WAIT_S), "start"],
            "pg_ctl start",
            log,
        )  # fmt: skip
        server = PostgresServer("127.0.0.1", port, USER, password, DB_NAME)
        admin = sqlalchemy.create_engine(
            server.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {DB_NAME}"))
        admin.dispose()
        yield server
    finally:
        try:
            if started:
                subprocess.run(
                    [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                     "-w", "-t", str(WAIT_S), "stop"],
                    capture_output=True, timeout=WAIT_S + 30,
                )  # fmt: skip
        finally:
            shutil.rmtree(root, ignore_errors=True)

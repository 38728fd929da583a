"""The Dagster instance in ``$DAGSTER_HOME``, checked before it is opened.

SQLite (``dagster_home/dagster.yaml``) needs nothing. For Postgres (``dagster-postgres``,
``dagster_home/dagster.postgres.yaml``) each server that ``dagster.yaml`` names is connected to
once first: an unreachable one stops the CLI with one line naming its host and port and what to
do. Left to itself, dagster-postgres retries for about 12 s, logging each attempt, and ends in a
traceback whose last line says only "too many retries for DB connection".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

#: Seconds one connection attempt may take (libpq's ``connect_timeout``) before the server is
#: called unreachable: a firewalled host answers nothing rather than refusing.
CONNECT_TIMEOUT_S = 10
#: The sections of dagster.yaml that can hold a Postgres storage: the unified one, and the
#: per-storage classes of older instances.
_PER_STORAGE = ("run_storage", "event_log_storage", "schedule_storage")


class InstanceStorageError(Exception):
    """The instance's storage cannot be used; the message is one line saying where and why."""


@dataclass(frozen=True)
class PostgresStorage:
    """One Postgres server ``dagster.yaml`` names: its URL (env values resolved), and where."""

    url: str
    host: str
    port: int
    section: str  # e.g. "storage.postgres"
    config_path: Path


def _value(value: Any, field: str, config_path: Path) -> Any:
    """A config value as Dagster reads it: a literal, or ``{env: NAME}``."""
    if isinstance(value, Mapping) and "env" in value:
        name = value["env"]
        if name not in os.environ:
            raise InstanceStorageError(
                f"{config_path}: {field} reads the environment variable {name}, which is not "
                f"set; export it (see README, Deployment)"
            )
        return os.environ[name]
    return value


def _storage_url(config: Mapping[str, Any], section: str, config_path: Path) -> str:
    """The server's URL as dagster-postgres builds it (``postgres_url``, or ``postgres_db``'s
    fields with their defaults: port 5432, scheme postgresql)."""
    from sqlalchemy.engine import URL

    if "postgres_url" in config:
        return str(_value(config["postgres_url"], f"{section}.postgres_url", config_path))
    db = {
        key: _value(value, f"{section}.postgres_db.{key}", config_path)
        for key, value in (config.get("postgres_db") or {}).items()
    }
    return URL.create(
        drivername=str(db.get("scheme", "postgresql")),
        username=str(db.get("username", "")) or None,
        password=str(db.get("password", "")) or None,
        host=str(db.get("hostname", "")) or None,
        port=int(db.get("port", 5432)),
        database=str(db.get("db_name", "")) or None,
        query={k: str(v) for k, v in (db.get("params") or {}).items()},
    ).render_as_string(hide_password=False)


def postgres_storages(home: Path) -> list[PostgresStorage]:
    """The Postgres servers ``home/dagster.yaml`` stores runs, events or schedules in (none for
    SQLite), one per distinct URL."""
    import yaml
    from sqlalchemy.engine import make_url

    config_path = home / "dagster.yaml"
    if not config_path.is_file():
        return []
    config = yaml.safe_load(config_path.read_text()) or {}
    sections: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(config.get("storage"), Mapping) and "postgres" in config["storage"]:
        sections.append(("storage.postgres", config["storage"]["postgres"] or {}))
    for name in _PER_STORAGE:
        storage = config.get(name)
        if isinstance(storage, Mapping) and str(storage.get("module", "")).startswith(
            "dagster_postgres"
        ):
            sections.append((f"{name}.config", storage.get("config") or {}))
    found: dict[str, PostgresStorage] = {}
    for section, storage_config in sections:
        url = _storage_url(storage_config, section, config_path)
        parsed = make_url(url)
        found.setdefault(
            url,
            PostgresStorage(url, parsed.host or "localhost", parsed.port or 5432, section,
                            config_path),
        )  # fmt: skip
    return list(found.values())


def _reason(exc: BaseException) -> str:
    """libpq's first line without its 'connection to server at ... failed:' preamble."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    text = re.sub(r"^connection to server at .*? failed:\s*", "", text)
    return re.sub(r"\s+", " ", text).strip() or type(exc).__name__


def _unreachable(storage: PostgresStorage, exc: BaseException) -> InstanceStorageError:
    return InstanceStorageError(
        f"cannot reach the Dagster instance's PostgreSQL at {storage.host}:{storage.port} "
        f"({_reason(exc)}): start it or correct {storage.section} in {storage.config_path}"
    )


def check_reachable(storage: PostgresStorage, timeout_s: int = CONNECT_TIMEOUT_S) -> None:
    """Connect to ``storage``'s server once; raise :class:`InstanceStorageError` with one line
    naming its host and port if that fails."""
    import sqlalchemy
    import sqlalchemy.exc
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(
            storage.url, poolclass=NullPool, connect_args={"connect_timeout": timeout_s}
        )
    except ModuleNotFoundError as exc:
        raise InstanceStorageError(
            f"the Dagster instance's PostgreSQL at {storage.host}:{storage.port}: no driver "
            f"for its URL ({exc}); dagster-postgres installs psycopg2, and SQLAlchemy >= 2.1 "
            f"reads a plain postgresql:// as psycopg 3: set 'scheme: postgresql+psycopg2' in "
            f"{storage.section} of {storage.config_path}"
        ) from None
    try:
        engine.connect().close()
    except sqlalchemy.exc.DBAPIError as exc:
        raise _unreachable(storage, exc) from None
    finally:
        engine.dispose()


#: Dagster's own switches for its bookkeeping of ranged runs, which every process that creates
#: or executes runs must carry (the CLI sets them for itself; `dagster dev`, the daemon and the
#: webserver take them from their environment, README "Deployment"):
#: * one planned-materialization event per asset for a run over a range of partitions, not
#:   one per partition (a twelve-year data run plans 8 assets x 3,130 weekdays);
#: * materializations of a ranged step written in batches (one insert per 1,000 partitions on
#:   Postgres; SQLite writes them one by one either way).
BOOKKEEPING_ENV = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
}


def use_ranged_bookkeeping() -> dict[str, str]:
    """Set :data:`BOOKKEEPING_ENV` in this process where the environment does not already
    choose; returns the values in force."""
    for key, value in BOOKKEEPING_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in BOOKKEEPING_ENV}


def instance_at(home: str | Path) -> dg.DagsterInstance:
    """The instance of ``home``'s ``dagster.yaml``, whatever ``$DAGSTER_HOME`` says: the yaml
    reads ``DAGSTER_HOME`` (the event log's folder), so it is set to ``home`` while the
    instance is built, then restored."""
    import dagster as dg

    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        return dg.DagsterInstance.from_config(str(home))
    finally:
        if before is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = before


def open_instance() -> dg.DagsterInstance:
    """``DagsterInstance.get()`` for ``$DAGSTER_HOME``, after checking that every Postgres
    server its ``dagster.yaml`` names accepts a connection.

    Raises :class:`InstanceStorageError` (one line: host, port, reason, the config to fix)
    instead of Dagster's retries and traceback.
    """
    import dagster as dg

    storages = postgres_storages(Path(os.environ["DAGSTER_HOME"]))
    for storage in storages:
        check_reachable(storage)
    try:
        return dg.DagsterInstance.get()
    except Exception as exc:
        if not storages or exc.__cause__ is None:
            raise
        from dagster_postgres.utils import DagsterPostgresException

        if not isinstance(exc, DagsterPostgresException):
            raise
        # Lost between the check and the open: the same line, from Dagster's last error.
        raise _unreachable(storages[0], exc.__cause__) from None


def pool_limit(instance: dg.DagsterInstance, pool: str) -> int:
    """Slots of ``pool`` on ``instance``: the limit set for it (``instance-setup``, ``dagster
    instance concurrency set``), else the yaml's ``concurrency: pools: default_limit``; 1 when
    neither says (or the pool is closed, limit 0)."""
    return max(1, int(instance.event_log_storage.get_concurrency_info(pool).limit or 0))


def set_pool_limits(instance: dg.DagsterInstance, model_fitting: int) -> dict[str, int]:
    """Set the limits of the pools on ``instance``: ``model_fitting`` slots for model fitting
    and inference (the warehouse's writers need no pool: see ``warehouse``). Idempotent:
    setting the same limits again changes nothing. Returns pool -> limit as stored."""
    from kronos_pipeline.defs.walkforward import MODEL_POOL

    if model_fitting < 1:
        raise ValueError(f"model_fitting pool limit must be >= 1, got {model_fitting}")
    storage = instance.event_log_storage
    storage.set_concurrency_slots(MODEL_POOL, model_fitting)
    return {MODEL_POOL: pool_limit(instance, MODEL_POOL)}

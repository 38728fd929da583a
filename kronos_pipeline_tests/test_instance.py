"""The production instance: Dagster storage in PostgreSQL (dagster-postgres), from
``dagster_home/dagster.postgres.yaml`` as shipped.

A throwaway server (``postgres_server``: initdb / pg_ctl on 127.0.0.1 in a temporary folder)
backs a CLI backfill of the data job on a small synthetic market; the run, its
materializations and its check evaluations are then read back from Postgres, through a fresh
instance and in Postgres's own tables, and nothing was written to SQLite. An instance whose
server does not answer stops the CLI with one line naming its host and port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy
import yaml

from kronos_pipeline.instance import instance_at, postgres_storages
from kronos_pipeline.settings import REPO_ROOT
from kronos_pipeline_tests.postgres_server import PostgresServer, free_port, postgres_server

POSTGRES_YAML = REPO_ROOT / "dagster_home" / "dagster.postgres.yaml"
SQLITE_YAML = REPO_ROOT / "dagster_home" / "dagster.yaml"
# A small synthetic market, backfilled whole (prices_pit needs every earlier bar): 4 months,
# 84 weekday partitions (Presidents' Day and Good Friday among them, as "no session").
DATES = ("2017-01-03", "2017-04-28")
DAYS = [d.strftime("%Y-%m-%d") for d in pd.bdate_range(*DATES)]
MARKET = {
    "KRONOS_DATA__SYNTHETIC_START": DATES[0],
    "KRONOS_DATA__SYNTHETIC_END": DATES[1],
    "KRONOS_DATA__SYNTHETIC_TICKERS": "12",
}
PG_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD",
                "DAGSTER_PG_DB")  # fmt: skip


def _home(folder: Path) -> Path:
    """A DAGSTER_HOME holding the shipped Postgres example as its dagster.yaml."""
    folder.mkdir(parents=True)
    shutil.copy(POSTGRES_YAML, folder / "dagster.yaml")
    return folder


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``kronos-pipeline <args>`` in its own process, as a user starts it: the code location
    reads its settings once, at import, so it cannot share this test process."""
    return subprocess.run(
        [sys.executable, "-m", "kronos_pipeline.cli", *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def backfill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``kronos-pipeline backfill --dates`` on a Postgres instance; the server stays up for
    the tests to read it, and is stopped after them (or after a failure)."""
    folder = tmp_path_factory.mktemp("postgres_instance")
    with postgres_server() as server, pytest.MonkeyPatch.context() as mp:
        home = _home(folder / "dagster_home")
        env = {
            **MARKET,
            **server.env(),
            "DAGSTER_HOME": str(home),
            "KRONOS_WAREHOUSE__DATA_DIR": str(folder / "data"),
        }
        started = time.perf_counter()
        done = _cli("backfill", "--dates", f"{DATES[0]}:{DATES[1]}", env=env)
        seconds = time.perf_counter() - started
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        for key, value in server.env().items():
            mp.setenv(key, value)
        # A fresh instance from the same yaml: what the UI or the daemon would read.
        with instance_at(home) as instance:
            yield {"server": server, "home": home, "instance": instance, "seconds": seconds}


def _scalar(server: PostgresServer, sql: str, **params) -> object:
    engine = sqlalchemy.create_engine(server.url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text(sql), params).scalar()
    finally:
        engine.dispose()


def test_the_postgres_example_is_the_default_instance_plus_postgres_storage():
    sqlite = yaml.safe_load(SQLITE_YAML.read_text())
    postgres = yaml.safe_load(POSTGRES_YAML.read_text())
    assert "storage" not in sqlite  # SQLite under DAGSTER_HOME: the zero-setup default
    # ... whose event log writes ranged materializations in batches, as Postgres does itself
    assert sqlite["event_log_storage"]["class"] == "BatchedSqliteEventLogStorage"
    assert {k: v for k, v in postgres.items() if k != "storage"} == {
        k: v for k, v in sqlite.items() if k != "event_log_storage"
    }
    db = postgres["storage"]["postgres"]["postgres_db"]
    assert {v["env"] for v in db.values() if isinstance(v, dict)} == set(PG_VARIABLES)
    assert db["scheme"] == "postgresql+psycopg2"


def test_the_readme_shows_both_dagster_yamls_as_shipped():
    readme = (REPO_ROOT / "README.md").read_text()
    deployment = readme[readme.index("\n## Deployment\n") :]
    deployment = deployment[: deployment.index("\n## ", 1)]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", deployment, re.S)]
    assert blocks == [
        yaml.safe_load(SQLITE_YAML.read_text()),
        yaml.safe_load(POSTGRES_YAML.read_text()),
    ]


def test_the_run_is_stored_in_postgres(backfill):
    instance: dg.DagsterInstance = backfill["instance"]
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    runs = instance.get_run_records()
    assert [(r.dagster_run.job_name, r.dagster_run.status) for r in runs] == [
        ("data_job", dg.DagsterRunStatus.SUCCESS)
    ]
    tags = runs[0].dagster_run.tags
    assert tags["dagster/asset_partition_range_start"] == DATES[0]
    assert tags["dagster/asset_partition_range_end"] == DATES[1]
    run_id = runs[0].dagster_run.run_id
    assert _scalar(backfill["server"], "select status from runs where run_id = :r", r=run_id) == (
        "SUCCESS"
    )


def test_materializations_and_check_evaluations_are_stored_in_postgres(backfill):
    instance: dg.DagsterInstance = backfill["instance"]
    server: PostgresServer = backfill["server"]
    raw_bars = dg.AssetKey("raw_bars")
    records = instance.fetch_materializations(raw_bars, limit=1000).records
    assert sorted(r.partition_key for r in records) == DAYS  # batched inserts, one per day
    assert _scalar(
        server,
        "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION' "
        "and asset_key = :key",
        key=raw_bars.to_string(),
    ) == len(DAYS)
    check = dg.AssetCheckKey(raw_bars, "bars_complete")
    history = instance.event_log_storage.get_asset_check_execution_history(check, limit=1000)
    run_id = instance.get_run_records()[0].dagster_run.run_id
    # Each day is planned; the ranged run's evaluation is recorded once, for the range.
    assert [(h.run_id, h.status.value) for h in history if h.status.value != "PLANNED"] == [
        (run_id, "SUCCEEDED")
    ]
    assert _scalar(
        server,
        "select count(*) from asset_check_executions where asset_key = :key "
        "and check_name = 'bars_complete' and run_id = :run_id",
        key=raw_bars.to_string(),
        run_id=run_id,
    ) == len(history)


def test_nothing_is_written_to_sqlite(backfill):
    assert sorted(p.name for p in backfill["home"].rglob("*.db")) == []


def test_the_postgres_backfill_takes_seconds(backfill):
    # Printed for BENCHMARKS-style records; a generous bound catches a retry loop or a hang.
    print(f"postgres backfill: {backfill['seconds']:.1f}s")
    assert backfill["seconds"] < 300


def test_an_unreachable_postgres_stops_the_cli_with_one_line(tmp_path):
    port = free_port()  # nothing listens there
    home = _home(tmp_path / "dagster_home")
    env = {
        **MARKET,
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_USER": "kronos",
        "DAGSTER_PG_PASSWORD": "unused",
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_HOME": str(home),
        "KRONOS_WAREHOUSE__DATA_DIR": str(tmp_path / "data"),
    }
    done = _cli("backfill", "--dates", "2017-04-03", env=env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"kronos-pipeline: cannot reach the Dagster instance's PostgreSQL at 127.0.0.1:{port} "
        f"(Connection refused): start it or correct storage.postgres in {home / 'dagster.yaml'}"
    ]


def test_an_unset_postgres_variable_is_named(tmp_path, monkeypatch):
    home = _home(tmp_path / "dagster_home")
    for name in PG_VARIABLES:
        monkeypatch.setenv(name, "5432")
    monkeypatch.delenv("DAGSTER_PG_HOST")
    with pytest.raises(Exception, match="storage.postgres.postgres_db.hostname reads the "
                       "environment variable DAGSTER_PG_HOST, which is not set"):  # fmt: skip
        postgres_storages(home)


def test_the_sqlite_default_names_no_postgres_server():
    assert postgres_storages(SQLITE_YAML.parent) == []

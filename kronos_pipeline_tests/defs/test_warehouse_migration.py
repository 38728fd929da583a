"""Warehouses of the earlier layout (one DuckDB file): `kronos-pipeline migrate-warehouse`
copies them into the lake, and until then opening the warehouse names that command."""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos_pipeline import cli
from kronos_pipeline.defs.resources import default_resources
from kronos_pipeline.settings import get_settings
from kronos_pipeline.warehouse import UnmigratedWarehouse, Warehouse

DAY0 = dt.date(2020, 1, 1)


def build_legacy(path) -> dict[str, pl.DataFrame]:
    """A DuckDB warehouse file as the earlier layout wrote it; returns its tables."""
    tables = {
        "raw_bars": pl.DataFrame(
            {
                "date": [DAY0, DAY0, DAY0 + dt.timedelta(days=1)],
                "ticker": ["A", "B", "A"],
                "close": [1.0, 2.0, 3.0],
            }  # fmt: skip
        ),
        "bars_quarantine": pl.DataFrame(
            {"date": [None, DAY0], "line": [7, 8]}, schema={"date": pl.Date, "line": pl.Int64}
        ),
        "kronos_scores": pl.DataFrame(schema={"date": pl.Date, "score": pl.Float64}),
        "ingest_files": pl.DataFrame({"file": ["a.csv", "b.csv"], "rows": [10, 20]}),
    }
    con = duckdb.connect(str(path))
    for name, frame in tables.items():
        con.register("incoming", frame.to_arrow())
        con.execute(f"create table {name} as select * from incoming")
        con.unregister("incoming")
    con.close()
    return tables


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOS_WAREHOUSE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    get_settings.cache_clear()
    (tmp_path / "data").mkdir()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_an_unmigrated_duckdb_warehouse_is_refused_with_the_command_to_run(data_dir, capsys):
    build_legacy(data_dir / "warehouse.duckdb")
    with pytest.raises(UnmigratedWarehouse, match="run `kronos-pipeline migrate-warehouse`"):
        Warehouse(data_dir / "lake", data_dir / "warehouse.duckdb")
    with pytest.raises(UnmigratedWarehouse, match="migrate-warehouse"):
        default_resources()["warehouse"].get()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "warehouse.duckdb is a warehouse of the earlier single-file layout (4 tables)" in err
    assert "kronos-pipeline migrate-warehouse" in err


def test_migrate_warehouse_copies_every_table_into_day_partitions_or_one_file(data_dir, capsys):
    tables = build_legacy(data_dir / "warehouse.duckdb")
    cli.main(["migrate-warehouse"])
    assert "migrated 4 tables" in capsys.readouterr().out
    lake = Warehouse(data_dir / "lake", data_dir / "warehouse.duckdb")  # no longer refused
    assert lake.tables() == sorted(tables)
    for name, frame in tables.items():
        assert_frame_equal(
            lake.read_table(name).sort(frame.columns, nulls_last=True),
            frame.sort(frame.columns, nulls_last=True),
            check_exact=True,
        )
    layout = sorted(p.relative_to(data_dir / "lake").as_posix()
                    for p in (data_dir / "lake").rglob("*.parquet"))  # fmt: skip
    assert layout == [
        "bars_quarantine/_schema.parquet",
        "bars_quarantine/date=2020-01-01/part.parquet",
        "bars_quarantine/date=NULL/part.parquet",
        "ingest_files/part.parquet",
        "kronos_scores/_schema.parquet",
        "raw_bars/_schema.parquet",
        "raw_bars/date=2020-01-01/part.parquet",
        "raw_bars/date=2020-01-02/part.parquet",
    ]
    # The migrated tables take the pipeline's window writes.
    lake.replace_window("raw_bars", tables["raw_bars"].head(1), DAY0, DAY0)
    assert lake.read_table("raw_bars").height == 2
    assert lake.table_schema("kronos_scores") == {"date": "DATE", "score": "DOUBLE"}


def test_migrate_warehouse_without_a_duckdb_file_says_so(data_dir):
    with pytest.raises(SystemExit, match="no DuckDB warehouse with tables to migrate"):
        cli.main(["migrate-warehouse"])

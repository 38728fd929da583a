"""Copy a DuckDB warehouse file of the earlier single-file layout into the lake.

Every base table of the file becomes a lake table: one with a ``date`` column is partitioned
by day (its undated rows in the ``NULL`` partition), any other is stored whole. The file
is only read; the lake's tables of the same names are replaced.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import polars as pl

from kronos_pipeline.warehouse import Warehouse, legacy_tables

DATE_COLUMN = "date"


def migrate_table(lake: Warehouse, table: str, frame: pl.DataFrame) -> None:
    """Write ``frame`` into the lake as ``table``, partitioned by day when it has dates."""
    dtype = frame.schema.get(DATE_COLUMN)
    if dtype is None or not (dtype == pl.Date or dtype == pl.Datetime):
        lake.replace_table(table, frame)
        return
    dates = frame[DATE_COLUMN].drop_nulls()
    # No dated row: an empty window, which writes the table's schema (and undated rows).
    start, end = (dates.min(), dates.max()) if dates.len() else (dt.date.min, dt.date.min)
    lake.replace_window(table, frame, start, end, DATE_COLUMN, include_null_dates=True)


def migrate(legacy: Path, lake: Warehouse) -> dict[str, int]:
    """Copy every table of the DuckDB file ``legacy`` into ``lake``; table -> rows copied."""
    tables = legacy_tables(legacy)
    if not tables:
        raise FileNotFoundError(f"{legacy}: no DuckDB warehouse with tables to migrate")
    copied = {}
    con = duckdb.connect(str(legacy), read_only=True)
    try:
        for table in tables:
            frame = pl.from_arrow(con.sql(f'select * from "{table}"').to_arrow_table())
            migrate_table(lake, table, frame)
            copied[table] = frame.height
    finally:
        con.close()
    return copied

"""The DuckDB warehouse: one file, one writer at a time, idempotent window writes.

DuckDB lets one process open a database file for writing, and no other process may open it
at all meanwhile. Parallel Dagster steps or overlapping backfill runs would then fail with
"Could not set lock on file". Every connection here first takes an inter-process lock on a
sidecar file (``<db>.lock``; exclusive for writers, shared for readers) and waits for it, so
writers queue instead of failing. The Dagster assets that write also share the concurrency
pool ``duckdb_warehouse`` (limit 1), which keeps runs from even starting their steps together.

Writes are delete-then-insert of a date window inside one transaction, so rewriting a
partition leaves identical content and never duplicates.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

WAREHOUSE_POOL = "duckdb_warehouse"


class WarehouseLockTimeout(TimeoutError):
    """The single-writer lock was not obtained in time."""


class Warehouse:
    """A DuckDB file plus its inter-process lock."""

    def __init__(self, path: Path | str, lock_timeout_s: float = 600.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.lock_timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise WarehouseLockTimeout(
                            f"waited {self.lock_timeout_s:.0f}s for the lock on {self.path}; "
                            "another writer holds it (see KRONOS_WAREHOUSE__LOCK_TIMEOUT_S)"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held under the lock; writers exclusive, readers shared."""
        with self._locked(exclusive=write or not self.path.exists()):
            con = duckdb.connect(str(self.path), read_only=not write and self.path.exists())
            try:
                yield con
            finally:
                con.close()

    def tables(self) -> list[str]:
        """Names of the tables in the warehouse."""
        if not self.path.exists():
            return []
        with self.connect() as con:
            return [
                r[0]
                for r in con.execute("select table_name from information_schema.tables").fetchall()
            ]

    def read(self, sql: str, params: list | None = None) -> pl.DataFrame:
        """Run a query and return a polars frame."""
        with self.connect() as con:
            return pl.from_arrow(con.execute(sql, params or []).to_arrow_table())

    def read_table(
        self,
        table: str,
        start: dt.date | None = None,
        end: dt.date | None = None,
        date_column: str = "date",
        columns: str = "*",
    ) -> pl.DataFrame:
        """Rows of ``table`` with ``date_column`` in [start, end] (either bound optional)."""
        where, params = [], []
        if start is not None:
            where.append(f"{date_column} >= ?")
            params.append(start)
        if end is not None:
            where.append(f"{date_column} <= ?")
            params.append(end)
        clause = f" where {' and '.join(where)}" if where else ""
        return self.read(f"select {columns} from {table}{clause}", params)

    def replace_window(
        self,
        table: str,
        frame: pl.DataFrame,
        start: dt.date,
        end: dt.date,
        date_column: str = "date",
        include_null_dates: bool = False,
        order_by: tuple[str, ...] = (),
    ) -> int:
        """Delete ``table`` rows dated in [start, end] (and undated ones if asked), insert ``frame``.

        One transaction: a failure leaves the table as it was. Returns the rows inserted.
        """
        outside = frame.filter(
            ~pl.col(date_column).is_between(start, end) & pl.col(date_column).is_not_null()
        )
        if not include_null_dates and frame[date_column].null_count():
            raise ValueError(f"{table}: rows without a {date_column} in a dated window write")
        if outside.height:
            raise ValueError(
                f"{table}: {outside.height} rows fall outside the window {start}..{end}"
            )
        ordered = frame.sort(list(order_by)) if order_by else frame
        with self.connect(write=True) as con:
            con.execute("begin transaction")
            try:
                con.register("incoming", ordered.to_arrow())
                con.execute(f"create table if not exists {table} as select * from incoming limit 0")
                null_clause = f" or {date_column} is null" if include_null_dates else ""
                con.execute(
                    f"delete from {table} where ({date_column} between ? and ?){null_clause}",
                    [start, end],
                )
                con.execute(f"insert into {table} by name select * from incoming")
                con.unregister("incoming")
                con.execute("commit")
            except Exception:
                con.execute("rollback")
                raise
        return ordered.height

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        """Replace the whole table with ``frame``."""
        with self.connect(write=True) as con:
            con.register("incoming", frame.to_arrow())
            con.execute(f"create or replace table {table} as select * from incoming")
            con.unregister("incoming")
        return frame.height

    def replace_where(self, table: str, frame: pl.DataFrame, column: str, values: list) -> int:
        """Delete rows whose ``column`` is in ``values`` and insert ``frame`` (one transaction)."""
        with self.connect(write=True) as con:
            con.execute("begin transaction")
            try:
                con.register("incoming", frame.to_arrow())
                con.execute(f"create table if not exists {table} as select * from incoming limit 0")
                con.execute(f"delete from {table} where {column} in (select unnest(?))", [values])
                con.execute(f"insert into {table} by name select * from incoming")
                con.unregister("incoming")
                con.execute("commit")
            except Exception:
                con.execute("rollback")
                raise
        return frame.height

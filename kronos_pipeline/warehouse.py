"""The DuckDB warehouse: one file, one writer at a time, idempotent window writes.

DuckDB lets one process open a database file for writing, and no other process may open it
at all meanwhile. Parallel Dagster steps or overlapping backfill runs would then fail with
"Could not set lock on file". Every connection here first takes an inter-process lock on a
sidecar file (``<db>.lock``; exclusive for writers, shared for readers) and waits for it, so
writers queue instead of failing. The Dagster assets that write also share the concurrency
pool ``duckdb_warehouse`` (limit 1), which keeps runs from even starting their steps together.

Writes are delete-then-insert of a date window, so rewriting a partition leaves identical
content and never duplicates. :meth:`Warehouse.transaction` groups every write of one step
(all the tables it owns) into one DuckDB transaction: a crash or an error before the commit
leaves the warehouse exactly as it was (DuckDB's write-ahead log replays only committed
transactions), so a half-written step is never visible.
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

    def table_schema(self, table: str) -> dict[str, str] | None:
        """Column name -> DuckDB type of ``table`` in order, or None when it does not exist."""
        if table not in self.tables():
            return None
        with self.connect() as con:
            rows = con.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_name = ? order by ordinal_position",
                [table],
            ).fetchall()
        return dict(rows)

    @contextmanager
    def transaction(self) -> Iterator[WarehouseTransaction]:
        """Several writes in one transaction under the writer lock: all land, or none.

        Readers (other processes wait on the lock; DuckDB readers see the last commit) never
        see a state between two of the writes.
        """
        with self.connect(write=True) as con:
            con.execute("begin transaction")
            try:
                yield WarehouseTransaction(con)
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise

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
        with self.transaction() as tx:
            return tx.replace_window(
                table, frame, start, end, date_column, include_null_dates, order_by
            )

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        """Replace the whole table with ``frame`` (one transaction)."""
        with self.transaction() as tx:
            return tx.replace_table(table, frame)

    def replace_where(self, table: str, frame: pl.DataFrame, column: str, values: list) -> int:
        """Delete rows whose ``column`` is in ``values`` and insert ``frame`` (one transaction)."""
        with self.transaction() as tx:
            return tx.replace_where(table, frame, column, values)

    def replace_rows(self, table: str, frame: pl.DataFrame, where: str, params: list) -> int:
        """Delete the rows matching ``where`` (SQL with ``?`` placeholders, written by the
        caller, never by a user) and insert ``frame`` (one transaction)."""
        with self.transaction() as tx:
            return tx.replace_rows(table, frame, where, params)


class SchemaMismatch(ValueError):
    """A frame does not fit the columns of the warehouse table it would replace rows of."""


class WarehouseTransaction:
    """The writes of one :meth:`Warehouse.transaction`; nothing is visible before its commit."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def _register(self, table: str, frame: pl.DataFrame) -> None:
        self.con.register("incoming", frame.to_arrow())
        self.con.execute(f"create table if not exists {table} as select * from incoming limit 0")
        existing = [
            r[0]
            for r in self.con.execute(
                "select column_name from information_schema.columns where table_name = ? "
                "order by ordinal_position",
                [table],
            ).fetchall()
        ]
        # ``insert by name`` would fill a column the frame lacks with nulls: refuse instead.
        if sorted(existing) != sorted(frame.columns):
            self.con.unregister("incoming")
            raise SchemaMismatch(
                f"warehouse table {table} has columns {existing}, the rows to write have "
                f"{frame.columns}; the table's schema changed: migrate the table, or start a new "
                "warehouse (KRONOS_WAREHOUSE__DATA_DIR=<empty folder>)"
            )

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
        """Delete ``table`` rows dated in [start, end] (and undated ones if asked), insert ``frame``."""
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
        self._register(table, ordered)
        null_clause = f" or {date_column} is null" if include_null_dates else ""
        self.con.execute(
            f"delete from {table} where ({date_column} between ? and ?){null_clause}",
            [start, end],
        )
        self.con.execute(f"insert into {table} by name select * from incoming")
        self.con.unregister("incoming")
        return ordered.height

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        """Replace the whole table with ``frame``."""
        self.con.register("incoming", frame.to_arrow())
        self.con.execute(f"create or replace table {table} as select * from incoming")
        self.con.unregister("incoming")
        return frame.height

    def replace_where(self, table: str, frame: pl.DataFrame, column: str, values: list) -> int:
        """Delete rows whose ``column`` is in ``values`` and insert ``frame``."""
        self._register(table, frame)
        self.con.execute(f"delete from {table} where {column} in (select unnest(?))", [values])
        self.con.execute(f"insert into {table} by name select * from incoming")
        self.con.unregister("incoming")
        return frame.height

    def replace_rows(self, table: str, frame: pl.DataFrame, where: str, params: list) -> int:
        """Delete the rows matching ``where`` and insert ``frame``."""
        self._register(table, frame)
        self.con.execute(f"delete from {table} where {where}", params)
        self.con.execute(f"insert into {table} by name select * from incoming")
        self.con.unregister("incoming")
        return frame.height

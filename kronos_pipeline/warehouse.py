"""The warehouse: a lake of Parquet partitions that many writers share, queried through DuckDB.

Layout under the root (a local folder or any fsspec URL, e.g. ``s3://bucket/lake``)::

    <table>/date=YYYY-MM-DD/part.parquet   one file per day of a date-partitioned table
    <table>/date=NULL/part.parquet         its undated rows (quarantine), when it has some
    <table>/_schema.parquet                no rows: the table's columns, present once written
    <table>/part.parquet                   a table stored whole (side and evaluation tables)

Every file of a partitioned table has exactly the columns and types of its ``_schema.parquet``
(a column first written all-null gets its type from the first write that has values, and the
files written before are rewritten with it, once), so DuckDB binds a table from any one file.

A file is published by writing it under a temporary name that no reader matches
(``part.parquet.tmp-<uuid>``) and renaming it over the final name (``os.replace`` on a local
folder, fsspec ``mv`` elsewhere; an object store's put is itself atomic). A reader therefore
sees a partition's old file or its new one, never a torn one; two writers of the same
partition end with one complete file (the last rename wins); writers of different partitions
never touch the same file, so they run in parallel with no lock and no Dagster pool.

:meth:`Warehouse.transaction` validates and stages every write of a step before it publishes
any: an error before the publish leaves every partition as it was. Atomicity is per
partition: a crash in the middle of the publish (a few renames) can leave some partitions of
the step new and others old, each of them complete; rerunning the step (the writes are
idempotent window replacements) repairs it. A killed writer may leave ``*.tmp-*`` files,
which readers ignore. A day that a rewrite empties (a holiday) has its file deleted: a query
that listed the file just before may fail to open it, and is simply run again.

DuckDB stays the query engine: :meth:`Warehouse.connect` gives a cursor of an in-memory DuckDB
(opened once per process through ``dagster-duckdb``'s ``DuckDBResource``) with one temporary
view per table over its Parquet files, so the SQL of callers names tables as before. The view
of a table partitioned by a date column reads it as Hive partitions: a query's filter on that
column skips the other days' files without opening them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb
import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_duckdb import DuckDBResource
from fsspec.implementations.local import LocalFileSystem

PART = "part.parquet"
SCHEMA = "_schema.parquet"
#: The partition of undated rows: DuckDB reads a Hive partition value ``NULL`` as a null date.
NULL_KEY = "NULL"
#: The same partition's name in lakes written before 2026-12-05 (still read and replaced).
LEGACY_NULL_KEY = "__null__"
NULL_KEYS = (NULL_KEY, LEGACY_NULL_KEY)
MIGRATE_COMMAND = "kronos-pipeline migrate-warehouse"


class SchemaMismatch(ValueError):
    """A frame does not fit the columns of the warehouse table it would replace rows of."""


class UnmigratedWarehouse(RuntimeError):
    """A DuckDB warehouse file of the earlier layout holds tables the lake does not."""


#: Guards the opening of a warehouse's database (threads of one process share it).
_DATABASE_LOCK = threading.Lock()


class Warehouse:
    """The lake at ``root`` (a path or fsspec URL) and the DuckDB views that read it.

    ``legacy_duckdb``: the single DuckDB file of the earlier layout; when it holds tables and
    the lake holds none, opening refuses with :class:`UnmigratedWarehouse`.
    """

    def __init__(self, root: Path | str, legacy_duckdb: Path | str | None = None) -> None:
        self.path = str(root)
        self.fs, self.base = fsspec.core.url_to_fs(self.path)
        self.base = self.base.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        # One thread: a query's row order (joins, window functions over many files) is then
        # the same on every run, as it was over the single DuckDB file, so floating-point sums
        # and model fits downstream reproduce bit for bit.
        self.duckdb = DuckDBResource(database=":memory:", connection_config={"threads": 1})
        self._database: tuple[int, ExitStack, duckdb.DuckDBPyConnection] | None = None
        if legacy_duckdb is not None:
            refuse_unmigrated(self, Path(legacy_duckdb))

    def __getstate__(self) -> dict:
        # Pickled (e.g. into another process) without its database: the copy opens its own.
        return {**self.__dict__, "_database": None}

    # --- layout -------------------------------------------------------------------------

    def table_dir(self, table: str) -> str:
        """The folder (fsspec path, no protocol) of ``table``."""
        return f"{self.base}/{table}"

    def scan_url(self, table: str) -> str:
        """The glob DuckDB reads ``table`` from (with the protocol outside a local folder)."""
        folder = self.table_dir(table)
        return f"{folder if self.local else self.fs.unstrip_protocol(folder)}/**/*.parquet"

    def partitions(self, table: str, column: str, verify: bool = True) -> dict[str, str]:
        """Partition key -> file of ``table``'s partitions by ``column`` (``column=<key>``).

        One listing of the table's folder (one request on object storage, not one a day).
        ``verify=False``: on a local folder, also the partitions whose file is missing
        (:meth:`_layout`); the caller checks the files it uses."""
        folder, prefix = self.table_dir(table), f"{column}="
        _, folders = self._layout(table, verify)
        return {
            name[len(prefix) :]: f"{folder}/{name}/{PART}"
            for name in folders
            if name.startswith(prefix)
        }

    def _layout(self, table: str, verify: bool = True) -> tuple[set[str], list[str]]:
        """The names of ``table``'s own files (``_schema.parquet``, ``part.parquet``) and of
        its partition folders that hold a ``part.parquet`` (``date=2020-01-02``), sorted.

        On a local folder one ``scandir`` and a ``stat`` per partition: fsspec's ``find``
        walks every folder with a listing and an ``info`` per entry, 130 ms for 5,000 days.
        ``verify=False`` (local only): every partition folder, holding a file or not (one
        written just now, or emptied by a removal), without the ``stat`` per partition."""
        folder = self.table_dir(table)
        if self.local:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                return set(), []
            files = {e.name for e in entries if e.is_file()}
            folders = [
                e.name
                for e in entries
                if "=" in e.name
                and e.is_dir()
                and (not verify or os.path.isfile(os.path.join(e.path, PART)))
            ]
            return files, sorted(folders)
        try:
            paths = [f.removeprefix(folder).strip("/").split("/") for f in self.fs.find(folder)]
        except FileNotFoundError:
            return set(), []
        files = {p[0] for p in paths if len(p) == 1}
        return files, sorted(p[0] for p in paths if len(p) == 2 and p[1] == PART and "=" in p[0])

    def _listing(self, folder: str) -> list[str]:
        try:
            return self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []

    def stored_schema(self, table: str) -> pa.Schema | None:
        """The Arrow schema ``table`` was written with, or None when it does not exist."""
        return self._schema_file(table)[1]

    def _schema_file(self, table: str) -> tuple[str | None, pa.Schema | None]:
        """Which file holds ``table``'s schema (its partitions' schema file, else the file of a
        table stored whole) and that schema; ``(None, None)`` when it does not exist."""
        for name in (SCHEMA, PART):
            path = f"{self.table_dir(table)}/{name}"
            if self.fs.exists(path):
                with self.fs.open(path, "rb") as handle:
                    return name, pq.read_schema(handle)
        return None, None

    def tables(self) -> list[str]:
        """Names of the tables in the warehouse."""
        return sorted(
            entry.rstrip("/").rsplit("/", 1)[-1]
            for entry in self._listing(self.base)
            if any(self.fs.exists(f"{entry.rstrip('/')}/{n}") for n in (SCHEMA, PART))
        )

    # --- reads --------------------------------------------------------------------------

    @contextmanager
    def connect(self, sql: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB connection with one view per table of the lake; given the
        ``sql`` it is for, only the views of the tables that query names.

        Creating a view binds its ``read_parquet``: DuckDB lists the table's files and reads
        their schemas, about two seconds for a table of a few thousand day files. A query
        pays that only for the tables it reads."""
        tables = self.tables()
        if sql is not None:
            tables = [t for t in tables if re.search(rf"(?<![/\w]){re.escape(t)}(?![/\w])", sql)]
        con = self._cursor()
        try:
            for table in tables:
                con.execute(f"create temp view {table} as select * from {self._scan(table)}")
            yield con
        finally:
            con.close()  # its temporary views go with it

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection (DuckDB's cursor) to this process's in-memory database of the
        warehouse, which is opened on first use: opening a database costs about 15 ms, a
        cursor microseconds, and a step makes dozens of queries. Each cursor sees only its
        own temporary views. A forked child opens its own database."""
        with _DATABASE_LOCK:
            if self._database is None or self._database[0] != os.getpid():
                stack = ExitStack()
                con = stack.enter_context(self.duckdb.get_connection())
                if not self.local:
                    con.register_filesystem(self.fs)
                self._database = (os.getpid(), stack, con)
            return self._database[2].cursor()

    def _url(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    def _scan(self, table: str) -> str:
        """The ``read_parquet`` a view of ``table`` selects from.

        - stored whole: its one file;
        - partitioned by a date column: every partition's file as Hive partitions typed DATE
          (a filter on the column skips the other days' files unopened; ``NULL`` is null);
        - partitioned by another column: the schema file first (DuckDB binds the columns from
          it), then the partitions' files;
        - anything else (a crash between the renames of a layout change, a lake written
          before 2026-12-05 with its ``__null__`` partition): every Parquet file, by name."""
        folder = self.table_dir(table)
        entries, parts = self._layout(table, verify=not self.local)
        if self.local:
            # What follows asks of the partitions only their columns, the legacy key and
            # whether any holds a file: a folder without one (a removed day) can change the
            # answer only when it names another column or the legacy key, so the stat per
            # partition is paid then only, and otherwise stops at the first file.
            names = {e.split("=", 1)[0] for e in parts}
            if len(names) > 1 or any(e.split("=", 1)[1] == LEGACY_NULL_KEY for e in parts):
                entries, parts = self._layout(table)
            elif not any(os.path.isfile(os.path.join(folder, e, PART)) for e in parts):
                parts = []
        columns = {e.split("=", 1)[0] for e in parts}
        legacy = any(e.split("=", 1)[1] == LEGACY_NULL_KEY for e in parts)
        if PART in entries and not parts:
            return f"read_parquet('{self._url(f'{folder}/{PART}')}')"
        schema = self.stored_schema(table) if SCHEMA in entries else None
        if schema is not None and PART not in entries and len(columns) <= 1 and not legacy:
            schema_url = self._url(f"{folder}/{SCHEMA}")
            if not parts:
                return f"read_parquet('{schema_url}')"
            if _has_null_columns(schema):  # files of a lake from before 2026-12-05 may differ
                return (
                    f"read_parquet('{self._url(f'{folder}/*/{PART}')}', union_by_name = true, "
                    "hive_partitioning = false)"
                )
            (column,) = columns
            days = self._url(f"{folder}/*/{PART}")
            if schema.field(column).type == pa.date32():
                return (
                    f"read_parquet('{days}', hive_partitioning = true, "
                    f"hive_types = {{'{column}': DATE}}, hive_types_autocast = false)"
                )
            return f"read_parquet(['{schema_url}', '{days}'], hive_partitioning = false)"
        return (
            f"read_parquet('{self.scan_url(table)}', union_by_name = true, "
            "hive_partitioning = false)"
        )

    def read(self, sql: str, params: list | None = None) -> pl.DataFrame:
        """Run a query over the views of the tables it names and return a polars frame."""
        with self.connect(sql) as con:
            return pl.from_arrow(con.sql(sql, params=params or []).to_arrow_table())

    def read_table(
        self,
        table: str,
        start: dt.date | None = None,
        end: dt.date | None = None,
        date_column: str = "date",
        columns: str = "*",
    ) -> pl.DataFrame:
        """Rows of ``table`` with ``date_column`` in [start, end] (either bound optional).

        A table partitioned by ``date_column`` is read from the files of the window's days
        only, not through its view over every day."""
        where, params = [], []
        if start is not None:
            where.append(f"{date_column} >= ?")
            params.append(start)
        if end is not None:
            where.append(f"{date_column} <= ?")
            params.append(end)
        clause = f" where {' and '.join(where)}" if where else ""
        window = self._window_files(table, date_column, start, end)
        if window is None:
            return self.read(f"select {columns} from {table}{clause}", params)
        files, schema = window
        names = [c.strip() for c in columns.split(",")]
        field = schema.field(date_column) if date_column in schema.names else None
        if (
            self.local
            and not _has_null_columns(schema)
            and field is not None
            and field.type == pa.date32()
            and (columns.strip() == "*" or all(re.fullmatch(r"\w+", c) for c in names))
        ):
            # Polars' multi-file reader reads thousands of day files about twice as fast as
            # DuckDB on one thread, the same rows in the same order (file by file, each in
            # its stored order). A day's file holds that day's rows of the DATE column only
            # (the writer partitions by it), so the window's files are exactly its rows.
            return pl.read_parquet(
                files, columns=None if columns.strip() == "*" else names,
                hive_partitioning=False,
            )  # fmt: skip
        urls = ", ".join(f"'{self._url(f)}'" for f in files)
        if _has_null_columns(schema):  # see :meth:`_scan`
            source = f"read_parquet([{urls}], union_by_name = true, hive_partitioning = false)"
        else:  # the schema file first: DuckDB binds the columns from it (every file has them)
            source = f"read_parquet([{urls}], hive_partitioning = false)"
        return self.read(f"select {columns} from {source}{clause}", params)

    def _window_files(
        self, table: str, column: str, start: dt.date | None, end: dt.date | None
    ) -> tuple[list[str], pa.Schema] | None:
        """The schema file and the day files of [start, end] of a table partitioned by
        ``column``, in day order, and the table's stored schema; None when it is not
        partitioned by ``column`` (or no bound is given)."""
        if start is None and end is None:
            return None
        found, schema = self._schema_file(table)
        if found != SCHEMA:
            return None  # missing, or stored whole: the view
        # Locally, only the window's files are checked (a stat each), not every day's.
        days = self.partitions(table, column, verify=not self.local)
        if not days:
            return None  # not partitioned by ``column``: the view
        lo, hi = _day_key(start or dt.date.min), _day_key(end or dt.date.max)
        day_files = [f for k, f in sorted(days.items()) if k not in NULL_KEYS and lo <= k <= hi]
        if self.local:
            day_files = [f for f in day_files if os.path.isfile(f)]
        return [f"{self.table_dir(table)}/{SCHEMA}", *day_files], schema

    def distinct_dates(self, table: str, column: str = "date") -> pl.DataFrame:
        """``select distinct <column> from <table> order by <column>``, from the names of the
        table's day files when it is partitioned by ``column`` (a day's file exists only while
        the day has rows), without opening any of them; else by the query."""
        days = sorted(k for k in self.partitions(table, column) if k not in NULL_KEYS)
        schema = self.stored_schema(table)
        if not days or schema is None or column not in schema.names:
            return self.read(f"select distinct {column} from {table} order by {column}")
        dtype = pl.from_arrow(schema.empty_table()).schema[column]
        return pl.DataFrame({column: days}).select(pl.col(column).str.to_date().cast(dtype))

    def table_schema(self, table: str) -> dict[str, str] | None:
        """Column name -> DuckDB type of ``table`` in order, or None when it does not exist."""
        if table not in self.tables():
            return None
        with self.connect(table) as con:
            return {row[0]: row[1] for row in con.execute(f"describe {table}").fetchall()}

    # --- writes -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[WarehouseTransaction]:
        """Several writes staged, then published together when the block ends without error.

        An error inside the block publishes nothing. Each partition is replaced atomically;
        the set of them is not (see the module docstring).
        """
        tx = WarehouseTransaction(self)
        try:
            yield tx
        except BaseException:
            tx.discard()
            raise
        tx.publish()

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
        """Replace the days [start, end] of ``table`` with ``frame`` (see the transaction's)."""
        with self.transaction() as tx:
            return tx.replace_window(
                table, frame, start, end, date_column, include_null_dates, order_by
            )

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        """Replace the whole table with ``frame`` (one file)."""
        with self.transaction() as tx:
            return tx.replace_table(table, frame)

    def replace_where(self, table: str, frame: pl.DataFrame, column: str, values: list) -> int:
        """Replace the partitions of ``table`` by ``column`` named in ``values`` with ``frame``."""
        with self.transaction() as tx:
            return tx.replace_where(table, frame, column, values)


def _has_null_columns(schema: pa.Schema) -> bool:
    """Whether a column of ``schema`` has only ever been written all-null (Arrow's null type)."""
    return any(field.type == pa.null() for field in schema)


def _day_key(value: object) -> str:
    """The partition key of a date or timestamp value: its day, ISO (``NULL_KEY`` for None)."""
    if value is None:
        return NULL_KEY
    if isinstance(value, dt.datetime):
        value = value.date()
    return value.isoformat() if isinstance(value, dt.date) else str(value)


class WarehouseTransaction:
    """The staged writes of one :meth:`Warehouse.transaction`; nothing is visible before
    :meth:`publish`."""

    def __init__(self, lake: Warehouse) -> None:
        self.lake = lake
        self.fs = lake.fs
        self.staged: dict[str, str] = {}  # final file -> its temporary file
        self.removed: set[str] = set()
        self.schemas: dict[str, pa.Schema] = {}

    # --- staging --------------------------------------------------------------------------

    def _stage(self, final: str, table: pa.Table) -> None:
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(tmp, "wb") as handle:
            pq.write_table(table, handle)
        self._unstage(final)
        self.staged[final] = tmp

    def _unstage(self, final: str) -> None:
        previous = self.staged.pop(final, None)
        if previous is not None:
            self.fs.rm(previous)
        self.removed.discard(final)

    def _remove(self, final: str) -> None:
        self._unstage(final)
        self.removed.add(final)

    def publish(self) -> None:
        """Rename every staged file over its final name, then delete the removed ones."""
        for final, tmp in self.staged.items():
            if self.lake.local:
                os.replace(tmp, final)
            else:
                self.fs.mv(tmp, final)
        for final in self.removed:
            try:
                self.fs.rm(final)
            except FileNotFoundError:
                pass  # another writer removed it first
        self.staged, self.removed = {}, set()

    def discard(self) -> None:
        """Delete the staged files: the lake stays as it was."""
        for tmp in self.staged.values():
            try:
                self.fs.rm(tmp)
            except FileNotFoundError:
                pass
        self.staged, self.removed = {}, set()

    # --- schema ---------------------------------------------------------------------------

    def _conform(self, table: str, frame: pl.DataFrame) -> pa.Table:
        """``frame`` as Arrow in the table's column order and types; the first write of a
        table stages its ``_schema.parquet``. Raises :class:`SchemaMismatch` on other columns
        or on a value the table's type cannot hold."""
        existing = self.schemas.get(table) or self.lake.stored_schema(table)
        incoming = frame.to_arrow()
        if existing is None:
            self.schemas[table] = incoming.schema
            self._stage(f"{self.lake.table_dir(table)}/{SCHEMA}", incoming.schema.empty_table())
            return incoming
        self.schemas[table] = existing
        # DuckDB's ``insert by name`` used to null-fill a missing column: refuse instead.
        if sorted(existing.names) != sorted(frame.columns):
            raise SchemaMismatch(
                f"warehouse table {table} has columns {existing.names}, the rows to write have "
                f"{frame.columns}; the table's schema changed: migrate the table, or start a new "
                "warehouse (KRONOS_WAREHOUSE__DATA_DIR=<empty folder>)"
            )
        incoming = incoming.select(existing.names)
        target = pa.schema(
            [f if f.type != pa.null() else incoming.schema.field(f.name) for f in existing]
        )
        try:
            conformed = incoming.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaMismatch(
                f"warehouse table {table}: the rows to write do not fit its column types ({exc})"
            ) from exc
        if any(f.type == pa.null() and target.field(f.name).type != pa.null() for f in existing):
            self._retype(table, target)
        return conformed

    def _retype(self, table: str, schema: pa.Schema) -> None:
        """Give ``table`` the ``schema`` that resolves its all-null columns: its schema file
        and every partition file already written (once per column; a null casts to any
        type), so that all files keep one schema."""
        self.schemas[table] = schema
        layout = self.lake.table_dir(table)
        self._stage(f"{layout}/{SCHEMA}", schema.empty_table())
        published = self.fs.find(layout) if self.fs.exists(layout) else []
        staged = [final for final in self.staged if final.startswith(f"{layout}/")]
        for final in dict.fromkeys([*staged, *published]):
            if not final.endswith(f"/{PART}") or final in self.removed:
                continue
            with self.fs.open(self.staged.get(final, final), "rb") as handle:
                written = pq.read_table(handle)
            self._stage(final, written.cast(schema))

    # --- writes ---------------------------------------------------------------------------

    def _replace_partitions(
        self, table: str, frame: pl.DataFrame, column: str, keys: set[str], order_by=()
    ) -> int:
        """Write one file per partition key of ``frame``'s ``column`` and remove the
        partitions in ``keys`` that ``frame`` has no rows of."""
        layout = self.lake.table_dir(table)
        if self.lake.fs.exists(f"{layout}/{PART}"):
            raise ValueError(
                f"warehouse table {table} is stored whole ({layout}/{PART}); a partition write "
                "needs it partitioned: rewrite it with replace_table, or remove it"
            )
        ordered = frame.sort(list(order_by)) if order_by else frame
        data = self._conform(table, ordered)
        key = pl.col(column)
        if ordered.schema[column] in (pl.Date, pl.Datetime):
            key = key.cast(pl.Date).dt.to_string("%Y-%m-%d")
        rows = ordered.select(key.cast(pl.String).fill_null(NULL_KEY).alias("key"))
        # One stable reorder by key, then a zero-copy slice per partition (a ``take`` per
        # partition costs the whole table each time: quadratic over years of days).
        grouped = rows.with_row_index("row").sort("key", maintain_order=True)
        data = data.take(grouped["row"].to_arrow()).combine_chunks()
        runs = grouped.group_by("key", maintain_order=True).len()
        written, offset = set(), 0
        for name, length in runs.iter_rows():
            self._stage(f"{layout}/{column}={name}/{PART}", data.slice(offset, length))
            written.add(name)
            offset += length
        for key in keys - written:
            self._remove(f"{layout}/{column}={key}/{PART}")
        return ordered.height

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
        """Replace the days [start, end] of ``table`` (and its undated rows if asked) with
        ``frame``: one file per day with rows; the days of the window without rows (a
        holiday) lose theirs. Returns the rows written."""
        outside = frame.filter(
            ~pl.col(date_column).is_between(start, end) & pl.col(date_column).is_not_null()
        )
        if not include_null_dates and frame[date_column].null_count():
            raise ValueError(f"{table}: rows without a {date_column} in a dated window write")
        if outside.height:
            raise ValueError(
                f"{table}: {outside.height} rows fall outside the window {start}..{end}"
            )
        lo, hi = _day_key(start), _day_key(end)
        stored = self.lake.partitions(table, date_column)
        keys = {k for k in stored if lo <= k <= hi or (include_null_dates and k in NULL_KEYS)}
        return self._replace_partitions(table, frame, date_column, keys, order_by)

    def replace_where(self, table: str, frame: pl.DataFrame, column: str, values: list) -> int:
        """Replace the partitions of ``table`` by ``column`` named in ``values`` with
        ``frame`` (whose rows must all fall in them)."""
        keys = {_day_key(v) for v in values}
        stray = frame.filter(~pl.col(column).is_in(values))
        if stray.height:
            raise ValueError(f"{table}: {stray.height} rows have a {column} not in {values}")
        return self._replace_partitions(table, frame, column, keys)

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        """Replace the whole table with ``frame``, stored as one file (any partitions of an
        earlier layout are removed in the same publish)."""
        self.drop_table(table)
        self._stage(f"{self.lake.table_dir(table)}/{PART}", frame.to_arrow())
        return frame.height

    def drop_table(self, table: str) -> None:
        """Remove every file of ``table`` at the publish (nothing when it does not exist)."""
        layout = self.lake.table_dir(table)
        for path in self.fs.find(layout) if self.fs.exists(layout) else []:
            if path.endswith(".parquet"):
                self._remove(path)
        self.schemas.pop(table, None)


def legacy_tables(path: Path) -> list[str]:
    """Base tables of a DuckDB warehouse file of the earlier layout ([] when there is none)."""
    if not path.is_file():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            "select table_name from information_schema.tables where table_type = 'BASE TABLE' "
            "order by table_name"
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def refuse_unmigrated(lake: Warehouse, legacy: Path) -> None:
    """Raise :class:`UnmigratedWarehouse` when ``legacy`` holds tables and the lake none."""
    if lake.tables():
        return
    tables = legacy_tables(legacy)
    if tables:
        raise UnmigratedWarehouse(
            f"{legacy} is a warehouse of the earlier single-file layout ({len(tables)} tables) "
            f"and the lake at {lake.path} is empty: run `{MIGRATE_COMMAND}` once to copy it "
            "into the lake (the DuckDB file is left untouched)"
        )

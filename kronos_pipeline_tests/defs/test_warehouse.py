"""The DuckDB warehouse: idempotent window writes, atomic failures, and writers from separate
processes that queue on the lock instead of failing."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos_pipeline.warehouse import SchemaMismatch, Warehouse

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY0 = dt.date(2020, 1, 1)


def _frame(start: dt.date, days: int, tickers: tuple[str, ...] = ("A", "B", "C"), scale=1.0):
    rows = [
        (start + dt.timedelta(days=d), t, scale * (d + 1) * (i + 1))
        for d in range(days)
        for i, t in enumerate(tickers)
    ]
    return pl.DataFrame(rows, schema=["date", "ticker", "value"], orient="row")


def _content(db: Warehouse, table: str = "t") -> pl.DataFrame:
    return db.read_table(table).sort("date", "ticker")


def test_replace_window_twice_with_the_same_frame_leaves_identical_content(tmp_path):
    db = Warehouse(tmp_path / "w.duckdb", lock_timeout_s=10)
    frame = _frame(DAY0, 10)
    end = DAY0 + dt.timedelta(days=9)
    assert db.replace_window("t", frame, DAY0, end) == 30
    first = _content(db)
    assert db.replace_window("t", frame, DAY0, end) == 30
    second = _content(db)
    assert_frame_equal(second, first, check_exact=True)
    assert_frame_equal(second, frame.sort("date", "ticker"), check_exact=True)
    assert second.select("date", "ticker").is_duplicated().sum() == 0


def test_replace_window_touches_only_its_window(tmp_path):
    db = Warehouse(tmp_path / "w.duckdb", lock_timeout_s=10)
    db.replace_window("t", _frame(DAY0, 10), DAY0, DAY0 + dt.timedelta(days=9))
    mid_start, mid_end = DAY0 + dt.timedelta(days=3), DAY0 + dt.timedelta(days=5)
    # The rewrite of days 3..5 has only one ticker: the others' rows in the window go away.
    db.replace_window("t", _frame(mid_start, 3, ("A",), scale=-1.0), mid_start, mid_end)
    out = _content(db)
    assert out.height == 30 - 9 + 3
    inside = out.filter(pl.col("date").is_between(mid_start, mid_end))
    assert inside["ticker"].to_list() == ["A"] * 3
    assert inside["value"].to_list() == [-1.0, -2.0, -3.0]
    outside = out.filter(~pl.col("date").is_between(mid_start, mid_end))
    expected = _frame(DAY0, 10).filter(~pl.col("date").is_between(mid_start, mid_end))
    assert_frame_equal(outside, expected.sort("date", "ticker"), check_exact=True)


def test_replace_window_refuses_rows_outside_the_window_and_leaves_table_unchanged(tmp_path):
    db = Warehouse(tmp_path / "w.duckdb", lock_timeout_s=10)
    db.replace_window("t", _frame(DAY0, 5), DAY0, DAY0 + dt.timedelta(days=4))
    before = _content(db)
    with pytest.raises(ValueError, match="1 rows fall outside the window"):
        db.replace_window(
            "t", _frame(DAY0 + dt.timedelta(days=4), 2, ("A",)), DAY0, DAY0 + dt.timedelta(days=4)
        )
    assert_frame_equal(_content(db), before, check_exact=True)


def test_failed_insert_rolls_back_the_delete(tmp_path):
    db = Warehouse(tmp_path / "w.duckdb", lock_timeout_s=10)
    db.replace_window("t", _frame(DAY0, 5), DAY0, DAY0 + dt.timedelta(days=4))
    before = _content(db)
    # A value the column's type cannot hold: the insert fails after the delete ran.
    bad = _frame(DAY0, 5).with_columns(value=pl.lit("not a number"))
    with pytest.raises(duckdb.Error):
        db.replace_window("t", bad, DAY0, DAY0 + dt.timedelta(days=4))
    assert_frame_equal(_content(db), before, check_exact=True)


def test_a_frame_with_other_columns_than_the_table_is_refused_by_name(tmp_path):
    db = Warehouse(tmp_path / "w.duckdb", lock_timeout_s=10)
    db.replace_window("t", _frame(DAY0, 5), DAY0, DAY0 + dt.timedelta(days=4))
    before = _content(db)
    # ``insert by name`` would null-fill a missing column and fail late on an extra one.
    for bad in (
        _frame(DAY0, 5).with_columns(extra=pl.lit(1)),
        _frame(DAY0, 5).drop("value"),
    ):
        with pytest.raises(SchemaMismatch, match="warehouse table t has columns"):
            db.replace_window("t", bad, DAY0, DAY0 + dt.timedelta(days=4))
    assert_frame_equal(_content(db), before, check_exact=True)


def test_a_transaction_publishes_all_its_tables_or_none(tmp_path):
    db = Warehouse(tmp_path / "w.duckdb", lock_timeout_s=10)
    end = DAY0 + dt.timedelta(days=4)
    with db.transaction() as tx:
        tx.replace_window("t", _frame(DAY0, 5), DAY0, end)
        tx.replace_table("side", pl.DataFrame({"k": [1]}))
    before = (_content(db), db.read_table("side"))
    with pytest.raises(RuntimeError, match="crash between writes"):
        with db.transaction() as tx:
            tx.replace_window("t", _frame(DAY0, 5, scale=-1.0), DAY0, end)
            tx.replace_table("side", pl.DataFrame({"k": [2]}))
            raise RuntimeError("crash between writes")
    assert_frame_equal(_content(db), before[0], check_exact=True)
    assert_frame_equal(db.read_table("side"), before[1], check_exact=True)


# --- writers in separate processes -----------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import datetime as dt, sys, time
    import polars as pl
    from kronos_pipeline.warehouse import SchemaMismatch, Warehouse

    path, writer, windows, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    db = Warehouse(path, lock_timeout_s=120)
    time.sleep(max(0.0, go - time.time()))  # both writers start together, imports done
    first = time.time()
    day0 = dt.date(2020, 1, 1) + dt.timedelta(days=1000 * writer)
    for w in range(windows):
        start = day0 + dt.timedelta(days=5 * w)
        frame = pl.DataFrame({
            "date": [start + dt.timedelta(days=d) for d in range(5) for _ in range(4)],
            "ticker": [f"T{i}" for _ in range(5) for i in range(4)],
            "writer": [writer] * 20,
        })
        # Every window is written twice: the rerun must not duplicate rows.
        for _ in range(2):
            db.replace_window("t", frame, start, start + dt.timedelta(days=4))
    print("done", writer, first, time.time())
    """
)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_writer_processes_at_once_both_finish_and_every_row_lands_once(tmp_path):
    path = tmp_path / "w.duckdb"
    windows = 25
    go = time.time() + 4.0
    procs = [_spawn(WRITER, str(path), str(w), str(windows), str(go)) for w in (0, 1)]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert "Could not set lock" not in err
        assert proc.returncode == 0, err
        assert out.startswith("done")
    # The two writers' busy spans overlap: they really wrote at the same time.
    spans = [tuple(float(x) for x in out.split()[2:4]) for out, _ in outputs]
    assert max(s[0] for s in spans) < min(s[1] for s in spans)
    table = Warehouse(path).read_table("t")
    assert table.height == 2 * windows * 5 * 4
    assert table.select("date", "ticker").is_duplicated().sum() == 0
    assert table.group_by("writer").len().sort("writer").rows() == [(0, 500), (1, 500)]


ONE_WRITE = textwrap.dedent(
    """
    import datetime as dt, sys, time
    import polars as pl
    from kronos_pipeline.warehouse import SchemaMismatch, Warehouse

    day = dt.date(2021, 1, 4)
    frame = pl.DataFrame({"date": [day], "ticker": ["Z"], "value": [1.0]})
    Warehouse(sys.argv[1], lock_timeout_s=60).replace_window("t", frame, day, day)
    print(time.time())
    """
)


def test_writer_waits_for_the_lock_held_by_another_process(tmp_path):
    path = tmp_path / "w.duckdb"
    db = Warehouse(path, lock_timeout_s=10)
    db.replace_window("t", _frame(DAY0, 1), DAY0, DAY0)
    hold_s = 3.0
    with db.connect(write=True) as con:
        proc = _spawn(ONE_WRITE, str(path))
        time.sleep(hold_s)  # the other process queues on the lock meanwhile
        assert proc.poll() is None
        con.execute("select 1")
        released = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Could not set lock" not in err
    assert float(out) >= released  # its write finished only after the lock was given back
    assert db.read_table("t").filter(pl.col("ticker") == "Z").height == 1


RAW_CONNECT = textwrap.dedent(
    """
    import sys, duckdb
    try:
        duckdb.connect(sys.argv[1]).close()
    except duckdb.IOException as exc:
        print(exc)
        sys.exit(3)
    """
)


def test_without_the_lock_a_second_process_cannot_open_the_file(tmp_path):
    path = tmp_path / "raw.duckdb"
    con = duckdb.connect(str(path))
    try:
        con.execute("create table t as select 1 as x")
        proc = _spawn(RAW_CONNECT, str(path))
        out, _ = proc.communicate(timeout=60)
    finally:
        con.close()
    assert proc.returncode == 3
    assert "Could not set lock on file" in out

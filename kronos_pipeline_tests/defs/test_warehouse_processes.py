"""The warehouse lake shared by processes: writers of different days run at the same time
with no lock, writers of the same day end with one complete version, a reader during a
rewrite sees the old or the new day, and a killed writer leaves each day old or new."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl

from kronos_pipeline.warehouse import Warehouse

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY0 = dt.date(2020, 1, 1)
ROWS = 2000  # per day and writer: big enough that a write takes a while


def day_frame(day: dt.date, writer: int, version: int, rows: int = ROWS) -> pl.DataFrame:
    """``rows`` rows of one day, every one tagged with its writer and version."""
    return pl.DataFrame(
        {
            "date": [day] * rows,
            "ticker": [f"T{i:05d}" for i in range(rows)],
            "writer": [writer] * rows,
            "version": [version] * rows,
        }
    )


def write_days(root: str, writer: int, days: list[dt.date], rounds: int, go: float, spans):
    """Rewrite each of ``days`` ``rounds`` times (a multiprocessing target); records the
    (first start, last end) of its writes in ``spans[writer]``."""
    db = Warehouse(root)
    time.sleep(max(0.0, go - time.time()))  # every writer starts together, imports done
    first = time.time()
    for version in range(rounds):
        for day in days:
            db.replace_window("t", day_frame(day, writer, version), day, day)
    spans[writer] = (first, time.time())


def _run_writers(root: str, days_of: dict[int, list[dt.date]], rounds: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        spans = manager.dict()
        go = time.time() + 5.0
        procs = [
            ctx.Process(target=write_days, args=(root, w, days, rounds, go, spans))
            for w, days in days_of.items()
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=300)
            assert proc.exitcode == 0
        return dict(spans)


def test_writers_of_different_days_overlap_in_time_and_every_row_lands_once(tmp_path):
    root = str(tmp_path / "lake")
    days_of = {0: [DAY0 + dt.timedelta(days=d) for d in range(0, 8, 2)],
               1: [DAY0 + dt.timedelta(days=d) for d in range(1, 8, 2)]}  # fmt: skip
    spans = _run_writers(root, days_of, rounds=5)
    # No lock: the two writers' busy spans overlap, each wrote while the other did.
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values())
    table = Warehouse(root).read_table("t")
    assert table.height == 8 * ROWS
    assert table.select("date", "ticker").is_duplicated().sum() == 0
    per_day = table.group_by("date", "writer", "version").len().sort("date")
    assert per_day["writer"].to_list() == [0, 1] * 4
    assert set(per_day["version"]) == {4} and set(per_day["len"]) == {ROWS}


def test_two_writers_of_the_same_day_end_with_one_complete_version(tmp_path):
    root = str(tmp_path / "lake")
    spans = _run_writers(root, {0: [DAY0], 1: [DAY0]}, rounds=20)
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values())
    table = Warehouse(root).read_table("t")
    assert table.height == ROWS
    assert table.select("writer", "version").unique().height == 1  # one writer's, not a mix
    assert not [p for p in Path(root).rglob("*") if ".tmp-" in p.name]


def test_a_reader_during_rewrites_sees_each_day_old_or_new_never_torn(tmp_path):
    db = Warehouse(tmp_path / "lake")
    days = [DAY0, DAY0 + dt.timedelta(days=1)]
    for day in days:
        db.replace_window("t", day_frame(day, 0, 0), day, day)
    seen, done = [], threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            out = db.read("select date, version, count(*) n from t group by date, version")
            seen.append(out.rows())

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for version in range(1, 30):
            for day in days:
                db.replace_window("t", day_frame(day, 0, version), day, day)
    finally:
        done.set()
        reader.join(timeout=60)
    assert len(seen) > 5
    for rows in seen:
        # Each day is present with exactly one version, all of its rows.
        assert sorted(r[0] for r in rows) == days, rows
        assert all(r[2] == ROWS for r in rows), rows
    assert len({r[1] for rows in seen for r in rows}) > 2  # it did see the days change


# A writer killed (SIGKILL) with its transaction staged, or in the middle of its publish.
KILLED_WRITER = textwrap.dedent(
    """
    import datetime as dt, os, sys, time
    from kronos_pipeline import warehouse
    from kronos_pipeline_tests.defs.test_warehouse_processes import DAY0, day_frame

    root, where = sys.argv[1], sys.argv[2]
    if where == "publish":  # after the first rename of the publish, stop
        replace = os.replace
        def slow(src, dst):
            replace(src, dst)
            print("inside", flush=True)
            time.sleep(60)
        warehouse.os.replace = slow
    db = warehouse.Warehouse(root)
    with db.transaction() as tx:
        for d in range(3):
            day = DAY0 + dt.timedelta(days=d)
            tx.replace_window("t", day_frame(day, 0, 1), day, day)
        if where == "staged":
            print("inside", flush=True)
            time.sleep(60)
    """
)


def _kill_inside(root: Path, where: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(root), where],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "inside", proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _versions(db: Warehouse) -> dict[dt.date, tuple[int, int]]:
    out = db.read("select date, min(version), max(version), count(*) from t group by date")
    assert set(out[:, 3]) == {ROWS}  # every day complete
    return {r[0]: (r[1], r[2]) for r in out.rows()}


def test_a_writer_killed_before_or_during_its_publish_leaves_each_day_old_or_new(tmp_path):
    root = tmp_path / "lake"
    db = Warehouse(root)
    days = [DAY0 + dt.timedelta(days=d) for d in range(3)]
    for day in days:
        db.replace_window("t", day_frame(day, 0, 0), day, day)

    _kill_inside(root, "staged")  # nothing published: every day as it was
    assert _versions(db) == {day: (0, 0) for day in days}
    assert [p for p in root.rglob("*") if ".tmp-" in p.name]  # left behind, never read

    _kill_inside(root, "publish")  # one day renamed: new, the others still old
    assert _versions(db) == {days[0]: (1, 1), days[1]: (0, 0), days[2]: (0, 0)}
    # The rerun of the step repairs it.
    for day in days:
        db.replace_window("t", day_frame(day, 0, 1), day, day)
    assert _versions(db) == {day: (1, 1) for day in days}

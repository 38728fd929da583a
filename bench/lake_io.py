"""Write and read times of the warehouse lake on a features-shaped table.

A table of ``--days`` weekdays x ``--tickers`` names x ``--columns`` float columns, written as
one window (one file per day; once from one contiguous frame, once from a concat of daily
frames), rewritten one day at a time (the nightly's write), then read:
one month through ``read_table``, one day and one month through the table's DuckDB view (a
``where`` on the date, as the pipeline's SQL reads), and a full-table aggregate through it.

    .venv/bin/python bench/lake_io.py [--days 2520] [--tickers 500] [--columns 30] [--root DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time

import numpy as np
import polars as pl

from kronos_pipeline.warehouse import Warehouse


def features_frame(days: list[dt.date], tickers: int, columns: int, seed: int = 0):
    """Random floats, one row per (day, ticker)."""
    rng = np.random.default_rng(seed)
    rows = len(days) * tickers
    data = {f"f{i}": rng.standard_normal(rows) for i in range(columns)}
    return pl.DataFrame(
        {
            "date": np.repeat(np.array(days, dtype="datetime64[D]"), tickers),
            "ticker": [f"T{i:04d}" for i in range(tickers)] * len(days),
            **data,
        }
    ).with_columns(pl.col("date").cast(pl.Date))


def timed(label: str, fn) -> object:
    """Run ``fn``, print its wall time in seconds, return its result."""
    start = time.perf_counter()
    out = fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--columns", type=int, default=30)
    parser.add_argument("--root", help="lake folder or URL (default: a temporary folder)")
    args = parser.parse_args()
    days = list(np.busday_offset("2010-01-04", range(args.days)).astype("O"))
    frame = features_frame(days, args.tickers, args.columns)
    print(f"{frame.height} rows, {len(days)} days, {frame.estimated_size('mb'):.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        db = Warehouse(args.root or f"{tmp}/lake")
        timed("write the whole window", lambda: db.replace_window("t", frame, days[0], days[-1]))
        # As the pipeline's frames often are: a concat of daily frames, one Arrow chunk a day.
        chunked = pl.concat(
            [frame.slice(i * args.tickers, args.tickers) for i in range(len(days))], rechunk=False
        )
        timed(
            "write it again from one chunk a day",
            lambda: db.replace_window("t", chunked, days[0], days[-1]),
        )
        last = frame.filter(pl.col("date") == days[-1])
        timed("rewrite one day", lambda: db.replace_window("t", last, days[-1], days[-1]))
        month = timed("read_table one month", lambda: db.read_table("t", days[-21], days[-1]))
        assert month.height == 21 * args.tickers
        day = timed(
            "one day through the view",
            lambda: db.read("select count(*), avg(f0) from t where date = ?", [days[-1]]),
        )
        assert day.item(0, 0) == args.tickers
        month = timed(
            "one month through the view",
            lambda: db.read("select * from t where date between ? and ?", [days[-21], days[-1]]),
        )
        assert month.height == 21 * args.tickers
        total = timed(
            "aggregate the whole table", lambda: db.read("select count(*), avg(f0) from t")
        )
        assert total.item(0, 0) == frame.height


if __name__ == "__main__":
    main()

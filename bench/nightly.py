"""Benchmark: one nightly production run on the real sample, top-100 universe (issue 10).

In a fresh temporary folder: a copy of the vendor files cut at ``--end`` (the vendor's state
the evening before), the history loaded (``backfill --dates``), the fold of the month so far
(``backfill --folds``: its LightGBM models, Kronos checkpoint and scores), then the next
session delivered and ``kronos-pipeline nightly --date <session>`` timed: ingest of the day,
folds, every model's scores and the signal, the labels that matured, the rollups. Prints a
table of wall seconds per command and per nightly step.

    .venv/bin/python bench/nightly.py [--end 2019-10-29] [--top-n 100] [--keep DIR]
        [--state DIR]

``--state DIR``: the history and the month so far are built once (the first call, saved to
DIR) and each call copies DIR to ``DIR-night`` (the same path every time: the warehouse
records its vendor folder's) and times only the night there, so a change to the night's steps
can be measured again in about two minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _runs import REPO, timed
from _runs import steps as steps_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--end", default="2019-10-29", help="the vendor's last day before the night"
    )
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument(
        "--keep", type=Path, help="work in this (new) folder and keep it, e.g. to profile a step"
    )  # with --state, the night's folder is <state>-night, kept until the next call
    parser.add_argument(
        "--state",
        type=Path,
        help="build the history and the month into this folder once, then time only the night "
        "on a copy of it",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    end = dt.date.fromisoformat(args.end)
    if args.keep is not None and args.state is None:
        args.keep.mkdir(parents=True)
    if args.state is not None:  # the vendor folder's path is part of the warehouse's state
        night = args.state.with_name(f"{args.state.name}-night")
        shutil.rmtree(night, ignore_errors=True)
        night.mkdir(parents=True)
    else:
        night = args.keep
    with contextlib.nullcontext(night) if night else tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows, feed = [], None
        if args.state is not None and (args.state / "feed.pickle").is_file():
            shutil.rmtree(root)
            shutil.copytree(args.state, root, symlinks=True)  # copy2: mtimes kept
            feed = pickle.loads((root / "feed.pickle").read_bytes())
            rows.append((f"history and month: copied from {args.state}", 0.0))
        env = _env(root, end, args.top_n)
        if feed is None:
            feed, rows = _history_and_month(root, end, env)
            if args.state is not None:
                (root / "feed.pickle").write_bytes(pickle.dumps(feed))
                shutil.copytree(root, args.state, symlinks=True)
        (day,) = feed.sessions_after(end, 1)
        feed.deliver(day)
        started = time.time()
        wall, out = timed([CLI, "nightly", "--date", str(day)], env)
        steps = steps_of(out)
        signal = root / "data" / "signals" / f"{day}.parquet"
        assert signal.is_file(), out[-2000:]
        to_signal = signal.stat().st_mtime - started  # published before the labels and rollups
        tickers = feed.tickers
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end; python {platform.python_version()}")  # fmt: skip
    print(f"source: {len(tickers)} vendor files cut at {end}; universe top {args.top_n}\n")
    print("| what | wall s |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **nightly --date {day}** (one session, every model, signal) | **{wall:.1f}** |")
    print(f"| - the signal file written, from the command's start | {to_signal:.1f} |")
    for name, seconds in steps:
        print(f"| - {name} | {seconds:.1f} |")


CLI = str(Path(sys.executable).parent / "kronos-pipeline")


def _env(root: Path, end: dt.date, top_n: int) -> dict[str, str]:
    """The CLI's environment for the folder ``root``: production settings, top ``top_n``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")},
        "DAGSTER_HOME": str(root / "home"),
        "KRONOS_MODE": "full",
        "KRONOS_DATA__VENDOR_DIR": str(root / "vendor"),
        "KRONOS_WAREHOUSE__DATA_DIR": str(root / "data"),
        "KRONOS_REPORT__OUTPUT_ROOT": str(root / "runs"),
        "KRONOS_UNIVERSE__TOP_N": str(top_n),
        "KRONOS_FOLDS__FIRST_TEST_MONTH": f"{end:%Y-%m}",
    }


def _history_and_month(root: Path, end: dt.date, env: dict[str, str]):
    """The vendor folder cut at ``end``, its history loaded and the month so far scored; the
    feed and the timed rows."""
    from kronos_pipeline_tests.vendor_feed import SHARED_VENDOR_DIR, VendorFeed

    tickers = sorted(
        p.name.split("-")[1] for p in SHARED_VENDOR_DIR.glob("DA-*-T-*.csv.gz")
        if p.stat().st_size > 1000
    )  # fmt: skip
    feed = VendorFeed.create(root / "vendor", tickers=tickers, end=end)
    home = root / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    first = feed.read().bars["date"].min()
    rows = []
    wall, _ = timed([CLI, "backfill", "--dates", f"{first}:{end}"], env)
    rows.append((f"history: backfill --dates {first}:{end}", wall))
    wall, _ = timed([CLI, "backfill", "--folds", f"{end:%Y-%m}:{end:%Y-%m}"], env)
    rows.append((f"the month so far: backfill --folds {end:%Y-%m} (models fitted)", wall))
    return feed, rows


if __name__ == "__main__":
    main()

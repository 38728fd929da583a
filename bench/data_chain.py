"""Benchmark: the whole data chain on a vendor directory (default: ../shared/data/sp500_daily).

Stages: ingest (read + validate + quarantine) -> prices_pit -> universe -> features -> labels,
then the same tables written to a fresh warehouse lake (one Parquet file per table and day). Prints one table: wall seconds per
stage, rows out, and the process's peak RSS after each stage (ru_maxrss, so it only grows).

    .venv/bin/python bench/data_chain.py [--vendor-dir DIR] [--top-n N] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import polars as pl

from kronos_pipeline.data.ingest import read_vendor_dir
from kronos_pipeline.data.pit import prices_pit
from kronos_pipeline.data.sources import read_constituents
from kronos_pipeline.features.build import features
from kronos_pipeline.features.labels import labels_forward
from kronos_pipeline.features.universe import universe
from kronos_pipeline.settings import REPO_ROOT, load_settings
from kronos_pipeline.warehouse import Warehouse


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vendor-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "sp500_daily")
    )
    parser.add_argument("--top-n", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    settings = load_settings()
    cfg = settings.universe
    rows: list[tuple[str, float, int, float]] = []

    def stage(name: str, fn):
        started = time.perf_counter()
        out = fn()
        rows.append(
            (name, time.perf_counter() - started, getattr(out, "height", 0), peak_rss_mib())
        )
        return out

    vendor = Path(args.vendor_dir)
    chain_start = time.perf_counter()
    ingest = stage("ingest + quarantine", lambda: read_vendor_dir(vendor))
    prices = stage("prices_pit", lambda: prices_pit(ingest.bars))
    members = stage(
        "universe",
        lambda: universe(
            prices,
            cfg.min_history_days,
            cfg.min_price,
            cfg.min_median_dollar_volume,
            cfg.liquidity_window_days,
            args.top_n,
        ),
    )
    sectors = read_constituents(vendor / "constituents.csv")
    feats = stage("features", lambda: features(prices, sectors))
    labels = stage(
        "labels_forward", lambda: labels_forward(prices, members, settings.labels.horizons)
    )
    compute_s = time.perf_counter() - chain_start
    if not args.no_write:
        with tempfile.TemporaryDirectory() as tmp:
            db = Warehouse(Path(tmp) / "bench_lake")
            start, end = ingest.bars["date"].min(), ingest.bars["date"].max()

            def write_all() -> pl.DataFrame:
                db.replace_window("raw_bars", ingest.bars, start, end)
                db.replace_window(
                    "bars_quarantine", ingest.quarantine, start, end, include_null_dates=True
                )
                db.replace_window("prices_pit", prices, start, end)
                db.replace_window("universe", members, start, end)
                db.replace_window("features", feats, start, end)
                db.replace_window("labels_forward", labels, start, end)
                return labels

            stage("lake writes (6 tables)", write_all)
    total_s = time.perf_counter() - chain_start

    print(
        f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.python_version()}, polars {pl.__version__}"
    )
    print(
        f"source: {vendor} ({ingest.files.height} files, {int(ingest.files['lines'].sum()):,} lines, "
        f"{ingest.quarantine.height} quarantined)"
    )
    print(f"| {'stage':<26} | {'wall s':>7} | {'rows out':>11} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 28}|{'-' * 9}|{'-' * 13}|{'-' * 14}|")
    for name, secs, n, rss in rows:
        print(f"| {name:<26} | {secs:7.2f} | {n:11,} | {rss:12.0f} |")
    print(f"| {'chain (compute)':<26} | {compute_s:7.2f} | {'':>11} | {'':>12} |")
    print(
        f"| {'chain (compute + writes)':<26} | {total_s:7.2f} | {'':>11} | {peak_rss_mib():12.0f} |"
    )
    print(f"features: {feats.width - 3} columns")


if __name__ == "__main__":
    main()

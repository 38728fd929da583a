"""Benchmark: a night run by Dagster's automation alone, from the dropped file to the signal.

The scenario of ``kronos_pipeline_tests/defs/test_automation_daemon.py``: 12 real names moved
onto the sessions ending at today's due one, the history and the fold's models loaded by the
CLI (timed, not part of the night), ``dagster dev`` started, then the due session's files
dropped into the vendor folder. Prints every run the automation started (its assets, when it
was queued, started and ended, seconds after the drop) and the seconds from the drop to
``data/signals/<day>.parquet``. The settings are the test's small ones (``FAST``): this
measures the automation's latency (ticks, queue, run start-up), not the models.

    .venv/bin/python bench/automation_night.py
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _runs import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    sys.path.insert(0, str(REPO))
    import dagster as dg

    from kronos_pipeline.defs.partitions import due_session, month_key
    from kronos_pipeline.instance import instance_at
    from kronos_pipeline_tests.defs.test_nightly import FAST
    from kronos_pipeline_tests.vendor_feed import LIQUID_TICKERS, VendorFeed, redated_source

    day = due_session()
    cli = str(Path(sys.executable).parent / "kronos-pipeline")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = redated_source(root / "source", LIQUID_TICKERS, day, 421)
        feed = VendorFeed.create(root / "vendor", tickers=list(LIQUID_TICKERS),
                                 end=day - dt.timedelta(days=1), source_dir=source)  # fmt: skip
        bars = feed.read().bars
        first, last = bars["date"].min(), bars["date"].max()
        home = root / "home"
        home.mkdir()
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")},
            **FAST,
            "KRONOS_FOLDS__FIRST_TEST_MONTH": month_key(day),
            "KRONOS_DATA__PARTITIONS_START": str(first),
            "KRONOS_DATA__VENDOR_DIR": str(feed.target_dir),
            "DAGSTER_HOME": str(home),
            "KRONOS_WAREHOUSE__DATA_DIR": str(root / "data"),
            "KRONOS_REPORT__OUTPUT_ROOT": str(root / "runs"),
            "DAGSTER_EVENT_BATCH_SIZE": "1000",
            "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
        }
        started = time.monotonic()
        subprocess.run([cli, "backfill", "--dates", f"{first}:{last}", "--folds",
                        f"{month_key(day)}:{month_key(day)}"], cwd=REPO, env=env, check=True,
                       capture_output=True)  # fmt: skip
        history_s = time.monotonic() - started
        log = root / "dagster_dev.log"
        dagster = Path(sys.executable).with_name("dagster")
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                 "-p", str(_free_port())], cwd=REPO, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        signal_file = root / "data" / "signals" / f"{day}.parquet"
        try:
            while "Serving dagster-webserver" not in log.read_text():
                time.sleep(1)
            dropped = time.time()
            feed.deliver(day)
            while not signal_file.exists():
                if proc.poll() is not None or time.time() - dropped > 3600:
                    raise SystemExit(f"no signal:\n{log.read_text()[-3000:]}")
                time.sleep(1)
            signal_s = signal_file.stat().st_mtime - dropped
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)
        instance = instance_at(home)
        rows = []
        try:
            for run in instance.get_runs():
                if run.tags.get("dagster/sensor_name") != "kronos_automation":
                    continue
                stats = instance.get_run_stats(run.run_id)
                assets = sorted(k.to_user_string() for k in run.asset_selection or [])
                queued = instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
                rows.append((queued - dropped, (stats.start_time or 0) - dropped,
                             (stats.end_time or 0) - dropped, run.status.value,
                             ", ".join(assets)[:70]))  # fmt: skip
        finally:
            instance.dispose()
        del dg
    print(f"automation night, {platform.node()}, {os.cpu_count()} CPUs, session {day}")
    print(f"history + fold models by the CLI (not the night): {history_s:.1f} s")
    print("| queued s | started s | ended s | status | assets |")
    print("|---|---|---|---|---|")
    for row in sorted(rows):
        print(f"| {row[0]:.1f} | {row[1]:.1f} | {row[2]:.1f} | {row[3]} | {row[4]} |")
    print(f"drop -> data/signals/{day}.parquet: {signal_s:.1f} s over {len(rows)} runs")


if __name__ == "__main__":
    main()

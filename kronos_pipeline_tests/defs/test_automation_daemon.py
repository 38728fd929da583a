"""The pipeline runs by itself: a real ``dagster dev`` daemon, no command given.

A vendor folder holds the real rows of 12 names moved onto the exchange sessions that end the
session before today's due one (``vendor_feed.redated_source``), so the newest weekday
partition is today's. The history is loaded and the fold's models fitted by the CLI, as a
deployment starts. Then ``dagster dev`` (webserver and daemon, loopback, this repository's
``dagster.yaml``) is started, with the alert webhook pointed at a receiver on 127.0.0.1, and
the due session's files are dropped into the folder, one line of them with a non-positive
close (quarantined; nothing blocks). The planted failure is the universe: 12 names, below the
20 members the WARN check ``universe_breadth`` asks of every day.

With nothing launched by hand, the automation conditions must take the day from the files to
``data/signals/<day>.parquet``: the observation of ``vendor_files`` sees a new data version,
the session's bars run, then everything per day, the labels, the folds and the scores. The
planted check must be posted to the webhook exactly once.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl

from kronos_pipeline.defs.partitions import due_session, month_key
from kronos_pipeline.instance import instance_at
from kronos_pipeline.runs import CLI_TAG
from kronos_pipeline_tests.defs.test_alerts import Receiver
from kronos_pipeline_tests.defs.test_alerts_daemon import _free_port, _wait, stop_group
from kronos_pipeline_tests.defs.test_nightly import FAST, _cli
from kronos_pipeline_tests.vendor_feed import LIQUID_TICKERS, VendorFeed, redated_source

REPO = Path(__file__).resolve().parents[2]
HISTORY = 420  # sessions before the due one: features look back 252, the universe 253
PLANTED = "KO"  # its line of the due session has a non-positive close
SIGNAL_TIMEOUT_S = 900
QUIET_S = 20  # more sensor ticks after the post: nothing is posted twice


def _plant_bad_close(feed: VendorFeed, ticker: str, day: dt.date) -> None:
    """Rewrite ``ticker``'s row of ``day`` in its file with close = -1 (a rejected line)."""
    text = feed.path(ticker).read_bytes()
    lines = gzip.decompress(text).decode().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(day.isoformat()):
            fields = line.split(",")
            fields[4] = "-1.0"
            lines[i] = ",".join(fields)
            break
    else:
        raise AssertionError(f"{ticker} has no row on {day}")
    tmp = feed.path(ticker).with_name(feed.path(ticker).name + ".part")
    tmp.write_bytes(gzip.compress("".join(lines).encode(), mtime=0))
    tmp.replace(feed.path(ticker))


def test_a_dropped_day_becomes_a_signal_with_no_command_given(tmp_path):
    day = due_session()
    root = tmp_path
    source = redated_source(root / "source", LIQUID_TICKERS, day, HISTORY + 1)
    feed = VendorFeed.create(
        root / "vendor", tickers=list(LIQUID_TICKERS), end=day - dt.timedelta(days=1),
        source_dir=source,
    )  # fmt: skip
    first = feed.read().bars["date"].min()
    home = root / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    hook = Receiver()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")},
        **FAST,
        "KRONOS_FOLDS__FIRST_TEST_MONTH": month_key(day),
        "KRONOS_DATA__PARTITIONS_START": str(first),
        "KRONOS_DATA__VENDOR_DIR": str(feed.target_dir),
        "KRONOS_ALERTS__WEBHOOK_URL": hook.url,
        "KRONOS_ALERTS__CHECK_SENSOR_INTERVAL_S": "5",
        "DAGSTER_HOME": str(home),
        "KRONOS_WAREHOUSE__DATA_DIR": str(root / "data"),
        "KRONOS_REPORT__OUTPUT_ROOT": str(root / "runs"),
        "DAGSTER_EVENT_BATCH_SIZE": "1000",
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    }
    # The history and the fold's models, as a deployment starts (the day itself is not there).
    last = feed.read().bars["date"].max()
    _cli(env, "backfill", "--dates", f"{first}:{last}", "--folds",
         f"{month_key(day)}:{month_key(day)}")  # fmt: skip
    signal_file = root / "data" / "signals" / f"{day}.parquet"
    assert not signal_file.exists()

    log = root / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    port = str(_free_port())
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait("the webserver", lambda: "Serving dagster-webserver" in log.read_text(), 180,
              proc, log)  # fmt: skip
        # The vendor delivers the session: nothing else is done by hand from here on.
        feed.deliver(day)
        _plant_bad_close(feed, PLANTED, day)
        _wait(f"the signal of {day}", signal_file.exists, SIGNAL_TIMEOUT_S, proc, log)

        def planted_posts():
            return [
                p for p in hook.posts
                if p.get("event") == "check_failed" and p.get("check") == "universe_breadth"
                and p.get("partition") in (str(day), f"{day}..{day}")
            ]  # fmt: skip

        # (the history's own run failed it too, over its range: posted once, for that range)
        _wait("the planted check's alert", planted_posts, 120, proc, log)
        time.sleep(QUIET_S)
        posts = planted_posts()
        assert len(posts) == 1, posts
        assert posts[0]["asset"] == "universe" and posts[0]["severity"] == "WARN"
        assert "fewer than 20 members" in posts[0]["description"]
        # `nightly` beside the running automation would run the night twice: it refuses.
        with instance_at(home) as before:
            cli_runs_before = [r.run_id for r in before.get_runs() if r.tags.get(CLI_TAG)]
        cli = Path(sys.executable).parent / "kronos-pipeline"
        refused = subprocess.run([str(cli), "nightly", "--date", str(day)], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "runs the automation (sensor kronos_automation, last tick" in refused.stderr
    finally:
        stop_group(proc)
        hook.server.shutdown()

    published = pl.read_parquet(signal_file)
    assert {"lightgbm", "kronos_walkforward", "kronos_head"} <= set(published["model"])
    assert PLANTED not in set(published["ticker"])  # its bar of the day was rejected
    instance = instance_at(home)
    try:
        runs = instance.get_runs()
        automated = [r for r in runs if r.tags.get("dagster/sensor_name") == "kronos_automation"]
        assert automated, "no run was started by the automation sensor"
        cli_runs = [r.run_id for r in runs if r.tags.get(CLI_TAG)]
        assert cli_runs == cli_runs_before, "the refused nightly submitted runs"
        for asset in ("raw_bars", "features", "signals", "kronos_forecasts"):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(day)]),
                limit=1,
            ).records
            assert records, f"{asset} {day} was not materialized"
            run = instance.get_run_by_id(records[0].run_id)
            assert run.tags.get("dagster/sensor_name") == "kronos_automation", (asset, run.tags)
    finally:
        instance.dispose()

"""A nightly run and a failed one as the Dagster UI shows them, and one day re-run from the UI.

The instance is prepared as a deployment runs, through the CLI: a vendor folder (the real
sample, 12 names) cut at ``HISTORY_END``; ``backfill`` loads the history and the first fold
(its models and the scores of its days so far); the next session's file arrives and
``nightly --date`` takes it through the chain (data, folds, scores and forecasts, labels);
the session after it never arrives, so its ``nightly`` stops at the data step's blocking
completeness check. Then ``dagster dev`` serves that instance (its ``kronos_automation``
sensor stopped: the runs looked at are the CLI's and the one the test launches), and headless
Chromium checks:

* in the Partitions tab of ``raw_bars`` and of ``kronos_forecasts``, over the weekdays around
  the two sessions, exactly the night's session and the backfilled days before it are
  materialized, the failed session and the days after it are not (listed as missing or
  failed), and the night's partition shows the nightly's run, the day before it the
  backfill's; the failed run shows as a failure;
* one day of ``kronos_forecasts`` (the night's) re-run from its Materialize dialog runs to
  success, and in the instance only that day's forecasts got a new materialization: every
  other partition's latest materialization keeps its run id.

Settings are small (12 names, 1 sampled path, 3 seconds of Kronos training, 30 boosting
rounds) but the steps are the production ones: the checkpoint, the heads and LightGBM are
fitted and every model scores.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from kronos_pipeline.instance import instance_at
from kronos_pipeline_tests.defs.test_alerts_daemon import stop_automation
from kronos_pipeline_tests.ui.browser import (
    REPO,
    browser_tab,
    dagster_dev,
    dagster_home,
    launch_partition_run,
    wait_for_run,
)
from kronos_pipeline_tests.vendor_feed import LIQUID_TICKERS, VendorFeed, session_before

HISTORY_END = dt.date(2019, 10, 4)  # the backfill's last session: a Friday of the first fold
FIRST_FOLD = "2019-10"
HISTORY_SESSIONS = 520  # vendor rows per name up to HISTORY_END
FORECASTS = dg.AssetKey("kronos_forecasts")
# The deployment's settings: the first fold starts in HISTORY_END's month, so the backfill
# scores 2019-10-01..04 and no label of a scored day has matured by the failed session (the
# evaluation waits: "nothing to evaluate yet").
SETTINGS = {
    "KRONOS_LABELS__HORIZONS": "[5, 10]",
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "253",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": FIRST_FOLD,
    "KRONOS_LIGHTGBM__NUM_BOOST_ROUND": "30",
    "KRONOS_LIGHTGBM__MIN_DATA_IN_LEAF": "20",
    "KRONOS_LIGHTGBM__NUM_THREADS": "1",
    "KRONOS_KRONOS__LOOKBACK": "40",
    "KRONOS_KRONOS__SAMPLE_COUNT": "1",
    "KRONOS_KRONOS__SCORING_CADENCE": "daily",  # every day has forecasts, not only Fridays
    "KRONOS_KRONOS__DEVICE": "cpu",
    "KRONOS_KRONOS__TRAIN_MAX_MINUTES": "0.05",
    "KRONOS_KRONOS__TRAIN_EPOCHS": "1",
    "KRONOS_KRONOS__TRAIN_WINDOWS_PER_EPOCH": "64",
    "KRONOS_KRONOS__TRAIN_BATCH_SIZE": "16",
    "KRONOS_KRONOS__TRAIN_HORIZON": "10",
    "KRONOS_KRONOS__TRAIN_HISTORY_DAYS": "300",
    "KRONOS_TRIPWIRES__PIT_DATES": "2",
}


@dataclass(frozen=True)
class Scenario:
    base: str  # dagster dev's URL
    home: Path  # its DAGSTER_HOME
    night: str  # the session whose nightly ran
    failed: str  # the session whose file never arrived
    window: list[str]  # weekday partitions around them, oldest first
    failed_run: str  # the failed nightly's data run
    # (partition, run id) of every kronos_forecasts materialization, newest first
    forecasts: list[tuple[str, str]]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``kronos-pipeline`` of this checkout (``python -m`` from the repository root)."""
    return subprocess.run(
        [sys.executable, "-m", "kronos_pipeline.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _materializations(home: Path) -> list[tuple[str, str]]:
    """(partition, run id) of every kronos_forecasts materialization, newest first."""
    instance = instance_at(home)
    try:
        records = instance.fetch_materializations(FORECASTS, limit=1000).records
        return [(r.asset_materialization.partition, r.run_id) for r in records]
    finally:
        instance.dispose()


def _latest_runs(materializations: list[tuple[str, str]]) -> dict[str, str]:
    """Partition -> run id of its latest materialization."""
    latest: dict[str, str] = {}
    for partition, run_id in materializations:
        latest.setdefault(partition, run_id)
    return latest


def _deploy(root: Path) -> tuple[dict[str, str], dt.date, dt.date]:
    """The instance in ``root/home`` as a deployment leaves it: the history and the first
    fold backfilled, one nightly run, then a nightly whose file never arrived. Returns the
    environment of the CLI (its settings, instance and warehouse), the night's session and
    the failed one."""
    feed = VendorFeed.create(
        root / "vendor", tickers=list(LIQUID_TICKERS),
        start=session_before(HISTORY_END, HISTORY_SESSIONS), end=HISTORY_END,
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")},
        **SETTINGS,
        "DAGSTER_HOME": str(dagster_home(root / "home")),
        "KRONOS_DATA__VENDOR_DIR": str(feed.target_dir),
        "KRONOS_WAREHOUSE__DATA_DIR": str(root / "data"),
        "KRONOS_REPORT__OUTPUT_ROOT": str(root / "runs"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    first = feed.read().bars["date"].min()
    done = _cli(env, "backfill", "--dates", f"{first}:{HISTORY_END}",
                "--folds", f"{FIRST_FOLD}:{FIRST_FOLD}")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    night, failed = feed.sessions_after(HISTORY_END, 2)
    feed.deliver(night)
    done = _cli(env, "nightly", "--date", str(night))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The vendor's file for `failed` never arrives: its nightly stops at the data step.
    done = _cli(env, "nightly", "--date", str(failed))
    assert done.returncode != 0 and "FAILED raw_bars:bars_complete" in done.stdout, done.stdout
    return env, night, failed


@contextmanager
def _serving(env: dict[str, str], night: dt.date, failed: dt.date) -> Iterator[Scenario]:
    """``dagster dev`` on the deployed instance, its automation stopped, and what the test
    needs to know of the instance."""
    home = Path(env["DAGSTER_HOME"])
    instance = instance_at(home)
    try:
        failed_runs = instance.get_runs(dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE], tags={"dagster/partition": str(failed)}
        ))  # fmt: skip
    finally:
        instance.dispose()
    assert len(failed_runs) == 1
    window = [
        d.strftime("%Y-%m-%d")
        for d in pd.bdate_range(night - pd.offsets.BDay(2), failed + pd.offsets.BDay(2))
    ]
    # The automation would run the newest partitions (today's, not the sample's) by itself;
    # the test looks at the CLI's runs and the one it launches.
    stop_automation(env)
    with dagster_dev(env, home / "dagster_dev.log") as base:
        yield Scenario(
            base=base, home=home, night=str(night), failed=str(failed), window=window,
            failed_run=failed_runs[0].run_id, forecasts=_materializations(home),
        )  # fmt: skip


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    env, night, failed = _deploy(tmp_path_factory.mktemp("nightly_ui"))
    with _serving(env, night, failed) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def page(scenario, tmp_path_factory):
    with browser_tab(scenario.base, tmp_path_factory.mktemp("screens")) as tab:
        yield tab


def _partitions_tab(page, base: str, asset: str, keys: list[str], partition: str = "") -> None:
    """The asset's Partitions tab on the range ``keys[0]..keys[-1]`` (typed into the range
    input above the health bar), with ``partition``'s detail if given."""
    detail = f"&partition={partition}" if partition else ""
    page.goto(f"{base}/assets/{asset}?view=partitions{detail}")
    selection = page.locator('input[placeholder^="ex: "]').first
    selection.fill(f"[{keys[0]}...{keys[-1]}]")
    selection.press("Enter")
    page.get_by_text(f"{len(keys)} Partitions Selected", exact=True).wait_for()


def _list_only(page, statuses: set[str]) -> None:
    """Tick the status filters of the partition list: ``statuses`` shown, the others not."""
    from playwright.sync_api import expect

    for status in ("Failed", "Materialized", "Materializing", "Missing"):
        label = re.compile(rf"^{status} \(\d+\)$")
        box = page.get_by_role("checkbox", name=label)  # styled: the input itself is hidden
        if box.is_checked() != (status in statuses):
            page.get_by_text(label).click()
        expect(box).to_be_checked(checked=status in statuses)


def _expect_listed(page, shown: list[str], hidden: list[str]) -> None:
    """The partition list holds every key of ``shown`` and none of ``hidden``."""
    from playwright.sync_api import expect

    for key in hidden:
        expect(page.locator(f'[data-tooltip="{key}"]')).to_have_count(0)
    for key in shown:
        expect(page.locator(f'[data-tooltip="{key}"]')).to_have_count(1)


def _expect_partition_run(page, partition: str, run_id: str, not_run_id: str = "") -> None:
    """The open partition detail: materialized, by run ``run_id`` (not by ``not_run_id``)."""
    from playwright.sync_api import expect

    heading = page.locator(f'[data-tooltip="{partition}"]')  # the detail's heading, and its row
    heading.get_by_text("Materialized", exact=True).wait_for()
    page.locator(f'a[href^="/runs/{run_id}"]').first.wait_for()
    if not_run_id:
        expect(page.locator(f'a[href^="/runs/{not_run_id}"]')).to_have_count(0)


def test_a_nightly_materializes_its_day_a_failed_day_stays_missing_and_a_ui_rerun_renews_one_day(
    scenario: Scenario, page
) -> None:
    from playwright.sync_api import expect

    s, base = scenario, scenario.base
    done = [k for k in s.window if k <= s.night]  # backfilled days, then the night's session
    missing = [k for k in s.window if k >= s.failed]  # the failed session, then later days
    latest = _latest_runs(s.forecasts)
    nightly_run, backfill_run = latest[s.night], latest[done[-2]]
    # In the instance: the nightly's forecasts are the night's session alone; the failed
    # session has none.
    assert [p for p, run in s.forecasts if run == nightly_run] == [s.night]
    assert nightly_run != backfill_run and s.failed not in latest

    # The UI: materialized exactly the backfilled days and the night's session; the failed
    # session and what follows it are not, in the data and in the forecasts.
    for asset in ("raw_bars", "kronos_forecasts"):
        _partitions_tab(page, base, asset, s.window)
        page.get_by_text(f"Materialized ({len(done)})", exact=True).wait_for()
        _list_only(page, {"Materialized"})
        _expect_listed(page, shown=done, hidden=missing)
        _list_only(page, {"Failed", "Missing"})
        _expect_listed(page, shown=missing, hidden=done)
    # The night's forecasts come from the nightly's run; the day before, from the backfill's.
    _partitions_tab(page, base, "kronos_forecasts", s.window, partition=s.night)
    _expect_partition_run(page, s.night, nightly_run, not_run_id=backfill_run)
    _partitions_tab(page, base, "kronos_forecasts", s.window, partition=done[-2])
    _expect_partition_run(page, done[-2], backfill_run, not_run_id=nightly_run)
    # The failed nightly's data run is shown as a failure.
    page.goto(f"{base}/runs/{s.failed_run}")
    page.get_by_text("Failure", exact=True).first.wait_for()

    # Re-run the night's forecasts from the UI (the session is older than the 90 days the
    # dialog offers first).
    short_id = launch_partition_run(page, base, "kronos_forecasts", s.night, show_all=True)
    run = wait_for_run(base, short_id)
    assert run["status"] == "SUCCESS", run["status"]
    assert {t["key"]: t["value"] for t in run["tags"]}["dagster/partition"] == s.night

    # Only the night's forecasts were materialized again, by that run; every other day's
    # latest materialization keeps its run id (the failed session still has none).
    after = _materializations(s.home)
    assert after == [(s.night, run["runId"]), *s.forecasts]
    assert _latest_runs(after) == {**latest, s.night: run["runId"]}
    _partitions_tab(page, base, "kronos_forecasts", s.window, partition=s.night)
    _expect_partition_run(page, s.night, run["runId"], not_run_id=nightly_run)
    expect(page.get_by_text(f"Materialized ({len(done)})", exact=True)).to_be_visible()

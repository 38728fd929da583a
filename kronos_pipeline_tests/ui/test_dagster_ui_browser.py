"""The Dagster UI in a real browser: headless Chromium, driven by Playwright.

``dagster dev`` (webserver + daemon) is started on loopback against this repository's
``workspace.yaml``, with a temporary instance and warehouse. The browser checks what people
use the UI for: the catalog lists every asset of the code location, an asset's checks are
shown, every sensor (the alerts and the ``kronos_automation`` sensor) is listed,
the jobs page lists every job, and a partition of ``raw_bars`` materialized from the asset
page's dialog runs to success (through the queued run coordinator of
``dagster_home/dagster.yaml``) and writes its day to the warehouse lake.

The partition materialized is the newest session that is due (``YYYY-MM-DD``: its vendor
file is due at 22:30 New York, the hour its weekday partition opens), typed into the dialog's
partition selection. The newest partition ("Latest" in the dialog) can be an exchange holiday,
which would materialize as "no session".

``dagster dev``, Chromium and the dialog are driven by ``kronos_pipeline_tests.ui.browser``.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from kronos_pipeline.definitions import defs
from kronos_pipeline.defs.partitions import day_key, due_session
from kronos_pipeline.settings import get_settings
from kronos_pipeline_tests.defs.test_alerts_daemon import stop_automation
from kronos_pipeline_tests.ui.browser import (
    RUN_END,
    browser_tab,
    dagster_dev,
    dagster_home,
    launch_partition_run,
    ui_runs,
)

SYNTHETIC_DAYS = 400  # the synthetic market of the UI instance: these many days up to today


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    """Base URL of ``dagster dev`` on a free loopback port; stopped after the module."""
    home = dagster_home(tmp_path_factory.mktemp("dagster_home"))
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        KRONOS_WAREHOUSE__DATA_DIR=str(tmp_path_factory.mktemp("warehouse")),
        # A small synthetic market that runs to today: it covers the newest due session and
        # more than a year before it, so that session has every bar its completeness
        # check expects.
        KRONOS_DATA__SYNTHETIC_TICKERS="30",
        KRONOS_DATA__SYNTHETIC_START=(
            dt.date.today() - dt.timedelta(days=SYNTHETIC_DAYS)
        ).isoformat(),
        KRONOS_DATA__SYNTHETIC_END=dt.date.today().isoformat(),
    )
    # The automation would run the newest partitions of the market by itself; the UI tests
    # launch their own runs and look at exactly those.
    stop_automation(env)
    with dagster_dev(env, home / "dagster_dev.log") as base:
        yield base


@pytest.fixture(scope="module")
def page(dagster_ui, tmp_path_factory):
    with browser_tab(dagster_ui, tmp_path_factory.mktemp("screens")) as tab:
        yield tab


def _due_day() -> str:
    """The newest session whose vendor file is due (22:30 New York): the newest weekday
    partition that is a session, inside the fixture's synthetic market."""
    return day_key(due_session(calendar=get_settings().data.calendar))


def test_the_newest_due_session_is_a_partition_inside_the_market() -> None:
    from kronos_pipeline.defs.partitions import day_partitions

    day = _due_day()
    assert day in day_partitions.get_partition_keys()
    assert dt.date.fromisoformat(day) <= dt.date.today()
    assert dt.date.today() - dt.timedelta(days=SYNTHETIC_DAYS) < dt.date.fromisoformat(day)


def _asset_names() -> list[str]:
    graph = defs.resolve_asset_graph()
    return sorted(key.to_user_string() for key in graph.get_all_asset_keys())


def test_catalog_lists_every_asset(dagster_ui, page) -> None:
    page.goto(dagster_ui + "/assets")
    names = _asset_names()
    assert {
        "raw_bars", "prices_pit", "lightgbm_models", "baseline_scores", "kronos_forecasts",
        "kronos_scores", "signals", "evaluation_report",
    } <= set(names)  # fmt: skip
    page.set_viewport_size({"width": 1400, "height": 2400})  # the table renders visible rows
    try:
        for name in names:
            page.get_by_text(name, exact=True).first.wait_for()
    finally:
        page.set_viewport_size({"width": 1400, "height": 900})


def test_asset_page_shows_its_checks(dagster_ui, page) -> None:
    graph = defs.resolve_asset_graph()
    prices = next(k for k in graph.get_all_asset_keys() if k.to_user_string() == "prices_pit")
    checks = sorted(c.name for c in graph.get(prices).check_keys)
    assert "history_complete" in checks
    page.goto(dagster_ui + "/assets/prices_pit?view=checks")
    for check in checks:
        page.get_by_text(check, exact=True).first.wait_for()


def test_automation_lists_the_sensors(dagster_ui, page) -> None:
    sensors = sorted(s.name for s in defs.sensors)
    assert not defs.schedules  # the assets' automation conditions run the night
    assert sensors == [
        "alert_on_check_failure", "alert_on_run_failure", "alert_on_stale_data",
        "kronos_automation", "observe_vendor_folder",
    ]  # fmt: skip
    page.goto(dagster_ui + "/automation")
    for name in sensors:
        page.get_by_text(name, exact=True).first.wait_for()


def test_jobs_page_lists_every_job(dagster_ui, page) -> None:
    jobs = sorted(j.name for j in defs.jobs)
    assert {"data_job", "labels_job", "folds_job", "scoring_job", "evaluation_job"} <= set(jobs)
    page.goto(dagster_ui + "/jobs")
    for job in jobs:
        page.get_by_text(job, exact=True).first.wait_for()


def test_materialize_a_partition_from_the_asset_page(dagster_ui, page) -> None:
    day = _due_day()
    # raw_bars and bars_quarantine come from one multi-asset: the UI asks to take both. The
    # newest due session is among the 90 days the dialog offers (7,000 weekday partitions).
    short_id = launch_partition_run(page, dagster_ui, "raw_bars", day, confirm=True)

    # The instance runs it (queued run coordinator, daemon) to the end...
    deadline = time.monotonic() + 300
    while True:
        # Only the run launched here (the automation adds runs of its own, tagged with the
        # sensor that started them).
        runs = ui_runs(dagster_ui)
        assert [r["runId"][:8] for r in runs] == [short_id]
        if runs[0]["status"] in RUN_END or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert runs[0]["status"] == "SUCCESS", runs[0]["status"]
    partition = {t["key"]: t["value"] for t in runs[0]["tags"]}["dagster/partition"]
    assert partition == day

    # ...and the UI shows it: the run as a success, the asset as materialized for it.
    run_id = runs[0]["runId"]
    page.goto(dagster_ui + "/runs")
    page.locator(f'a[href="/runs/{run_id}"]').first.wait_for()
    page.goto(dagster_ui + f"/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for()
    page.goto(dagster_ui + f"/assets/raw_bars?view=partitions&partition={partition}")
    # The partition's detail: its heading carries the "Materialized" tag, and its run is ours.
    heading = page.locator(f'[data-tooltip="{partition}"]')
    heading.get_by_text("Materialized", exact=True).wait_for()
    page.locator(f'a[href^="/runs/{run_id}"]').first.wait_for()
    page.goto(dagster_ui + "/assets/raw_bars")
    page.get_by_text("Latest materialization").wait_for()
    assert page.get_by_text("Never materialized").count() == 0

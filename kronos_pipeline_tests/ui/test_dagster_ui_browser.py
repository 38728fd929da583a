"""The Dagster UI in a real browser: headless Chromium, driven by Playwright.

``dagster dev`` (webserver + daemon) is started on loopback against this repository's
``workspace.yaml``, with a temporary instance and warehouse. The browser checks what people
use the UI for: the catalog lists every asset of the code location, an asset's checks are
shown, every sensor (the alerts and the ``kronos_automation`` sensor) is listed,
the jobs page lists every job, and a partition of ``raw_bars`` materialized from the asset
page's dialog runs to success (through the queued run coordinator and the
``duckdb_warehouse`` pool of ``dagster_home/dagster.yaml``).

The partition materialized is the newest session that is due (``YYYY-MM-DD``: its vendor
file is due at 22:30 New York, the hour its weekday partition opens), typed into the dialog's
partition selection. The newest partition ("Latest" in the dialog) can be an exchange holiday,
which would materialize as "no session".

Chromium: ``KRONOS_TEST_CHROMIUM``, else ``/usr/bin/chromium`` (Debian: ``apt-get install
chromium``), else ``chromium`` on PATH. Missing, the test fails and says how to install it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kronos_pipeline.definitions import defs
from kronos_pipeline.defs.partitions import day_key, due_session
from kronos_pipeline.settings import get_settings
from kronos_pipeline_tests.defs.test_alerts_daemon import stop_automation

REPO = Path(__file__).resolve().parents[2]
LOCATION = "kronos_pipeline.definitions"
SYNTHETIC_DAYS = 400  # the synthetic market of the UI instance: these many days up to today
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    for candidate in (
        os.environ.get("KRONOS_TEST_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(
        "No Chromium for the UI test: install it (Debian/Ubuntu: apt-get install chromium) "
        "or set KRONOS_TEST_CHROMIUM to a Chromium/Chrome executable."
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _location_loaded(base: str) -> bool:
    data = _graphql(
        base,
        "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
        "locationOrLoadError { __typename } } } } }",
    )
    entries = data["workspaceOrError"]["locationEntries"]
    return any(
        e["name"] == LOCATION
        and e["loadStatus"] == "LOADED"
        and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        for e in entries
    )


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    """Base URL of ``dagster dev`` on a free loopback port; stopped after the module."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    log_path = home / "dagster_dev.log"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
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
    dagster = Path(sys.executable).with_name("dagster")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"dagster dev exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                )
            try:
                if _location_loaded(base):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not load {LOCATION}:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def page(dagster_ui, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        tab = context.new_page()
        # Dagster's first-visit community dialog may open late, over whatever is clicked
        # next: Playwright dismisses it whenever it is in the way of an action.
        tab.add_locator_handler(tab.get_by_role("button", name="Skip"), lambda skip: skip.click())
        tab.goto(dagster_ui + "/assets")
        yield tab
        tab.screenshot(path=str(tmp_path_factory.mktemp("screens") / "last.png"))
        browser.close()


def _dismiss_welcome(page) -> None:
    """Dagster's first-visit community dialog covers the page until skipped."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except Exception:  # noqa: BLE001 - not shown (already dismissed in this browser)
        return
    skip.click()


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
    _dismiss_welcome(page)
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
    _dismiss_welcome(page)
    for check in checks:
        page.get_by_text(check, exact=True).first.wait_for()


def test_automation_lists_the_sensors(dagster_ui, page) -> None:
    sensors = sorted(s.name for s in defs.sensors)
    assert not defs.schedules  # the assets' automation conditions run the night
    assert sensors == [
        "alert_on_check_failure", "alert_on_run_failure", "alert_on_stale_data",
        "kronos_automation",
    ]  # fmt: skip
    page.goto(dagster_ui + "/automation")
    _dismiss_welcome(page)
    for name in sensors:
        page.get_by_text(name, exact=True).first.wait_for()


def test_jobs_page_lists_every_job(dagster_ui, page) -> None:
    jobs = sorted(j.name for j in defs.jobs)
    assert {"data_job", "labels_job", "folds_job", "scoring_job", "evaluation_job"} <= set(jobs)
    page.goto(dagster_ui + "/jobs")
    _dismiss_welcome(page)
    for job in jobs:
        page.get_by_text(job, exact=True).first.wait_for()


def test_materialize_a_partition_from_the_asset_page(dagster_ui, page) -> None:
    from playwright.sync_api import expect

    day = _due_day()
    page.goto(dagster_ui + "/assets/raw_bars")
    _dismiss_welcome(page)
    page.get_by_role("button", name="Materialize").first.click()
    # raw_bars and bars_quarantine come from one multi-asset: the UI asks to take both.
    page.get_by_role("button", name="Confirm").click()
    page.get_by_text("Partition selection").wait_for()
    # The partition selection's text input (7,000 weekday partitions: the dialog shows the last
    # 90 days, the input empty, "No matching partitions"): type the newest due session, Enter
    # commits it as the selection.
    selection = page.locator(
        'input[placeholder^="ex: "], input[placeholder="No matching partitions"]'
    ).first
    selection.fill(day)
    selection.press("Enter")
    expect(selection).to_have_value(day)
    page.get_by_role("button", name="Launch 1 run").click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    toast.wait_for()
    short_id = re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0)

    # The instance runs it (queued run coordinator, daemon, warehouse pool) to the end...
    deadline = time.monotonic() + 300
    while True:
        data = _graphql(
            dagster_ui,
            "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }",
        )
        # Only the run launched here (the automation adds runs of its own, tagged with the
        # sensor that started them).
        runs = [
            r for r in data["runsOrError"]["results"]
            if not {t["key"] for t in r["tags"]} & {"dagster/schedule_name", "dagster/sensor_name"}
        ]  # fmt: skip
        assert [r["runId"][:8] for r in runs] == [short_id]
        if runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
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

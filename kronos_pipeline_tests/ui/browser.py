"""What the browser tests share: ``dagster dev`` on loopback, headless Chromium, the UI's
materialize dialog, and the runs it launches.

``dagster dev`` (webserver + daemon) runs against this repository's ``workspace.yaml`` in a
new process group, with the instance and settings its caller passes in the environment; it is
stopped with its group. Chromium: ``KRONOS_TEST_CHROMIUM``, else ``/usr/bin/chromium`` (Debian:
``apt-get install chromium``), else ``chromium`` on PATH. Missing, the test fails and says how
to install it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from kronos_pipeline_tests.defs.test_alerts_daemon import stop_group

REPO = Path(__file__).resolve().parents[2]
LOCATION = "kronos_pipeline.definitions"
LOAD_TIMEOUT_S = 240  # dagster dev until the code location has loaded
RUN_TIMEOUT_S = 300  # a run launched from the UI, queued to finished
RUN_END = ("SUCCESS", "FAILURE", "CANCELED")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def location_loaded(base: str) -> bool:
    data = graphql(
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


def dagster_home(path: Path) -> Path:
    """``path`` as a Dagster home with the repository's ``dagster.yaml``."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", path / "dagster.yaml")
    return path


@contextmanager
def dagster_dev(env: Mapping[str, str], log_path: Path) -> Iterator[str]:
    """``dagster dev`` on a free loopback port with ``env`` (``DAGSTER_HOME`` and the
    settings); yields its base URL once the code location has loaded, stops it after."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dagster = Path(sys.executable).with_name("dagster")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"dagster dev exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                )
            try:
                if location_loaded(base):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not load {LOCATION}:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        stop_group(proc)


@contextmanager
def browser_tab(base: str, screens: Path) -> Iterator:
    """A headless Chromium tab on ``base``'s asset catalog; its last screen is saved to
    ``screens/last.png`` when done."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        tab = context.new_page()
        # Dagster's first-visit community dialog may open late, over whatever is clicked
        # next: Playwright dismisses it whenever it is in the way of an action.
        tab.add_locator_handler(tab.get_by_role("button", name="Skip"), lambda skip: skip.click())
        tab.goto(base + "/assets")
        try:
            yield tab
        finally:
            tab.screenshot(path=str(screens / "last.png"))
            browser.close()


def launch_partition_run(
    page, base: str, asset: str, partition: str, show_all: bool = False, confirm: bool = False
) -> str:
    """Materialize ``partition`` of ``asset`` from its page's Materialize dialog; returns the
    launched run's short id (8 hex digits, from the "Launched run" toast).

    ``confirm``: the asset shares its step with others (a multi-asset), which the UI asks to
    take along. ``show_all``: the partition is older than the 90 days the dialog offers first.
    """
    from playwright.sync_api import expect

    page.goto(f"{base}/assets/{asset}")
    page.get_by_role("button", name="Materialize").first.click()
    if confirm:
        page.get_by_role("button", name="Confirm").click()
    page.get_by_text("Partition selection").wait_for()
    if show_all:
        page.get_by_text("Show all partitions").click()
    # The partition selection's text input (the dialog may show "No matching partitions" in
    # it): the key typed, Enter commits it as the selection.
    selection = page.locator(
        'input[placeholder^="ex: "], input[placeholder="No matching partitions"]'
    ).first
    selection.fill(partition)
    selection.press("Enter")
    expect(selection).to_have_value(partition)
    page.get_by_role("button", name="Launch 1 run").click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    toast.wait_for()
    return re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0)


def ui_runs(base: str) -> list[dict]:
    """Every run of the instance as the webserver lists it: runId, status, tags; launched by
    hand (a schedule's or a sensor's runs are left out)."""
    data = graphql(
        base, "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
    )
    return [
        r for r in data["runsOrError"]["results"]
        if not {t["key"] for t in r["tags"]} & {"dagster/schedule_name", "dagster/sensor_name"}
    ]  # fmt: skip


def wait_for_run(base: str, short_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """The run whose id starts with ``short_id`` once it has ended (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = next(r for r in ui_runs(base) if r["runId"].startswith(short_id))
        if run["status"] in RUN_END or time.monotonic() > deadline:
            return run
        time.sleep(2)

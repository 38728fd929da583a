"""Alerts, on an instance with the sensors' own cursors: every failed check is posted once with
its asset, partition, check, severity and metadata; nothing twice, nothing missed, a failed
post retried; a freshness failure posted once."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from kronos_pipeline.defs.automation import alert_on_check_failure, alert_on_stale_data
from kronos_pipeline.settings import get_settings

DAY = "2019-12-31"


class Receiver:
    """A webhook on 127.0.0.1 that records every JSON body; ``status`` is what it answers."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.status == 200:
                    receiver.posts.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(monkeypatch) -> Iterator[Receiver]:
    hook = Receiver()
    monkeypatch.setenv("KRONOS_ALERTS__WEBHOOK_URL", hook.url)
    get_settings.cache_clear()
    yield hook
    hook.server.shutdown()
    monkeypatch.undo()
    get_settings.cache_clear()


days = dg.StaticPartitionsDefinition([DAY, "2020-01-02"])


@dg.asset(
    partitions_def=days,
    check_specs=[
        dg.AssetCheckSpec("breadth", asset="planted"),
        dg.AssetCheckSpec("rules", asset="planted", blocking=True),
        dg.AssetCheckSpec("fine", asset="planted"),
    ],
)
def planted(context):
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(
        check_name="breadth",
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description="3 of 5 dates have fewer than 20 members",
        metadata={"first_thin_dates": [context.partition_key], "members": 4},
    )
    yield dg.AssetCheckResult(check_name="rules", passed=context.partition_key != "2020-01-02")
    yield dg.AssetCheckResult(check_name="fine", passed=True)


def _tick(instance, cursor):
    data = alert_on_check_failure.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor)
    )
    return data.cursor


def test_each_failed_check_is_posted_once_with_its_fields(receiver):
    with dg.instance_for_test() as instance:
        dg.materialize([planted], instance=instance, partition_key=DAY)  # before the sensor
        cursor = _tick(instance, None)  # first tick: starts after what is stored
        assert receiver.posts == []

        run = dg.materialize([planted], instance=instance, partition_key=DAY)
        cursor = _tick(instance, cursor)
        assert [p["check"] for p in receiver.posts] == ["breadth"]
        (post,) = receiver.posts
        assert post["event"] == "check_failed"
        assert post["asset"] == "planted"
        assert post["partition"] == DAY
        assert post["severity"] == "WARN"
        assert post["blocking"] is False
        assert post["metadata"] == {"first_thin_dates": [DAY], "members": 4}
        assert post["description"] == "3 of 5 dates have fewer than 20 members"
        assert post["run_id"] == run.run_id

        # Nothing new: nothing posted again, from the same cursor or a later tick.
        assert _tick(instance, cursor) == cursor
        assert len(receiver.posts) == 1

        # An ERROR blocking failure (its run fails) is posted as well, beside the WARN one.
        dg.materialize(
            [planted], instance=instance, partition_key="2020-01-02", raise_on_error=False
        )
        cursor = _tick(instance, cursor)
        new = receiver.posts[1:]
        assert sorted((p["check"], p["severity"], p["blocking"]) for p in new) == [
            ("breadth", "WARN", False),
            ("rules", "ERROR", True),
        ]
        assert {p["partition"] for p in new} == {"2020-01-02"}
        assert len({(p["run_id"], p["storage_id"]) for p in receiver.posts}) == 3


def test_a_failed_post_is_retried_and_a_restart_misses_nothing(receiver):
    with dg.instance_for_test() as instance:
        cursor = _tick(instance, None)
        dg.materialize([planted], instance=instance, partition_key=DAY)
        receiver.status = 500
        stuck = _tick(instance, cursor)
        assert stuck == cursor and receiver.posts == []  # the cursor did not pass it
        receiver.status = 200
        # A daemon restart resumes from the stored cursor: the same call, the same cursor.
        after = _tick(instance, stuck)
        assert [p["check"] for p in receiver.posts] == ["breadth"]
        dg.materialize([planted], instance=instance, partition_key=DAY)
        _tick(instance, after)
        assert [p["check"] for p in receiver.posts] == ["breadth", "breadth"]


def _bars(instance, day: str, rows: int) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(  # a run of ``day`` alone, on its weekday partition
            "raw_bars",
            partition=day,
            metadata={"dagster/row_count": rows, "window": f"{day}..{day}"},
        )
    )


def _freshness_change(instance: dg.DagsterInstance, previous: str, new: str) -> None:
    """What the freshness daemon records when raw_bars' freshness state changes."""
    from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange

    instance.report_runless_asset_event(
        FreshnessStateChange(
            key=dg.AssetKey("raw_bars"),
            previous_state=FreshnessState(previous),
            new_state=FreshnessState(new),
            state_change_timestamp=dt.datetime.now(dt.UTC).timestamp(),
        )
    )


def test_a_freshness_failure_is_posted_once(receiver):
    with dg.instance_for_test() as instance:
        _freshness_change(instance, "UNKNOWN", "FAIL")  # before the sensor existed: not sent
        start = alert_on_stale_data.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert "started" in start.skip_message and not receiver.posts
        _freshness_change(instance, "FAIL", "PASS")
        _freshness_change(instance, "PASS", "FAIL")
        tick = alert_on_stale_data.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=start.cursor)
        )
        (post,) = receiver.posts
        assert post["event"] == "stale_data" and post["asset"] == "raw_bars"
        assert (post["previous_state"], post["state"]) == ("PASS", "FAIL")
        again = alert_on_stale_data.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=tick.cursor)
        )
        assert again.skip_message == "no new failure" and len(receiver.posts) == 1
        receiver.status = 500  # a failed post is retried on the next tick
        _freshness_change(instance, "FAIL", "PASS")
        _freshness_change(instance, "PASS", "FAIL")
        failed = alert_on_stale_data.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=again.cursor)
        )
        assert len(receiver.posts) == 1
        receiver.status = 200
        alert_on_stale_data.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=failed.cursor)
        )
        assert [p["state"] for p in receiver.posts] == ["FAIL", "FAIL"]

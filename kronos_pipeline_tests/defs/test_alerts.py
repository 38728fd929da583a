"""Alerts, on an instance with the sensors' own cursors: every failed check is posted once with
its asset, partition, check, severity and metadata; nothing twice, nothing missed, a failed
post retried; stale data alerted once; the nightly schedule retries a late day."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from kronos_pipeline.defs.automation import (
    alert_on_check_failure,
    alert_on_stale_sessions,
    nightly_schedule,
    stale_sessions,
)
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


def test_stale_sessions_counts_trading_days_due_since_the_newest():
    ny = dt.timezone(dt.timedelta(hours=-5))
    newest = dt.date(2019, 12, 20)  # a Friday; 23, 24, 26 are sessions, 25 a holiday
    before_close = dt.datetime(2019, 12, 26, 12, 0, tzinfo=ny)
    after_close = dt.datetime(2019, 12, 26, 23, 0, tzinfo=ny)
    assert stale_sessions(newest, before_close, "XNYS") == [
        dt.date(2019, 12, 23),
        dt.date(2019, 12, 24),
    ]
    assert len(stale_sessions(newest, after_close, "XNYS")) == 3
    assert stale_sessions(dt.date(2019, 12, 26), after_close, "XNYS") == []


def test_stale_data_is_alerted_once_per_newest_session(receiver):
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance)
        assert "no session" in alert_on_stale_sessions.evaluate_tick(context).skip_message
        _bars(instance, "2019-12-30", 500)
        _bars(instance, "2019-12-31", 0)  # a late vendor file: the run stored no bars
        first = alert_on_stale_sessions.evaluate_tick(dg.build_sensor_context(instance=instance))
        (post,) = receiver.posts
        assert post["event"] == "stale_sessions"
        assert post["newest_session"] == "2019-12-30"
        assert post["first_missing"] == "2019-12-31"
        again = alert_on_stale_sessions.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=first.cursor)
        )
        assert "already alerted" in again.skip_message and len(receiver.posts) == 1
        _bars(instance, "2020-01-02", 500)  # still stale today, but the same spell
        later = alert_on_stale_sessions.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=again.cursor)
        )
        assert "already alerted" in later.skip_message and len(receiver.posts) == 1


def test_the_schedule_retries_a_late_day_once_its_file_arrives(monkeypatch, tmp_path):
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "AAA.csv").write_text("timestamp,open\n")
    monkeypatch.setenv("KRONOS_DATA__VENDOR_DIR", str(vendor))
    get_settings.cache_clear()
    try:
        from kronos_pipeline.definitions import defs

        repo = defs.get_repository_def()
        with dg.instance_for_test() as instance:
            for day in ("2019-12-24", "2019-12-26", "2019-12-27", "2019-12-30"):
                _bars(instance, day, 500)
            _bars(instance, DAY, 0)  # 2019-12-31 ran before its file came: 0 bars

            def keys(when: dt.datetime) -> list[tuple[str, str]]:
                ctx = dg.build_schedule_context(
                    instance=instance, scheduled_execution_time=when, repository_def=repo
                )
                requests = nightly_schedule.evaluate_tick(ctx).run_requests
                assert all(r.partition_key == r.tags["kronos/nightly"] for r in requests)
                return [(r.tags["kronos/nightly"], r.run_key) for r in requests]

            first = keys(dt.datetime(2020, 1, 2, 22, 30))
            assert [p for p, _ in first] == [DAY, "2020-01-02"]  # the late day comes back
            assert keys(dt.datetime(2020, 1, 2, 22, 30)) == first  # same source: same keys
            (vendor / "BBB.csv").write_text("timestamp,open\n")  # the late file lands
            second = keys(dt.datetime(2020, 1, 2, 22, 30))
            assert [p for p, _ in second] == [DAY, "2020-01-02"]
            assert {k for _, k in second}.isdisjoint(k for _, k in first)  # new run keys
            _bars(instance, DAY, 500)
            assert [p for p, _ in keys(dt.datetime(2020, 1, 2, 22, 30))] == ["2020-01-02"]
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

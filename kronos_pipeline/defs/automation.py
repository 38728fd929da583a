"""Jobs and alerts to a webhook.

What runs by itself is declared on the assets (automation conditions,
``defs/conditions.py``) and evaluated by ``kronos_automation``; this module holds the jobs
(what a person launches) and the alerts. The same night as explicit runs, for
``kronos-pipeline nightly``, is planned by :mod:`kronos_pipeline.runs`.

Alerts (all posted as JSON to ``settings.alerts.webhook_url``):

- ``alert_on_run_failure``: every failed run.
- ``alert_on_check_failure``: every failed asset check evaluation, blocking or not, ERROR or
  WARN, exactly once, when its run has ended. Built on public instance APIs only (run-status
  changes, then each ended run's check evaluations). Its cursor, kept by the instance, is the
  last run end handled (and the last check posted within the next run), so a daemon restart
  neither repeats nor skips one; a post that fails leaves the cursor before it, and the next
  tick retries it.
- ``alert_on_stale_data``: an asset's freshness policy failed (``raw_bars``: a session's bars
  not in by 01:30 New York), posted once per failure, from the freshness daemon's state
  changes.

The sensors start running with the daemon (no switch to flip in the UI).
"""

import datetime as dt
import json
import time
import urllib.request
from dataclasses import dataclass

import dagster as dg

from kronos_pipeline.defs.conditions import automation_sensor, observe_vendor_folder
from kronos_pipeline.defs.partitions import (
    day_partitions,
    fold_partitions,
    score_day_partitions,
)
from kronos_pipeline.runs import MODEL_ASSETS, SCORE_ASSETS
from kronos_pipeline.settings import get_settings

DATA_SELECTION = dg.AssetSelection.groups("data", "features")
NIGHTLY_CRON = "30 22 * * 1-5"  # after the close and the vendor's end-of-day files
NIGHTLY_TZ = "America/New_York"

data_job = dg.define_asset_job(
    "data_job",
    selection=DATA_SELECTION,
    partitions_def=day_partitions,
    description="Ingest -> PIT prices -> universe -> features and labels for a range of "
    "weekdays (one run for any range).",
)
labels_job = dg.define_asset_job(
    "labels_job",
    selection=dg.AssetSelection.assets("labels_forward"),
    partitions_def=day_partitions,
    description="Re-materialize forward labels of a range of days (the nightly run: the days "
    "whose labels can have matured today).",
)
folds_job = dg.define_asset_job(
    "folds_job",
    selection=dg.AssetSelection.assets("folds"),
    description="Rebuild the walk-forward fold definitions (a new fold as each month starts).",
)
models_job = dg.define_asset_job(
    "models_job",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    partitions_def=fold_partitions,
    description="Per fold: every model's fit (LightGBM, the Kronos checkpoint and its heads), "
    "fitted once per refit period and reused by its later folds.",
)
baseline_scores_job = dg.define_asset_job(
    "baseline_scores_job",
    selection=dg.AssetSelection.assets("baseline_scores"),
    partitions_def=score_day_partitions,
    description="Per day: factor, LightGBM (the day's fold's models) and random scores.",
)
kronos_job = dg.define_asset_job(
    "kronos_job",
    selection=dg.AssetSelection.assets("kronos_forecasts", "kronos_scores", "kronos_head_scores"),
    partitions_def=score_day_partitions,
    description="Per day: Kronos forecasts with the day's fold's checkpoint, its scores and "
    "its heads' scores.",
)
scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=dg.AssetSelection.assets(*SCORE_ASSETS),
    partitions_def=score_day_partitions,
    description="Per day: every model's scores, then the day's signal (the nightly run's "
    "scoring step).",
)
evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.groups("evaluation")
    - dg.AssetSelection.assets("baseline_scores", "folds", "lightgbm_models"),
    description="Eval rows, metrics, tripwires, gates and the report from the scores present.",
)

# The night as few runs as Dagster allows (each run starts a worker that imports the code
# location; a run's assets share one partitions definition, unpartitioned ones aside). The
# nightly chain's first run: the session's data and the folds; its last: the labels that can
# mature tonight and the rollups over them.
nightly_data_job = dg.define_asset_job(
    "nightly_data_job",
    selection=(DATA_SELECTION - dg.AssetSelection.assets("labels_forward"))
    | dg.AssetSelection.assets("folds"),
    partitions_def=day_partitions,
    description="The nightly chain's first run, for one weekday: ingest -> PIT prices -> "
    "universe -> features, then the folds (a new one as a month starts). The day's labels "
    "come with nightly_evaluation_job.",
)
nightly_evaluation_job = dg.define_asset_job(
    "nightly_evaluation_job",
    selection=dg.AssetSelection.assets("labels_forward") | evaluation_job.selection,
    partitions_def=day_partitions,
    description="The nightly chain's last run, for the days whose labels can have matured "
    "tonight (a range): their labels, then the metrics, tripwires, gates and report, as "
    "labels_job and evaluation_job do.",
)


def jobs() -> list:
    return [data_job, labels_job, folds_job, models_job, baseline_scores_job, kronos_job,
            scoring_job, evaluation_job, nightly_data_job, nightly_evaluation_job]  # fmt: skip


def post_alert(url: str, payload: dict, timeout_s: float = 10.0) -> int:
    """POST ``payload`` as JSON to ``url``; returns the HTTP status."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured URL
        return response.status


def run_partition(tags: dict[str, str]) -> str | None:
    """The partition (or ``start..end`` range) a run covers, from its tags."""
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start = tags.get("dagster/asset_partition_range_start")
    end = tags.get("dagster/asset_partition_range_end")
    return f"{start}..{end}" if start or end else None


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def alert_on_run_failure(context: dg.RunFailureSensorContext):
    """A failed run (a blocking check that failed included) is posted to the alert webhook."""
    url = get_settings().alerts.webhook_url
    if not url:
        return dg.SkipReason("no alert webhook configured (KRONOS_ALERTS__WEBHOOK_URL)")
    run = context.dagster_run
    post_alert(
        url,
        {
            "event": "run_failure",
            "job": run.job_name,
            "run_id": run.run_id,
            "partition": run_partition(run.tags),
            "message": context.failure_event.message,
            "at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


RUN_BATCH = 50  # ended runs read per tick
POST_BUDGET_S = 30.0  # stop posting within a tick after this long (sensor ticks time out at 60 s)
#: A run's check evaluations are all stored once it has ended in one of these.
RUN_END_EVENTS = (
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)


def _jsonable(value: object) -> object:
    """A metadata value as plain JSON (its raw value; text where JSON has no type for it)."""
    raw = getattr(value, "value", value)
    return json.loads(json.dumps(raw, default=str))


@dataclass(frozen=True)
class CheckAlertCursor:
    """Where ``alert_on_check_failure`` stands: ``run_end`` is the storage id of the last
    run-end event whose failed checks were all handled; ``run_id`` and ``posted``, the run
    after it whose failed checks were posted up to check event ``posted`` (a post failed)."""

    run_end: int
    run_id: str | None = None
    posted: int | None = None

    def dump(self) -> str:
        return json.dumps({"run_end": self.run_end, "run_id": self.run_id, "posted": self.posted})

    @classmethod
    def parse(cls, text: str | None) -> "CheckAlertCursor | None":
        """None for no cursor, or one this version did not write (start afresh)."""
        try:
            data = json.loads(text or "")
            return cls(int(data["run_end"]), data.get("run_id"), data.get("posted"))
        except (ValueError, TypeError, KeyError):
            return None


def ended_runs(
    instance: dg.DagsterInstance, after: int, limit: int = RUN_BATCH
) -> list[dg.EventLogRecord]:
    """Run-end events (success, failure, cancellation) with a storage id above ``after``,
    oldest first: public ``fetch_run_status_changes``, one query per kind of end."""
    records = [
        record
        for event_type in RUN_END_EVENTS
        for record in instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type, after_storage_id=after),
            limit=limit,
            ascending=True,
        ).records
    ]
    return sorted(records, key=lambda r: r.storage_id)[:limit]


def newest_run_end(instance: dg.DagsterInstance) -> int:
    """The storage id of the newest run-end event (0 when no run has ended)."""
    newest = [
        record.storage_id
        for event_type in RUN_END_EVENTS
        for record in instance.fetch_run_status_changes(event_type, limit=1).records
    ]
    return max(newest, default=0)


def failed_check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogRecord]:
    """The run's check evaluations that did not pass (any severity), in the order stored."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    return [r for r in records if not check_evaluation(r).passed]


def check_evaluation(record: dg.EventLogRecord) -> dg.AssetCheckEvaluation:
    return record.event_log_entry.dagster_event.event_specific_data


def check_failure_payload(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> dict:
    """The alert for one failed check evaluation: asset, partition, check, severity, metadata."""
    evaluation = check_evaluation(record)
    partition = evaluation.partition
    if partition is None and record.run_id:
        run = instance.get_run_by_id(record.run_id)
        partition = run_partition(run.tags) if run is not None else None
    return {
        "event": "check_failed",
        "asset": evaluation.asset_key.to_user_string(),
        "partition": partition,
        "check": evaluation.check_name,
        "severity": evaluation.severity.value,
        "blocking": bool(evaluation.blocking),
        "description": evaluation.description,
        "metadata": {k: _jsonable(v) for k, v in evaluation.metadata.items()},
        "run_id": record.run_id,
        # The event's id within its run: (run_id, storage_id) is unique per evaluation, so a
        # receiver can deduplicate.
        "storage_id": record.storage_id,
        "at": dt.datetime.fromtimestamp(record.timestamp, dt.UTC).isoformat(),
    }


@dg.sensor(
    name="alert_on_check_failure",
    minimum_interval_seconds=get_settings().alerts.check_sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def alert_on_check_failure(context: dg.SensorEvaluationContext):
    """Post every failed asset check evaluation (any severity, blocking or not) once, when
    its run has ended (succeeded, failed or was canceled).

    Public instance APIs only: the runs that ended come from ``fetch_run_status_changes``,
    each run's check evaluations from ``get_records_for_run``. The cursor
    (:class:`CheckAlertCursor`) is the last run-end event handled, and within the next run
    the last check posted, so a failed post is retried from there on the next tick and a
    daemon restart neither repeats nor skips one. On the first tick it starts at the newest
    run end: runs that ended before the sensor existed are not sent.
    """
    instance = context.instance
    cursor = CheckAlertCursor.parse(context.cursor)
    if cursor is None:
        context.update_cursor(CheckAlertCursor(newest_run_end(instance)).dump())
        return dg.SkipReason("started: failed checks of runs that end from now on are posted")
    url = get_settings().alerts.webhook_url
    started, posted, failed, stopped = time.monotonic(), 0, 0, False
    for run_end in ended_runs(instance, cursor.run_end):
        done = cursor.posted if cursor.run_id == run_end.run_id else None
        for record in failed_check_evaluations(instance, run_end.run_id):
            if done is not None and record.storage_id <= done:
                continue  # posted on an earlier tick
            failed += 1
            if not url:
                continue
            if time.monotonic() - started > POST_BUDGET_S:
                stopped = True
                break
            try:
                post_alert(url, check_failure_payload(instance, record))
            except OSError as exc:  # retried from this record on the next tick
                context.log.warning(f"alert webhook failed ({exc}); retrying next tick")
                stopped = True
                break
            posted += 1
            cursor = CheckAlertCursor(cursor.run_end, run_end.run_id, record.storage_id)
        if stopped:
            break
        cursor = CheckAlertCursor(run_end.storage_id)
    context.update_cursor(cursor.dump())
    if not url and failed:
        return dg.SkipReason(f"{failed} failed checks, no alert webhook configured")
    return dg.SkipReason(f"{posted} failed checks posted" if posted else "no new failed check")


FRESHNESS_CHANGE = dg.DagsterEventType.FRESHNESS_STATE_CHANGE
FRESHNESS_FAILED = "FAIL"


def freshness_changes(instance: dg.DagsterInstance, after: int | None, limit: int = RUN_BATCH):
    """Freshness state changes the freshness daemon recorded after storage id ``after``
    (the newest one alone when ``after`` is None), oldest first."""
    if after is None:
        return instance.get_event_records(dg.EventRecordsFilter(FRESHNESS_CHANGE), limit=1)
    return instance.get_event_records(
        dg.EventRecordsFilter(FRESHNESS_CHANGE, after_cursor=after), limit=limit, ascending=True
    )


def stale_data_payload(record: dg.EventLogRecord) -> dict | None:
    """The alert for a change into the failed state (None for any other change)."""
    change = record.event_log_entry.dagster_event.event_specific_data
    new, previous = (getattr(change, a) for a in ("new_state", "previous_state"))
    if getattr(new, "value", new) != FRESHNESS_FAILED:
        return None
    return {
        "event": "stale_data",
        "asset": change.key.to_user_string(),
        "previous_state": getattr(previous, "value", previous),
        "state": FRESHNESS_FAILED,
        "storage_id": record.storage_id,
        "at": dt.datetime.fromtimestamp(record.timestamp, dt.UTC).isoformat(),
    }


@dg.sensor(
    name="alert_on_stale_data",
    minimum_interval_seconds=get_settings().alerts.freshness_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def alert_on_stale_data(context: dg.SensorEvaluationContext):
    """Post each asset whose freshness policy failed (``raw_bars``: a session's bars not in by
    its deadline), once per failure. The freshness daemon judges; this sensor relays its state
    changes. The cursor is the last change handled; on the first tick it starts at the newest
    one, and a failed post is retried from where it stopped."""
    instance = context.instance
    if context.cursor is None:
        newest = freshness_changes(instance, None)
        context.update_cursor(str(newest[0].storage_id if newest else 0))
        return dg.SkipReason("started: freshness failures from now on are posted")
    url, cursor, posted = get_settings().alerts.webhook_url, int(context.cursor), 0
    for record in freshness_changes(instance, cursor):
        payload = stale_data_payload(record)
        if payload is not None and url:
            try:
                post_alert(url, payload)
            except OSError as exc:
                context.log.warning(f"alert webhook failed ({exc}); retrying next tick")
                break
            posted += 1
        cursor = record.storage_id
    context.update_cursor(str(cursor))
    return dg.SkipReason(f"{posted} freshness failures posted" if posted else "no new failure")


def sensors(automation: bool = True) -> list:
    """The alerts and, unless ``automation`` is False, the automation sensor."""
    alerts = [alert_on_run_failure, alert_on_check_failure, alert_on_stale_data]
    return alerts + ([observe_vendor_folder, automation_sensor()] if automation else [])

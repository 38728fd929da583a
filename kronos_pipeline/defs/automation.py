"""Jobs, the nightly schedule, and alerts to a webhook.

Alerts (all posted as JSON to ``settings.alerts.webhook_url``):

- ``alert_on_run_failure``: every failed run.
- ``alert_on_check_failure``: every failed asset check evaluation, blocking or not, ERROR or
  WARN, exactly once. Its cursor is the event log storage id of the last evaluation handled,
  kept by the instance, so a daemon restart neither repeats nor skips one; a post that fails
  leaves the cursor before it, and the next tick retries it.
- ``alert_on_stale_sessions``: the newest session with bars in ``raw_bars`` is
  ``alerts.stale_after_sessions`` trading days old or more (once per newest session).

The schedule and the sensors start running with the daemon (no switch to flip in the UI).
"""

import datetime as dt
import hashlib
import json
import time
import urllib.request
from functools import partial
from zoneinfo import ZoneInfo

import dagster as dg

from kronos_pipeline.data.calendar import is_trading_day, trading_days
from kronos_pipeline.defs.evaluation import fold_partitions
from kronos_pipeline.defs.partitions import PARTITION_FMT, trading_day_partitions
from kronos_pipeline.settings import DataSettings, get_settings

DATA_SELECTION = dg.AssetSelection.groups("data", "features")
NIGHTLY_CRON = "30 22 * * 1-5"  # after the close and the vendor's end-of-day files
NIGHTLY_TZ = "America/New_York"

data_job = dg.define_asset_job(
    "data_job",
    selection=DATA_SELECTION,
    partitions_def=trading_day_partitions,
    description="Ingest -> PIT prices -> universe -> features and labels for a range of trading days.",
)


folds_job = dg.define_asset_job(
    "folds_job",
    selection=dg.AssetSelection.assets("folds"),
    description="Rebuild the walk-forward fold definitions.",
)
baseline_scores_job = dg.define_asset_job(
    "baseline_scores_job",
    selection=dg.AssetSelection.assets("baseline_scores"),
    partitions_def=fold_partitions,
    description="Factor floor, LightGBM and random scores for one fold (backfill over folds).",
)
kronos_job = dg.define_asset_job(
    "kronos_job",
    selection=dg.AssetSelection.groups("kronos"),
    partitions_def=fold_partitions,
    description="Kronos checkpoint (trained at the fold's purged cut) and scores for one fold.",
)
evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.groups("evaluation")
    - dg.AssetSelection.assets("baseline_scores", "folds"),
    description="Eval rows, metrics, tripwires, gates and the report from the scores present.",
)


def jobs() -> list:
    return [data_job, folds_job, baseline_scores_job, kronos_job, evaluation_job]


RAW_BARS = dg.AssetKey("raw_bars")
ROW_COUNT_KEYS = ("dagster/row_count", "rows")
LATE_DAY_LOOKBACK = 5  # sessions the nightly schedule looks back for a day still without bars
NIGHTLY_TIME = dt.time(22, 30)  # NIGHTLY_CRON's time of day: when a session's bars are due


def sessions_with_bars(instance: dg.DagsterInstance, keys: list[str] | None = None) -> set[str]:
    """raw_bars partitions (of ``keys``, or the newest 1000 materializations) whose
    materialization holds bars: a run on a day whose vendor file was late stores 0 rows."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_BARS, asset_partitions=keys), limit=1000
    ).records
    with_bars = set()
    for record in records:
        mat = record.asset_materialization
        if mat is None or mat.partition is None:
            continue
        counts = [mat.metadata[k].value for k in ROW_COUNT_KEYS if k in mat.metadata]
        if not counts or counts[0]:
            with_bars.add(mat.partition)
    return with_bars


def source_fingerprint(data: DataSettings) -> str:
    """Changes whenever the configured source does: names, sizes and modification times of
    the vendor files or the tidy table; the generator's settings for the synthetic market."""
    if data.source_kind == "synthetic":
        stamp = data.model_dump_json()
    else:
        root = data.vendor_dir if data.source_kind == "vendor" else data.tidy_path
        files = sorted(root.iterdir()) if root.is_dir() else [root]
        stamp = "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


@dg.schedule(
    job=data_job,
    cron_schedule=NIGHTLY_CRON,
    execution_timezone=NIGHTLY_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_schedule(context: dg.ScheduleEvaluationContext):
    """Score the newest trading day, and retry the recent ones still without bars.

    Candidates: the schedule's own session and the LATE_DAY_LOOKBACK - 1 before it, minus
    those whose raw_bars partition already holds bars. The run key is the day plus the source
    fingerprint: a late day is requested again as soon as the source changed (its file
    arrived), and not again while nothing changed.
    """
    settings = get_settings()
    day = context.scheduled_execution_time.date()
    if not is_trading_day(day, settings.data.calendar):
        return dg.SkipReason(f"{day} is not a trading day")
    span = trading_days(day - dt.timedelta(days=3 * LATE_DAY_LOOKBACK + 10), day)
    recent = [d.strftime(PARTITION_FMT) for d in span[-LATE_DAY_LOOKBACK:]]
    done = sessions_with_bars(context.instance, recent)
    todo = [key for key in recent if key not in done]
    if not todo:
        return dg.SkipReason(f"every session {recent[0]}..{recent[-1]} has its bars")
    fingerprint = source_fingerprint(settings.data)
    return [
        dg.RunRequest(
            run_key=f"{key}:{fingerprint}",
            partition_key=key,
            tags={"kronos/source_fingerprint": fingerprint},
        )
        for key in todo
    ]


def schedules() -> list:
    return [nightly_schedule]


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


CHECK_BATCH = 200  # check evaluations read per tick
POST_BUDGET_S = 30.0  # stop posting within a tick after this long (sensor ticks time out at 60 s)


def _jsonable(value: object) -> object:
    """A metadata value as plain JSON (its raw value; text where JSON has no type for it)."""
    raw = getattr(value, "value", value)
    return json.loads(json.dumps(raw, default=str))


def check_evaluations(
    instance: dg.DagsterInstance, after: int | None, limit: int = CHECK_BATCH
) -> list[dg.EventLogRecord]:
    """ASSET_CHECK_EVALUATION records with a storage id above ``after``, oldest first
    (``after=None``: the newest one only, descending)."""
    from dagster._core.storage.event_log import SqlEventLogStorage, SqliteEventLogStorage

    records_filter = dg.EventRecordsFilter(
        event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after
    )
    storage = instance.event_log_storage
    # The default SQLite storage is sharded by run, with no global id across runs, and its
    # get_event_records refuses an integer cursor for check events; it mirrors every check
    # evaluation, with a global id, into its index shard, which the SQL base class queries.
    # Postgres and consolidated SQLite storages answer the same query directly.
    get = (
        partial(SqlEventLogStorage.get_event_records, storage)
        if isinstance(storage, SqliteEventLogStorage)
        else storage.get_event_records
    )
    return list(get(records_filter, limit if after is not None else 1, after is not None))


def check_failure_payload(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> dict:
    """The alert for one failed check evaluation: asset, partition, check, severity, metadata."""
    evaluation = record.event_log_entry.dagster_event.event_specific_data
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
        "storage_id": record.storage_id,  # unique per evaluation: a receiver can deduplicate
        "at": dt.datetime.fromtimestamp(record.timestamp, dt.UTC).isoformat(),
    }


@dg.sensor(
    name="alert_on_check_failure",
    minimum_interval_seconds=get_settings().alerts.check_sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def alert_on_check_failure(context: dg.SensorEvaluationContext):
    """Post every failed asset check evaluation (any severity, blocking or not) once.

    The cursor is the storage id of the last evaluation handled. On the first tick it starts
    at the newest evaluation already stored: history before the sensor existed is not sent.
    """
    instance = context.instance
    if context.cursor is None:
        newest = check_evaluations(instance, after=None)
        context.update_cursor(str(newest[0].storage_id if newest else 0))
        return dg.SkipReason("started: failed checks from now on are posted")
    cursor = int(context.cursor)
    url = get_settings().alerts.webhook_url
    started, posted, failed = time.monotonic(), 0, 0
    for record in check_evaluations(instance, after=cursor):
        if not record.event_log_entry.dagster_event.event_specific_data.passed:
            failed += 1
            if url:
                if time.monotonic() - started > POST_BUDGET_S:
                    break
                try:
                    post_alert(url, check_failure_payload(instance, record))
                except OSError as exc:  # retried from this record on the next tick
                    context.log.warning(f"alert webhook failed ({exc}); retrying next tick")
                    break
                posted += 1
        cursor = record.storage_id
    context.update_cursor(str(cursor))
    if not url and failed:
        return dg.SkipReason(f"{failed} failed checks, no alert webhook configured")
    return dg.SkipReason(f"{posted} failed checks posted" if posted else "no new failed check")


def stale_sessions(newest: dt.date, now: dt.datetime, calendar: str) -> list[dt.date]:
    """Sessions after ``newest`` whose bars are due by ``now`` (New York time): every session
    before today, and today's once the nightly time has passed."""
    today = now.astimezone(ZoneInfo(NIGHTLY_TZ))
    days = [d.date() for d in trading_days(newest + dt.timedelta(days=1), today.date(), calendar)]
    if days and days[-1] == today.date() and today.time() < NIGHTLY_TIME:
        days.pop()
    return days


@dg.sensor(
    name="alert_on_stale_sessions",
    minimum_interval_seconds=get_settings().alerts.freshness_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def alert_on_stale_sessions(context: dg.SensorEvaluationContext):
    """Freshness of the newest partition: alert when no new session has arrived in raw_bars
    for ``alerts.stale_after_sessions`` trading days, once per stale spell. The cursor is
    ``stale:<newest>`` after an alert and ``fresh`` once sessions are current again, so a
    backfill that lands old sessions one by one during a spell does not repeat the alert."""
    settings = get_settings()
    keys = sessions_with_bars(context.instance)
    if not keys:
        return dg.SkipReason("raw_bars holds no session in this instance yet")
    newest = max(dt.datetime.strptime(k, PARTITION_FMT).date() for k in keys)
    missing = stale_sessions(newest, dt.datetime.now(dt.UTC), settings.data.calendar)
    if len(missing) < settings.alerts.stale_after_sessions:
        context.update_cursor("fresh")
        return dg.SkipReason(f"newest session {newest}; {len(missing)} due since")
    if (context.cursor or "").startswith("stale:"):
        return dg.SkipReason(f"already alerted ({context.cursor}); newest session {newest}")
    url = settings.alerts.webhook_url
    if not url:
        return dg.SkipReason(f"stale since {newest}; no alert webhook configured")
    post_alert(
        url,
        {
            "event": "stale_sessions",
            "asset": RAW_BARS.to_user_string(),
            "newest_session": str(newest),
            "sessions_missing": len(missing),
            "first_missing": str(missing[0]),
            "at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )
    context.update_cursor(f"stale:{newest}")
    return dg.SkipReason(f"alerted: {len(missing)} sessions due since {newest}")


def sensors() -> list:
    return [alert_on_run_failure, alert_on_check_failure, alert_on_stale_sessions]

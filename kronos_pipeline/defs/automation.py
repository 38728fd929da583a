"""Jobs, the nightly schedule, and alerts to a webhook.

Alerts (all posted as JSON to ``settings.alerts.webhook_url``):

- ``alert_on_run_failure``: every failed run.
- ``alert_on_check_failure``: every failed asset check evaluation, blocking or not, ERROR or
  WARN, exactly once, when its run has ended. Built on public instance APIs only (run-status
  changes, then each ended run's check evaluations). Its cursor, kept by the instance, is the
  last run end handled (and the last check posted within the next run), so a daemon restart
  neither repeats nor skips one; a post that fails leaves the cursor before it, and the next
  tick retries it.
- ``alert_on_stale_sessions``: the newest session with bars in ``raw_bars`` is
  ``alerts.stale_after_sessions`` trading days old or more (once per newest session).

The schedule and the sensors start running with the daemon (no switch to flip in the UI).
"""

import datetime as dt
import hashlib
import json
import time
import urllib.request
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import dagster as dg

from kronos_pipeline.data.calendar import is_trading_day, trading_days
from kronos_pipeline.defs.partitions import (
    day_key,
    day_partitions,
    fold_partitions,
    month_key,
    score_day_partitions,
)
from kronos_pipeline.settings import DataSettings, Settings, get_settings

DATA_SELECTION = dg.AssetSelection.groups("data", "features")
NIGHTLY_CRON = "30 22 * * 1-5"  # after the close and the vendor's end-of-day files
NIGHTLY_TZ = "America/New_York"
NIGHTLY_TAG = "kronos/nightly"  # the session a nightly run (and each step after it) is for
CLI_TAG = "kronos/cli"  # a run the CLI submitted: the CLI starts each next step itself
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
MODEL_ASSETS = ("lightgbm_models", "kronos_checkpoint", "kronos_heads")
SCORE_ASSETS = (
    "baseline_scores",
    "kronos_forecasts",
    "kronos_scores",
    "kronos_head_scores",
    "signals",
)
KRONOS_ASSETS = (
    "kronos_checkpoint",
    "kronos_forecasts",
    "kronos_scores",
    "kronos_heads",
    "kronos_head_scores",
)

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


def jobs() -> list:
    return [data_job, labels_job, folds_job, models_job, baseline_scores_job, kronos_job,
            scoring_job, evaluation_job]  # fmt: skip


RAW_BARS = dg.AssetKey("raw_bars")
ROW_COUNT_KEYS = ("dagster/row_count", "rows")
LATE_DAY_LOOKBACK = 5  # sessions the nightly schedule looks back for a day still without bars
NIGHTLY_TIME = dt.time(22, 30)  # NIGHTLY_CRON's time of day: when a session's bars are due


def ingested_windows(
    instance: dg.DagsterInstance, days: list[str] | None = None
) -> list[tuple[dt.date, dt.date]]:
    """The day windows that raw_bars materializations (of partitions ``days``, or the newest 1000)
    published with bars. The ingest's blocking completeness check fails a run, writing nothing,
    when a session of its window lacks bars, so every day of such a window has its bars."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_BARS, asset_partitions=days), limit=1000
    ).records
    windows = []
    for record in records:
        mat = record.asset_materialization
        if mat is None or "window" not in mat.metadata:
            continue
        counts = [mat.metadata[k].value for k in ROW_COUNT_KEYS if k in mat.metadata]
        if counts and not counts[0]:
            continue
        first, _, last = str(mat.metadata["window"].value).partition("..")
        windows.append((dt.date.fromisoformat(first), dt.date.fromisoformat(last)))
    return windows


def sessions_with_bars(instance: dg.DagsterInstance, days: list[dt.date]) -> set[dt.date]:
    """Which of ``days`` a recorded raw_bars materialization covers."""
    windows = ingested_windows(instance, sorted({day_key(d) for d in days}))
    return {d for d in days if any(a <= d <= b for a, b in windows)}


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


# --------------------------------------------------------------------------------------
# The nightly production run: one chain of runs per session, each step started when the
# one before succeeded (by the CLI, or by the nightly_chain sensor in the daemon).
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NightlyStep:
    """One run of the nightly chain."""

    job: str
    partition_key: str | None = None
    key_range: tuple[str, str] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    assets: tuple[str, ...] | None = None  # a subset of the job's assets; None: all

    def run_tags(self) -> dict[str, str]:
        tags = dict(self.tags)
        if self.key_range is not None:
            tags.update({RANGE_START: self.key_range[0], RANGE_END: self.key_range[1]})
        return tags

    @property
    def label(self) -> str:
        if self.key_range is not None:
            return f"{self.key_range[0]}..{self.key_range[1]}"
        return self.partition_key or ""


def _materialized(instance: dg.DagsterInstance, asset: str, key: str) -> bool:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
    ).records
    return bool(records)


def nightly_steps(day: dt.date, settings: Settings, instance: dg.DagsterInstance | None):
    """The runs that take session ``day`` from the vendor's file to the published signal:

    1. ``data_job`` on the day's partition: ingest, PIT prices, universe, features (labels of
       ``day`` do not exist yet);
    2. ``folds_job``: the folds, a new one when ``day`` opens a month;
    3. ``models_job`` on the day's fold, only for the models that fold lacks (a new month;
       with ``instance`` None, every model: the chain's order);
    4. ``scoring_job`` on the day's partition: every model's scores, the Kronos forecasts,
       and the signal (``signals`` table and ``data/signals/<day>.parquet``);
    5. ``labels_job`` on the days from ``max(horizons)`` sessions back: the labels that
       matured on ``day``;
    6. ``evaluation_job``: the metric rollups and the report.
    """
    key, calendar = day_key(day), settings.data.calendar
    tags = {NIGHTLY_TAG: str(day)}
    back = trading_days(day - dt.timedelta(days=3 * max(settings.labels.horizons) + 30), day,
                        calendar)[-(max(settings.labels.horizons) + 1)].date()  # fmt: skip
    steps = [NightlyStep("data_job", key, tags=tags), NightlyStep("folds_job", tags=tags)]
    fold = month_key(day)
    if fold >= settings.folds.first_test_month:
        kronos = settings.kronos.enabled
        models = [a for a in MODEL_ASSETS if kronos or a not in KRONOS_ASSETS]
        if instance is not None:  # fit only what this fold lacks (a new month)
            models = [a for a in models if not _materialized(instance, a, fold)]
        if models:
            steps.append(NightlyStep("models_job", fold, tags=tags, assets=tuple(models)))
        scores = [a for a in SCORE_ASSETS if kronos or a not in KRONOS_ASSETS]
        steps.append(NightlyStep("scoring_job", key, tags=tags, assets=tuple(scores)))
    steps.append(NightlyStep("labels_job", key_range=(day_key(back), key), tags=tags))
    steps.append(NightlyStep("evaluation_job", tags=tags))
    return steps


def next_nightly_step(
    day: dt.date, finished_job: str, settings: Settings, instance: dg.DagsterInstance
) -> NightlyStep | None:
    """The step of ``day``'s chain after ``finished_job`` (None when it ended the chain). The
    order is the full chain's; a step with nothing to do (models the fold already has) is
    passed over."""
    order = [s.job for s in nightly_steps(day, settings, None)]
    if finished_job not in order:
        return None
    after = order.index(finished_job)
    steps = nightly_steps(day, settings, instance)
    return next((s for s in steps if order.index(s.job) > after), None)


def step_request(step: NightlyStep, run_key: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        job_name=step.job,
        partition_key=step.partition_key,
        tags=step.run_tags(),
        asset_selection=[dg.AssetKey(a) for a in step.assets] if step.assets else None,
    )


@dg.schedule(
    job=data_job,
    cron_schedule=NIGHTLY_CRON,
    execution_timezone=NIGHTLY_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_schedule(context: dg.ScheduleEvaluationContext):
    """Start the nightly chain for the newest session, and retry the recent ones without bars.

    Candidates: the schedule's own session and the LATE_DAY_LOOKBACK - 1 before it, minus
    those a raw_bars materialization already covers. Each is the first step of
    :func:`nightly_steps` (``nightly_chain`` starts the rest). The run key is the day plus the
    source fingerprint: a late day is requested again as soon as the source changed (its file
    arrived), and not again while nothing changed.
    """
    settings = get_settings()
    day = context.scheduled_execution_time.date()
    if not is_trading_day(day, settings.data.calendar):
        return dg.SkipReason(f"{day} is not a trading day")
    span = trading_days(day - dt.timedelta(days=3 * LATE_DAY_LOOKBACK + 10), day)
    recent = [d.date() for d in span[-LATE_DAY_LOOKBACK:]]
    done = sessions_with_bars(context.instance, recent)
    todo = [d for d in recent if d not in done]
    if not todo:
        return dg.SkipReason(f"every session {recent[0]}..{recent[-1]} has its bars")
    fingerprint = source_fingerprint(settings.data)
    requests = []
    for d in todo:
        first = nightly_steps(d, settings, None)[0]
        request = step_request(first, f"{d}:{fingerprint}")
        requests.append(request.with_replaced_attrs(
            tags={**request.tags, "kronos/source_fingerprint": fingerprint}
        ))  # fmt: skip
    return requests


@dg.run_status_sensor(
    name="nightly_chain",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitor_all_code_locations=False,
    request_jobs=[folds_job, models_job, scoring_job, labels_job, evaluation_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def nightly_chain(context: dg.RunStatusSensorContext):
    """After each successful step of a nightly chain (runs tagged ``kronos/nightly``), start
    the next one; a failed step stops its chain (and alerts), a rerun of it resumes it."""
    run = context.dagster_run
    day = run.tags.get(NIGHTLY_TAG)
    if not day:
        return dg.SkipReason(f"{run.job_name} run {run.run_id} is not a nightly step")
    if run.tags.get(CLI_TAG):
        return dg.SkipReason(f"nightly {day}: the CLI that submitted {run.job_name} runs the rest")
    nxt = next_nightly_step(
        dt.date.fromisoformat(day), run.job_name, get_settings(), context.instance
    )
    if nxt is None:
        return dg.SkipReason(f"nightly {day}: {run.job_name} ends the chain")
    if nxt.job == "evaluation_job" and (reason := _evaluation_pending()):
        return dg.SkipReason(f"nightly {day}: evaluation_job skipped, {reason}")
    return step_request(nxt, f"nightly:{day}:{nxt.job}:{run.run_id}")


#: Seconds a sensor tick waits for the warehouse's read lock before it stops asking.
SENSOR_LOCK_TIMEOUT_S = 20.0


def _evaluation_pending() -> str | None:
    """:func:`evaluation_pending` on the configured warehouse; None (run the step, which then
    judges for itself) when the warehouse is busy beyond :data:`SENSOR_LOCK_TIMEOUT_S`."""
    from kronos_pipeline.defs.evaluation import evaluation_pending
    from kronos_pipeline.warehouse import Warehouse, WarehouseLockTimeout

    w = get_settings().warehouse
    try:
        return evaluation_pending(Warehouse(w.duckdb_path, SENSOR_LOCK_TIMEOUT_S))
    except WarehouseLockTimeout:
        return None


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
    windows = ingested_windows(context.instance)
    if not windows:
        return dg.SkipReason("raw_bars holds no session in this instance yet")
    newest = max(last for _, last in windows)
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
    return [alert_on_run_failure, alert_on_check_failure, alert_on_stale_sessions, nightly_chain]

"""Jobs, the nightly schedule, and alerts to a webhook."""

import datetime as dt
import json
import urllib.request

import dagster as dg

from kronos_pipeline.data.calendar import is_trading_day
from kronos_pipeline.defs.evaluation import fold_partitions
from kronos_pipeline.defs.partitions import PARTITION_FMT, trading_day_partitions
from kronos_pipeline.settings import get_settings

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


@dg.schedule(job=data_job, cron_schedule=NIGHTLY_CRON, execution_timezone=NIGHTLY_TZ)
def nightly_schedule(context: dg.ScheduleEvaluationContext):
    """Score the newest trading day: the partition of the schedule's own date, if it is a session."""
    day = context.scheduled_execution_time.date()
    if not is_trading_day(day, get_settings().data.calendar):
        return dg.SkipReason(f"{day} is not a trading day")
    key = day.strftime(PARTITION_FMT)
    return dg.RunRequest(run_key=key, partition_key=key)


def schedules() -> list:
    return [nightly_schedule]


def post_alert(url: str, payload: dict, timeout_s: float = 10.0) -> int:
    """POST ``payload`` as JSON to ``url``; returns the HTTP status."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured URL
        return response.status


@dg.run_failure_sensor(name="alert_on_run_failure", monitor_all_code_locations=False)
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
            "partition": run.tags.get("dagster/partition")
            or f"{run.tags.get('dagster/asset_partition_range_start')}..{run.tags.get('dagster/asset_partition_range_end')}",
            "message": context.failure_event.message,
            "at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


def sensors() -> list:
    return [alert_on_run_failure]

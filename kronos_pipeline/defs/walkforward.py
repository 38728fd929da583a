"""What the fold- and date-level assets read about the walk-forward: the folds table, one fold,
the folds the current mode evaluates, the folds and scoring dates of a run's window of
weekdays, and the tables of scores.

Shared by the evaluation, Kronos, heads and signal stages, so none of them imports another
stage's module for these (``defs/evaluation.py`` and ``defs/kronos.py`` used to import each
other)."""

import dataclasses
import datetime as dt

import dagster as dg
import pandas as pd

from kronos_pipeline.concurrency import threads_per_slot, usable_cpus
from kronos_pipeline.defs.conditions import SCORES
from kronos_pipeline.defs.partitions import partition_window, score_day_partitions
from kronos_pipeline.evaluation import folds
from kronos_pipeline.evaluation.signal import KRONOS_SCORE_TABLES, SCORE_TABLES  # noqa: F401
from kronos_pipeline.instance import pool_limit
from kronos_pipeline.settings import get_settings

# Models that fit at once: the pool's limit, set to the machine by `kronos-pipeline
# instance-setup` (1, dagster_home/dagster.yaml's default_limit, until then).
MODEL_POOL = "model_fitting"
#: Weekday partitions a run of a date-level score asset covers in a backfill: about a month,
#: so a long backfill resumes where it stopped and its runs can go side by side.
SCORE_DAYS_PER_RUN = 23
#: Partitions and backfill policy of every date-level score asset.
SCORE_ASSET_OPTIONS: dict = {
    "partitions_def": score_day_partitions,
    "backfill_policy": dg.BackfillPolicy.multi_run(SCORE_DAYS_PER_RUN),
    "automation_condition": SCORES,
}


def lightgbm_threads(instance: dg.DagsterInstance) -> int:
    """LightGBM threads of one ``model_fitting`` step: ``lightgbm.num_threads`` when set,
    else the CPUs this process may use divided among the pool's slots, so that as many fits
    as the pool admits share the cores instead of each taking all of them."""
    configured = get_settings().lightgbm.num_threads
    return configured or threads_per_slot(usable_cpus(), pool_limit(instance, MODEL_POOL))


def fold_table(db) -> list[folds.Fold]:
    """Every fold of the folds table, oldest first (fails when folds was never materialized)."""
    frame = (
        db.read("select * from folds order by fold_id").to_pandas()
        if "folds" in db.tables()
        else None
    )
    if frame is None or frame.empty:
        raise dg.Failure("the folds table is empty: materialize folds first (folds_job)")
    return folds.folds_from_frame(frame)


def selected_fold_ids(db) -> list[str]:
    """The folds the current mode evaluates: FULL every fold; SMOKE the last
    ``folds.smoke_folds`` whose labels have matured at every horizon (the longest included)."""
    s = get_settings()
    dates = db.distinct_dates("features").to_pandas()["date"]
    chosen = folds.select_folds(
        fold_table(db), s.mode, s.folds.smoke_folds, dates, max(s.labels.horizons)
    )
    return [f.fold_id for f in chosen]


def get_fold(db, fold_id: str) -> folds.Fold:
    """One fold of the folds table; fails, saying what to materialize, when it is not there."""
    frame = db.read("select * from folds where fold_id = ?", [fold_id]).to_pandas()
    if frame.empty:
        raise dg.Failure(
            f"fold {fold_id} is not in the folds table: its month holds no data yet, or folds "
            "has not been materialized since the data arrived (folds_job)",
            allow_retries=False,
        )
    return folds.folds_from_frame(frame)[0]


def run_folds(
    context: dg.AssetExecutionContext, db, cadence: str, sessions_table: str = "universe"
) -> tuple[dt.date, dt.date, list[tuple[folds.Fold, pd.DatetimeIndex]]]:
    """The run's window of weekdays and, for every fold whose test month it meets, the dates
    a date-level score step scores there: the fold's scoring dates (``cadence``) inside the
    window. A run of exactly one weekday partition (the nightly run, a one-day rerun from the
    UI) scores that session whatever the cadence; the evaluation keeps to the cadence's dates
    (:func:`cadence_dates`), so such extra dates feed the signal only."""
    start, end = partition_window(context)
    months = pd.period_range(start, end, freq="M")
    # Sessions of the whole months: a week's first session may lie before the window.
    # (From the table's day files' names: a day's file exists only while it has rows.)
    dates = db.distinct_dates(sessions_table)["date"]
    lo, hi = months[0].start_time.date(), months[-1].end_time.date()
    sessions = pd.DatetimeIndex(dates.filter((dates >= lo) & (dates <= hi)).to_list())
    window = (sessions >= pd.Timestamp(start)) & (sessions <= pd.Timestamp(end))
    plan = []
    for month in months:
        fold = get_fold(db, str(month))
        # The folds table can predate the newest sessions of the current month (the day's
        # scores may run before the folds are rebuilt): the fold's test days are its month's.
        in_month = sessions[(sessions >= fold.test_start) & (sessions <= month.end_time)]
        if len(in_month) and in_month[-1] > fold.test_end:
            fold = dataclasses.replace(fold, test_end=in_month[-1])
        inside = sessions[window & (sessions >= fold.test_start) & (sessions <= fold.test_end)]
        if not len(inside) or start == end:
            days = inside
        else:
            days = folds.scoring_dates(fold, sessions, cadence)
            days = days[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(end))]
        plan.append((fold, pd.DatetimeIndex(days)))
    return start, end, plan


def cadence_dates(db, fold_ids: list[str], table: str) -> list[dt.date]:
    """The scoring dates of ``fold_ids`` on the cadence of ``table``'s models (the baselines'
    ``folds.scoring_cadence``, Kronos' ``kronos.scoring_cadence``): what the evaluation judges.
    A nightly run scores its day whatever the cadence, for the signal; those extra dates are
    not evaluated, so the figures do not depend on how the dates were run."""
    s = get_settings()
    cadence = s.kronos.scoring_cadence if table in KRONOS_SCORE_TABLES else s.folds.scoring_cadence
    by_id = {f.fold_id: f for f in fold_table(db)}
    sessions = pd.DatetimeIndex(db.distinct_dates("features")["date"].to_list())
    return [
        d.date()
        for fold_id in fold_ids
        if fold_id in by_id
        for d in folds.scoring_dates(by_id[fold_id], sessions, cadence)
    ]

"""What every fold-partitioned asset reads about the walk-forward: the folds table, one fold,
the folds the current mode evaluates, the scoring dates of a run, and the tables of scores.

Shared by the evaluation, Kronos, heads and signal stages, so none of them imports another
stage's module for these (``defs/evaluation.py`` and ``defs/kronos.py`` used to import each
other)."""

import dagster as dg
import pandas as pd

from kronos_pipeline.concurrency import threads_per_slot, usable_cpus
from kronos_pipeline.defs.partitions import DATES_TAG, partition_window
from kronos_pipeline.evaluation import folds
from kronos_pipeline.instance import pool_limit
from kronos_pipeline.settings import get_settings

# Models that fit at once: the pool's limit, set to the machine by `kronos-pipeline
# instance-setup` (1, dagster_home/dagster.yaml's default_limit, until then).
MODEL_POOL = "model_fitting"
#: Every table of long scores (model, horizon, date, ticker, score, fold): the baselines',
#: Kronos' own scores, and its heads'. The evaluation unions them; the signal ranks them all.
SCORE_TABLES = ("baseline_scores", "kronos_scores", "kronos_head_scores")
#: The score tables of Kronos-derived models: their signal rows carry the forecast quantiles.
KRONOS_SCORE_TABLES = ("kronos_scores", "kronos_head_scores")


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
    dates = db.read("select distinct date from features order by date").to_pandas()["date"]
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


def run_dates(context: dg.AssetExecutionContext, fold: folds.Fold, cadence: str, sessions):
    """The dates a date-level score step scores: the fold's scoring dates (``cadence``) inside
    the run's window; an explicit one-day window (``kronos/dates`` = ``D:D``, e.g. the nightly
    run or a one-date rerun) scores that session whatever the cadence."""
    start, end = partition_window(context)
    inside = [d for d in sessions if start <= pd.Timestamp(d).date() <= end]
    days = folds.scoring_dates(fold, sessions, cadence)
    chosen = [d for d in days if start <= d.date() <= end]
    tag = context.run.tags.get(DATES_TAG, "")
    if tag and start == end and inside and not chosen:
        chosen = [pd.Timestamp(inside[0])]
    return start, end, pd.DatetimeIndex(chosen)

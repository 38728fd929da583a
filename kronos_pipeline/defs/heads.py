"""Kronos heads: per-horizon regressions from the Kronos embedding of a series (alone, and
fused with the PIT features) to its excess return, evaluated as candidates beside the others.

Fold-level ``kronos_heads`` follows the checkpoint's refit period (``kronos.refit_months``):
both variants are fitted once per period, at the cut of the period's first fold (its first
test day) with the LightGBM purge (a training label matured strictly before the cut), on the
embeddings the period's checkpoint gives sampled training dates (one-step greedy decodes, the
embedding only depends on the context window), stored under
``data/models/kronos_heads/<checkpoint>_<period>/`` and reused by the period's later folds,
whose cuts are later still.
Date-level ``kronos_head_scores`` reads the embeddings ``kronos_forecasts`` stored for the
fold's dates and scores them with the stored heads. Library work lives in
``kronos_pipeline.evaluation.heads``."""

import datetime as dt
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl

from kronos_pipeline.defs.common import add_counts, blocking_failure
from kronos_pipeline.defs.conditions import MISSING_MODEL
from kronos_pipeline.defs.kronos import (
    GROUP,
    HISTORY_SLACK,
    PRICE_COLUMNS,
    checkpoint_dir,
    history_start,
    kronos_engine,
)
from kronos_pipeline.defs.partitions import (
    FOLD_OF_DAY,
    HISTORY_BEFORE_FOLD,
    fold_partitions,
    partition_window,
    refit_period,
)
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.defs.walkforward import (
    MODEL_POOL,
    SCORE_ASSET_OPTIONS,
    get_fold,
    lightgbm_threads,
)
from kronos_pipeline.evaluation import baselines, folds, heads
from kronos_pipeline.evaluation.heads import HEADS_DATE_STRIDE, training_dates
from kronos_pipeline.files import atomic_write_bytes, file_sha256
from kronos_pipeline.kronos import scoring
from kronos_pipeline.settings import KronosSettings, Settings, get_settings
from kronos_pipeline.warehouse import Warehouse

HEADS_FILE = "heads.pkl"
MANIFEST = "manifest.json"
SCORE_TABLE = "kronos_head_scores"
#: What identifies the weights an embedding came from (the checkpoint manifest's fields).
CHECKPOINT_KEYS = ("model", "period", "train_cut", "predictor", "predictor_sha256")


def heads_dir(s: Settings, fold_id: str) -> Path:
    """``<data_dir>/models/kronos_heads/<model>_<period>/``: the heads (and manifest) of the
    refit period the fold belongs to, named like the period's checkpoint folder."""
    return s.warehouse.data_dir / "models" / "kronos_heads" / checkpoint_dir(s, fold_id).name


def member_windows(db: Warehouse, days: Sequence[pd.Timestamp], k: KronosSettings):
    """PIT windows of the universe members (top ``k.top_n`` by liquidity) of each date, as
    ``kronos_forecasts`` builds them."""
    day_list = [pd.Timestamp(d).date() for d in days]
    members = db.read(
        "select date, ticker from universe where in_universe and date = any(?::date[]) "
        "and liquidity_rank <= ?",
        [day_list, k.top_n if k.top_n is not None else 1_000_000_000],
    )
    if not members.height:
        return scoring.build_windows(pl.DataFrame(), members, k.lookback)
    first = history_start(db, min(day_list), HISTORY_SLACK * k.lookback)
    prices = db.read(
        f"select {PRICE_COLUMNS} from prices_pit where date between ? and ? "
        "and ticker in (select unnest(?))",
        [first, max(day_list), members["ticker"].unique().to_list()],
    )
    return scoring.build_windows(prices, members, k.lookback)


def embed_windows(engine: Any, inputs: scoring.ScoringWindows) -> pd.DataFrame:
    """``date, ticker, embedding`` per window: the predictor's embedding of the context
    (``engine.embed``: the embeddings of a one-step greedy decode, bit for bit, without the
    decode)."""
    if len(inputs) == 0:
        return pd.DataFrame({"date": pd.Series(dtype="datetime64[ns]"), "ticker": [],
                             "embedding": []})  # fmt: skip
    embeddings = engine.embed(inputs.windows, inputs.timestamps)
    return inputs.keys.assign(embedding=list(np.asarray(embeddings, np.float32)))


def write_heads(directory: Path, fitted: heads.FittedHeads, header: dict[str, Any]) -> dict:
    """Pickle ``fitted`` and write the manifest (``header``, the file's sha256, each head's
    summary and the latest label maturity), each to a temporary name renamed over the old
    one; the manifest last, so a folder is read only once both are complete."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HEADS_FILE
    atomic_write_bytes(path, pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL))
    latest = max(h.max_available_at for h in fitted.heads.values())
    manifest = {
        **header, "cut": str(fitted.cut_date.date()), "file": HEADS_FILE,
        "sha256": file_sha256(path), "models": fitted.models,
        "max_available_at": str(latest.date()), "heads": fitted.summary(),
    }  # fmt: skip
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
    return manifest


def read_heads(directory: Path, fold_id: str) -> tuple[heads.FittedHeads, dict[str, Any]]:
    """The heads fold ``fold_id`` uses and their manifest, verified against the recorded
    sha256."""
    path = directory / MANIFEST
    if not path.is_file():
        raise dg.Failure(
            f"no fitted heads in {directory} ({MANIFEST} missing): materialize kronos_heads "
            f"for fold {fold_id} first (kronos-pipeline backfill --folds {fold_id}:{fold_id})",
            allow_retries=False,
        )
    manifest = json.loads(path.read_text())
    weights = directory / manifest["file"]
    if file_sha256(weights) != manifest["sha256"]:
        raise dg.Failure(
            f"{weights} does not match the sha256 in {path}: materialize kronos_heads for fold "
            f"{fold_id} again",
            allow_retries=False,
        )
    return pickle.loads(weights.read_bytes()), manifest  # noqa: S301 - our own file, verified


def _features(db: Warehouse, days: list[dt.date], columns: list[str] | None, s: Settings):
    """PIT features of ``days`` (``date, ticker`` and ``columns``, or every model input
    column of the LightGBM baseline)."""
    frame = db.read("select * from features where date = any(?::date[])", [days]).to_pandas()
    if columns is None:
        columns = baselines.feature_columns(frame, s.features.use_sector_relative)
    return frame[["date", "ticker", *columns]]


def reusable_heads(
    directory: Path, cut: pd.Timestamp, checkpoint: dict[str, Any]
) -> dict[str, Any] | None:
    """The stored manifest when it holds intact heads (the file matches its sha256) fitted at
    ``cut`` on ``checkpoint``'s embeddings, else None (fit again)."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    same = all(manifest.get("checkpoint", {}).get(k) == checkpoint.get(k) for k in CHECKPOINT_KEYS)
    weights = directory / str(manifest.get("file", HEADS_FILE))
    intact = weights.is_file() and file_sha256(weights) == manifest.get("sha256")
    return manifest if same and intact and manifest.get("cut") == str(cut.date()) else None


def fit_period_heads(
    context: dg.AssetExecutionContext,
    db: Warehouse,
    s: Settings,
    at: folds.Fold,
    checkpoint: dict[str, Any],
    directory: Path,
) -> dict[str, Any]:
    """Fit both heads at the cut of fold ``at`` (the first of its refit period) on the
    checkpoint's embeddings of sampled training dates, write them, return the manifest."""
    dates = db.distinct_dates("universe")["date"]
    sessions = dates.filter(dates < at.test_start.date()).to_list()
    days = training_dates(sessions, at, s.labels.horizons, s.kronos.train_history_days)
    inputs = member_windows(db, days, s.kronos)
    context.log.info(f"embedding {len(inputs)} series of {len(days)} dates before {at.cut.date()}")
    embeddings = embed_windows(kronos_engine(checkpoint, s.kronos), inputs)
    day_list = [d.date() for d in days]
    labels = db.read(
        "select date, ticker, horizon, excess_return, available_at from labels_forward "
        "where available_at < ? and date = any(?::date[])",
        [at.test_start.date(), day_list],
    ).to_pandas()  # fmt: skip
    feats = _features(db, day_list, None, s)
    try:
        fitted = heads.fit_heads(
            embeddings, labels, at.test_start, s.labels.horizons, feats,
            lightgbm=s.lightgbm, num_threads=lightgbm_threads(context.instance),
        )  # fmt: skip
    except ValueError as exc:
        raise dg.Failure(
            f"kronos_heads of period {at.fold_id}: {exc}", allow_retries=False
        ) from exc
    return write_heads(directory, fitted, {
        "period": at.fold_id, "date_stride": HEADS_DATE_STRIDE,
        "training_dates": [str(d) for d in day_list], "series": len(inputs),
        "checkpoint": {key: checkpoint.get(key) for key in CHECKPOINT_KEYS},
        "feature_columns": [c for c in feats.columns if c not in ("date", "ticker")],
    })  # fmt: skip


@dg.asset(
    name="kronos_heads",
    deps=[
        "folds",
        dg.AssetDep("kronos_checkpoint", partition_mapping=dg.TimeWindowPartitionMapping()),
        # The heads train on sampled dates of the whole daily history before the cut.
        *[
            dg.AssetDep(a, partition_mapping=HISTORY_BEFORE_FOLD)
            for a in ("prices_pit", "universe", "features", "labels_forward")
        ],
    ],  # fmt: skip
    partitions_def=fold_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    automation_condition=MISSING_MODEL,
    group_name=GROUP,
    pool=MODEL_POOL,
    kinds={"pytorch", "lightgbm"},
    description="The Kronos heads of the fold's refit period (kronos_head: embeddings; "
    "kronos_head_fused: embeddings + PIT features), fitted at the cut of the period's first "
    f"fold on its checkpoint's embeddings of training dates {HEADS_DATE_STRIDE} sessions apart, "
    "on labels matured before that cut, and reused by the period's later folds; stored under "
    "data/models/kronos_heads/<checkpoint>_<period>/.",
    check_specs=[
        dg.AssetCheckSpec(
            "heads_train_cut",
            asset="kronos_heads",
            blocking=True,
            description="Every head's training label matured before the fold's first test day",
        )
    ],  # fmt: skip
)
def kronos_heads_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db, fold_id = get_settings(), warehouse.get(), context.partition_key
    fold, directory = get_fold(db, fold_id), heads_dir(s, fold_id)
    from kronos_pipeline.kronos import strategy  # torch: only in the steps that need it

    checkpoint = scoring.read_manifest(checkpoint_dir(s, fold_id))
    strategy.verify_pointed_weights(checkpoint)
    period = refit_period(fold_id, s.folds.first_test_month, s.kronos.refit_months)
    at = get_fold(db, period)  # the period's first fold: the heads are fitted at its cut
    existing = reusable_heads(directory, at.test_start, checkpoint) if period != fold_id else None
    if existing is not None:  # later folds of a period reuse what its first fold fitted
        manifest, refit = existing, False
        context.log.info(f"reusing the heads of period {period} fitted at {manifest['cut']}")
    else:
        manifest, refit = fit_period_heads(context, db, s, at, checkpoint, directory), True
    yield dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(directory)), "cut": manifest["cut"],
        "period": period, "refit_months": s.kronos.refit_months, "refit": refit,
        "training_dates": len(manifest["training_dates"]), "series": manifest["series"],
        "max_available_at": manifest["max_available_at"],
        "heads": dg.MetadataValue.json(manifest["heads"]),
    })  # fmt: skip
    stored = json.loads((directory / MANIFEST).read_text())  # what the scores will read
    late = [h for h in stored["heads"] if pd.Timestamp(h["max_available_at"]) >= fold.test_start]
    yield dg.AssetCheckResult(
        check_name="heads_train_cut",
        passed=not late and pd.Timestamp(stored["max_available_at"]) < fold.test_start,
        description=f"latest training label matured {stored['max_available_at']}, test starts "
        f"{fold.test_start.date()}; {len(late)} head(s) saw a later one",
        metadata={"violations": dg.MetadataValue.json(late)},
    )


def validate_head_scores(
    scores: pd.DataFrame, series: int, n_heads: int, same_checkpoint: bool
) -> tuple[bool, str, dict[str, Any]]:
    """Every head scored every series once with a finite score, from embeddings of the
    checkpoint the heads were fitted on: ``(passed, description, numbers)``."""
    keys = ["model", "horizon", "date", "ticker"]
    dupes = int(scores.duplicated(keys).sum()) if len(scores) else 0
    bad = int((~np.isfinite(scores["score"].to_numpy(np.float64))).sum()) if len(scores) else 0
    expected = series * n_heads
    ok = dupes == 0 and bad == 0 and len(scores) == expected and same_checkpoint
    description = (
        f"{len(scores)} scores of {expected} expected ({series} series x {n_heads} heads), "
        f"{dupes} duplicate keys, {bad} non-finite"
        + ("" if same_checkpoint else "; the heads were fitted on another checkpoint's "
           "embeddings: materialize kronos_heads for this fold again")
    )  # fmt: skip
    numbers = {"rows": len(scores), "expected": expected, "duplicates": dupes, "non_finite": bad,
               "same_checkpoint": same_checkpoint}  # fmt: skip
    return ok, description, numbers


@dg.asset(
    name="kronos_head_scores",
    deps=[
        dg.AssetDep("kronos_heads", partition_mapping=FOLD_OF_DAY),
        *[
            dg.AssetDep(a, partition_mapping=dg.TimeWindowPartitionMapping())
            for a in ("kronos_forecasts", "features")
        ],
    ],
    **SCORE_ASSET_OPTIONS,
    group_name=GROUP,
    kinds={"duckdb", "lightgbm"},
    description="Scores of the date's fold's Kronos heads (kronos_head, kronos_head_fused) "
    "per horizon, for every series kronos_forecasts holds on the date.",
    check_specs=[
        dg.AssetCheckSpec(
            "head_scores_valid",
            asset="kronos_head_scores",
            blocking=True,
            description="Every head scored every forecast (date, ticker) once, every score "
            "finite, from the checkpoint the heads were fitted on",
        ),
    ],  # fmt: skip
)
def kronos_head_scores_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db = get_settings(), warehouse.get()
    start, end = partition_window(context)
    parts, problems, numbers = [], [], {"rows": 0, "series": 0}
    for month in pd.period_range(start, end, freq="M"):
        fold_id = str(month)
        lo, hi = max(start, month.start_time.date()), min(end, month.end_time.date())
        scores, ok, description, fold_numbers = _score_heads(db, s, fold_id, lo, hi)
        if not ok:
            problems.append(f"fold {fold_id}: {description}")
        numbers = add_counts(numbers, fold_numbers)
        parts.append(scores)
    scores = pd.concat([p for p in parts if len(p)] or [pd.DataFrame(
        columns=baselines.SCORE_COLUMNS)], ignore_index=True)  # fmt: skip
    check = dg.AssetCheckResult(
        check_name="head_scores_valid", passed=not problems,
        description="; ".join(problems) or f"{len(scores)} scores of {numbers['series']} series",
        metadata=numbers,
    )  # fmt: skip
    if problems:  # validate, then publish
        yield check
        raise blocking_failure([("head_scores_valid", check.description)], SCORE_TABLE)
    db.replace_window(SCORE_TABLE, baselines.score_table(scores), start, end)
    yield dg.MaterializeResult(metadata={"rows": len(scores), "series": numbers["series"]})
    yield check


def _score_heads(db, s, fold_id: str, start, end):
    """The heads of fold ``fold_id`` on the forecasts of ``start..end``:
    ``(scores, passed, description, numbers)``."""
    embeddings = db.read(
        "select date, ticker, embedding from kronos_forecasts where fold = ? and date between ? "
        "and ? qualify row_number() over (partition by date, ticker order by horizon) = 1",
        [fold_id, start, end],
    ).to_pandas() if "kronos_forecasts" in db.tables() else pd.DataFrame()  # fmt: skip
    if not len(embeddings):  # a holiday, a date off the cadence: nothing to score
        return pd.DataFrame(columns=baselines.SCORE_COLUMNS), True, "", {"rows": 0, "series": 0}
    fitted, stored = read_heads(heads_dir(s, fold_id), fold_id)
    checkpoint = scoring.read_manifest(checkpoint_dir(s, fold_id))
    same = all(stored["checkpoint"].get(k) == checkpoint.get(k) for k in CHECKPOINT_KEYS)
    days = sorted({pd.Timestamp(d).date() for d in embeddings["date"]})
    feats = _features(db, days, stored["feature_columns"], s)
    try:
        scores = heads.predict_heads(fitted, embeddings, feats, fold_id)
    except ValueError as exc:
        raise dg.Failure(
            f"kronos_head_scores of fold {fold_id}: {exc}; materialize kronos_heads for "
            "this fold again",
            allow_retries=False,
        ) from exc
    ok, description, numbers = validate_head_scores(
        scores, len(embeddings), len(fitted.heads), same
    )
    return scores, ok, description, {**numbers, "series": len(embeddings)}


HEAD_ASSETS = [kronos_heads_asset, kronos_head_scores_asset]

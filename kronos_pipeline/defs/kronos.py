"""Kronos assets. Fold-level: ``kronos_checkpoint``, a leak-free checkpoint fitted at the
purged cut of the first fold of its refit period (``kronos.refit_months``), or the published
weights named in settings. Date-level: ``kronos_forecasts`` (per date and ticker, per horizon:
the sampled returns, their mean and quantiles, the series' embedding), which reads its fold's
checkpoint through a partition mapping, then ``kronos_scores`` derived from them, which the
evaluation unions with the baselines. Library work lives in ``kronos_pipeline.kronos``."""

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import polars as pl

from kronos_pipeline.defs.common import blocking_failure
from kronos_pipeline.defs.conditions import MISSING_MODEL
from kronos_pipeline.defs.partitions import (
    FOLD_OF_DAY,
    HISTORY_BEFORE_FOLD,
    fold_partitions,
    history_days,
    partition_window,
    refit_period,
)
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.defs.walkforward import MODEL_POOL, SCORE_ASSET_OPTIONS, get_fold, run_folds
from kronos_pipeline.kronos import scoring
from kronos_pipeline.kronos.forecast_checks import forecast_problems, score_problems
from kronos_pipeline.settings import KronosSettings, Settings, get_settings
from kronos_pipeline.warehouse import Warehouse

GROUP = "kronos"
PRICE_COLUMNS = "ticker, date, adj_open, adj_high, adj_low, adj_close, adj_volume, split_factor"
# A fold's checkpoint trains on the daily history before its test month.
HISTORY_DEPS = [
    dg.AssetDep(a, partition_mapping=HISTORY_BEFORE_FOLD) for a in ("prices_pit", "universe")
]
# Weekdays of history a forecast date reads before it: HISTORY_SLACK x 252 sessions of
# windows (about 2 years: 522 weekdays and the holidays among them).
HISTORY_WEEKDAYS = 545
# Sessions read per window, in lookbacks: a ticker missing some sessions (quarantined bars)
# still finds its last ``lookback`` bars.
HISTORY_SLACK = 2


def zero_shot(s: Settings) -> bool:
    """Published weights, evaluated as they are (``kronos.strategy = published``)."""
    return s.kronos.strategy == "published"


def checkpoint_dir(s: Settings, fold_id: str) -> Path:
    """``data/checkpoints/<model>_<period>/``: the manifest (and weights) of the refit period
    the fold belongs to, for the configured strategy."""
    period = refit_period(fold_id, s.folds.first_test_month, s.kronos.refit_months)
    name = scoring.strategy_model_name(s.kronos.strategy)
    return s.warehouse.data_dir / "checkpoints" / f"{name}_{period}"


def previous_manifest(s: Settings, period: str) -> dict | None:
    """The accepted checkpoint of the period before ``period`` (``finetune`` warm-starts from
    it and must beat it); None for the first period."""
    before = str(pd.Period(period, "M") - s.kronos.refit_months)
    if before < s.folds.first_test_month:
        return None
    directory = checkpoint_dir(s, before)
    if not (directory / scoring.MANIFEST_NAME).is_file():
        raise dg.Failure(
            f"kronos_checkpoint of period {period} fine-tunes the previous period's checkpoint, "
            f"which is not there ({directory}): materialize kronos_checkpoint for fold {before} "
            f"first (kronos-pipeline backfill --folds {before}:{before})",
            allow_retries=False,
        )
    return scoring.read_manifest(directory)


def checkpoint_decisions(s: Settings) -> pd.DataFrame:
    """Every fine-tuning decision of the regression guard, one row per refit period, with both
    models' validation figures (``checkpoint_decisions.csv`` in the report)."""
    rows = []
    for path in sorted((s.warehouse.data_dir / "checkpoints").glob("*/" + scoring.MANIFEST_NAME)):
        manifest = scoring.read_manifest(path.parent)
        decision = manifest.get("decision")
        if not decision:
            continue
        new, old = decision.get("new") or {}, decision.get("previous") or {}
        rows.append({
            "period": manifest.get("period", path.parent.name.rsplit("_", 1)[-1]),
            "model": manifest.get("model"), "train_cut": manifest.get("train_cut"),
            "accepted": bool(decision.get("accepted")), "reason": decision.get("reason"),
            "new_rank_ic": new.get("rank_ic"), "new_mae": new.get("mae"),
            "previous_rank_ic": old.get("rank_ic"), "previous_mae": old.get("mae"),
            "min_ic_gain": decision.get("min_ic_gain"),
            "predictor": manifest.get("predictor"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def history_start(db: Warehouse, day, sessions: int) -> dt.date | None:
    """The first of the last ``sessions`` sessions of ``prices_pit`` dated on or before
    ``day``: where a history window starts (None before the first). From the names of the
    table's day files (a day's file exists only while it has rows), none of them opened."""
    day = day.date() if isinstance(day, dt.datetime) else day
    dates = db.distinct_dates("prices_pit")["date"]
    before = dates.filter(dates <= day).tail(sessions)
    return before.min() if before.len() else None


@dg.asset(
    name="kronos_checkpoint",
    deps=["folds", *HISTORY_DEPS],
    partitions_def=fold_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    automation_condition=MISSING_MODEL,
    group_name=GROUP,
    pool=MODEL_POOL,  # as many trainings at once as the pool has slots (instance-setup)
    kinds={"pytorch", "safetensors"},
    description="Tokenizer + predictor of the fold's refit period: trained on bars ending at "
    "the purged cut of the period's first fold (max horizon + 1 sessions before its test "
    "month) and reused by the period's other folds, or published weights (zero_shot).",
    check_specs=[
        dg.AssetCheckSpec(
            "train_cut_before_test",
            asset="kronos_checkpoint",
            blocking=True,
            description="No training bar is dated after the fold's purged training end",
        )
    ],  # fmt: skip
)
def kronos_checkpoint_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db, fold_id = get_settings(), warehouse.get(), context.partition_key
    k, directory = s.kronos_training, checkpoint_dir(s, fold_id)
    fold = get_fold(db, fold_id)
    period = refit_period(fold_id, s.folds.first_test_month, k.refit_months)
    at = get_fold(db, period)  # the period's first fold: the checkpoint is fitted at its cut
    cut = at.train_end[max(s.labels.horizons)].date()
    existing = None
    if period != fold_id and (directory / scoring.MANIFEST_NAME).is_file():
        existing = scoring.read_manifest(directory)
        same_cut = existing.get("train_cut") in (None, str(cut))
        same_budget = k.strategy == "published" or (  # published weights are not fitted here
            existing.get("train_max_minutes") == k.train_max_minutes
        )
        if not (same_cut and same_budget):
            existing = None  # fitted for other folds or with another budget: fit again
    if existing is not None:  # later folds of a period reuse what its first fold fitted
        manifest, refit = existing, False
    else:
        bars = None
        if k.strategy != "published":
            tickers = db.read(
                "select ticker from universe where in_universe and date = "
                "(select max(date) from universe where in_universe and date <= ?) "
                "order by liquidity_rank, ticker limit ?",
                [cut, k.train_tickers if k.train_tickers is not None else 1_000_000],
            )["ticker"].to_list()
            prices = db.read(
                f"select {PRICE_COLUMNS} from prices_pit where date between ? and ? "
                "and ticker in (select unnest(?))",
                [history_start(db, cut, k.train_history_days), cut, tickers],
            )
            bars = scoring.pit_bars(prices, cut)
            context.log.info(f"{k.strategy}: {bars.height} bars of {len(tickers)} tickers to {cut}")
        previous = previous_manifest(s, period) if k.strategy == "finetune" else None
        from kronos_pipeline.kronos import strategy  # torch: only in the steps that need it

        manifest = strategy.fit_period_checkpoint(
            k.strategy, bars, cut, directory, k, previous,
            horizons=s.labels.horizons, calendar=s.data.calendar,
        )  # fmt: skip
        manifest = {**manifest, "train_cut": str(cut), "period": period,
                    "train_max_minutes": k.train_max_minutes}  # fmt: skip
        scoring.write_manifest(directory, manifest)
        refit = True
    yield dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(directory)),
            "period": period,
            "refit_months": k.refit_months,
            "refit": refit,
            "train_cut": str(cut),
            "strategy": k.strategy,
            "manifest": dg.MetadataValue.json(manifest),
            **({"decision": dg.MetadataValue.json(manifest["decision"])}
               if manifest.get("decision") else {}),
        }
    )  # fmt: skip
    last_bar = pd.Timestamp(manifest["last_bar"])
    purged = fold.train_end[max(s.labels.horizons)]
    yield dg.AssetCheckResult(
        check_name="train_cut_before_test",
        # Published weights are contaminated by design: the evaluation reports it.
        passed=manifest["kind"] == "zero_shot" or last_bar <= purged,
        description=f"last training bar {last_bar.date()} (checkpoint of period {period}), "
        f"this fold's purged end {purged.date()}, test starts {fold.test_start.date()}",
    )


@dg.asset(
    name="kronos_forecasts",
    deps=[
        dg.AssetDep("kronos_checkpoint", partition_mapping=FOLD_OF_DAY),
        *[
            dg.AssetDep(a, partition_mapping=history_days(HISTORY_WEEKDAYS))
            for a in ("prices_pit", "universe")
        ],
    ],  # fmt: skip
    **SCORE_ASSET_OPTIONS,
    group_name=GROUP,
    # Inference is the long part: it holds the compute pool; its short write needs no pool.
    pool=MODEL_POOL,
    kinds={"duckdb", "pytorch"},
    description="Per scoring date, universe member and horizon: the sampled h-day returns of "
    "Kronos (sample_count paths), their mean and 10/50/90 % quantiles, and the series' "
    "embedding, from PIT windows of the last lookback bars, with the checkpoint of the "
    "date's fold.",
    check_specs=[
        dg.AssetCheckSpec(
            "forecasts_valid",
            asset="kronos_forecasts",
            blocking=True,
            description="One row per (model, horizon, date, ticker); mean, quantiles, every "
            "sample path and the embedding finite; q10 <= q50 <= q90; sample_count paths each",
        ),
        dg.AssetCheckSpec(
            "member_coverage",
            asset="kronos_forecasts",
            description="Share of universe members of each scoring date that got a forecast",
        ),
    ],  # fmt: skip
)
def kronos_forecasts_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db = get_settings(), warehouse.get()
    start, end, plan = run_folds(context, db, s.kronos.scoring_cadence)
    tables, skipped, members, models = [], [], 0, set()
    for fold, days in plan:
        if len(days):
            table, fold_members, fold_skipped, model = _forecast_fold(db, s, fold.fold_id, days)
            tables.append(table)
            skipped += fold_skipped
            members += fold_members
            models.add(model)
    table = pl.concat(tables) if tables else pl.DataFrame(schema=scoring.FORECAST_SCHEMA)
    valid = dg.AssetCheckResult(
        check_name="forecasts_valid",
        **forecast_problems(table, s.kronos_sampling["sample_count"]),
    )
    if not valid.passed:  # validate, then publish: bad forecasts are never written
        yield valid
        raise blocking_failure([("forecasts_valid", valid.description)], "kronos_forecasts")
    db.replace_window("kronos_forecasts", table, start, end)
    dates = table["date"].n_unique() if table.height else 0
    yield dg.MaterializeResult(
        metadata={"rows": table.height, "scoring_dates": dates,
                  "series": table.height // max(1, len(s.labels.horizons)),
                  "skipped": len(skipped), "model": ", ".join(sorted(models)),
                  "sample_count": s.kronos_sampling["sample_count"],
                  "micro_batch_rows": engine_batch_size(s.kronos, s.kronos_sampling["sample_count"])
                  or "from free device memory"}
    )  # fmt: skip
    yield valid
    served = table.height // max(1, len(s.labels.horizons))
    coverage = served / members if members else 1.0
    yield dg.AssetCheckResult(
        check_name="member_coverage",
        passed=coverage >= 0.99,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "coverage": coverage,
            "members": members,
            "skipped": dg.MetadataValue.json([f"{d} {t}" for d, t in skipped[:50]]),
        },
    )


#: Series per CPU micro-batch when ``kronos.batch_size`` is not set, times each series' rows
#: (its sample paths): 400 rows at the production 8 paths, so a night's top 100 is two
#: micro-batches. On 2 cores a decode step of 400 rows costs about 40 % less per row than one
#: of 64 (the engine's own CPU default), which leaves one of the two threads idle in most of
#: its ~400 small operator calls a step (BENCHMARKS, "The nightly run under 60 s").
CPU_SERIES_PER_BATCH = 50


def engine_batch_size(k: KronosSettings, rows_per_series: int) -> int | None:
    """Rows per micro-batch of the engine: ``kronos.batch_size`` when set; else on CPU
    :data:`CPU_SERIES_PER_BATCH` series of ``rows_per_series`` rows, and elsewhere ``None``
    (the engine sizes it from the free device memory). Fixed by the settings alone, so a
    series' forecast does not depend on how many others its date has."""
    from kronos_pipeline.kronos.hub import resolve_device

    if k.batch_size is not None:
        return k.batch_size
    if resolve_device(k.device).type != "cpu":
        return None
    return CPU_SERIES_PER_BATCH * max(1, rows_per_series)


def kronos_engine(manifest: dict, k: KronosSettings, rows_per_series: int = 1):
    """The engine of a checkpoint manifest, with the engine settings of ``kronos_forecasts``
    (``rows_per_series``: the sample paths each series decodes, see :func:`engine_batch_size`)."""
    from kronos_pipeline.kronos import load_predictor, load_tokenizer
    from kronos_pipeline.kronos.engine import KronosEngine

    return KronosEngine(
        load_tokenizer(manifest["tokenizer"], revision=manifest.get("tokenizer_revision")),
        load_predictor(manifest["predictor"], revision=manifest.get("predictor_revision")),
        device=k.device, dtype=k.dtype, batch_size=engine_batch_size(k, rows_per_series),
        max_context=k.max_context, cuda_graphs=k.cuda_graphs,
    )  # fmt: skip


def _forecast_fold(db: Warehouse, s: Settings, fold_id: str, days: pd.DatetimeIndex):
    """Forecasts of ``days`` (of fold ``fold_id``) with the fold's checkpoint:
    ``(table, members, skipped, model)``."""
    k = s.kronos
    from kronos_pipeline.kronos import strategy  # torch: only in the steps that need it

    manifest = scoring.read_manifest(checkpoint_dir(s, fold_id))
    strategy.verify_pointed_weights(manifest)  # a kept checkpoint points into an older folder
    day_list = [d.date() for d in days]
    members = db.read(
        "select date, ticker from universe where in_universe and date = any(?::date[]) "
        "and liquidity_rank <= ?",
        [day_list, k.top_n if k.top_n is not None else 1_000_000_000],
    )
    if not members.height:
        return pl.DataFrame(schema=scoring.FORECAST_SCHEMA), 0, [], manifest["model"]
    prices = db.read(
        f"select {PRICE_COLUMNS} from prices_pit where date between ? and ? "
        "and ticker in (select unnest(?))",
        [history_start(db, day_list[0], HISTORY_SLACK * k.lookback), day_list[-1],
         members["ticker"].unique().to_list()],
    )  # fmt: skip
    inputs = scoring.build_windows(prices, members, k.lookback)
    table = scoring.forecast_windows(
        kronos_engine(manifest, k, s.kronos_sampling["sample_count"]), inputs,
        s.labels.horizons, manifest["model"], fold_id,
        calendar=s.data.calendar, seed=k.seed, **s.kronos_sampling,
    )  # fmt: skip
    return table, members.height, inputs.skipped, manifest["model"]


@dg.asset(
    name="kronos_scores",
    deps=[dg.AssetDep("kronos_forecasts", partition_mapping=dg.TimeWindowPartitionMapping())],
    **SCORE_ASSET_OPTIONS,
    group_name=GROUP,
    kinds={"duckdb"},
    description="Kronos scores per horizon (mean predicted return) and the volatility-"
    "normalised variant, derived from kronos_forecasts.",
    check_specs=[
        dg.AssetCheckSpec(
            "scores_match_forecasts",
            asset="kronos_scores",
            blocking=True,
            description="Exactly two scores (mean, volnorm) per forecast key, each once and finite",
        ),
    ],  # fmt: skip
)
def kronos_scores_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    db = warehouse.get()
    start, end = partition_window(context)
    forecasts = db.read(
        "select * exclude (samples, embedding) from kronos_forecasts where date between ? and ?",
        [start, end],
    ) if "kronos_forecasts" in db.tables() else pl.DataFrame(schema=scoring.FORECAST_SCHEMA)  # fmt: skip
    table = scoring.forecasts_to_scores(forecasts)
    check = dg.AssetCheckResult(
        check_name="scores_match_forecasts", **score_problems(forecasts, table)
    )
    if not check.passed:
        yield check
        raise blocking_failure([("scores_match_forecasts", check.description)], "kronos_scores")
    db.replace_window("kronos_scores", table, start, end)
    yield dg.MaterializeResult(metadata={"rows": table.height})
    yield check


KRONOS_ASSETS = [kronos_checkpoint_asset, kronos_forecasts_asset, kronos_scores_asset]

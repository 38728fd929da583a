"""Walk-forward evaluation assets: folds -> baseline scores (per fold) -> evaluation tables,
leak tripwires and gates (asset checks) -> report folder. Library work lives in
``kronos_pipeline.evaluation``; this module reads the warehouse, calls it and writes back."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl

from kronos_pipeline.data.pit import RAW_PRICE_COLUMNS
from kronos_pipeline.defs.common import add_counts, blocking_failure, failed_blocking
from kronos_pipeline.defs.conditions import MISSING_MODEL, NIGHTLY_EVALUATION, ON_UPDATE
from kronos_pipeline.defs.kronos import checkpoint_decisions
from kronos_pipeline.defs.partitions import (
    FOLD_OF_DAY,
    HISTORY_BEFORE_FOLD,
    fold_partitions,
    refit_period,
)
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.defs.walkforward import (  # noqa: F401 - also this stage's public names
    MODEL_POOL,
    SCORE_ASSET_OPTIONS,
    SCORE_TABLES,
    cadence_dates,
    fold_table,
    get_fold,
    lightgbm_threads,
    run_folds,
    selected_fold_ids,
)
from kronos_pipeline.evaluation import (
    baselines,
    data_tripwires,
    folds,
    freeze,
    gates,
    model_store,
    report,
    table_checks,
    tripwires,
)
from kronos_pipeline.evaluation.metrics import REGIME_VOL_WINDOW_DAYS, decile_returns
from kronos_pipeline.evaluation.pipeline import evaluate_scores
from kronos_pipeline.settings import get_settings

GROUP = "evaluation"
TABLES = ("eval_rows", "per_date_metrics", "fold_summaries", "model_comparison")
TRIPWIRE_CHECKS = tripwires.BLOCKING_TRIPWIRES
GATE_CHECKS = ("gate1", "gate2", "gate3")
# The universe's equal-weight daily return for the volatility regimes, from a day on (a
# literal date, so that both tables read only the day files from it). Each row's own
# ``total_return`` (the one-bar ratio of its tri), so a date's value never depends on where
# the read starts.
MARKET_SQL = """
select p.date, avg(p.total_return) as mkt_ret
from (select date, ticker, total_return from prices_pit where date >= DATE '{start}') p
join (select date, ticker from universe where date >= DATE '{start}' and in_universe) u
  using (date, ticker)
where p.total_return is not null
group by p.date order by p.date
"""
#: Calendar days of market returns read before the first scored date: the regimes' rolling
#: window (REGIME_VOL_WINDOW_DAYS sessions) with room for holidays.
MARKET_LEAD_DAYS = 3 * REGIME_VOL_WINDOW_DAYS


def _pd(frame: pl.DataFrame) -> pd.DataFrame:
    return frame.to_pandas()


def _pl(frame: pd.DataFrame) -> pl.DataFrame:
    return pl.from_pandas(frame)


@dg.asset(
    name="folds",
    deps=["features", "labels_forward"],
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    description="Monthly walk-forward test folds with per-horizon purged training ends.",
    automation_condition=ON_UPDATE,
    check_specs=[
        dg.AssetCheckSpec(
            "folds_purged",
            asset="folds",
            blocking=True,
            description="Training ends h + 1 calendar sessions before each test month",
        ),
    ],  # fmt: skip
)
def folds_asset(warehouse: WarehouseResource):
    s = get_settings()
    db = warehouse.get()
    dates = _pd(db.distinct_dates("features"))["date"]
    if dates.empty:
        raise dg.Failure("features is empty: materialize the data assets first (data_job)")
    all_folds = folds.make_folds(
        dates, s.folds.first_test_month, s.folds.last_test_month, s.labels.horizons,
        s.folds.window, s.folds.rolling_train_days,
    )  # fmt: skip
    table = folds.folds_to_frame(all_folds)
    passed, description, numbers = table_checks.folds_purged(all_folds, s.data.calendar)
    if not passed:  # validate, then publish: folds that leak are never written
        raise dg.Failure(f"folds are not purged: {description}")
    db.replace_table("folds", _pl(table))
    selected = folds.select_folds(
        all_folds, s.mode, s.folds.smoke_folds, dates, max(s.labels.horizons)
    )
    yield dg.MaterializeResult(
        metadata={
            "folds": len(all_folds),
            "mode": s.mode,
            "selected": ", ".join(f.fold_id for f in selected[:3])
            + (" ..." if len(selected) > 3 else ""),
            "definitions": dg.MetadataValue.md(
                report.markdown_table(table.astype({c: str for c in table.columns[2:6]}).head(30))
            ),
        }
    )
    yield dg.AssetCheckResult(
        check_name="folds_purged", passed=passed, description=description, metadata=numbers
    )


def lightgbm_dir(s, period: str):
    """``<data_dir>/models/lightgbm/<period>/``: the boosters of one refit period."""
    return s.warehouse.data_dir / "models" / "lightgbm" / period


def _needed_models(s, plan: baselines.ControlPlan) -> list[tuple[str, int]]:
    models = [baselines.LIGHTGBM_MODEL]
    if plan.shuffled_labels:
        models.append(baselines.SHUFFLED_MODEL)
    if plan.future_labels is not None:
        models.append(baselines.PLANTED_LEAK_MODEL)
    return [(m, int(h)) for m in models for h in s.labels.horizons]


@dg.asset(
    name="lightgbm_models",
    deps=[
        "folds",
        # A fold's models train on the whole daily history before its test month.
        *[
            dg.AssetDep(a, partition_mapping=HISTORY_BEFORE_FOLD)
            for a in ("features", "labels_forward", "universe")
        ],
    ],
    partitions_def=fold_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    automation_condition=MISSING_MODEL,
    group_name=GROUP,
    pool=MODEL_POOL,
    kinds={"lightgbm"},
    description="The fold's fitted LightGBM models (one per horizon, plus the tripwire controls "
    "on control folds), fitted at the purged cut of the first fold of its refit period "
    "(lightgbm.refit_months) and stored under data/models/lightgbm/<period>/.",
    check_specs=[
        dg.AssetCheckSpec(
            "lightgbm_train_cut",
            asset="lightgbm_models",
            blocking=True,
            description="Every LightGBM training label matured before the fold's first test day",
        )
    ],  # fmt: skip
)
def lightgbm_models_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db, fold_id = get_settings(), warehouse.get(), context.partition_key
    fold = get_fold(db, fold_id)
    period = refit_period(fold_id, s.folds.first_test_month, s.lightgbm.refit_months)
    at = get_fold(db, period)  # the period's first fold: where its models are fitted
    directory = lightgbm_dir(s, period)
    plan = _control_plan(db, fold, s)
    needed = _needed_models(s, plan)
    stored = model_store.read_manifest(directory) if period != fold_id else None
    have = set(stored["models"]) if stored and stored.get("cut") == str(at.cut.date()) else set()
    missing = [(m, h) for m, h in needed if model_store.model_key(m, h) not in have]
    threads = lightgbm_threads(context.instance)
    if missing:  # the first fold of a period always refits; later ones reuse what it stored
        feats = _pd(db.read(
            "select f.* from features f join universe u using (date, ticker) "
            "where u.in_universe and f.date between ? and ?",
            [at.train_start.date(), max(at.train_end.values()).date()],
        ))  # fmt: skip
        # Only labels a training row can join: in the universe, inside the training window
        # (the shuffled control permutes this pool), matured before the cut.
        labels = _pd(db.read(
            "select * from labels_forward where in_universe and date >= ? and available_at < ?",
            [at.train_start.date(), at.test_start.date()],
        ))  # fmt: skip
        wanted = {m for m, _ in missing}
        fit_plan = _control_plan(db, at, s, force=wanted)
        fits = baselines.fit_fold_models(
            feats, labels, at, s.labels.horizons, s.lightgbm,
            include_lightgbm=baselines.LIGHTGBM_MODEL in wanted,
            num_threads=threads, use_sector_relative=s.features.use_sector_relative,
            controls=fit_plan,
        )  # fmt: skip
        context.log.info(f"fitted {len(fits)} models at the cut of {period} ({at.cut.date()})")
        model_store.write_models(
            directory, fits, {"period": period, "cut": str(at.cut.date()),
                              "refit_months": s.lightgbm.refit_months},
        )  # fmt: skip
    models = model_store.load_models(directory, [model_store.model_key(m, h) for m, h in needed])
    late = [
        {"model": m.model, "horizon": m.horizon, "max_available_at": str(m.max_available_at.date())}
        for m in models if m.max_available_at >= fold.test_start
    ]  # fmt: skip
    train_cut = dg.AssetCheckResult(
        check_name="lightgbm_train_cut",
        passed=not late,
        description=f"{len(late)} model(s) saw a label maturing on/after {fold.test_start.date()}"
        f" (models of period {period}, fitted at {at.cut.date()})",
        metadata={"violations": dg.MetadataValue.json(late)},
    )
    yield dg.MaterializeResult(
        metadata={
            "period": period,
            "fitted_at_cut": str(at.cut.date()),
            "refit": bool(missing),
            # Threads of the fit (when it refits): its share of the CPUs, see lightgbm_threads.
            "lightgbm_threads": threads,
            "path": dg.MetadataValue.path(str(directory)),
            "models": dg.MetadataValue.json([m.record for m in models]),
        }
    )
    yield train_cut


@dg.asset(
    name="baseline_scores",
    deps=[
        dg.AssetDep("lightgbm_models", partition_mapping=FOLD_OF_DAY),
        # The planted-leak control reads its day's labels on purpose.
        *[
            dg.AssetDep(a, partition_mapping=dg.TimeWindowPartitionMapping())
            for a in ("features", "universe", "labels_forward")
        ],
    ],
    **SCORE_ASSET_OPTIONS,
    group_name=GROUP,
    kinds={"duckdb", "lightgbm"},
    description="Factor floor, LightGBM (its fold's stored models) and random scores of the "
    "day's universe (on the scoring cadence; a one-day run scores its day whatever the cadence).",
    check_specs=[
        dg.AssetCheckSpec(
            "scores_complete",
            asset="baseline_scores",
            blocking=True,
            description="Every baseline scored every universe member of every scored date "
            "once, with a finite score where its inputs exist",
        )
    ],  # fmt: skip
)
def baseline_scores_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db = get_settings(), warehouse.get()
    start, end, plan = run_folds(context, db, s.folds.scoring_cadence, "features")
    parts, problems, numbers, periods = [], [], {}, []
    for fold, days in plan:
        if not len(days):
            continue
        period = refit_period(fold.fold_id, s.folds.first_test_month, s.lightgbm.refit_months)
        feats = _pd(db.read(
            "select f.* from features f join universe u using (date, ticker) where u.in_universe "
            "and f.date = any(?::date[]) and u.date = any(?::date[])",
            [[d.date() for d in days]] * 2,
        ))  # fmt: skip
        controls = _control_plan(db, fold, s, scoring=True)
        keys = [model_store.model_key(m, h) for m, h in _needed_models(s, controls)]
        models = model_store.load_models(lightgbm_dir(s, period), keys)
        scores = baselines.score_dates(
            feats, fold, s.labels.horizons, days, models, s.lightgbm.seed, controls
        )
        # The planted leak scores only members whose future label exists (baselines.score_dates).
        fitted_models = [m for m in keys_models(models) if m != baselines.PLANTED_LEAK_MODEL]
        expected = [*baselines.FACTORS, baselines.COMPOSITE_MODEL, baselines.RANDOM_MODEL,
                    *fitted_models]  # fmt: skip
        ok, description, fold_numbers = table_checks.scores_complete(
            scores, feats, expected, s.labels.horizons,
            always_scored=[baselines.RANDOM_MODEL, *fitted_models],
        )  # fmt: skip
        if not ok:
            problems.append(f"fold {fold.fold_id}: {description}")
        numbers = add_counts(numbers, fold_numbers)
        parts.append(scores)
        periods.append(period)
    scores = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=baselines.SCORE_COLUMNS)
    )
    scored = sorted({pd.Timestamp(d).date() for d in scores["date"]}) if len(scores) else []
    complete = dg.AssetCheckResult(
        check_name="scores_complete", passed=not problems,
        description="; ".join(problems) or f"{len(scores)} scores on {len(scored)} dates "
        f"{start}..{end}" + ("" if scored else " (no scoring date: holiday or off the cadence)"),
        metadata=numbers,
    )  # fmt: skip
    if problems:  # validate, then publish
        yield complete
        raise blocking_failure([("scores_complete", complete.description)], "baseline_scores")
    db.replace_window(
        "baseline_scores", baselines.score_table(scores), start, end,
        order_by=("date", "model", "horizon", "ticker"),
    )  # fmt: skip
    yield dg.MaterializeResult(
        metadata={
            "rows": len(scores),
            "scoring_dates": len(scored),
            "models_periods": ", ".join(sorted(set(periods))),
            "models": ", ".join(sorted(scores["model"].unique())) if len(scores) else "",
        }
    )
    yield complete


def keys_models(models) -> list[str]:
    return sorted({m.model for m in models})


def _control_plan(
    db, fold: folds.Fold, s, force: set[str] | None = None, scoring: bool = False
) -> baselines.ControlPlan:
    """The LightGBM tripwire controls of this fold: shuffled labels and the planted leak on
    folds spread over the evaluated ones (``tripwires.*_max_folds``), or those of ``force``
    (model names: fitting a later fold's controls at its period's cut). The planted leak reads
    the test month's labels on purpose: it is the positive control the leak scan must flag.
    ``scoring``: only the test month's planted labels are read (training needs them all)."""
    t = s.tripwires
    if force is None:
        selected = selected_fold_ids(db)
        shuffled = fold.fold_id in tripwires.control_fold_ids(selected, t.shuffled_labels_max_folds)
        planted = fold.fold_id in tripwires.control_fold_ids(selected, t.planted_leak_max_folds)
    else:
        shuffled = baselines.SHUFFLED_MODEL in force
        planted = baselines.PLANTED_LEAK_MODEL in force
    future = None
    if planted:
        first = fold.test_start if scoring else fold.train_start
        # Universe rows only: the leak is planted on (in-universe) feature rows.
        future = _pd(db.read(
            "select date, ticker, horizon, excess_return from labels_forward "
            "where in_universe and date between ? and ?", [first.date(), fold.test_end.date()]))  # fmt: skip
    return baselines.ControlPlan(
        shuffled_labels=shuffled, future_labels=future, noise=t.planted_leak_noise, seed=t.seed
    )


ON_CADENCE = "fold in (select unnest(?)) and date = any(?::date[])"


def _read_scores(db, fold_ids: list[str]) -> pd.DataFrame:
    """The scores of ``fold_ids`` on their models' scoring cadence (:func:`cadence_dates`)."""
    tables = [t for t in SCORE_TABLES if t in db.tables()]
    parts = [
        _pd(db.read(f"select model, horizon, date, ticker, score, fold from {t} "
                    f"where {ON_CADENCE}", [fold_ids, cadence_dates(db, fold_ids, t)]))
        for t in tables
    ]  # fmt: skip
    parts = [p for p in parts if len(p)]
    if not parts:
        raise dg.Failure(
            f"no scores to evaluate: none of the score tables {', '.join(SCORE_TABLES)} holds a "
            f"row for the selected folds {fold_ids[0]}..{fold_ids[-1]} (tables present: "
            f"{', '.join(tables) or 'none'}). Materialize baseline_scores for those folds first "
            f"(kronos-pipeline backfill --folds {fold_ids[0]}:{fold_ids[-1]}, or the "
            "baseline_scores_job backfill in the UI)."
        )
    return pd.concat(parts, ignore_index=True)


def _matured_pairs(db, fold_ids: list[str]) -> int:
    """Scored (model, horizon, date, ticker) rows with a finite score and a label, counted in
    SQL independently of the pandas join that builds the eval rows."""
    tables = [t for t in SCORE_TABLES if t in db.tables()]
    unions = " union all ".join(
        f"select model, horizon, date, ticker, score from {t} where {ON_CADENCE}" for t in tables
    )
    # The labels of the scored days only, as a constant filter: their other days stay unopened.
    sql = (f"select count(*) from ({unions}) s join (select * from labels_forward "
           "where date = any(?::date[])) l using (date, ticker, horizon) "
           "where isfinite(s.score) and l.fwd_return is not null and l.excess_return is not null")  # fmt: skip
    days = {t: cadence_dates(db, fold_ids, t) for t in tables}
    params = [p for t in tables for p in (fold_ids, days[t])]
    return int(db.read(sql, [*params, sorted(set().union(*days.values()))]).item())


def _pit_tripwire(db, scores: pd.DataFrame, s) -> dict:
    """The PIT recomputation of the whole chain from raw bars, on dates spread over the range."""
    feature_dates = _pd(db.distinct_dates("features"))["date"]
    dates = data_tripwires.sample_dates(
        feature_dates, scores["date"].unique(), s.tripwires.pit_dates
    )
    day_list = [d.date() for d in dates]
    on_days = "where date = any(?::date[])"
    factor_models = list(data_tripwires.FACTOR_MODELS)
    # The labels each sampled t compares: dated from its label window's start up to t (a
    # label is available after its date), as a list of days, so only their files are read.
    label_days = sorted({
        d.date() for t in dates for d in feature_dates[
            feature_dates.between(data_tripwires.label_window_start(t, s.labels.horizons), t)]
    })  # fmt: skip
    stored = data_tripwires.StoredAsOf(
        features=_pd(db.read(f"select * from features {on_days}", [day_list])),
        universe=_pd(db.read(f"select * from universe {on_days}", [day_list])),
        labels=_pd(db.read("select date, ticker, horizon, fwd_return, excess_return, available_at "
                           f"from labels_forward {on_days} and available_at <= ?",
                           [label_days, day_list[-1]])),
        scores=_pd(db.read(f"select model, horizon, date, ticker, score from baseline_scores "
                           f"{on_days} and model in (select unnest(?))", [day_list, factor_models])),
    )  # fmt: skip
    history = db.read_table("sector_history") if "sector_history" in db.tables() else None
    raw = db.read_table("raw_bars", end=day_list[-1], columns=", ".join(RAW_PRICE_COLUMNS))
    return data_tripwires.pit_chain_tripwire(raw, history, stored, dates, s)


def evaluation_pending(
    db, selected: list[str] | None = None, matured: int | None = None
) -> str | None:
    """Why the evaluation has nothing to judge yet (no folds, or no scored pair of the
    mode's folds has a matured label), else None. ``evaluation_job`` fails with this
    reason; the nightly chain and ``backfill --folds`` skip the step instead, since a
    deployment's first sessions legitimately have no matured label. ``matured``: the
    :func:`_matured_pairs` count of ``selected`` when the caller has it."""
    if "folds" not in db.tables():
        return "nothing to evaluate yet: no folds (materialize folds first)"
    selected = selected_fold_ids(db) if selected is None else selected
    if not selected:
        return "nothing to evaluate yet: no fold has data"
    if (_matured_pairs(db, selected) if matured is None else matured) == 0:
        h = min(get_settings().labels.horizons)
        return (
            f"nothing to evaluate yet: no scored (date, ticker) of folds {selected[0]}.."
            f"{selected[-1]} has a matured label (the first {h}-session labels mature that "
            "many sessions after the first scored date)"
        )
    return None


def forecast_accuracy(db, fold_ids: list[str], horizons) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Forecast accuracy (issue 12): Kronos and the two naive forecasts on the same (date,
    ticker, horizon) keys, against realized h-day price returns; and the calibration table."""
    from kronos_pipeline.evaluation import forecast_metrics as fm

    empty = (pd.DataFrame(columns=list(fm.METRIC_COLUMNS)),
             pd.DataFrame(columns=list(fm.CALIBRATION_COLUMNS)))  # fmt: skip
    if "kronos_forecasts" not in db.tables():
        return empty
    kronos = _pd(db.read(
        "select model, date, ticker, horizon, last_close, pred_return_mean, samples "
        f"from kronos_forecasts where {ON_CADENCE}",
        [fold_ids, cadence_dates(db, fold_ids, "kronos_scores")]))  # fmt: skip
    if kronos.empty:
        return empty
    kronos["samples"] = kronos["samples"].map(lambda v: np.asarray(v, dtype=float))
    first, last = kronos["date"].min(), kronos["date"].max()
    prices = _pd(db.read(
        "select ticker, date, close, adj_close from prices_pit where date between ? and ? "
        "and ticker in (select unnest(?))",
        [(first - pd.Timedelta(days=550)).date(), (last + pd.Timedelta(days=200)).date(),
         sorted(kronos["ticker"].unique())],
    ))  # fmt: skip
    naive = fm.naive_forecasts(prices, kronos[["date", "ticker"]].drop_duplicates(), horizons)
    forecasts = pd.concat([kronos, naive], ignore_index=True)
    realized = fm.realized_price_returns(prices, horizons)
    return fm.forecast_metrics(forecasts, realized), fm.calibration_table(forecasts, realized)


def _check_result(asset: str, name: str, result: dict) -> dg.AssetCheckResult:
    """A tripwire as a check: passes only on "pass"; "not evaluated" fails too (with why), as
    a warning when only too few dates for the NW t kept a control from being judged."""
    return dg.AssetCheckResult(
        asset_key=asset, check_name=name, passed=result.get("status") == tripwires.PASS,
        severity=dg.AssetCheckSeverity.WARN if result.get("too_few_dates")
        else dg.AssetCheckSeverity.ERROR,
        description=f"{str(result.get('status', '')).upper()}: {result.get('reason', '')}",
        metadata={"result": dg.MetadataValue.json(report.clean_json(result)),
                  **({"worst_column": str(result["worst_column"])}
                     if result.get("worst_column") else {})},
    )  # fmt: skip


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            name,
            deps=[
                "baseline_scores",
                "kronos_scores",
                "kronos_head_scores",
                "labels_forward",
                "prices_pit",
            ],
            group_name=GROUP,
            kinds={"duckdb"},
            automation_condition=NIGHTLY_EVALUATION,
        )
        for name in (*TABLES, "leak_tripwires", "gate_verdicts")
    ],
    check_specs=[
        *[dg.AssetCheckSpec(n, asset="leak_tripwires", blocking=True) for n in TRIPWIRE_CHECKS],
        dg.AssetCheckSpec(
            "contamination",
            asset="leak_tripwires",
            description="Published weights evaluated before their pre-training cutoff (warns)",
        ),
        # A gate is a verdict on a model, not a fault of the pipeline: a failed (or not
        # evaluable) gate warns, which alert_on_check_failure posts, and the run (the nightly
        # chain, `smoke` in CI) carries on. The tripwires stay blocking: they judge the pipeline.
        *[
            dg.AssetCheckSpec(
                n,
                asset="gate_verdicts",
                description=f"{n} (SPEC section 6) for every candidate model; warns when one "
                "fails or cannot be judged",
            )
            for n in GATE_CHECKS
        ],
        dg.AssetCheckSpec(
            "rows_reconcile",
            asset="eval_rows",
            blocking=True,
            description="Eval rows = scored pairs with a matured label, counted in SQL",
        ),
        dg.AssetCheckSpec(
            "one_row_per_date",
            asset="per_date_metrics",
            blocking=True,
            description="A row and a RankIC for every scored date with data",
        ),
        dg.AssetCheckSpec(
            "one_row_per_fold",
            asset="fold_summaries",
            blocking=True,
            description="A summary, with a median RankIC, per model, horizon and fold",
        ),
        dg.AssetCheckSpec(
            "one_row_per_model",
            asset="model_comparison",
            blocking=True,
            description="A row, with a median RankIC, per model and horizon",
        ),
    ],  # fmt: skip
)
def evaluation_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Eval rows, per-date metrics, fold summaries, comparison, tripwires and gates of every model
    scored on the folds of the current mode."""
    s = get_settings()
    db = warehouse.get()
    selected = selected_fold_ids(db)
    # Counted once: the pending test and the rows_reconcile check read the same tables.
    matured = _matured_pairs(db, selected) if selected else 0
    pending = evaluation_pending(db, selected, matured)
    if pending:
        raise dg.Failure(pending, allow_retries=False)
    scores = _read_scores(db, selected)
    first, last = scores["date"].min().date(), scores["date"].max().date()
    labels = _pd(db.read_table("labels_forward", first, last))
    momentum = _pd(db.read_table("features", first, last, columns="date, ticker, mom_12_1"))
    # The adjustment tripwire's columns only (every day up to the last scored one).
    prices = db.read_table(
        "prices_pit", end=last, columns="corporate_action, total_return, vendor_return"
    )
    market_from = first - dt.timedelta(days=MARKET_LEAD_DAYS)
    result = evaluate_scores(
        scores, labels, s, momentum=momentum,
        market=_pd(db.read(MARKET_SQL.format(start=market_from.isoformat()))),
        pit=_pit_tripwire(db, scores, s),
        adjustment=data_tripwires.adjustment_tripwire(prices, s.tripwires),
        # Every Kronos model built on pre-trained weights (zero-shot, fine-tuned, and the heads
        # on their embeddings) saw data up to the pre-training cutoff.
        pretrained_models=[m for m in gates.candidate_models(scores["model"].unique())
                           if m.startswith("kronos") and ("zero_shot" in m or "finetune" in m
                           or s.kronos.strategy != "scratch")],
    )  # fmt: skip
    table_outcomes = {
        ("eval_rows", "rows_reconcile"): table_checks.eval_rows_reconcile(
            result.eval_rows, matured
        ),
        ("per_date_metrics", "one_row_per_date"): table_checks.per_date_complete(
            result.per_date, result.eval_rows
        ),
        ("fold_summaries", "one_row_per_fold"): table_checks.summaries_complete(
            result.fold_summaries, result.per_date
        ),
        ("model_comparison", "one_row_per_model"): table_checks.comparison_complete(
            result.comparison, result.per_date
        ),
    }
    checks = [
        *[
            dg.AssetCheckResult(
                asset_key=asset, check_name=check, passed=ok, description=description,
                metadata=numbers,
            )
            for (asset, check), (ok, description, numbers) in table_outcomes.items()
        ],
        *[_check_result("leak_tripwires", name, result.tripwires[name]) for name in TRIPWIRE_CHECKS],
        _contamination_check(result.tripwires["contamination"]),
        *[_gate_check(result.verdicts, name) for name in GATE_CHECKS],
    ]  # fmt: skip
    # Validate, then publish: with a failed blocking check (a table that does not reconcile,
    # a leak tripwire) nothing is written, neither tables nor report; the checks say why.
    if failed := failed_blocking(checks, context.assets_def.check_specs):
        yield from checks
        raise blocking_failure(failed, "the evaluation")
    frames = (result.eval_rows, result.per_date, result.fold_summaries, result.comparison)
    accuracy = forecast_accuracy(db, selected, s.labels.horizons)
    trip_json = json.dumps(report.clean_json(result.tripwires), default=report.json_default)
    # Every table of the step lands in one transaction, or none.
    with db.transaction() as tx:
        for name, frame in zip(TABLES, frames, strict=True):
            tx.replace_table(name, _pl(frame))
        tx.replace_table(
            "leak_tripwires", pl.DataFrame({"run_at": [dt.datetime.now()], "json": [trip_json]})
        )
        tx.replace_table("gate_verdicts", _pl(result.verdicts))
        # Cross-model comparisons on common (date, ticker) pairs, rendered by the report.
        tx.replace_table("model_comparison_common", _pl(result.common))
        tx.replace_table("model_versus_lightgbm", _pl(result.versus_lightgbm))
        for name, frame in zip(("forecast_metrics", "forecast_calibration"), accuracy, strict=True):
            if frame.empty:  # no Kronos forecasts in these folds: no stale figures either
                tx.drop_table(name)
            else:
                tx.replace_table(name, pl.from_pandas(frame))
    for name, frame in zip(TABLES, frames, strict=True):
        yield dg.MaterializeResult(asset_key=name, metadata={"rows": len(frame)})
    yield dg.MaterializeResult(
        asset_key="leak_tripwires", metadata={"passed": bool(result.tripwires["passed"])}
    )
    yield dg.MaterializeResult(
        asset_key="gate_verdicts",
        metadata={k: v for k, v in report.key_figures(result.comparison, result.verdicts).items()},
    )
    # The report is rendered once, by evaluation_report, which these blocking checks guard.
    yield from checks


def _contamination_check(contamination: dict) -> dg.AssetCheckResult:
    """Published weights evaluated before their pre-training cutoff: a warning."""
    return dg.AssetCheckResult(
        asset_key="leak_tripwires", check_name="contamination",
        passed=not contamination.get("contaminated_models"),
        severity=dg.AssetCheckSeverity.WARN, description=contamination.get("reason", ""),
        metadata={"result": dg.MetadataValue.json(report.clean_json(contamination))},
    )  # fmt: skip


def _gate_check(verdicts: pd.DataFrame, name: str) -> dg.AssetCheckResult:
    """A gate over every candidate: a verdict on the models, so a warning, never blocking."""
    check = gates.gate_check(verdicts, name)
    return dg.AssetCheckResult(
        asset_key="gate_verdicts", check_name=name, passed=check.status == tripwires.PASS,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{check.status.upper()}: {check.description}",
    )  # fmt: skip


def freeze_dir(s) -> Path:
    """Where ``kronos-pipeline freeze`` keeps the frozen baseline floor."""
    return s.report.output_root / "frozen"


def _frozen(comparison: pd.DataFrame, s) -> tuple[str, pd.DataFrame] | None:
    floor = freeze.load_floor(freeze_dir(s))
    if floor is None:
        return None
    return floor["frozen_at"], freeze.against_floor(comparison, floor)


def _sector_features(db) -> list[str]:
    prefix = baselines.SECTOR_RELATIVE_PREFIX
    return [c for c in db.table_schema("features") or {} if c.startswith(prefix)]


def _write_report_folder(db) -> tuple[Path, dict]:
    """Render the SPEC section 8 folder from the warehouse tables; returns it and key figures."""
    s = get_settings()
    t = {name: _pd(db.read(f"select * from {name}")) for name in (*TABLES, "gate_verdicts")}
    trip = json.loads(db.read("select json from leak_tripwires")["json"][0])
    out_dir = s.report.output_root / s.report.run_name
    report.write_report(
        out_dir, comparison=t["model_comparison"], fold_summaries=t["fold_summaries"],
        per_date=t["per_date_metrics"], eval_rows=t["eval_rows"],
        deciles=decile_returns(t["eval_rows"]), tripwires=trip, verdicts=t["gate_verdicts"],
        reference=gates.reference_comparison(t["model_comparison"], s.report),
        data_source=s.data.source_kind,
        sector_features=_sector_features(db),
        stop_rules=gates.stop_rule(t["model_comparison"], s.gates),
        frozen=_frozen(t["model_comparison"], s),
        common=_pd(db.read("select * from model_comparison_common"))
        if "model_comparison_common" in db.tables() else None,
        versus_lightgbm=_pd(db.read("select * from model_versus_lightgbm"))
        if "model_versus_lightgbm" in db.tables() else None,
        sectors_used=s.features.use_sector_relative,
        forecast_accuracy=_stored_accuracy(db), gates=s.gates,
        run_info={
            "mode": s.mode,
            "scoring cadence": f"baselines {s.folds.scoring_cadence}, Kronos "
            f"{s.kronos.scoring_cadence}" + ("" if s.kronos.enabled else " (Kronos off)"),
            "refit cadence": f"LightGBM every {s.lightgbm.refit_months} month(s), Kronos every "
            f"{s.kronos.refit_months} month(s): fitted at the purged cut of the first fold of "
            "each period and used by all of its folds"
            + (f"; Kronos {s.kronos.strategy} fit budget {s.kronos_training.train_max_minutes:g} "
               "min wall clock" if s.kronos.strategy != "published" else ""),
            "Kronos sampling": "{sample_count} path(s) per series, temperature {temperature}, "
            "top_k {top_k}, top_p {top_p}".format(**s.kronos_sampling) + "; universe "
            f"top {s.kronos.top_n or 'all'} by liquidity",
            "tripwire controls": (
                f"LightGBM retrained on shuffled labels on up to "
                f"{s.tripwires.shuffled_labels_max_folds or 'all'} folds and with a planted leak "
                f"on up to {s.tripwires.planted_leak_max_folds or 'all'} folds; Kronos checkpoints "
                "are self-supervised on prices (no labels), so shuffled labels do not apply to them"
            ),
            "folds": ", ".join(sorted(t["fold_summaries"]["fold"].unique())),
            "horizons without matured labels in these folds": ", ".join(
                str(h) for h in s.labels.horizons
                if h not in set(t["model_comparison"]["horizon"].astype(int))
            ) or "none",
        },
    )  # fmt: skip
    from kronos_pipeline.files import atomic_write_bytes

    decisions = checkpoint_decisions(s)
    if not decisions.empty:  # the fine-tuning guard's decisions, one row per refit period
        atomic_write_bytes(
            out_dir / "checkpoint_decisions.csv", decisions.to_csv(index=False).encode()
        )
    return out_dir, report.key_figures(t["model_comparison"], t["gate_verdicts"])


def _stored_accuracy(db) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if "forecast_metrics" not in db.tables():
        return None
    metrics = _pd(db.read("select * from forecast_metrics"))
    if metrics.empty:
        return None
    return metrics, _pd(db.read("select * from forecast_calibration"))


@dg.asset(
    name="evaluation_report",
    deps=[*TABLES, "leak_tripwires", "gate_verdicts"],
    group_name=GROUP,
    kinds={"duckdb", "matplotlib"},
    automation_condition=NIGHTLY_EVALUATION,
    description="The run folder: REPORT_SUMMARY.md, CSVs, parquet, leak_tripwires.json, plots.",
    check_specs=[
        dg.AssetCheckSpec(
            "report_files",
            asset="evaluation_report",
            description="The report folder holds every file of SPEC section 8",
        ),
    ],  # fmt: skip
)
def evaluation_report_asset(warehouse: WarehouseResource):
    """Render the report folder once, from the tables the evaluation published: it runs only
    when no blocking check of the evaluation failed (which then wrote nothing either)."""
    out_dir, figures = _write_report_folder(warehouse.get())
    yield dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(out_dir)), **figures})
    ok, description, numbers = table_checks.report_files_present(out_dir, report.REPORT_FILES)
    yield dg.AssetCheckResult(
        check_name="report_files", passed=ok, description=description, metadata=numbers
    )

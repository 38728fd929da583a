"""Walk-forward evaluation assets: folds -> baseline scores (per fold) -> evaluation tables,
leak tripwires and gates (asset checks) -> report folder. Library work lives in
``kronos_pipeline.evaluation``; this module reads the warehouse, calls it and writes back."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import polars as pl

from kronos_pipeline.defs.common import blocking_failure
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.evaluation import (
    baselines,
    data_tripwires,
    folds,
    freeze,
    gates,
    report,
    table_checks,
    tripwires,
)
from kronos_pipeline.evaluation.metrics import decile_returns
from kronos_pipeline.evaluation.pipeline import evaluate_scores
from kronos_pipeline.settings import get_settings
from kronos_pipeline.warehouse import WAREHOUSE_POOL

GROUP = "evaluation"
#: Every table of long scores the evaluation unions (Kronos writes the second one).
SCORE_TABLES = ("baseline_scores", "kronos_scores")
TABLES = ("eval_rows", "per_date_metrics", "fold_summaries", "model_comparison")
TRIPWIRE_CHECKS = tripwires.BLOCKING_TRIPWIRES
GATE_CHECKS = ("gate1", "gate2", "gate3")
MARKET_SQL = """
select p.date, avg(p.ret) as mkt_ret
from (select ticker, date, tri / lag(tri) over (partition by ticker order by date) - 1 as ret
      from prices_pit) p
join universe u on u.date = p.date and u.ticker = p.ticker
where u.in_universe and p.ret is not null
group by p.date order by p.date
"""


def _fold_ids() -> list[str]:
    fs = get_settings().folds
    months = pd.period_range(fs.first_test_month, fs.last_test_month, freq="M")
    return [str(m) for m in months]


fold_partitions = dg.StaticPartitionsDefinition(_fold_ids())


def _selected_fold_ids() -> list[str]:
    s = get_settings()
    return _fold_ids()[-s.folds.smoke_folds :] if s.mode == "smoke" else _fold_ids()


def _pd(frame: pl.DataFrame) -> pd.DataFrame:
    return frame.to_pandas()


def _pl(frame: pd.DataFrame) -> pl.DataFrame:
    return pl.from_pandas(frame)


@dg.asset(
    name="folds",
    deps=["features", "labels_forward"],
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "pandas"},
    description="Monthly walk-forward test folds with per-horizon purged training ends.",
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
    dates = _pd(db.read("select distinct date from features order by date"))["date"]
    all_folds = folds.make_folds(
        dates, s.folds.first_test_month, s.folds.last_test_month, s.labels.horizons,
        s.folds.window, s.folds.rolling_train_days,
    )  # fmt: skip
    table = folds.folds_to_frame(all_folds)
    passed, description, numbers = table_checks.folds_purged(all_folds, s.data.calendar)
    if not passed:  # validate, then publish: folds that leak are never written
        raise dg.Failure(f"folds are not purged: {description}")
    db.replace_table("folds", _pl(table))
    selected = folds.select_folds(all_folds, s.mode, s.folds.smoke_folds)
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


@dg.asset(
    name="baseline_scores",
    deps=[
        "folds",
        # Each fold reads the whole daily history it trains on.
        *[
            dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping())
            for a in ("features", "labels_forward", "universe")
        ],
    ],
    partitions_def=fold_partitions,
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "lightgbm"},
    description="Factor floor, LightGBM (labels matured before the cut) and random scores.",
    check_specs=[
        dg.AssetCheckSpec(
            "lightgbm_train_cut",
            asset="baseline_scores",
            blocking=True,
            description="Every LightGBM training label matured before the fold's first test day",
        )
    ],  # fmt: skip
)
def baseline_scores_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s = get_settings()
    db = warehouse.get()
    fold_id = context.partition_key
    fold = folds.folds_from_frame(_pd(db.read("select * from folds where fold_id = ?", [fold_id])))[
        0
    ]
    feats = _pd(
        db.read(
            "select f.* from features f join universe u using (date, ticker) "
            "where u.in_universe and f.date between ? and ?",
            [fold.train_start.date(), fold.test_end.date()],
        )
    )
    labels = _pd(
        db.read("select * from labels_forward where available_at < ?", [fold.test_start.date()])
    )
    days = folds.scoring_dates(fold, feats["date"].unique(), s.folds.scoring_cadence)
    controls = _control_plan(db, fold, s)
    scores, fits = baselines.baseline_scores_for_fold(
        feats, labels, fold, s.labels.horizons, days, s.lightgbm,
        num_threads=s.lightgbm.num_threads, use_sector_relative=s.features.use_sector_relative,
        controls=controls,
    )  # fmt: skip
    late = [f.summary() for f in fits if f.max_available_at >= fold.test_start]
    train_cut = dg.AssetCheckResult(
        check_name="lightgbm_train_cut",
        passed=not late,
        description=f"{len(late)} model(s) saw a label maturing on/after {fold.test_start.date()}",
        metadata={"violations": dg.MetadataValue.json(late)},
    )
    if late:  # validate, then publish: scores of a model that saw the test month are never written
        yield train_cut
        raise blocking_failure([("lightgbm_train_cut", train_cut.description)], "baseline_scores")
    db.replace_where("baseline_scores", _pl(scores), "fold", [fold_id])
    yield dg.MaterializeResult(
        metadata={
            "rows": len(scores),
            "scoring_dates": len(days),
            "models": ", ".join(sorted(scores["model"].unique())),
            "lightgbm": dg.MetadataValue.json([f.summary() for f in fits]),
        }
    )
    yield train_cut


def _control_plan(db, fold: folds.Fold, s) -> baselines.ControlPlan:
    """The LightGBM tripwire controls of this fold: shuffled labels and the planted leak on
    folds spread over the evaluated ones (``tripwires.*_max_folds``). The planted leak reads
    the test month's labels on purpose: it is the positive control the leak scan must flag."""
    t = s.tripwires
    selected = _selected_fold_ids()
    future = None
    if fold.fold_id in tripwires.control_fold_ids(selected, t.planted_leak_max_folds):
        future = _pd(db.read(
            "select date, ticker, horizon, excess_return from labels_forward "
            "where date between ? and ?", [fold.train_start.date(), fold.test_end.date()]))  # fmt: skip
    return baselines.ControlPlan(
        shuffled_labels=fold.fold_id
        in tripwires.control_fold_ids(selected, t.shuffled_labels_max_folds),
        future_labels=future,
        noise=t.planted_leak_noise,
        seed=t.seed,
    )


def _read_scores(db, fold_ids: list[str]) -> pd.DataFrame:
    tables = [t for t in SCORE_TABLES if t in db.tables()]
    parts = [
        _pd(db.read(f"select model, horizon, date, ticker, score, fold from {t} "
                    "where fold in (select unnest(?))", [fold_ids]))
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
    unions = " union all ".join(
        f"select model, horizon, date, ticker, score from {t} where fold in (select unnest(?))"
        for t in SCORE_TABLES if t in db.tables()
    )  # fmt: skip
    n_tables = sum(t in db.tables() for t in SCORE_TABLES)
    sql = (f"select count(*) from ({unions}) s join labels_forward l using (date, ticker, horizon) "
           "where isfinite(s.score) and l.fwd_return is not null and l.excess_return is not null")  # fmt: skip
    return int(db.read(sql, [fold_ids] * n_tables).item())


def _pit_tripwire(db, scores: pd.DataFrame, s) -> dict:
    """The PIT recomputation of the whole chain from raw bars, on dates spread over the range."""
    feature_dates = _pd(db.read("select distinct date from features order by date"))["date"]
    dates = data_tripwires.sample_dates(
        feature_dates, scores["date"].unique(), s.tripwires.pit_dates
    )
    day_list = [d.date() for d in dates]
    on_days = "where date in (select unnest(?::date[]))"
    factor_models = list(data_tripwires.FACTOR_MODELS)
    stored = data_tripwires.StoredAsOf(
        features=_pd(db.read(f"select * from features {on_days}", [day_list])),
        universe=_pd(db.read(f"select * from universe {on_days}", [day_list])),
        labels=_pd(db.read("select * from labels_forward where available_at <= ? and date >= ?",
                           [day_list[-1], data_tripwires.label_window_start(dates[0], s.labels.horizons).date()])),
        scores=_pd(db.read(f"select model, horizon, date, ticker, score from baseline_scores "
                           f"{on_days} and model in (select unnest(?))", [day_list, factor_models])),
    )  # fmt: skip
    history = db.read_table("sector_history") if "sector_history" in db.tables() else None
    raw = db.read_table("raw_bars", end=day_list[-1])
    return data_tripwires.pit_chain_tripwire(raw, history, stored, dates, s)


def _check_result(asset: str, name: str, result: dict) -> dg.AssetCheckResult:
    """A tripwire as a check: passes only on "pass"; "not evaluated" fails too (with why)."""
    return dg.AssetCheckResult(
        asset_key=asset, check_name=name, passed=result.get("status") == tripwires.PASS,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{str(result.get('status', '')).upper()}: {result.get('reason', '')}",
        metadata={"result": dg.MetadataValue.json(report.clean_json(result)),
                  **({"worst_column": str(result["worst_column"])}
                     if result.get("worst_column") else {})},
    )  # fmt: skip


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            name,
            deps=["baseline_scores", "kronos_scores", "labels_forward", "prices_pit"],
            group_name=GROUP,
            kinds={"duckdb"},
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
        *[dg.AssetCheckSpec(n, asset="gate_verdicts", blocking=True) for n in GATE_CHECKS],
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
    pool=WAREHOUSE_POOL,
)
def evaluation_tables(warehouse: WarehouseResource):
    """Eval rows, per-date metrics, fold summaries, comparison, tripwires and gates of every model
    scored on the folds of the current mode."""
    s = get_settings()
    db = warehouse.get()
    scores = _read_scores(db, _selected_fold_ids())
    labels = _pd(db.read("select * from labels_forward where date between ? and ?",
                         [scores["date"].min(), scores["date"].max()]))  # fmt: skip
    momentum = _pd(db.read("select date, ticker, mom_12_1 from features where date between ? and ?",
                           [scores["date"].min(), scores["date"].max()]))  # fmt: skip
    prices = db.read_table("prices_pit", end=scores["date"].max().date())
    result = evaluate_scores(
        scores, labels, s, momentum=momentum, market=_pd(db.read(MARKET_SQL)),
        pit=_pit_tripwire(db, scores, s),
        adjustment=data_tripwires.adjustment_tripwire(prices, s.tripwires),
        pretrained_models=[m for m in gates.candidate_models(scores["model"].unique())
                           if m.startswith("kronos") and "zero_shot" in m],
    )  # fmt: skip
    table_outcomes = {
        ("eval_rows", "rows_reconcile"): table_checks.eval_rows_reconcile(
            result.eval_rows, _matured_pairs(db, _selected_fold_ids())
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
    broken = [f"{a}:{c}: {d}" for (a, c), (ok, d, _) in table_outcomes.items() if not ok]
    if broken:  # validate, then publish: inconsistent tables are never written
        raise dg.Failure("evaluation tables do not reconcile: " + "; ".join(broken))
    frames = (result.eval_rows, result.per_date, result.fold_summaries, result.comparison)
    trip_json = json.dumps(report.clean_json(result.tripwires), default=report.json_default)
    # Validate, then publish: every table of the step lands in one transaction, or none.
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
    for name, frame in zip(TABLES, frames, strict=True):
        yield dg.MaterializeResult(asset_key=name, metadata={"rows": len(frame)})
    yield dg.MaterializeResult(
        asset_key="leak_tripwires", metadata={"passed": bool(result.tripwires["passed"])}
    )
    yield dg.MaterializeResult(
        asset_key="gate_verdicts",
        metadata={k: v for k, v in report.key_figures(result.comparison, result.verdicts).items()},
    )
    for (asset, check), (ok, description, numbers) in table_outcomes.items():
        yield dg.AssetCheckResult(
            asset_key=asset, check_name=check, passed=ok, description=description, metadata=numbers
        )
    # The report is the evidence a failed gate needs: write it before the blocking checks,
    # which would otherwise skip evaluation_report in the same run.
    _write_report_folder(db)
    for name in TRIPWIRE_CHECKS:
        yield _check_result("leak_tripwires", name, result.tripwires[name])
    contamination = result.tripwires["contamination"]
    yield dg.AssetCheckResult(
        asset_key="leak_tripwires", check_name="contamination",
        passed=not contamination.get("contaminated_models"),
        severity=dg.AssetCheckSeverity.WARN, description=contamination.get("reason", ""),
        metadata={"result": dg.MetadataValue.json(report.clean_json(contamination))},
    )  # fmt: skip
    for name in GATE_CHECKS:
        check = gates.gate_check(result.verdicts, name)
        no_candidate = check.status == tripwires.NOT_EVALUATED and not (
            result.verdicts["candidate"].astype(bool).any()
        )
        yield dg.AssetCheckResult(
            asset_key="gate_verdicts", check_name=name, passed=check.status == tripwires.PASS,
            severity=dg.AssetCheckSeverity.WARN if no_candidate else dg.AssetCheckSeverity.ERROR,
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
        run_info={
            "mode": s.mode,
            "scoring cadence": s.folds.scoring_cadence,
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
    return out_dir, report.key_figures(t["model_comparison"], t["gate_verdicts"])


@dg.asset(
    name="evaluation_report",
    deps=[*TABLES, "leak_tripwires", "gate_verdicts"],
    group_name=GROUP,
    kinds={"duckdb", "matplotlib"},
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
    """Re-render the report folder (the evaluation step writes it too, before its gate checks)."""
    out_dir, figures = _write_report_folder(warehouse.get())
    yield dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(out_dir)), **figures})
    ok, description, numbers = table_checks.report_files_present(out_dir, report.REPORT_FILES)
    yield dg.AssetCheckResult(
        check_name="report_files", passed=ok, description=description, metadata=numbers
    )

"""Blocking means blocking: when a blocking check of the evaluation fails, nothing is written,
neither its tables nor the report, and an earlier evaluation's tables and report stay as they
were; when none fails, the tables land in one transaction and the report is rendered once.

A tiny real warehouse (synthetic market, two folds, the baselines without Kronos) is
evaluated. The planted failure is a leak: LightGBM's stored scores are replaced by the labels
they are judged against, so the blocking ``leak_scan`` tripwire flags it (median RankIC 1).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

FULL_RANGE = ("2017-03-01", "2018-06-29")
FOLDS = ("2018-04", "2018-05")
ENV = {
    "KRONOS_DATA__SYNTHETIC_START": FULL_RANGE[0],
    "KRONOS_DATA__SYNTHETIC_END": FULL_RANGE[1],
    "KRONOS_DATA__SYNTHETIC_TICKERS": "24",
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "60",
    "KRONOS_LABELS__HORIZONS": "[5, 10]",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": FOLDS[0],
    "KRONOS_FOLDS__LAST_TEST_MONTH": FOLDS[1],
    "KRONOS_KRONOS__ENABLED": "false",
    "KRONOS_LIGHTGBM__NUM_BOOST_ROUND": "30",
    "KRONOS_LIGHTGBM__MIN_DATA_IN_LEAF": "20",
    "KRONOS_LIGHTGBM__NUM_THREADS": "1",
    "KRONOS_TRIPWIRES__PIT_DATES": "2",
    # Two folds of daily dates are too few for the NW t of the negative controls: judge them
    # by their median alone, so that the clean evaluation passes every tripwire.
    "KRONOS_TRIPWIRES__MAX_ABS_MEDIAN_RANKIC": "0.2",
}
EVALUATION_TABLES = (
    "eval_rows", "per_date_metrics", "fold_summaries", "model_comparison", "leak_tripwires",
    "gate_verdicts", "model_comparison_common", "model_versus_lightgbm",
)  # fmt: skip


def _digest(db, table: str) -> str:
    frame = db.read(f"select * from {table}")
    frame = frame.sort(frame.columns, nulls_last=True)
    return hashlib.sha256(frame.write_csv().encode()).hexdigest()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from kronos_pipeline.definitions import DATA_ASSETS
    from kronos_pipeline.defs import evaluation
    from kronos_pipeline.defs.automation import data_job
    from kronos_pipeline.defs.partitions import weekdays_of
    from kronos_pipeline.defs.resources import warehouse_resources
    from kronos_pipeline.settings import get_settings
    from kronos_pipeline.warehouse import Warehouse

    folder: Path = tmp_path_factory.mktemp("blocking")
    runs_root = folder / "runs"
    out: dict = {"report_dir": runs_root / "latest", "runs_root": runs_root}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            **ENV,
            "KRONOS_WAREHOUSE__DATA_DIR": str(folder / "data"),
            "KRONOS_REPORT__OUTPUT_ROOT": str(runs_root),
        }.items():
            mp.setenv(key, value)
        mp.delenv("KRONOS_MODE", raising=False)
        get_settings.cache_clear()
        renders: list[Path] = []
        write_report = evaluation.report.write_report

        def counted(out_dir, **kwargs):
            renders.append(Path(out_dir))
            return write_report(out_dir, **kwargs)

        mp.setattr(evaluation.report, "write_report", counted)
        try:
            db_path = folder / "data" / "lake"
            resources = warehouse_resources(str(db_path))
            instance = dg.DagsterInstance.ephemeral()
            defs = dg.Definitions(assets=DATA_ASSETS, jobs=[data_job], resources=resources)
            assert (
                defs.resolve_job_def("data_job")
                .execute_in_process(
                    instance=instance,
                    tags={
                        "dagster/asset_partition_range_start": FULL_RANGE[0],
                        "dagster/asset_partition_range_end": FULL_RANGE[1],
                    },
                )
                .success
            )
            assert dg.materialize(
                [evaluation.folds_asset], resources=resources, instance=instance
            ).success
            for fold in FOLDS:
                assert dg.materialize(
                    [evaluation.lightgbm_models_asset],
                    partition_key=fold, resources=resources, instance=instance,
                ).success  # fmt: skip
                first, last = weekdays_of(fold)
                assert dg.materialize(
                    [evaluation.baseline_scores_asset], resources=resources, instance=instance,
                    tags={"dagster/asset_partition_range_start": first,
                          "dagster/asset_partition_range_end": last},
                ).success  # fmt: skip
            db = Warehouse(db_path)
            clean_scores = db.read("select * from baseline_scores")

            def rewrite_scores(frame: pl.DataFrame) -> None:
                """Replace every day of baseline_scores with ``frame``'s rows."""
                start, end = frame["date"].min(), frame["date"].max()
                db.replace_window("baseline_scores", frame, start, end)

            def plant_leak() -> None:
                """LightGBM's scores become the very labels it is evaluated against."""
                rewrite_scores(
                    db.read(
                        "select b.* replace (case when b.model = 'lightgbm' and "
                        "l.excess_return is not null then l.excess_return else b.score end "
                        "as score) from baseline_scores b left join labels_forward l "
                        "on l.date = b.date and l.ticker = b.ticker and l.horizon = b.horizon"
                    )
                )

            def evaluate(name: str) -> None:
                renders.clear()
                result = dg.materialize(
                    [evaluation.evaluation_tables, evaluation.evaluation_report_asset],
                    resources=resources, instance=instance, raise_on_error=False,
                )  # fmt: skip
                report_dir = out["report_dir"]
                out[name] = {
                    "success": result.success,
                    "checks": {
                        e.check_name: e.passed for e in result.get_asset_check_evaluations()
                    },
                    "materialized": sorted(
                        e.asset_key.to_user_string()
                        for e in result.get_asset_materialization_events()
                    ),
                    "tables": {t: _digest(db, t) for t in EVALUATION_TABLES if t in db.tables()},
                    "report": _files(report_dir) if report_dir.exists() else {},
                    "renders": list(renders),
                    "runs_root": sorted(p.name for p in runs_root.iterdir())
                    if runs_root.exists()
                    else [],
                }

            plant_leak()
            evaluate("planted_first")
            rewrite_scores(clean_scores)
            evaluate("clean")
            plant_leak()
            evaluate("planted_after")
        finally:
            get_settings.cache_clear()
    get_settings.cache_clear()
    return out


def test_a_failed_blocking_check_writes_no_table_and_no_report(evaluations):
    planted = evaluations["planted_first"]
    assert planted["success"] is False
    assert planted["checks"]["leak_scan"] is False
    assert planted["tables"] == {}  # not one evaluation table
    assert planted["report"] == {} and planted["renders"] == []
    assert planted["runs_root"] == []  # no report folder, no staging folder either
    assert planted["materialized"] == []


def test_without_a_failed_blocking_check_tables_and_report_are_published_rendered_once(
    evaluations,
):
    clean = evaluations["clean"]
    assert clean["success"] is True, clean["checks"]
    assert all(
        clean["checks"][name]
        for name in ("rows_reconcile", "leak_scan", "random_scores", "shuffled_labels")
    )
    assert set(clean["tables"]) == set(EVALUATION_TABLES)
    assert "REPORT_SUMMARY.md" in clean["report"] and clean["report"]["REPORT_SUMMARY.md"]
    assert clean["renders"] == [evaluations["report_dir"]]  # one render, by evaluation_report
    assert "evaluation_report" in clean["materialized"]


def test_a_later_failed_blocking_check_leaves_the_earlier_tables_and_report_untouched(
    evaluations,
):
    clean, planted = evaluations["clean"], evaluations["planted_after"]
    assert planted["success"] is False and planted["checks"]["leak_scan"] is False
    assert planted["tables"] == clean["tables"]
    assert planted["report"] == clean["report"]  # every file, byte for byte
    assert planted["renders"] == [] and planted["materialized"] == []
    # the published link and the one folder it points to; nothing staged and left behind
    assert planted["runs_root"] == clean["runs_root"]
    assert [n for n in clean["runs_root"] if not n.startswith(".")] == ["latest"]
    assert len(clean["runs_root"]) == 2


def test_a_check_blocks_by_its_name_not_its_position():
    from kronos_pipeline.defs.common import failed_blocking
    from kronos_pipeline.defs.prices import prices_pit_asset

    specs = (
        prices_pit_asset.check_specs
    )  # quality (blocking), adjustment (warns), history (blocking)
    assert [s.name for s in specs if s.blocking] == ["prices_quality", "history_complete"]

    def result(name: str, passed: bool, severity=dg.AssetCheckSeverity.ERROR):
        return dg.AssetCheckResult(
            asset_key="prices_pit", check_name=name, passed=passed, severity=severity,
            description=f"{name} planted",
        )  # fmt: skip

    # The blocking history check listed last, a warning first: only the blocking one counts.
    results = [
        result("adjustment_consistency", False, dg.AssetCheckSeverity.WARN),
        result("prices_quality", True),
        result("history_complete", False),
    ]
    assert failed_blocking(results, specs) == [("history_complete", "history_complete planted")]
    assert failed_blocking(list(reversed(results)), specs) == [
        ("history_complete", "history_complete planted")
    ]
    # a non-blocking check never blocks, whatever its severity or position
    assert failed_blocking([result("adjustment_consistency", False)], specs) == []

"""The code location loads, and its lineage matches a committed snapshot, so that a change to
assets, deps, checks, jobs or schedules is always a deliberate edit of this file."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from kronos_pipeline.definitions import defs

REPO_ROOT = Path(__file__).resolve().parents[2]

# asset key -> (group, partitioning, upstream asset keys, check names)
EXPECTED_ASSETS = {
    "vendor_files": ("sources", None, [], []),
    "raw_bars": (
        "data",
        "month",
        ["vendor_files"],
        [
            "bars_complete",
            "bars_gaps",
            "bars_quality",
            "column_schema_change",
            "lines_reconcile",
            "source_files",
        ],
    ),
    "bars_quarantine": (
        "data",
        "month",
        ["vendor_files"],
        ["column_schema_change", "quarantine_schema", "quarantine_share"],
    ),
    "ticker_history": (
        "data",
        "month",
        ["vendor_files"],
        ["column_schema_change", "ticker_history_schema"],
    ),
    "sector_history": (
        "data",
        "month",
        ["vendor_files"],
        ["column_schema_change", "sector_history_schema", "sectors_known"],
    ),
    "prices_pit": (
        "data",
        "month",
        ["raw_bars"],
        ["adjustment_consistency", "column_schema_change", "history_complete", "prices_quality"],
    ),
    "universe": (
        "data",
        "month",
        ["prices_pit"],
        ["column_schema_change", "universe_breadth", "universe_quality", "universe_rules"],
    ),
    "features": (
        "features",
        "month",
        ["prices_pit", "raw_bars", "sector_history", "universe"],
        ["column_schema_change", "factor_coverage", "features_quality"],
    ),
    "labels_forward": (
        "features",
        "month",
        ["prices_pit", "universe"],
        ["column_schema_change", "label_availability", "labels_quality"],
    ),
    "folds": ("evaluation", None, ["features", "labels_forward"], ["folds_purged"]),
    "lightgbm_models": (
        "evaluation",
        "fold",
        ["features", "folds", "labels_forward", "universe"],
        ["lightgbm_train_cut"],
    ),
    "baseline_scores": (
        "evaluation",
        "fold",
        ["features", "labels_forward", "lightgbm_models", "universe"],
        ["scores_complete"],
    ),
    "eval_rows": (
        "evaluation",
        None,
        ["baseline_scores", "kronos_head_scores", "kronos_scores", "labels_forward", "prices_pit"],
        ["rows_reconcile"],
    ),
    "per_date_metrics": (
        "evaluation",
        None,
        ["baseline_scores", "kronos_head_scores", "kronos_scores", "labels_forward", "prices_pit"],
        ["one_row_per_date"],
    ),
    "fold_summaries": (
        "evaluation",
        None,
        ["baseline_scores", "kronos_head_scores", "kronos_scores", "labels_forward", "prices_pit"],
        ["one_row_per_fold"],
    ),
    "model_comparison": (
        "evaluation",
        None,
        ["baseline_scores", "kronos_head_scores", "kronos_scores", "labels_forward", "prices_pit"],
        ["one_row_per_model"],
    ),
    "leak_tripwires": (
        "evaluation",
        None,
        ["baseline_scores", "kronos_head_scores", "kronos_scores", "labels_forward", "prices_pit"],
        [
            "adjustment_consistency",
            "contamination",
            "leak_scan",
            "pit_recomputation",
            "planted_leak",
            "random_scores",
            "shuffled_labels",
        ],
    ),
    "gate_verdicts": (
        "evaluation",
        None,
        ["baseline_scores", "kronos_head_scores", "kronos_scores", "labels_forward", "prices_pit"],
        ["gate1", "gate2", "gate3"],
    ),
    "kronos_checkpoint": (
        "kronos",
        "fold",
        ["folds", "prices_pit", "universe"],
        ["train_cut_before_test"],
    ),
    "kronos_forecasts": (
        "kronos",
        "fold",
        ["kronos_checkpoint", "prices_pit", "universe"],
        ["forecasts_valid", "member_coverage"],
    ),
    "kronos_scores": ("kronos", "fold", ["kronos_forecasts"], ["scores_match_forecasts"]),
    "kronos_heads": (
        "kronos",
        "fold",
        ["features", "folds", "kronos_checkpoint", "labels_forward", "prices_pit", "universe"],
        ["heads_train_cut"],
    ),
    "kronos_head_scores": (
        "kronos",
        "fold",
        ["features", "kronos_forecasts", "kronos_heads"],
        ["head_scores_valid"],
    ),
    "signals": (
        "signals",
        "fold",
        ["baseline_scores", "kronos_forecasts", "kronos_head_scores", "kronos_scores", "universe"],
        ["signal_complete"],
    ),
    "evaluation_report": (
        "evaluation",
        None,
        [
            "eval_rows",
            "fold_summaries",
            "gate_verdicts",
            "leak_tripwires",
            "model_comparison",
            "per_date_metrics",
        ],
        ["report_files"],
    ),
}
EXPECTED_JOBS = {
    "data_job": (
        "month",
        [
            "bars_quarantine",
            "features",
            "labels_forward",
            "prices_pit",
            "raw_bars",
            "sector_history",
            "ticker_history",
            "universe",
        ],
    ),
    "labels_job": ("month", ["labels_forward"]),
    "folds_job": (None, ["folds"]),
    "baseline_scores_job": ("fold", ["baseline_scores", "lightgbm_models"]),
    "kronos_job": (
        "fold",
        [
            "kronos_checkpoint",
            "kronos_forecasts",
            "kronos_head_scores",
            "kronos_heads",
            "kronos_scores",
        ],
    ),
    "scoring_job": (
        "fold",
        [
            "baseline_scores",
            "kronos_checkpoint",
            "kronos_forecasts",
            "kronos_head_scores",
            "kronos_heads",
            "kronos_scores",
            "lightgbm_models",
            "signals",
        ],
    ),
    "evaluation_job": (
        None,
        [
            "eval_rows",
            "evaluation_report",
            "fold_summaries",
            "gate_verdicts",
            "leak_tripwires",
            "model_comparison",
            "per_date_metrics",
        ],
    ),
}
# schedule -> (cron, timezone, job)
EXPECTED_SCHEDULES = {"nightly_schedule": ("30 22 * * 1-5", "America/New_York", "data_job")}
EXPECTED_SENSORS = [
    "alert_on_check_failure",
    "alert_on_run_failure",
    "alert_on_stale_sessions",
    "nightly_chain",
]
EXPECTED_RESOURCES = ["settings", "warehouse"]


def _partitioning(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    from kronos_pipeline.defs.partitions import fold_partitions, month_partitions

    if partitions_def is None:
        return None
    if partitions_def == month_partitions:
        return "month"
    if partitions_def == fold_partitions:
        return "fold"
    return type(partitions_def).__name__


def test_definitions_validate_loadable():
    dg.Definitions.validate_loadable(defs)


def test_dagster_cli_validates_the_code_location(tmp_path):
    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}  # no temporary home in the repo
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "kronos_pipeline.definitions"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


def test_asset_lineage_matches_the_snapshot():
    graph = defs.resolve_asset_graph()
    checks: dict[str, list[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), []).append(key.name)
    actual = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        actual[name] = (
            node.group_name,
            _partitioning(node.partitions_def),
            sorted(p.to_user_string() for p in node.parent_keys),
            sorted(checks.get(name, [])),
        )
    assert actual == EXPECTED_ASSETS


def test_job_selections_match_the_snapshot():
    graph = defs.resolve_asset_graph()
    actual = {
        job.name: (
            _partitioning(job.partitions_def),
            sorted(k.to_user_string() for k in job.selection.resolve(graph)),
        )
        for job in defs.jobs
    }
    assert actual == EXPECTED_JOBS


def test_schedules_and_sensors_match_the_snapshot():
    actual = {s.name: (s.cron_schedule, s.execution_timezone, s.job_name) for s in defs.schedules}
    assert actual == EXPECTED_SCHEDULES
    assert sorted(s.name for s in defs.sensors) == EXPECTED_SENSORS


def test_the_schedule_and_every_sensor_run_by_default():
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in defs.schedules)
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)


def test_resources_include_the_settings_of_the_code_location():
    from kronos_pipeline.settings import get_settings

    resources = defs.resources
    assert sorted(resources) == EXPECTED_RESOURCES
    assert resources["settings"].get() == get_settings()


def test_nightly_schedule_targets_the_partition_of_its_own_trading_day():
    schedule = defs.get_schedule_def("nightly_schedule")
    repo = defs.get_repository_def()

    with dg.instance_for_test() as instance:

        def tick(when: dt.datetime):
            ctx = dg.build_schedule_context(
                scheduled_execution_time=when, repository_def=repo, instance=instance
            )
            return schedule.evaluate_tick(ctx)

        instance.report_runless_asset_event(  # bars through 2019-12-30 (the month's run)
            dg.AssetMaterialization(
                "raw_bars", partition="2019-12",
                metadata={"dagster/row_count": 9, "window": "2019-12-02..2019-12-30"},
            )
        )  # fmt: skip
        requests = tick(dt.datetime(2019, 12, 31, 22, 30)).run_requests
        assert [r.partition_key for r in requests] == ["2019-12"]
        assert requests[0].tags["kronos/dates"] == "2019-12-31:2019-12-31"
        assert requests[0].tags["kronos/nightly"] == "2019-12-31"
        assert requests[0].run_key.startswith("2019-12-31:")
        holiday = tick(dt.datetime(2019, 12, 25, 22, 30))
        assert not holiday.run_requests
        assert "2019-12-25 is not a trading day" in holiday.skip_message


def test_date_level_assets_read_their_folds_model_through_a_partition_mapping():
    """The mapping the asset graph shows: a month of scores reads the same month's models, and
    a forecast month reads the checkpoint partition of its fold (which names its period)."""
    graph = defs.resolve_asset_graph()
    for child, parent in (
        ("baseline_scores", "lightgbm_models"),
        ("kronos_forecasts", "kronos_checkpoint"),
        ("kronos_scores", "kronos_forecasts"),
    ):
        node = graph.get(dg.AssetKey(child))
        mapping = graph.get_partition_mapping(dg.AssetKey(child), dg.AssetKey(parent))
        assert isinstance(mapping, dg.TimeWindowPartitionMapping), (child, parent, mapping)
        upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
            node.partitions_def.subset_with_partition_keys(["2016-03"]),
            node.partitions_def,
            graph.get(dg.AssetKey(parent)).partitions_def,
        ).partitions_subset
        assert upstream.get_partition_keys() == ["2016-03"]


def test_nightly_chain_fits_models_only_for_a_fold_that_has_none():
    from kronos_pipeline.defs.automation import nightly_steps
    from kronos_pipeline.settings import get_settings

    with dg.instance_for_test() as instance:
        steps = nightly_steps(dt.date(2019, 11, 1), get_settings(), instance)
        assert [s.job for s in steps] == [
            "data_job", "folds_job", "scoring_job", "labels_job", "evaluation_job"
        ]  # fmt: skip
        assert steps[0].partition_key == "2019-11" and steps[0].tags["kronos/dates"] == (
            "2019-11-01:2019-11-01"
        )
        assert set(steps[2].assets) >= {"lightgbm_models", "kronos_checkpoint", "signals"}
        # labels: the months from 90 sessions back, over exactly the days that may mature
        assert steps[3].key_range == ("2019-06", "2019-11")
        assert steps[3].tags["kronos/dates"] == "2019-06-26:2019-11-01"  # 90 sessions before
        for asset in ("lightgbm_models", "kronos_checkpoint"):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition="2019-11"))
        again = nightly_steps(dt.date(2019, 11, 1), get_settings(), instance)
        assert not {"lightgbm_models", "kronos_checkpoint"} & set(again[2].assets)

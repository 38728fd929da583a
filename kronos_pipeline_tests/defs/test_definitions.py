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
from kronos_pipeline.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parents[2]

# asset key -> (group, partitioning, upstream asset keys, check names)
EXPECTED_ASSETS = {
    "vendor_files": ("sources", None, [], []),
    "raw_bars": (
        "data",
        "day",
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
        "day",
        ["vendor_files"],
        ["column_schema_change", "quarantine_schema", "quarantine_share"],
    ),
    "ticker_history": (
        "data",
        "day",
        ["vendor_files"],
        ["column_schema_change", "ticker_history_schema"],
    ),
    "sector_history": (
        "data",
        "day",
        ["vendor_files"],
        ["column_schema_change", "sector_history_schema", "sectors_known"],
    ),
    "prices_pit": (
        "data",
        "day",
        ["raw_bars"],
        ["adjustment_consistency", "column_schema_change", "history_complete", "prices_quality"],
    ),
    "universe": (
        "data",
        "day",
        ["prices_pit"],
        ["column_schema_change", "universe_breadth", "universe_quality", "universe_rules"],
    ),
    "features": (
        "features",
        "day",
        ["prices_pit", "raw_bars", "sector_history", "universe"],
        ["column_schema_change", "factor_coverage", "features_quality"],
    ),
    "labels_forward": (
        "features",
        "day",
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
        "score_day",
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
        "score_day",
        ["kronos_checkpoint", "prices_pit", "universe"],
        ["forecasts_valid", "member_coverage"],
    ),
    "kronos_scores": ("kronos", "score_day", ["kronos_forecasts"], ["scores_match_forecasts"]),
    "kronos_heads": (
        "kronos",
        "fold",
        ["features", "folds", "kronos_checkpoint", "labels_forward", "prices_pit", "universe"],
        ["heads_train_cut"],
    ),
    "kronos_head_scores": (
        "kronos",
        "score_day",
        ["features", "kronos_forecasts", "kronos_heads"],
        ["head_scores_valid"],
    ),
    "signals": (
        "signals",
        "score_day",
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
        "day",
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
    "labels_job": ("day", ["labels_forward"]),
    "folds_job": (None, ["folds"]),
    "models_job": ("fold", ["kronos_checkpoint", "kronos_heads", "lightgbm_models"]),
    "baseline_scores_job": ("score_day", ["baseline_scores"]),
    "kronos_job": ("score_day", ["kronos_forecasts", "kronos_head_scores", "kronos_scores"]),
    "scoring_job": (
        "score_day",
        ["baseline_scores", "kronos_forecasts", "kronos_head_scores", "kronos_scores", "signals"],
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
    "nightly_data_job": (
        "day",
        [
            "bars_quarantine",
            "features",
            "folds",
            "prices_pit",
            "raw_bars",
            "sector_history",
            "ticker_history",
            "universe",
        ],
    ),
    "nightly_evaluation_job": (
        "day",
        [
            "eval_rows",
            "evaluation_report",
            "fold_summaries",
            "gate_verdicts",
            "labels_forward",
            "leak_tripwires",
            "model_comparison",
            "per_date_metrics",
        ],
    ),
}
# No schedule: what runs by itself is the assets' automation conditions (kronos_automation).
EXPECTED_SCHEDULES: dict = {}
EXPECTED_SENSORS = [
    "alert_on_check_failure",
    "alert_on_run_failure",
    "alert_on_stale_data",
    "kronos_automation",
    "observe_vendor_folder",
]
EXPECTED_RESOURCES = ["settings", "warehouse"]


def _partitioning(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    from kronos_pipeline.defs.partitions import (
        day_partitions,
        fold_partitions,
        score_day_partitions,
    )

    if partitions_def is None:
        return None
    if partitions_def == day_partitions:
        return "day"
    if partitions_def == score_day_partitions:
        return "score_day"
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
    actual = {
        s.name: (s.cron_schedule, s.execution_timezone, s.job_name) for s in defs.schedules or []
    }
    assert actual == EXPECTED_SCHEDULES
    assert sorted(s.name for s in defs.sensors) == EXPECTED_SENSORS


def test_every_sensor_runs_by_default():
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)


def test_every_asset_runs_by_itself_under_its_condition():
    """Each asset's automation condition (defs/conditions.py): the snapshot of the night."""
    from kronos_pipeline.defs import conditions as c

    expected = {
        "vendor_files": None,  # observed by observe_vendor_folder, without a run
        **{a: c.SESSION_BARS for a in ("raw_bars", "bars_quarantine", "ticker_history",
                                       "sector_history")},
        **{a: c.DAILY for a in ("prices_pit", "universe", "features")},
        **{a: c.SCORES for a in ("baseline_scores", "kronos_forecasts", "kronos_scores",
                                 "kronos_head_scores", "signals")},
        "folds": c.ON_UPDATE,
        **{a: c.MISSING_MODEL for a in ("lightgbm_models", "kronos_checkpoint", "kronos_heads")},
        **{a: c.NIGHTLY_EVALUATION for a in ("eval_rows", "per_date_metrics", "fold_summaries",
                                             "model_comparison", "leak_tripwires",
                                             "gate_verdicts", "evaluation_report")},
    }  # fmt: skip
    graph = defs.resolve_asset_graph()
    actual = {
        k.to_user_string(): graph.get(k).automation_condition for k in graph.get_all_asset_keys()
    }
    labels = actual.pop("labels_forward")
    assert actual == expected
    assert labels.get_label().startswith("labels that can still mature")
    sensor = defs.get_sensor_def("kronos_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    selected = sensor.asset_selection.resolve(graph)
    assert selected >= set(graph.get_all_asset_keys()) - {dg.AssetKey("vendor_files")}


def test_resources_include_the_settings_of_the_code_location():
    from kronos_pipeline.defs.resources import SettingsResource
    from kronos_pipeline.settings import get_settings

    resources = defs.resources
    assert sorted(resources) == EXPECTED_RESOURCES
    # The run's settings are configured at launch (the Launchpad shows them): with nothing
    # set they resolve to the code location's settings, production by default.
    graph_job = defs.resolve_implicit_global_asset_job_def()
    fields = graph_job.run_config_schema.config_type.fields["resources"].config_type.fields
    settings_fields = fields["settings"].config_type.fields["config"].config_type.fields
    assert {"preset", "sample_count", "device", "dtype", "batch_size", "overrides"} <= set(
        settings_fields
    )
    assert SettingsResource().get() == get_settings()


def _upstream_keys(graph, child: str, parent: str, keys: list[str]) -> list[str]:
    node = graph.get(dg.AssetKey(child))
    mapping = graph.get_partition_mapping(dg.AssetKey(child), dg.AssetKey(parent))
    assert isinstance(mapping, dg.TimeWindowPartitionMapping), (child, parent, mapping)
    result = mapping.get_upstream_mapped_partitions_result_for_partitions(
        node.partitions_def.subset_with_partition_keys(keys),
        node.partitions_def,
        graph.get(dg.AssetKey(parent)).partitions_def,
    )
    return result.partitions_subset.get_partition_keys()


def test_date_level_assets_read_their_folds_model_through_a_partition_mapping():
    """The mapping the asset graph shows: a day's scores read the models of the day's fold
    (its month), and only that fold: 2014-01-31 is a Friday whose weekday window runs into
    February, which starts on a Saturday."""
    graph = defs.resolve_asset_graph()
    for child, parent in (
        ("baseline_scores", "lightgbm_models"),
        ("kronos_forecasts", "kronos_checkpoint"),
        ("kronos_head_scores", "kronos_heads"),
    ):
        for day, fold in (("2016-03-01", "2016-03"), ("2014-01-31", "2014-01"),
                          ("2014-02-03", "2014-02"), ("2016-02-29", "2016-02")):  # fmt: skip
            assert _upstream_keys(graph, child, parent, [day]) == [fold], (child, day)
        month = _upstream_keys(graph, child, parent, ["2014-01-30", "2014-01-31", "2014-02-03"])
        assert month == ["2014-01", "2014-02"]
    assert _upstream_keys(graph, "kronos_scores", "kronos_forecasts", ["2016-03-01"]) == [
        "2016-03-01"
    ]


def test_a_fold_fits_on_the_days_before_its_test_month_only():
    graph = defs.resolve_asset_graph()
    for child in ("lightgbm_models", "kronos_checkpoint", "kronos_heads"):
        days = _upstream_keys(graph, child, "prices_pit" if child != "lightgbm_models"
                              else "features", ["2014-02"])  # fmt: skip
        assert days[0] == "1999-11-01" and days[-1] == "2014-01-31", child


def test_every_partition_mapping_looks_backward_in_time():
    """No asset partition depends on a partition that starts after its own: a fold's models
    on the history before the fold, a day's scores on that day and its fold's models, a
    forecast on the weekdays before it. The one exception is declared: a day's labels on the
    prices of the sessions of its horizon (LABEL_HORIZON), and nothing fitted or scored maps
    onto it but through labels of days before the fold (the folds purge the unmatured)."""
    from kronos_pipeline.defs.partitions import LABEL_HORIZON, LABEL_REACH

    graph = defs.resolve_asset_graph()
    forward = [
        (c.to_user_string(), p.to_user_string())
        for c in graph.get_all_asset_keys()
        for p in graph.get(c).parent_keys
        if graph.get(c).partitions_def is not None
        and graph.get_partition_mapping(c, p) == LABEL_HORIZON
    ]
    assert forward == [("labels_forward", "prices_pit")]
    assert LABEL_REACH >= max(get_settings().labels.horizons)
    checked = 0
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.partitions_def is None:
            continue
        sample = [k for k in node.partitions_def.get_partition_keys() if k >= "2014-01"][:45]
        for parent in node.parent_keys:
            parent_def = graph.get(parent).partitions_def
            if parent_def is None or (key.to_user_string(), parent.to_user_string()) in forward:
                continue
            for partition in sample[::11]:
                ups = _upstream_keys(graph, key.to_user_string(), parent.to_user_string(),
                                     [partition])  # fmt: skip
                own = node.partitions_def.time_window_for_partition_key(partition).start
                latest = max(parent_def.time_window_for_partition_key(u).start for u in ups)
                assert latest <= own, (key, parent, partition, ups[-1])
                checked += 1
    assert checked > 50


def test_day_partitions_are_weekdays_with_no_holiday_list():
    """About 7,000 weekday keys from 1999-11, a few hundred bytes serialized; an exchange
    holiday is a partition; a day's partition exists from 22:30 New York, when it is due."""
    from dagster_shared.serdes import serialize_value

    from kronos_pipeline.defs.partitions import day_partitions

    keys = day_partitions.get_partition_keys(
        current_time=dt.datetime(2019, 12, 31, 22, 31, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    )
    assert keys[0] == "1999-11-01" and keys[-1] == "2019-12-31"
    assert "2019-12-25" in keys and "2019-12-28" not in keys  # Christmas; a Saturday
    before = day_partitions.get_partition_keys(
        current_time=dt.datetime(2019, 12, 31, 22, 29, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    )
    assert before[-1] == "2019-12-30"
    assert 5_000 < len(keys) < 5_400
    assert len(serialize_value(day_partitions)) < 1_000


def test_nightly_chain_fits_models_only_for_a_fold_that_has_none():
    from kronos_pipeline.cli import _materialized
    from kronos_pipeline.runs import nightly_steps
    from kronos_pipeline.settings import get_settings

    with dg.instance_for_test() as instance:
        fitted = lambda asset, key: _materialized(instance, asset, key)  # noqa: E731
        steps = nightly_steps(dt.date(2019, 11, 1), get_settings(), fitted)
        assert [s.job for s in steps] == [
            "nightly_data_job", "models_job", "scoring_job", "labels_job", "evaluation_job"
        ]  # fmt: skip
        assert steps[0].partition_key == "2019-11-01" and "kronos/dates" not in steps[0].tags
        assert steps[1].partition_key == "2019-11"
        assert set(steps[1].assets) >= {"lightgbm_models", "kronos_checkpoint"}
        assert steps[2].partition_key == "2019-11-01" and "signals" in steps[2].assets
        # labels: the days from 90 sessions back, exactly the days that may mature
        assert steps[3].key_range == ("2019-06-26", "2019-11-01")
        for asset in ("lightgbm_models", "kronos_checkpoint", "kronos_heads"):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition="2019-11"))
        again = nightly_steps(dt.date(2019, 11, 1), get_settings(), fitted, evaluable=True)
        # Once a pair has matured: three runs, the labels and the rollups in the last.
        assert [s.job for s in again] == [
            "nightly_data_job", "scoring_job", "nightly_evaluation_job"
        ]  # fmt: skip
        assert again[2].key_range == ("2019-06-26", "2019-11-01")


def test_the_nightly_jobs_cover_the_night_once():
    """The nightly chain's own jobs: the data run holds the session's data and the folds but
    not its labels, which the last run makes with the rollups, after the labels in the run."""
    from kronos_pipeline.definitions import defs

    data = {
        k.to_user_string()
        for k in defs.resolve_job_def("nightly_data_job").asset_layer.executable_asset_keys
    }
    assert {"raw_bars", "prices_pit", "universe", "features", "folds"} <= data
    assert "labels_forward" not in data and "evaluation_tables" not in str(data)
    last = defs.resolve_job_def("nightly_evaluation_job")
    keys = {k.to_user_string() for k in last.asset_layer.executable_asset_keys}
    evaluation = {
        k.to_user_string()
        for k in defs.resolve_job_def("evaluation_job").asset_layer.executable_asset_keys
    }
    assert keys == evaluation | {"labels_forward"}
    assert last.partitions_def is not None


def test_the_clis_own_deployment_loads_without_the_automation_sensor():
    """The CLI's short-lived ``dagster dev`` runs the command's runs only
    (``deployment.AUTOMATION_ENV=off``); any other load has the automation sensor."""
    from kronos_pipeline.deployment import AUTOMATION_ENV

    code = (
        "from kronos_pipeline.definitions import defs; print(sorted(s.name for s in defs.sensors))"
    )
    env = {k: v for k, v in os.environ.items() if k != AUTOMATION_ENV}
    names = {}
    for value in ("off", None):
        run_env = env if value is None else {**env, AUTOMATION_ENV: value}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        names[value] = out.strip().splitlines()[-1]
    assert "kronos_automation" not in names["off"] and "alert_on_check_failure" in names["off"]
    assert "kronos_automation" in names[None]

"""The CLI: engine flags reach the settings, step lines, repair commands, where the log goes.

Fast by design: argument parsing, fake events, and tiny one-asset jobs on an ephemeral
instance; no pipeline job runs here.
"""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg
import pytest

from kronos_pipeline import cli
from kronos_pipeline.settings import SettingsError, active_preset, get_settings, use_preset

ENGINE_VARIABLES = (
    "KRONOS_KRONOS__DEVICE", "KRONOS_KRONOS__BATCH_SIZE", "KRONOS_KRONOS__DTYPE",
    "KRONOS_KRONOS__STRATEGY", "KRONOS_KRONOS__ENABLED",
)  # fmt: skip


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A clean environment: no engine variables, warehouse and instance under tmp_path."""
    for name in (*ENGINE_VARIABLES, "KRONOS_MODE", "KRONOS_REPORT__RUN_NAME"):
        # set, then delete: the CLI writes these to os.environ, and monkeypatch only restores
        # (here: removes again at teardown) what it has recorded
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("KRONOS_WAREHOUSE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    use_preset(None)
    yield tmp_path
    use_preset(None)  # `smoke` applies its preset to the whole process


@pytest.mark.parametrize("command", ["smoke", "full", "backfill", "nightly"])
def test_engine_flags_land_in_settings(cli_env, command):
    args = cli.build_parser().parse_args(
        [command, "--device", "cpu", "--batch-size", "8", "--dtype", "bfloat16",
         "--strategy", "scratch", "--without-kronos"]
    )  # fmt: skip
    cli._configure_env(args, None)
    kronos = get_settings().kronos
    assert (kronos.device, kronos.batch_size, kronos.dtype) == ("cpu", 8, "bfloat16")
    assert (kronos.strategy, kronos.enabled) == ("scratch", False)


def test_without_engine_flags_settings_keep_their_defaults(cli_env):
    cli._configure_env(cli.build_parser().parse_args(["smoke"]), "smoke")
    kronos = get_settings().kronos
    defaults = type(kronos)()
    assert (kronos.device, kronos.batch_size, kronos.dtype) == (
        defaults.device,
        defaults.batch_size,
        defaults.dtype,
    )


def test_bad_batch_size_names_its_variable(cli_env):
    args = cli.build_parser().parse_args(["full", "--batch-size", "0"])
    with pytest.raises(SettingsError, match="KRONOS_KRONOS__BATCH_SIZE='0'"):
        cli._configure_env(args, None)


def test_unknown_device_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["smoke", "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_report_takes_no_engine_flags(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["report", "--device", "cpu"])


def _event(kind, step, data=None):
    return SimpleNamespace(event_type_value=kind, step_key=step, event_specific_data=data)


def test_step_lines_from_events_give_status_and_seconds():
    tracker = cli.StepTracker("data_job")
    events = [
        (_event("STEP_START", "ingest_bars"), 100.0),
        (_event("STEP_START", "prices_pit"), 101.0),
        (_event("ASSET_MATERIALIZATION", "ingest_bars"), 101.5),
        (_event("STEP_SUCCESS", "ingest_bars", SimpleNamespace(duration_ms=2500.0)), 102.5),
        (_event("STEP_FAILURE", "prices_pit", SimpleNamespace(error=None)), 104.0),
        (_event("STEP_SKIPPED", "universe", None), 104.0),
    ]
    lines = [line for event, at in events if (line := tracker.observe(event, at))]
    assert [line.split() for line in lines] == [
        ["ok", "2.5s", "data_job/ingest_bars"],
        ["FAILED", "3.0s", "data_job/prices_pit"],
        ["skipped", "0.0s", "data_job/universe"],
    ]


def _check_event(asset, check, passed, description, metadata=None, blocking=True, partition=None):
    return _event(
        "ASSET_CHECK_EVALUATION",
        "ingest_bars",
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(asset),
            check_name=check,
            passed=passed,
            description=description,
            metadata=metadata or {},
            blocking=blocking,
            partition=partition,
        ),
    )


def test_failed_bars_complete_names_tickers_and_the_dates_backfill():
    description = (
        "5040 bars expected (sessions x tickers alive): 5020 accepted, 0 quarantined; "
        "20 missing: AAPL 2019-12-02..2019-12-27 (19 sessions), KO 2019-12-31 (1 session)"
    )
    events = [
        _check_event("raw_bars", "bars_quality", True, "ok"),
        _check_event(
            "raw_bars",
            "bars_complete",
            False,
            description,
            {"first_missing": dg.MetadataValue.json(["AAPL 2019-12-02", "KO 2019-12-31"])},
        ),
    ]
    [failure] = cli.check_failures("data_job", "2019-01-02..2019-12-31", events)
    assert (failure.asset, failure.check, failure.blocking) == ("raw_bars", "bars_complete", True)
    assert failure.repair == "kronos-pipeline backfill --dates 2019-12-02:2019-12-31"
    line = failure.line()
    assert "AAPL 2019-12-02..2019-12-27" in line and "KO 2019-12-31" in line
    assert "repair: kronos-pipeline backfill --dates 2019-12-02:2019-12-31" in line


def test_day_repair_range_stays_inside_the_run_window():
    # A file name's download date is not a missing session: it falls outside the window.
    events = [
        _check_event(
            "raw_bars", "source_files", False, "1 files lost their bars: DA-KO-T-2024-06-30.csv"
        )
    ]
    [failure] = cli.check_failures("data_job", "2019-12-02..2019-12-31", events)
    assert failure.repair == "kronos-pipeline backfill --dates 2019-12-02:2019-12-31"


def test_day_repair_covers_the_window_when_the_check_named_only_some_tickers():
    description = (
        "900 missing: AAPL 2019-12-02 (1 session), KO 2019-12-03 (1 session) and 40 more tickers"
    )
    events = [_check_event("raw_bars", "bars_complete", False, description)]
    [failure] = cli.check_failures("data_job", "2019-01-02..2019-12-31", events)
    assert failure.repair == "kronos-pipeline backfill --dates 2019-01-02:2019-12-31"


def test_failed_fold_check_names_the_folds_backfill():
    events = [_check_event("baseline_scores", "scores_pit", False, "3 late rows", partition=None)]
    [failure] = cli.check_failures("baseline_scores_job", "2019-11", events)
    assert failure.repair == "kronos-pipeline backfill --folds 2019-11:2019-11"
    [kronos] = cli.check_failures("kronos_job", "2019-11", events)
    assert kronos.repair == "kronos-pipeline backfill --folds 2019-11:2019-11"  # Kronos is on


def test_a_failed_gate_is_a_verdict_not_a_backfill():
    events = [_check_event("gate_verdicts", "gate1", False, "kronos: median RankIC 0.001")]
    [failure] = cli.check_failures("evaluation_job", "", events)
    assert "backfill" not in failure.repair and "report" in failure.repair


def test_warning_checks_are_listed_as_warnings():
    events = [_check_event("raw_bars", "bars_gaps", False, "2 isolated gaps", blocking=False)]
    [failure] = cli.check_failures("data_job", "2019-12-02", events)
    assert failure.line().startswith("warning raw_bars:bars_gaps")


@dg.asset(check_specs=[dg.AssetCheckSpec("tiny_complete", asset="tiny", blocking=True)])
def tiny(context):
    context.log.debug("tiny debug line")
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(
        check_name="tiny_complete", passed=False, description="TINY missing 2019-12-31"
    )


@dg.asset(deps=[tiny])
def tiny_child() -> None:
    return None


tiny_job = dg.Definitions(
    assets=[tiny, tiny_child], jobs=[dg.define_asset_job("tiny_job")]
).resolve_job_def("tiny_job")


def test_event_log_goes_to_the_file_not_the_terminal(cli_env, capsys):
    outcome = cli.execute(tiny_job, dg.DagsterInstance.ephemeral(), verbose=False)
    out = capsys.readouterr()
    log = outcome.log_path.read_text()
    assert outcome.log_path.parent == cli_env / "data" / "logs"
    assert outcome.log_path.name == f"tiny_job-{outcome.run_id}.log"
    assert "DEBUG" in log and "STEP_START" in log and "tiny debug line" in log
    assert "DEBUG" not in out.out + out.err and "tiny debug line" not in out.out + out.err
    # One line per step that ran: the failed blocking check fails its step, the child never runs.
    steps = [line.split() for line in out.out.splitlines() if "tiny_job/" in line]
    assert [(s[0], s[-1]) for s in steps] == [("FAILED", "tiny_job/tiny")]
    assert not outcome.success
    assert [(c.asset, c.check, c.blocking) for c in outcome.checks] == [
        ("tiny", "tiny_complete", True)
    ]


def test_verbose_streams_the_event_log_too(cli_env, capsys):
    outcome = cli.execute(tiny_job, dg.DagsterInstance.ephemeral(), verbose=True)
    err = capsys.readouterr().err
    assert "STEP_START" in err and "tiny debug line" in err
    assert "tiny debug line" in outcome.log_path.read_text()


def test_failed_evaluation_exits_non_zero_and_says_it_wrote_no_report(cli_env, capsys, monkeypatch):
    import kronos_pipeline.definitions as definitions

    monkeypatch.setenv("KRONOS_REPORT__OUTPUT_ROOT", str(cli_env / "runs"))
    get_settings.cache_clear()
    monkeypatch.setattr(definitions, "defs", SimpleNamespace(resolve_job_def=lambda name: tiny_job))
    monkeypatch.setattr(cli, "_session", cli.Session())
    with pytest.raises(SystemExit, match="evaluation_job failed"):
        cli._run_evaluation(dg.DagsterInstance.ephemeral())
    err = capsys.readouterr().err
    assert "FAILED tiny:tiny_complete: TINY missing 2019-12-31" in err
    summary = cli._session.summary()
    assert "summary: 1 runs, 1 failed" in summary
    assert "FAILED tiny:tiny_complete" in summary
    path = cli_env / "runs" / "latest" / "REPORT_SUMMARY.md"
    assert summary.splitlines()[-1] == (
        f"report: not written, the evaluation failed (no report yet: {path})"
    )
    path.parent.mkdir(parents=True)
    path.write_text("an earlier evaluation's report")
    with pytest.raises(SystemExit, match="evaluation_job failed"):
        cli._run_evaluation(dg.DagsterInstance.ephemeral())
    assert cli._session.summary().splitlines()[-1] == (
        f"report: not written, the evaluation failed (earlier report kept: {path})"
    )
    assert path.read_text() == "an earlier evaluation's report"


def test_smoke_applies_its_preset_and_tags_its_runs(cli_env, monkeypatch):
    import kronos_pipeline.definitions as definitions

    cli._configure_env(cli.build_parser().parse_args(["smoke"]), "smoke")
    s = get_settings()
    assert active_preset() == "smoke" and s.mode == "smoke"
    assert s.kronos_sampling["sample_count"] == 1 and s.kronos_sampling["top_k"] == 1
    assert s.kronos_training.train_max_minutes == 1.0 and s.effective_top_n == 100
    monkeypatch.setattr(definitions, "defs", SimpleNamespace(resolve_job_def=lambda name: tiny_job))
    monkeypatch.setattr(cli, "_session", cli.Session())
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(SystemExit):
        cli._run("tiny_job", instance)
    (outcome,) = cli._session.runs
    assert instance.get_run_by_id(outcome.run_id).tags["kronos/preset"] == "smoke"


@pytest.mark.parametrize("command", ["full", "nightly", "backfill", "report"])
def test_every_other_command_runs_production_settings(cli_env, command):
    args = cli.build_parser().parse_args([command])
    cli._configure_env(args, command if command == "full" else None)
    s = get_settings()
    assert active_preset() is None and s.mode == "full"
    assert s.kronos_sampling == {"sample_count": 8, "temperature": 1.0, "top_k": 0, "top_p": 0.9}
    assert s.kronos_training.train_max_minutes == 3.0 and s.effective_top_n is None

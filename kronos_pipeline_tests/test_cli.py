"""The CLI: engine flags reach the settings, step lines, repair commands, where the log goes.

Fast by design: argument parsing, fake events, and runs of a tiny code location
(``cli_location``) through a real deployment of it (``dagster dev`` on a temporary instance):
queue, daemon, run worker; no pipeline job runs here.
"""

from __future__ import annotations

import _thread
import os
import threading
import time
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml

from kronos_pipeline import cli
from kronos_pipeline.defs.resources import SettingsResource
from kronos_pipeline.deployment import Deployment, daemon_alive
from kronos_pipeline.instance import instance_at
from kronos_pipeline.runs import CLI_TAG
from kronos_pipeline.settings import (
    REPO_ROOT,
    SettingsError,
    active_preset,
    get_settings,
    use_preset,
)
from kronos_pipeline_tests import cli_location

TINY_JOB = cli_location.defs.resolve_job_def("tiny_job")
POOLED_JOB = cli_location.defs.resolve_job_def("pooled_job")

ENGINE_VARIABLES = (
    "KRONOS_KRONOS__DEVICE", "KRONOS_KRONOS__BATCH_SIZE", "KRONOS_KRONOS__DTYPE",
    "KRONOS_KRONOS__STRATEGY", "KRONOS_KRONOS__ENABLED",
)  # fmt: skip


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A clean environment: no engine variables, warehouse and instance under tmp_path."""
    for name in (*ENGINE_VARIABLES, "KRONOS_MODE", "KRONOS_REPORT__RUN_NAME",
                 "KRONOS_DATA__VENDOR_DIR", "KRONOS_DATA__TIDY_PATH"):  # fmt: skip
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


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """``dagster dev`` of the tiny code location (``cli_location``) on a fresh instance, as the
    CLI starts it when no daemon is running; stopped after the module's tests."""
    root = tmp_path_factory.mktemp("cli_deployment")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    workspace = root / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": cli_location.__name__, "working_directory": str(REPO_ROOT)}}]}))  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        instance = instance_at(home)
        started = time.perf_counter()
        running = Deployment.start(instance, workspace, root / "deployment.log", with_daemon=True)
        print(f"dagster dev of the tiny location up in {time.perf_counter() - started:.1f}s")
        try:
            yield running
        finally:
            running.stop()
            instance.dispose()


def _session(deployment) -> cli.Session:
    session = cli.Session()
    session._deployment = deployment
    return session


def _status_events(instance, run_id: str) -> list[str]:
    statuses = {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING,
                dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS,
                dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}  # fmt: skip
    records = instance.get_records_for_run(run_id, of_type=statuses).records
    return [r.event_log_entry.dagster_event.event_type_value for r in records]


def test_a_cli_run_is_queued_then_run_by_a_run_worker_holding_its_pool_slot(cli_env, deployment):
    assert deployment.owns_daemon  # no daemon was running: the deployment brought one
    outcome = cli.execute(deployment, POOLED_JOB)
    assert outcome.success
    instance = deployment.instance
    # The queue: the daemon took the run off it and the run launcher started it.
    assert _status_events(instance, outcome.run_id) == [
        "PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS"
    ]  # fmt: skip
    run = instance.get_run_by_id(outcome.run_id)
    assert run.tags[CLI_TAG] == "true" and run.job_name == "pooled_job"
    # ... in a run worker: neither the CLI's process nor the deployment's
    [record] = instance.fetch_materializations(dg.AssetKey("pooled"), limit=1).records
    metadata = record.asset_materialization.metadata
    assert metadata["pid"].value not in (os.getpid(), deployment.process.pid)
    # ... whose step ran holding the pool's one slot
    assert metadata["slot_holders"].value == [outcome.run_id]


def test_with_a_daemon_running_the_cli_starts_a_webserver_only_and_that_daemon_runs_it(
    cli_env, deployment, tmp_path
):
    instance = deployment.instance
    assert daemon_alive(instance)  # e.g. a `dagster dev` of the same instance
    webserver = Deployment.start(
        instance, deployment.workspace, tmp_path / "webserver.log", not daemon_alive(instance)
    )
    try:
        assert (webserver.name, webserver.owns_daemon) == ("dagster-webserver", False)
        outcome = cli.execute(webserver, POOLED_JOB)
    finally:
        webserver.stop()
    assert outcome.success
    assert _status_events(instance, outcome.run_id) == [
        "PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS"
    ]  # fmt: skip
    assert daemon_alive(instance)  # stopping it left the running daemon's heartbeats alone


def test_event_log_goes_to_the_file_not_the_terminal(cli_env, deployment, capsys):
    outcome = cli.execute(deployment, TINY_JOB, verbose=False)
    out = capsys.readouterr()
    log = outcome.log_path.read_text()
    assert outcome.log_path.parent == cli_env / "data" / "logs"
    assert outcome.log_path.name == f"tiny_job-{outcome.run_id}.log"
    assert "DEBUG" in log and "STEP_START" in log and "tiny debug line" in log
    assert "DEBUG" not in out.out + out.err and "tiny debug line" not in out.out + out.err
    # One line per step that ran: the failed blocking check fails its step, the child never runs.
    steps = [line.split() for line in out.out.splitlines() if "tiny_job/" in line]
    assert [(s[0], s[-1]) for s in steps] == [("FAILED", "tiny_job/tiny")]
    assert not outcome.success and not outcome.canceled
    assert [(c.asset, c.check, c.blocking) for c in outcome.checks] == [
        ("tiny", "tiny_complete", True)
    ]


def test_verbose_streams_the_event_log_too(cli_env, deployment, capsys):
    outcome = cli.execute(deployment, TINY_JOB, verbose=True)
    err = capsys.readouterr().err
    assert "STEP_START" in err and "tiny debug line" in err
    assert "tiny debug line" in outcome.log_path.read_text()


def test_ctrl_c_cancels_the_run_and_exits_non_zero_with_its_summary(
    cli_env, deployment, capsys, monkeypatch
):
    import kronos_pipeline.definitions as definitions

    monkeypatch.setattr(definitions, "defs", cli_location.defs)
    monkeypatch.setattr(cli, "_session", _session(deployment))
    instance = deployment.instance
    before = {r.run_id for r in instance.get_runs()}

    def interrupt_once_slow_runs() -> None:  # Ctrl-C, once the step is under way
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for run in instance.get_runs():
                if run.run_id not in before and run.status == dg.DagsterRunStatus.STARTED:
                    logs = instance.get_records_for_run(run.run_id).records
                    if any(r.event_log_entry.user_message == "slow started" for r in logs):
                        _thread.interrupt_main()
                        return
            time.sleep(0.2)

    threading.Thread(target=interrupt_once_slow_runs, daemon=True).start()
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stopped:
        cli._run("slow_job", instance)
    assert stopped.value.code == 130
    assert time.perf_counter() - started < 100  # canceled, not run to its 120 s end
    (outcome,) = cli._session.runs
    assert outcome.canceled and not outcome.success
    assert instance.get_run_by_id(outcome.run_id).status == dg.DagsterRunStatus.CANCELED
    assert _status_events(instance, outcome.run_id)[-1] == "PIPELINE_CANCELED"
    out, err = capsys.readouterr()
    assert f"interrupted: canceling run {outcome.run_id}" in out
    assert f"slow_job canceled (run {outcome.run_id})" in err
    summary = cli._session.summary()
    assert "summary: 1 runs, 1 failed" in summary
    assert f"CANCELED slow_job {outcome.seconds:.1f}s (run {outcome.run_id[:8]}" in summary


def test_failed_evaluation_exits_non_zero_and_says_it_wrote_no_report(
    cli_env, deployment, capsys, monkeypatch
):
    import kronos_pipeline.definitions as definitions

    monkeypatch.setenv("KRONOS_REPORT__OUTPUT_ROOT", str(cli_env / "runs"))
    get_settings.cache_clear()
    monkeypatch.setattr(definitions, "defs", SimpleNamespace(resolve_job_def=lambda name: TINY_JOB))
    monkeypatch.setattr(cli, "_session", _session(deployment))
    instance = deployment.instance
    with pytest.raises(SystemExit, match="evaluation_job failed"):
        cli._run_evaluation(instance)
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
        cli._run_evaluation(instance)
    assert cli._session.summary().splitlines()[-1] == (
        f"report: not written, the evaluation failed (earlier report kept: {path})"
    )
    assert path.read_text() == "an earlier evaluation's report"


def test_smoke_applies_its_preset_and_tags_its_runs(cli_env, deployment, monkeypatch):
    import kronos_pipeline.definitions as definitions

    cli._configure_env(cli.build_parser().parse_args(["smoke"]), "smoke")
    s = get_settings()
    assert active_preset() == "smoke" and s.mode == "smoke"
    assert s.kronos_sampling["sample_count"] == 1 and s.kronos_sampling["top_k"] == 1
    assert s.kronos_training.train_max_minutes == 1.0 and s.effective_top_n == 100
    monkeypatch.setattr(definitions, "defs", SimpleNamespace(resolve_job_def=lambda name: TINY_JOB))
    monkeypatch.setattr(cli, "_session", _session(deployment))
    with pytest.raises(SystemExit):
        cli._run("tiny_job", deployment.instance)
    (outcome,) = cli._session.runs
    assert deployment.instance.get_run_by_id(outcome.run_id).tags["kronos/preset"] == "smoke"


def test_the_runs_settings_config_carries_the_preset_and_the_flags(cli_env):
    import kronos_pipeline.definitions as definitions

    (cli_env / "vendor").mkdir()
    args = cli.build_parser().parse_args(
        ["smoke", "--device", "cpu", "--batch-size", "8", "--without-kronos",
         "--vendor-dir", str(cli_env / "vendor"), "--run-name", "trial"]
    )  # fmt: skip
    cli._configure_env(args, "smoke")
    config = cli._run_config(definitions.defs.resolve_job_def("scoring_job"))
    assert config == {
        "execution": {"config": {"in_process": {}}},
        "resources": {"settings": {"config": {
            "preset": "smoke", "device": "cpu", "batch_size": 8,
            "overrides": {"data.vendor_dir": str(cli_env / "vendor"),
                          "report.run_name": "trial", "kronos.enabled": "false"},
        }}},
    }  # fmt: skip
    # ... which the job accepts, and which resolves to the settings the CLI validated
    resource = SettingsResource(**config["resources"]["settings"]["config"])
    assert resource.get() == get_settings()


@pytest.mark.parametrize("command", ["full", "nightly", "backfill", "report"])
def test_every_other_command_runs_production_settings(cli_env, command):
    args = cli.build_parser().parse_args([command])
    cli._configure_env(args, command if command == "full" else None)
    s = get_settings()
    assert active_preset() is None and s.mode == "full"
    assert s.kronos_sampling == {"sample_count": 8, "temperature": 1.0, "top_k": 0, "top_p": 0.9}
    assert s.kronos_training.train_max_minutes == 3.0 and s.effective_top_n is None

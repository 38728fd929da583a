"""Command line for people who never open the UI: smoke, full, nightly, backfill, report.

Each command runs the same Dagster jobs the UI runs, and the same way: it submits each run to
the instance in ``$DAGSTER_HOME`` (``dagster_home/`` of the repository by default), whose run
queue, pools and run monitoring apply, and a run worker executes it
(:mod:`kronos_pipeline.deployment`: the instance's running daemon, or a ``dagster dev`` the
command starts and stops). The runs, checks and metadata show up in the UI. The terminal shows
one line per step and a summary, read from each run's event log in the instance; the full
event log goes to ``<warehouse.data_dir>/logs/<job>-<run_id>.log`` (``--verbose`` streams it
to the terminal as well). ``full`` submits its partitioned work as backfills instead, which
resume where a killed or failed ``full`` stopped (:mod:`kronos_pipeline.full`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from kronos_pipeline.settings import (
    PRESETS,
    REPO_ROOT,
    KronosSettings,
    SettingsError,
    active_preset,
    get_settings,
    use_preset,
)

if typing.TYPE_CHECKING:
    from kronos_pipeline.deployment import Deployment

# The choices of the engine flags are the settings' own literals: one source of truth.
DEVICES = typing.get_args(KronosSettings.model_fields["device"].annotation)
DTYPES = typing.get_args(KronosSettings.model_fields["dtype"].annotation)
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_TRUNCATED = re.compile(r"\band \d+ more tickers\b")  # see data.completeness.name_pairs
# Jobs of the data's weekday partitions, of the scores' weekday partitions, and of folds.
DAY_JOBS = ("data_job", "labels_job")
SCORE_JOBS = ("baseline_scores_job", "kronos_job", "scoring_job")
FOLD_JOBS = ("models_job",)
#: The code location the CLI's deployment serves (the one `dagster dev` loads).
WORKSPACE = REPO_ROOT / "workspace.yaml"
#: Flags that are typed fields of the runs' ``settings`` config (``defs.resources.RUN_CHOICES``).
RUN_FLAGS = ("device", "batch_size", "dtype", "strategy")
#: This command's setting flags, for its runs' config: typed fields and dotted overrides.
_flags: dict[str, object] = {}


def _configure_env(args: argparse.Namespace, mode: str | None) -> None:
    """Settings are read from the environment by the code location: set them before import.

    ``mode``: ``smoke`` applies the SMOKE preset (``settings.PRESETS``) over the environment,
    and every run this command starts is tagged with it; ``full`` sets production explicitly
    (``KRONOS_MODE=full``); None keeps the environment's settings, production by default.
    """
    _flags.clear()
    if mode in PRESETS:
        use_preset(mode)
    elif mode:
        use_preset(None)
        os.environ["KRONOS_MODE"] = mode
    if getattr(args, "vendor_dir", None):
        _flags["data.vendor_dir"] = str(Path(args.vendor_dir).resolve())
        os.environ["KRONOS_DATA__VENDOR_DIR"] = _flags["data.vendor_dir"]
    if getattr(args, "tidy_path", None):
        _flags["data.tidy_path"] = str(Path(args.tidy_path).resolve())
        os.environ["KRONOS_DATA__TIDY_PATH"] = _flags["data.tidy_path"]
    if getattr(args, "run_name", None):
        _flags["report.run_name"] = args.run_name
        os.environ["KRONOS_REPORT__RUN_NAME"] = args.run_name
    # The Kronos engine flags set the same settings the UI's runs read.
    for flag, variable in (
        ("device", "KRONOS_KRONOS__DEVICE"),
        ("batch_size", "KRONOS_KRONOS__BATCH_SIZE"),
        ("dtype", "KRONOS_KRONOS__DTYPE"),
        ("strategy", "KRONOS_KRONOS__STRATEGY"),
    ):
        if getattr(args, flag, None) is not None:
            _flags[flag] = getattr(args, flag)
            os.environ[variable] = str(getattr(args, flag))
    if getattr(args, "without_kronos", False):
        _flags["kronos.enabled"] = "false"
        os.environ["KRONOS_KRONOS__ENABLED"] = "false"
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))
    # Validate now, before any instance or job: a bad setting stops here with its name.
    get_settings.cache_clear()
    get_settings()
    _warehouse()  # an unmigrated DuckDB warehouse stops here, naming migrate-warehouse


def _instance(runs: bool = True):
    """The instance of ``$DAGSTER_HOME``; for a command that ``runs`` jobs, its deployment
    starts now too (see :meth:`Session.deployment`)."""
    from kronos_pipeline.instance import (
        InstanceStorageError,
        open_instance,
        use_ranged_bookkeeping,
    )

    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    use_ranged_bookkeeping()
    try:
        instance = open_instance()
    except InstanceStorageError as exc:  # e.g. Postgres unreachable: one line, no traceback
        raise SystemExit(f"kronos-pipeline: {exc}") from None
    if runs:
        _session.deployment(instance)
    return instance


@dataclass
class CheckFailure:
    """A check evaluation that did not pass, and the command that re-runs what it covers."""

    job: str
    asset: str
    check: str
    partition: str | None
    blocking: bool
    description: str
    repair: str

    def line(self) -> str:
        where = f" [{self.partition}]" if self.partition else ""
        kind = "FAILED" if self.blocking else "warning"
        text = self.description if len(self.description) <= 300 else self.description[:297] + "..."
        return f"{kind} {self.asset}:{self.check}{where}: {text}\n    repair: {self.repair}"


@dataclass
class RunOutcome:
    """One job run as the summary shows it."""

    job: str
    label: str
    run_id: str
    success: bool
    seconds: float
    log_path: Path
    checks: list[CheckFailure] = field(default_factory=list)
    step_errors: list[str] = field(default_factory=list)
    canceled: bool = False  # Ctrl-C (or a terminate from the UI) canceled it


@dataclass
class Session:
    """What one command ran, for the summary at its end."""

    verbose: bool = False
    runs: list[RunOutcome] = field(default_factory=list)
    report_path: Path | None = None
    report_updated: bool = True  # False: the evaluation failed, so it wrote no report
    skipped: list[str] = field(default_factory=list)  # steps not run, with why
    workspace: Path = WORKSPACE
    _deployment: Deployment | None = None
    _left_dev: int | None = None  # pid of a `dagster dev` a killed command left, to stop

    def deployment(self, instance) -> Deployment:
        """The deployment this command's runs go through, started on the first call (the
        command's start, see :func:`_instance`)."""
        if self._deployment is None:
            from kronos_pipeline.deployment import Deployment, daemon_alive, left_dagster_dev

            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            log_path = log_dir() / f"deployment-{stamp}-{os.getpid()}.log"
            with_daemon = not daemon_alive(instance)
            self._left_dev = None if with_daemon else left_dagster_dev(instance)
            if self._left_dev is not None:
                print(f"the `dagster dev` a killed kronos-pipeline command left (pid "
                      f"{self._left_dev}) is running: runs go to its daemon, and it stops when "
                      "this command ends (starting dagster-webserver)", flush=True)  # fmt: skip
            elif with_daemon:
                print("no dagster-daemon is running for this instance: starting `dagster dev` "
                      f"until this command ends (its log: {log_path})", flush=True)  # fmt: skip
            else:
                print("the instance's dagster-daemon is running: runs go to its queue "
                      "(starting dagster-webserver until this command ends)", flush=True)  # fmt: skip
            # Started now, waited for at the first run: it loads while the command prepares.
            self._deployment = Deployment.start(
                instance, self.workspace, log_path, with_daemon, wait=False
            )
        return self._deployment

    def stop(self) -> None:
        """Stop the deployment this command started (canceling a run still in flight)."""
        if self._deployment is not None:
            deployment, self._deployment = self._deployment, None
            deployment.stop()
            print(f"stopped {deployment.name}", flush=True)
            if self._left_dev is not None:
                from kronos_pipeline.deployment import stop_left_dagster_dev

                stop_left_dagster_dev(deployment.instance, self._left_dev)
                print(f"stopped the dagster dev a killed command left (pid {self._left_dev})",
                      flush=True)  # fmt: skip

    def summary(self) -> str:
        if not self.runs and self.report_path is None and not self.skipped:
            return ""
        failed = [r for r in self.runs if not r.success]
        lines = [f"summary: {len(self.runs)} runs, {len(failed)} failed"]
        lines += [
            f"  {_status(r):<6} {' '.join(filter(None, (r.job, r.label)))} "
            f"{r.seconds:.1f}s "
            f"(run {r.run_id[:8]}, log {r.log_path})"
            for r in self.runs
        ]
        lines += [f"  skipped {line}" for line in self.skipped]
        checks = [c for r in self.runs for c in r.checks]
        if checks:
            lines.append(f"checks not passed: {len(checks)}")
            lines += [f"  {c.line()}" for c in checks]
        if self.report_path is not None and self.report_updated:
            lines.append(f"report: {self.report_path}")
        elif self.report_path is not None:
            # A failed blocking check writes nothing: what is there is an earlier evaluation's.
            before = "earlier report kept" if self.report_path.exists() else "no report yet"
            lines.append(
                f"report: not written, the evaluation failed ({before}: {self.report_path})"
            )
        return "\n".join(lines)


def _status(outcome: RunOutcome) -> str:
    return "ok" if outcome.success else ("CANCELED" if outcome.canceled else "FAILED")


_session = Session()


def _window_of(label: str) -> tuple[str, str] | None:
    """``A..B`` or ``A`` (a run's partition label) as a first and last key."""
    if not label:
        return None
    first, _, last = label.partition("..")
    return first, last or first


def repair_command(job: str, asset: str, partition: str | None, label: str, evidence: str) -> str:
    """The CLI command that re-runs the partitions a failed check covers.

    ``evidence`` is the check's description and metadata as text: for trading-day checks the
    dates it names (missing bars, late rows), clipped to the run's window, give the range;
    without dates the run's window (or the check's partition) is the range.
    """
    window = _window_of(partition or label)
    if job in DAY_JOBS:
        dates = sorted(set(_DATE.findall(evidence)))
        if window is not None and _TRUNCATED.search(evidence):
            dates = []  # the check named only some tickers: re-run the whole window
        if window is not None:
            dates = [d for d in dates if window[0] <= d <= window[1]]
        first, last = (dates[0], dates[-1]) if dates else (window or ("A", "B"))
        return f"kronos-pipeline backfill --dates {first}:{last}"
    if job in FOLD_JOBS or job in SCORE_JOBS:
        first, last = window or ("YYYY-MM", "YYYY-MM")
        return f"kronos-pipeline backfill --folds {first[:7]}:{last[:7]}"
    if asset in ("gate_verdicts", "leak_tripwires"):
        return "none: a verdict on the models, not missing data; the report explains it"
    if job == "folds_job":
        return (
            "fix the fold settings (KRONOS_FOLDS__*), then `kronos-pipeline backfill --folds A:B`"
        )
    return "kronos-pipeline report (after repairing the days or folds it names)"


def _metadata_text(metadata) -> str:
    return " ".join(str(getattr(v, "value", v)) for v in (metadata or {}).values())


def check_failures(job: str, label: str, events) -> list[CheckFailure]:
    """Every check evaluation among ``events`` that did not pass, with its repair command."""
    from dagster import AssetCheckSeverity

    out = []
    for event in events:
        if event.event_type_value != "ASSET_CHECK_EVALUATION":
            continue
        data = event.event_specific_data
        if data.passed:
            continue
        # Only an ERROR stops downstream steps: a blocking check that fails with WARN (a gate
        # with no candidate to judge) is a warning.
        blocking = data.severity == AssetCheckSeverity.ERROR and data.blocking is not False
        description = data.description or ""
        partition = getattr(data, "partition", None)
        asset = data.asset_key.to_user_string()
        out.append(
            CheckFailure(
                job=job,
                asset=asset,
                check=data.check_name,
                partition=partition,
                blocking=bool(blocking),
                description=description,
                repair=repair_command(
                    job, asset, partition, label, f"{description} {_metadata_text(data.metadata)}"
                ),
            )
        )
    return out


STEP_STATUS = {
    "STEP_SUCCESS": "ok",
    "STEP_FAILURE": "FAILED",
    "STEP_SKIPPED": "skipped",
    "STEP_UP_FOR_RETRY": "retry",
}


@dataclass
class StepTracker:
    """Turns a run's Dagster events into one line per finished step: job/step, status, seconds."""

    job: str
    started: dict[str, float] = field(default_factory=dict)

    def observe(self, event, at: float) -> str | None:
        """The step's line when ``event`` (seen at ``at``, seconds since the epoch) ends it."""
        kind, step = event.event_type_value, event.step_key
        if kind == "STEP_START":
            self.started[step] = at
            return None
        if kind not in STEP_STATUS:
            return None
        duration_ms = getattr(event.event_specific_data, "duration_ms", None)
        seconds = duration_ms / 1000 if duration_ms else at - self.started.get(step, at)
        return f"  {STEP_STATUS[kind]:<7} {seconds:7.1f}s  {self.job}/{step}"


def log_dir() -> Path:
    """Where the Dagster event log of every CLI run goes (one file per run)."""
    return get_settings().warehouse.data_dir / "logs"


def log_line(entry) -> str:
    """One event of a run's event log (a ``dagster.EventLogEntry``) as a line of its log file:
    time, level, step, event type, message."""
    when = dt.datetime.fromtimestamp(entry.timestamp).isoformat(sep=" ", timespec="milliseconds")
    kind = entry.dagster_event.event_type_value if entry.dagster_event else "LOG"
    level = logging.getLevelName(entry.level)
    return f"{when} - {level} - {entry.step_key or '-'} - {kind} - {entry.message}"


def _settings_config() -> dict:
    """The ``settings`` resource's config of the CLI's runs: the preset by name and this
    command's flags, as the Launchpad would store them. The run carries them, so they apply
    in whichever deployment runs it (a running ``dagster dev`` did not get the CLI's
    environment)."""
    config: dict = {"preset": active_preset() or "production"}
    config.update({k: v for k, v in _flags.items() if k in RUN_FLAGS})
    overrides = {k: v for k, v in _flags.items() if k not in RUN_FLAGS}
    if overrides:
        config["overrides"] = overrides
    return config


def _run_config(job_def) -> dict:
    """The run's config: the run worker executes the steps in its own process, one after the
    other as the CLI always has (no process per step), and a job whose assets read the
    settings gets the CLI's (:func:`_settings_config`)."""
    config: dict = {"execution": {"config": {"in_process": {}}}}
    if "settings" in job_def.resource_defs:
        config["resources"] = {"settings": {"config": _settings_config()}}
    return config


def execute(
    deployment,
    job_def,
    label: str = "",
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    assets: tuple[str, ...] | None = None,
    verbose: bool = False,
) -> RunOutcome:
    """Submit a run of ``job_def`` (its ``assets`` only, when given) to ``deployment`` and
    follow it to its end: one line per step and a progress bar on the terminal, its DEBUG
    event log in ``log_dir()/<job>-<run_id>.log`` (and on stderr with ``verbose``). Ctrl-C
    cancels the run and waits for its end (a second Ctrl-C stops waiting)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from kronos_pipeline.deployment import follow
    from kronos_pipeline.runs import CLI_TAG

    tags = {**(tags or {}), CLI_TAG: "true"}
    if partition_key is not None:
        tags["dagster/partition"] = partition_key
    tracker = StepTracker(job_def.name)
    console = Console(file=sys.stdout)
    console.print(f"-> {job_def.name} {label}".rstrip(), markup=False, highlight=False)
    started = time.perf_counter()
    run_id = deployment.submit(job_def.name, _run_config(job_def), tags, assets)
    log_path = log_dir() / f"{job_def.name}-{run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        # With --verbose the event log scrolls on stderr, which a live bar would fight; in a
        # pipe or a file the step lines alone say it.
        disable=verbose or not console.is_terminal,
    )
    task = progress.add_task(
        f"{job_def.name} {label} (queued)", total=len(job_def.nodes_in_topological_order)
    )
    events = []

    def on_record(record) -> None:
        entry = record.event_log_entry
        line = log_line(entry)
        log.write(line + "\n")
        if verbose:
            print(line, file=sys.stderr, flush=True)
        event = entry.dagster_event
        if event is None:
            return
        events.append(event)
        if event.event_type_value == "STEP_START":
            progress.update(task, description=f"{job_def.name}/{event.step_key}")
        step_line = tracker.observe(event, entry.timestamp)
        if step_line is not None:
            progress.console.print(step_line, markup=False, highlight=False)
            if event.event_type_value != "STEP_UP_FOR_RETRY":
                progress.advance(task)

    queued_since = time.monotonic()
    interrupted = False
    with log_path.open("w", encoding="utf-8") as log, progress:
        try:
            run = follow(deployment.instance, run_id, on_record,
                         on_queued=lambda r: deployment.check_queue(r, queued_since))  # fmt: skip
        except KeyboardInterrupt:
            interrupted = True
            progress.console.print(
                f"   interrupted: canceling run {run_id}", markup=False, highlight=False
            )
            deployment.terminate(run_id)
            run = follow(deployment.instance, run_id, on_record)
    deployment.active.discard(run_id)
    step_errors = [
        e.event_specific_data.error.message
        for e in events
        if e.event_type_value == "STEP_FAILURE" and e.event_specific_data.error
    ]
    if run.status.value == "FAILURE" and not step_errors:  # e.g. the run worker died
        step_errors = [e.message for e in events if e.event_type_value == "PIPELINE_FAILURE"]
    outcome = RunOutcome(
        job=job_def.name,
        label=label,
        run_id=run_id,
        success=run.status.value == "SUCCESS",
        seconds=time.perf_counter() - started,
        log_path=log_path,
        checks=check_failures(job_def.name, label, events),
        step_errors=step_errors,
        canceled=interrupted or run.status.value == "CANCELED",
    )
    console.print(
        f"   {_status(outcome)} in {outcome.seconds:.1f}s"
        + (f"; checks not passed: {len(outcome.checks)}" if outcome.checks else ""),
        markup=False,
        highlight=False,
    )
    return outcome


def _run(
    job_name: str,
    instance,
    partition_key: str | None = None,
    key_range: tuple[str, str] | None = None,
    tags: dict[str, str] | None = None,
    assets: tuple[str, ...] | None = None,
) -> None:
    from kronos_pipeline.definitions import defs

    tags = dict(tags or {})
    if active_preset() is not None:  # the UI shows which runs ran a preset, and reruns keep it
        from kronos_pipeline.defs.resources import PRESET_TAG

        tags[PRESET_TAG] = active_preset()
    if key_range is not None:
        tags.update({
            "dagster/asset_partition_range_start": key_range[0],
            "dagster/asset_partition_range_end": key_range[1],
        })  # fmt: skip
    label = partition_key or (f"{key_range[0]}..{key_range[1]}" if key_range else "")
    job_def = defs.resolve_job_def(job_name)
    if assets:
        import dagster as dg

        # Locally for the step count and a selection error before anything is submitted.
        job_def = job_def.get_subset(asset_selection={dg.AssetKey(a) for a in assets})
    outcome = execute(
        _session.deployment(instance),
        job_def,
        label=label,
        partition_key=partition_key,
        tags=tags,
        assets=assets,
        verbose=_session.verbose,
    )
    _session.runs.append(outcome)
    if outcome.canceled:
        print(f"{job_name} canceled (run {outcome.run_id}); log: {outcome.log_path}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(130)
    if not outcome.success:
        print_failure(outcome)
        raise SystemExit(f"{job_name} failed (run {outcome.run_id}); log: {outcome.log_path}")


def print_failure(outcome: RunOutcome) -> None:
    """A failed run's step errors and the blocking checks that failed, with their repair
    commands, on stderr."""
    for message in outcome.step_errors:
        print(message, file=sys.stderr)
    for check in outcome.checks:
        if check.blocking:
            print(check.line(), file=sys.stderr)


def _source_range() -> tuple[str, str]:
    """First and last trading day of the configured source (YYYY-MM-DD)."""
    from kronos_pipeline.data.sources import load_source

    bars = load_source(get_settings().data).ingest.bars
    return str(bars["date"].min()), str(bars["date"].max())


def _day_range(partitions_def, first: str, last: str) -> tuple[str, str] | None:
    """The weekday partitions of ``first..last`` (YYYY-MM-DD) that exist: from the first
    weekday on or after ``first`` to the last on or before both ``last`` and the newest
    session that is due; None when none is left."""
    keys = partitions_def.get_partition_keys()
    inside = [k for k in keys if first <= k <= last]
    if not inside:
        return None
    return inside[0], inside[-1]


def _run_days(instance, first: str, last: str) -> None:
    """``data_job`` over the weekday partitions of ``first..last``: one run, recorded in the
    instance (each day's partition shows as materialized)."""
    from kronos_pipeline.defs.partitions import day_partitions

    window = _day_range(day_partitions, first, last)
    if window is None:
        raise SystemExit(f"no weekday partition of {first}..{last} exists yet (a day's "
                         "partition opens at 22:30 New York, when its file is due)")  # fmt: skip
    if window[1] < last:
        print(f"{window[1]}..{last} is not due yet: loading {window[0]}..{window[1]}")
    _run("data_job", instance, key_range=window)


def _warehouse():
    from kronos_pipeline.warehouse import Warehouse

    w = get_settings().warehouse
    return Warehouse(w.lake_root, w.duckdb_path)


def _fold_keys(spec: str | None) -> list[str]:
    from kronos_pipeline.defs.evaluation import fold_table, selected_fold_ids

    db = _warehouse()
    if not spec:
        return selected_fold_ids(db)
    keys = [f.fold_id for f in fold_table(db)]
    first, _, last = spec.partition(":")
    last = last or first
    if first not in keys or last not in keys:
        raise SystemExit(f"folds {spec!r}: known folds run {keys[0]}..{keys[-1]} (YYYY-MM)")
    return keys[keys.index(first) : keys.index(last) + 1]


def _evaluate(instance, folds: str | None, if_due: bool = False) -> None:
    """Folds, then per fold (``YYYY-MM:YYYY-MM``, default: the mode's selection) its models
    and the scores of its dates (LightGBM, then Kronos when enabled), then the evaluation.
    ``if_due``: skip the evaluation, saying why, while no scored pair has matured (a backfill
    of a deployment's first month); otherwise that is the evaluation's failure."""
    from kronos_pipeline.defs.partitions import fold_window, score_day_partitions
    from kronos_pipeline.runs import KRONOS_ASSETS, MODEL_ASSETS, SCORE_ASSETS

    _run("folds_job", instance)
    kronos = get_settings().kronos.enabled
    models = tuple(a for a in MODEL_ASSETS if kronos or a not in KRONOS_ASSETS)
    scores = tuple(a for a in SCORE_ASSETS if a != "signals" and (kronos or a not in KRONOS_ASSETS))
    data_end = str(_warehouse().read("select max(date) from features").item())
    for key in _fold_keys(folds):
        _run("models_job", instance, partition_key=key, assets=models)
        # The fold's weekdays up to the newest session loaded: later days have no data yet
        # and stay missing (the nightly run scores each as it arrives).
        first, last = (str(d) for d in fold_window(key))
        last = min(last, data_end)
        if (days := _day_range(score_day_partitions, first, last)) is not None:
            _run("scoring_job", instance, key_range=days, assets=scores)
    if if_due and _skip_evaluation():
        return
    _run_evaluation(instance)


def _run_evaluation(instance, job: str = "evaluation_job", **kwargs) -> None:
    """``evaluation_job`` (or another ``job`` that ends with the evaluation), then the report's
    path in the summary (saying so when the evaluation failed and therefore wrote no report)."""
    try:
        _run(job, instance, **kwargs)
    except SystemExit:
        _record_report_path(updated=False)
        raise
    _record_report_path()


def _evaluation_pending() -> str | None:
    """Why the evaluation has nothing to judge yet, or None (see ``evaluation_pending``)."""
    from kronos_pipeline.defs.evaluation import evaluation_pending

    return evaluation_pending(_warehouse())


def _skip_evaluation() -> bool:
    """Print and return True when the evaluation has nothing to judge yet."""
    reason = _evaluation_pending()
    if reason:
        print(f"-> evaluation_job skipped: {reason}", flush=True)
        _session.skipped.append(f"evaluation_job: {reason}")
    return reason is not None


def _record_report_path(updated: bool = True) -> None:
    """The summary ends with the report's path; ``updated=False``: the evaluation failed, so
    the summary says the report was not written (an earlier one, if any, is untouched)."""
    report = get_settings().report
    _session.report_path = report.output_root / report.run_name / "REPORT_SUMMARY.md"
    _session.report_updated = updated


def cmd_pipeline(args: argparse.Namespace) -> None:
    """smoke / full: every month of the source in one data run, then the selected folds, all
    recorded in $DAGSTER_HOME (the UI shows every partition's true status). ``full`` goes as
    backfills that resume where a killed or failed ``full`` stopped (:mod:`kronos_pipeline.full`)."""
    _configure_env(args, args.command)
    instance = _instance()
    if args.command == "full":
        from kronos_pipeline.full import run_full

        run_full(instance)
        return
    _run_days(instance, *_source_range())
    _evaluate(instance, None)


def cmd_nightly(args: argparse.Namespace) -> None:
    """One session (default: the newest in the source) through the nightly chain: ingest,
    folds, models when the fold has none, every model's scores and the signal, the labels
    that matured, the metric rollups: the night the automation runs by itself where a daemon
    runs (planned by :func:`kronos_pipeline.runs.nightly_steps`)."""
    from kronos_pipeline.runs import nightly_steps

    _configure_env(args, None)
    instance = _instance(runs=False)
    _refuse_beside_automation(instance)
    _session.deployment(instance)
    day = dt.date.fromisoformat(args.date or _source_range()[1])
    steps = nightly_steps(
        day, get_settings(), fitted=lambda a, k: _materialized(instance, a, k),
        evaluable=_evaluation_pending() is None,
    )  # fmt: skip
    if args.data_only:
        steps = steps[:1]
    for step in steps:
        if step.job == "evaluation_job":
            if not _skip_evaluation():
                _run_evaluation(instance, tags=step.run_tags())
            continue
        if step.job == "nightly_evaluation_job":
            _run_evaluation(instance, step.job, key_range=step.key_range, tags=step.run_tags())
            continue
        _run(step.job, instance, partition_key=step.partition_key, key_range=step.key_range,
             tags=step.run_tags(), assets=step.assets)  # fmt: skip


def _refuse_beside_automation(instance) -> None:
    """Exit with one message when a daemon of this instance runs the automation: it runs each
    night by itself once the day's files are in the vendor folder, and a ``nightly`` beside
    it would run the same night twice."""
    from kronos_pipeline.deployment import AUTOMATION_SENSOR, automation_ticking

    ago = automation_ticking(instance)
    if ago is None:
        return
    raise SystemExit(
        f"kronos-pipeline nightly: the instance's dagster-daemon runs the automation (sensor "
        f"{AUTOMATION_SENSOR}, last tick {ago:.0f} s ago), which runs every night by itself "
        "once the day's files are in the vendor folder; a nightly beside it would run the "
        f"night twice. Follow the night in the UI (runs tagged dagster/sensor_name="
        f"{AUTOMATION_SENSOR}), or stop that sensor (UI: Automation) and run nightly again."
    )


def _materialized(instance, asset: str, key: str) -> bool:
    """Whether partition ``key`` of ``asset`` has a materialization in ``instance``."""
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
    ).records
    return bool(records)


def cmd_backfill(args: argparse.Namespace) -> None:
    """Backfill a range of trading days (--dates A:B) and/or folds (--folds YYYY-MM:YYYY-MM)."""
    _configure_env(args, None)
    instance = _instance()
    if args.dates:
        first, _, last = args.dates.partition(":")
        _run_days(instance, first, last or first)
    if args.folds:
        _evaluate(instance, args.folds, if_due=True)


def cmd_report(args: argparse.Namespace) -> None:
    """Recompute metrics, tripwires, gates and the report from the scores in the warehouse."""
    _configure_env(args, None)
    _run_evaluation(_instance())


def cmd_freeze(args: argparse.Namespace) -> None:
    """Freeze the baselines of the last evaluation (BASELINE_FLOOR.json, fold_summaries.json);
    later reports compare against them."""
    _configure_env(args, None)
    from kronos_pipeline.defs.evaluation import freeze_dir
    from kronos_pipeline.evaluation import freeze
    from kronos_pipeline.warehouse import Warehouse

    s = get_settings()
    db = Warehouse(s.warehouse.lake_root, s.warehouse.duckdb_path)
    if "model_comparison" not in db.tables():
        raise SystemExit(
            f"freeze: {s.warehouse.lake_root} holds no evaluation; run `kronos-pipeline smoke`, "
            "`full` or `report` first"
        )
    comparison = db.read("select * from model_comparison").to_pandas()
    folds = db.read("select * from fold_summaries").to_pandas()
    paths = freeze.freeze(
        comparison, folds, freeze_dir(s),
        {"mode": s.mode, "source": s.data.source_kind, "run_name": s.report.run_name,
         "folds": f"{folds['fold'].min()}..{folds['fold'].max()}"},
    )  # fmt: skip
    for path in paths.values():
        print(f"frozen: {path}")


def cmd_migrate_warehouse(args: argparse.Namespace) -> None:
    """Copy the DuckDB warehouse file of the earlier layout (``warehouse.duckdb_path``, or
    ``--duckdb``) into the lake (``warehouse.lake_root``, or ``--lake``)."""
    from kronos_pipeline.warehouse import Warehouse
    from kronos_pipeline.warehouse_migration import migrate

    w = get_settings().warehouse
    legacy, root = Path(args.duckdb or w.duckdb_path), args.lake or w.lake_root
    try:
        copied = migrate(legacy, Warehouse(root))
    except FileNotFoundError as exc:
        raise SystemExit(f"migrate-warehouse: {exc}") from None
    for table, rows in copied.items():
        print(f"{table}: {rows} rows")
    print(f"migrated {len(copied)} tables from {legacy} into {root}")


def cmd_instance_setup(args: argparse.Namespace) -> None:
    """Size the pools of the instance in $DAGSTER_HOME to this machine: ``model_fitting`` one
    slot per CUDA device, else usable CPUs // ``lightgbm.threads_per_fit`` (``--model-fitting``
    overrides). Rerunning it sets the same limits again."""
    _configure_env(args, None)
    from kronos_pipeline.concurrency import cuda_devices, model_fitting_slots, usable_cpus
    from kronos_pipeline.instance import set_pool_limits

    if args.model_fitting is not None and args.model_fitting < 1:
        raise SystemExit(f"instance-setup: --model-fitting must be >= 1, got {args.model_fitting}")
    slots = args.model_fitting or model_fitting_slots(
        usable_cpus(), cuda_devices(), get_settings().lightgbm.threads_per_fit
    )
    instance = _instance(runs=False)
    try:
        limits = set_pool_limits(instance, slots)
    finally:
        instance.dispose()
    for pool, limit in limits.items():
        print(f"pool {pool}: {limit} slot(s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kronos-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def source_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--vendor-dir",
            help="folder of AlphaVantage daily-adjusted files (default: synthetic market)",
        )
        p.add_argument("--tidy-path", help="tidy Parquet/CSV table instead of vendor files")
        p.add_argument("--run-name", help="report folder name under the output root")
        p.add_argument(
            "--verbose",
            action="store_true",
            help="stream Dagster's DEBUG event log to the terminal (it always goes to "
            "<warehouse.data_dir>/logs/<job>-<run_id>.log)",
        )

    def engine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", choices=DEVICES, help="Kronos device (KRONOS_KRONOS__DEVICE)")
        p.add_argument(
            "--batch-size",
            type=int,
            help="Kronos series per forward pass (KRONOS_KRONOS__BATCH_SIZE)",
        )
        p.add_argument("--dtype", choices=DTYPES, help="Kronos dtype (KRONOS_KRONOS__DTYPE)")
        p.add_argument(
            "--strategy",
            choices=("published", "scratch", "finetune"),
            help="Kronos checkpoint strategy (KRONOS_KRONOS__STRATEGY)",
        )

    for name, help_text in (
        (
            "smoke",
            "the SMOKE preset: last 3 folds, top-100 universe, Kronos greedy (1 path) "
            "fitted on a 1-minute budget",
        ),
        ("full", "every fold, full universe"),
    ):
        p = sub.add_parser(name, help=help_text)
        source_options(p)
        engine_options(p)
        p.add_argument(
            "--without-kronos",
            action="store_true",
            help="baselines only: no Kronos checkpoint, forecasts or scores "
            "(KRONOS_KRONOS__ENABLED=false)",
        )
        p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("nightly", help="score the newest trading day")
    source_options(p)
    engine_options(p)
    p.add_argument(
        "--date", help="trading day to run (YYYY-MM-DD); default: the last day in the data"
    )
    p.add_argument(
        "--data-only", action="store_true", help="only the first run: the day's data and the folds"
    )
    p.add_argument("--without-kronos", action="store_true", help="baselines only")
    p.set_defaults(func=cmd_nightly)
    p = sub.add_parser("backfill", help="backfill trading days and/or folds")
    source_options(p)
    engine_options(p)
    p.add_argument("--dates", help="YYYY-MM-DD:YYYY-MM-DD")
    p.add_argument("--folds", help="YYYY-MM:YYYY-MM")
    p.add_argument("--without-kronos", action="store_true", help="baselines only")
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("report", help="rebuild metrics, gates and the report")
    source_options(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("freeze", help="freeze the baselines of the last evaluation")
    source_options(p)
    p.set_defaults(func=cmd_freeze)
    p = sub.add_parser(
        "instance-setup",
        help="size the Dagster pools to this machine: model_fitting one slot per CUDA device, "
        "else usable CPUs // lightgbm.threads_per_fit",
    )
    p.add_argument(
        "--model-fitting", type=int, help="model_fitting slots instead of the machine's count"
    )
    p.set_defaults(func=cmd_instance_setup, verbose=False)
    p = sub.add_parser(
        "migrate-warehouse",
        help="copy the DuckDB warehouse file of the earlier layout into the lake of Parquet "
        "partitions (once, after upgrading)",
    )
    p.add_argument("--duckdb", help="the DuckDB file (default: warehouse.duckdb_path)")
    p.add_argument("--lake", help="the lake's folder or URL (default: warehouse.lake_root)")
    p.set_defaults(func=cmd_migrate_warehouse, verbose=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    from kronos_pipeline.deployment import DeploymentError
    from kronos_pipeline.warehouse import UnmigratedWarehouse

    global _session
    args = build_parser().parse_args(argv)
    _session = Session(verbose=args.verbose)
    try:
        args.func(args)
    except SettingsError as exc:
        print(f"kronos-pipeline: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (DeploymentError, UnmigratedWarehouse) as exc:
        print(f"kronos-pipeline: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("kronos-pipeline: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        _session.stop()
        # Also after a failed run: which runs ran, which checks failed, where the report is.
        summary = _session.summary()
        if summary:
            print(summary, flush=True)


if __name__ == "__main__":
    # `python -m kronos_pipeline.cli` runs this file as `__main__`, a second copy of the module:
    # run the package module's main, so that kronos_pipeline.full shares its session.
    from kronos_pipeline import cli as _cli

    _cli.main()

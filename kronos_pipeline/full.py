"""``kronos-pipeline full`` as Dagster backfills that resume.

FULL is hours of work, so it goes to the instance as asset backfills (the UI's Overview ->
Backfills shows each one's progress per asset and partition) and the instance's backfill
daemon runs them; the command follows them and prints their progress:

1. ``data``: every weekday partition of the source, every data asset (one run: the data
   assets' backfill policy is a single run for any range);
2. ``folds_job`` (a plain run): the fold table, which says which folds there are;
3. ``models``: every selected fold's models (one run per fold);
4. ``scores``: every selected fold's weekdays up to the newest session loaded (one run per
   :data:`~kronos_pipeline.defs.walkforward.SCORE_DAYS_PER_RUN` weekdays);
5. ``evaluation_job`` (a plain run).

Every backfill and every run is tagged ``kronos/full=<fingerprint of the settings>``
(:data:`FULL_TAG`) and carries the command's settings as run config. A partition is done
when a run with the same fingerprint materialized it. Started again (after a kill, a Ctrl-C,
a failed run), ``full`` goes on from there: a stage whose partitions are all done is skipped
with a line saying so; a backfill of the stage still in flight (a killed command leaves it
requested, and whichever daemon of the instance runs next carries it on) is followed; then a
new backfill asks for only the partitions not done yet. Nothing done is recomputed.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kronos_pipeline import cli
from kronos_pipeline.settings import get_settings, settings_fingerprint

#: Tag of every backfill and run of ``full``: the fingerprint of its settings.
FULL_TAG = "kronos/full"
#: Tag of a stage's backfill (and its runs): data, models or scores.
STAGE_TAG = "kronos/full_stage"
#: Seconds between two looks at a backfill's runs.
POLL_S = 2.0
#: Seconds between two counts of the stage's done partitions while no run ends.
COUNT_S = 10.0
#: Backfill statuses of one still in flight (a daemon carries it on).
IN_FLIGHT = ("REQUESTED", "CANCELING", "FAILING")
#: The CLI job each stage stands for, for repair commands (``cli.repair_command``).
STAGE_JOBS = {"data": "data_job", "models": "models_job", "scores": "scoring_job"}


@dataclass(frozen=True)
class Stage:
    """One backfill of ``full``: the partition keys wanted of each asset, in key order."""

    name: str
    partitions_def: object  # dg.PartitionsDefinition of every asset of the stage
    wanted: Mapping[str, Sequence[str]]

    @property
    def size(self) -> int:
        """Partitions of the stage (the union of its assets' keys)."""
        return len({k for keys in self.wanted.values() for k in keys})


def key_ranges(keys: Sequence[str], all_keys: Sequence[str]) -> list[tuple[str, str]]:
    """``keys`` as the fewest contiguous ranges (first, last; inclusive) of ``all_keys``, the
    partitions definition's keys in order."""
    position = {k: i for i, k in enumerate(all_keys)}
    ranges: list[tuple[str, str]] = []
    previous = None
    for key in sorted(keys, key=position.__getitem__):
        if previous is not None and position[key] == position[previous] + 1:
            ranges[-1] = (ranges[-1][0], key)
        else:
            ranges.append((key, key))
        previous = key
    return ranges


class DonePartitions:
    """Per asset, the partitions a run tagged ``kronos/full=<fingerprint>`` materialized, read
    from the instance's event log incrementally (each :meth:`update` reads only the
    materializations stored since the last)."""

    def __init__(self, instance, fingerprint: str, assets: Sequence[str]):
        self.instance = instance
        self.fingerprint = fingerprint
        self.done: dict[str, set[str]] = {a: set() for a in assets}
        self._after: dict[str, int | None] = {a: None for a in assets}  # last storage id read

    def update(self) -> dict[str, set[str]]:
        import dagster as dg

        tagged = dg.RunsFilter(tags={FULL_TAG: self.fingerprint})
        runs = set(self.instance.get_run_ids(tagged))  # before the records: a record's run exists
        if not runs:
            return self.done
        for asset, done in self.done.items():
            while True:
                page = self.instance.fetch_materializations(
                    dg.AssetRecordsFilter(
                        asset_key=dg.AssetKey(asset), after_storage_id=self._after[asset]
                    ),
                    limit=5000, ascending=True,
                )  # fmt: skip
                for record in page.records:
                    if record.run_id in runs and record.partition_key:
                        done.add(record.partition_key)
                    self._after[asset] = record.storage_id
                if not page.has_more:
                    break
        return self.done


def remaining(done: DonePartitions, stage: Stage) -> dict[str, list[str]]:
    """Per asset of ``stage``, the wanted partitions not done with these settings (assets
    with none left are left out)."""
    now = done.update()
    todo = {a: [k for k in keys if k not in now[a]] for a, keys in stage.wanted.items()}
    return {a: keys for a, keys in todo.items() if keys}


def unfinished_backfill(instance, fingerprint: str, stage: str):
    """The newest backfill of ``stage`` with these settings that is still in flight, or None."""
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

    backfills = instance.get_backfills(
        filters=BulkActionsFilter(
            statuses=[BulkActionStatus(s) for s in IN_FLIGHT],
            tags={FULL_TAG: fingerprint, STAGE_TAG: stage},
        ),
        limit=1,
    )
    return backfills[0] if backfills else None


def _say(line: str) -> None:
    print(line, flush=True)


def _progress(stage: Stage, todo: Mapping[str, Sequence[str]]) -> str:
    left = {k for keys in todo.values() for k in keys}
    return f"   {stage.name}: {stage.size - len(left)}/{stage.size} partitions"


def _run_label(run) -> str:
    from kronos_pipeline.runs import RANGE_END, RANGE_START

    tags = run.tags
    if RANGE_START in tags:
        first, last = tags[RANGE_START], tags[RANGE_END]
        return first if first == last else f"{first}..{last}"
    return tags.get("dagster/partition", "")


def _finished_run(instance, stage: Stage, record) -> cli.RunOutcome:
    """A backfill run that ended: its event log to its file, one line, and its outcome for the
    summary (failed checks with their repair commands, step errors)."""
    run = record.dagster_run
    job = STAGE_JOBS[stage.name]
    label = _run_label(run)
    log_path = cli.log_dir() / f"full-{stage.name}-{run.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    events = []
    with log_path.open("w", encoding="utf-8") as log:
        cursor = None
        while True:
            page = instance.get_records_for_run(run.run_id, cursor=cursor, limit=1000)
            for r in page.records:
                log.write(cli.log_line(r.event_log_entry) + "\n")
                if r.event_log_entry.dagster_event is not None:
                    events.append(r.event_log_entry.dagster_event)
            cursor = page.cursor
            if not page.has_more:
                break
    start, end = record.start_time, record.end_time
    step_errors = [
        e.event_specific_data.error.message
        for e in events
        if e.event_type_value == "STEP_FAILURE" and e.event_specific_data.error
    ]
    outcome = cli.RunOutcome(
        job=job,
        label=label,
        run_id=run.run_id,
        success=run.status.value == "SUCCESS",
        seconds=(end - start) if start and end else 0.0,
        log_path=log_path,
        checks=cli.check_failures(job, label, events),
        step_errors=step_errors,
        canceled=run.status.value == "CANCELED",
    )
    assets = ", ".join(sorted(k.to_user_string() for k in run.asset_selection or ()))
    _say(
        f"  {cli._status(outcome):<7} {outcome.seconds:7.1f}s  {stage.name} {label} "
        f"(run {run.run_id[:8]}: {assets})"
    )
    return outcome


def follow_backfill(deployment, backfill_id: str, stage: Stage, done: DonePartitions):
    """Follow a backfill until it has ended and none of its runs is in flight: one line per
    run that ends, one progress line per change in the stage's count of done partitions.
    Returns the ended backfill."""
    import dagster as dg
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    from kronos_pipeline.deployment import BACKFILL_DAEMON, DeploymentError, daemon_alive

    instance = deployment.instance
    reported: set[str] = set()
    shown = None
    since = counted = time.monotonic()
    while True:
        backfill = instance.get_backfill(backfill_id)
        records = instance.get_run_records(dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
        in_flight = ended = False
        for record in sorted(records, key=lambda r: r.create_timestamp):
            if record.dagster_run.status.value not in ("SUCCESS", "FAILURE", "CANCELED"):
                in_flight = True
            elif record.dagster_run.run_id not in reported:
                reported.add(record.dagster_run.run_id)
                cli._session.runs.append(_finished_run(instance, stage, record))
                ended = True
        over = backfill.status.value not in IN_FLIGHT and not in_flight
        if shown is None or ended or over or time.monotonic() - counted > COUNT_S:
            counted = time.monotonic()
            line = _progress(stage, remaining(done, stage))
            if line != shown:
                _say(line)
                shown = line
        if over:
            return backfill
        deployment.raise_if_dead()
        stale = time.monotonic() - since > 90 and not daemon_alive(instance, daemon=BACKFILL_DAEMON)
        if not deployment.owns_daemon and stale:
            raise DeploymentError(
                f"backfill {backfill_id} is in flight and the instance's dagster-daemon has "
                "stopped heartbeating: start `dagster dev`, or stop it entirely and rerun "
                "(the CLI then starts its own)"
            )
        time.sleep(POLL_S)


def _follow_or_cancel(deployment, backfill_id: str, stage: Stage, done: DonePartitions):
    """:func:`follow_backfill`; Ctrl-C cancels the backfill (its runs in flight too), waits for
    that (a second Ctrl-C stops waiting) and exits 130."""
    try:
        return follow_backfill(deployment, backfill_id, stage, done)
    except KeyboardInterrupt:
        _say(f"   interrupted: canceling backfill {backfill_id}")
        deployment.cancel_backfill(backfill_id)
        follow_backfill(deployment, backfill_id, stage, done)
        print(f"{stage.name}: backfill {backfill_id} canceled; `kronos-pipeline full` again "
              "goes on from its first partition not done", file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None


def run_stage(deployment, stage: Stage, fingerprint: str, run_config: Mapping, tags: dict) -> bool:
    """Bring every wanted partition of ``stage`` to done with these settings: follow a
    backfill of it still in flight, then backfill what is left. Returns False when there was
    nothing to do (skipped), True after a backfill; exits on a backfill that did not finish."""
    instance = deployment.instance
    done = DonePartitions(instance, fingerprint, list(stage.wanted))
    active = unfinished_backfill(instance, fingerprint, stage.name)
    if active is not None:
        _say(f"-> {stage.name}: continuing backfill {active.backfill_id} "
             f"({active.status.value}, from {_since(active.backfill_timestamp)})")  # fmt: skip
        _follow_or_cancel(deployment, active.backfill_id, stage, done)
    todo = remaining(done, stage)
    if not todo:
        if active is None:
            _say(f"-> {stage.name}: all {stage.size} partitions already materialized with "
                 f"these settings ({fingerprint}): skipped")  # fmt: skip
            cli._session.skipped.append(f"{stage.name}: all {stage.size} partitions done")
        return active is not None
    all_keys = stage.partitions_def.get_partition_keys()
    ranges = {a: key_ranges(keys, all_keys) for a, keys in todo.items()}
    left = len({k for keys in todo.values() for k in keys})
    started = time.perf_counter()
    backfill_id = deployment.launch_backfill(
        ranges, run_config, {**tags, STAGE_TAG: stage.name},
        title=f"kronos-pipeline full {stage.name}",
    )  # fmt: skip
    _say(f"-> {stage.name}: backfill {backfill_id} of {left} of {stage.size} partitions "
         f"({len(todo)} assets; UI: {deployment.url}/runs/b/{backfill_id})")  # fmt: skip
    backfill = _follow_or_cancel(deployment, backfill_id, stage, done)
    todo = remaining(done, stage)
    status = backfill.status.value
    _say(f"   {stage.name}: backfill {backfill_id} {status} in "
         f"{time.perf_counter() - started:.1f}s")  # fmt: skip
    if status == "CANCELED":
        print(f"{stage.name}: backfill {backfill_id} was canceled", file=sys.stderr)
        raise SystemExit(130)
    if todo:
        for outcome in cli._session.runs:
            if not outcome.success:
                cli.print_failure(outcome)
        missing = len({k for keys in todo.values() for k in keys})
        raise SystemExit(
            f"{stage.name}: backfill {backfill_id} ended {status} with {missing} partitions "
            f"not materialized (logs: {cli.log_dir()}); `kronos-pipeline full` again "
            "backfills only those"
        )
    return True


def _since(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def backfill_run_config() -> dict:
    """The run config of every backfill run: in-process steps and the command's settings
    (the same as the CLI's plain runs, :func:`cli._run_config`)."""
    return {
        "execution": {"config": {"in_process": {}}},
        "resources": {"settings": {"config": cli._settings_config()}},
    }


def _asset_names(job_name: str, wanted: Sequence[str] | None = None) -> list[str]:
    from kronos_pipeline.definitions import defs

    keys = defs.resolve_job_def(job_name).asset_layer.selected_asset_keys
    names = sorted(k.to_user_string() for k in keys)
    return [n for n in names if wanted is None or n in wanted]


def _plain_run_done(instance, job: str, fingerprint: str) -> bool:
    import dagster as dg

    return bool(instance.get_run_records(
        dg.RunsFilter(job_name=job, tags={FULL_TAG: fingerprint},
                      statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1,
    ))  # fmt: skip


def run_full(instance) -> None:
    """The stages of the module's docstring, each resumed where it stopped."""
    from kronos_pipeline.defs.partitions import (
        day_partitions,
        fold_partitions,
        fold_window,
        score_day_partitions,
    )
    from kronos_pipeline.defs.resources import PRESET_TAG
    from kronos_pipeline.runs import CLI_TAG, KRONOS_ASSETS, MODEL_ASSETS, SCORE_ASSETS

    fingerprint = settings_fingerprint(get_settings())
    tags = {FULL_TAG: fingerprint, CLI_TAG: "true"}
    if cli.active_preset() is not None:
        tags[PRESET_TAG] = cli.active_preset()
    run_config = backfill_run_config()
    deployment = cli._session.deployment(instance)
    _say(f"full: settings {fingerprint}; backfills tagged {FULL_TAG}={fingerprint} "
         "(UI: Overview -> Backfills)")  # fmt: skip

    first, last = cli._source_range()
    window = cli._day_range(day_partitions, first, last)
    if window is None:
        raise SystemExit(f"no weekday partition of {first}..{last} exists yet")
    days = [k for k in day_partitions.get_partition_keys() if window[0] <= k <= window[1]]
    data = Stage("data", day_partitions, {a: days for a in _asset_names("data_job")})
    data_ran = run_stage(deployment, data, fingerprint, run_config, tags)

    if data_ran or not _plain_run_done(instance, "folds_job", fingerprint):
        cli._run("folds_job", instance, tags=tags)
    else:
        _say("-> folds_job: done with these settings after the data: skipped")
    kronos = get_settings().kronos.enabled
    models = [a for a in MODEL_ASSETS if kronos or a not in KRONOS_ASSETS]
    scores = [a for a in SCORE_ASSETS if a != "signals" and (kronos or a not in KRONOS_ASSETS)]
    folds = cli._fold_keys(None)
    fold_stage = Stage("models", fold_partitions, {a: folds for a in models})
    models_ran = run_stage(deployment, fold_stage, fingerprint, run_config, tags)

    data_end = str(cli._warehouse().read("select max(date) from features").item())
    score_days: list[str] = []
    all_days = score_day_partitions.get_partition_keys()
    for key in folds:
        start, end = (str(d) for d in fold_window(key))
        score_days += [k for k in all_days if start <= k <= min(end, data_end)]
    score_stage = Stage("scores", score_day_partitions, {a: score_days for a in scores})
    scores_ran = run_stage(deployment, score_stage, fingerprint, run_config, tags)

    ran = data_ran or models_ran or scores_ran
    if ran or not _plain_run_done(instance, "evaluation_job", fingerprint):
        cli._run_evaluation(instance, tags=tags)
    else:
        _say("-> evaluation_job: done with these settings after the scores: skipped")
        cli._session.skipped.append("evaluation_job: done with these settings")
        cli._record_report_path()

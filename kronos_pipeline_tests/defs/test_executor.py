"""The code location's executor: every job's steps run where the run's ``execution:`` config
says (multiprocess by default, in_process, celery), with each executor's own config.
Runtime: ~10 s (one multiprocess run spawns a step process)."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from kronos_pipeline.defs.executor import steps_executor

CELERY = {"broker": "redis://127.0.0.1:6379/0", "backend": "redis://127.0.0.1:6379/1"}


@dg.op
def where() -> None:
    """Nothing to do: its STEP_START event records the pid of the process it ran in."""


@dg.job(executor_def=steps_executor)
def where_job():
    where()


def reconstructable_where_job() -> dg.JobDefinition:
    return where_job


def test_every_job_of_the_code_location_uses_the_steps_executor():
    from kronos_pipeline.definitions import defs

    names = [job.name for job in defs.get_repository_def().get_all_jobs()]
    assert "models_job" in names and "baseline_scores_job" in names
    for name in names:
        assert defs.resolve_job_def(name).executor_def is steps_executor, name


@pytest.mark.parametrize(
    ("execution", "valid"),
    [
        (None, True),
        ({"multiprocess": {"max_concurrent": 2}}, True),
        ({"in_process": {}}, True),
        ({"celery": CELERY}, True),
        ({"celery": {**CELERY, "config_source": {"task_acks_late": True}}}, True),
        ({"celery": {"broker": "redis://h/0", "concurrency": 3}}, False),  # not a celery field
        ({"dask": {}}, False),
        ({"multiprocess": {}, "celery": CELERY}, False),  # one executor per run
    ],
)
def test_the_run_config_selects_one_executor_with_its_own_config(execution, valid):
    config = {} if execution is None else {"execution": {"config": execution}}
    if valid:
        dg.validate_run_config(where_job, config)
    else:
        with pytest.raises(dg.DagsterInvalidConfigError):
            dg.validate_run_config(where_job, config)


def _step_pid(execution: dict | None) -> int:
    config = {} if execution is None else {"execution": {"config": execution}}
    with dg.instance_for_test() as instance:
        job = dg.reconstructable(reconstructable_where_job)
        with dg.execute_job(job, instance, run_config=config) as result:
            assert result.success
            (start,) = [e for e in result.all_events if e.event_type_value == "STEP_START"]
            return start.pid


def test_in_process_runs_the_step_in_the_run_process_and_the_default_in_another():
    assert _step_pid({"in_process": {}}) == os.getpid()
    assert _step_pid(None) != os.getpid()  # multiprocess, the default

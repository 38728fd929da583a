"""Where a run's steps execute, chosen per run in its ``execution:`` config.

``steps_executor`` is the code location's executor (every job's): Dagster's own executors
under one selector, so the Launchpad, a backfill's config or ``dagster job execute -c`` picks
one per run and nothing else changes.

- ``multiprocess`` (the default when ``execution:`` is left out): each step in its own process
  on the run worker's machine, as Dagster's default executor does.
- ``in_process``: every step in the run worker's process.
- ``celery`` (``dagster-celery``): each step is a task on a Celery broker (Redis), executed by
  whichever worker takes it, on any host that has the code location installed and reaches the
  broker, the Dagster instance and the warehouse (README, Deployment). The run worker still
  orchestrates: it submits a step when its inputs are done and it holds a slot of its pool
  (``model_fitting``), so the pool holds across every worker.

Example run config (values from the run's environment, resolved at launch)::

    execution:
      config:
        celery:
          broker: {env: KRONOS_CELERY_BROKER}
          backend: {env: KRONOS_CELERY_BACKEND}

The workers start with the same broker and backend (``deploy/celery_worker.yaml``), each
loading the code location at start::

    dagster-celery worker start -A dagster_celery.app -y deploy/celery_worker.yaml \
        -i kronos_pipeline.definitions -n <name> -- --concurrency=<steps at once>

``kronos-pipeline`` runs its jobs in-process whatever this says.
"""

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster_celery import celery_executor

#: The executors a run's ``execution: config:`` selects from, by key.
EXECUTORS: dict[str, dg.ExecutorDefinition] = {
    "multiprocess": dg.multiprocess_executor,
    "in_process": dg.in_process_executor,
    "celery": celery_executor,
}
DEFAULT_EXECUTOR = "multiprocess"


def _requirements(config: Mapping[str, object]) -> Sequence[dg.ExecutorRequirement]:
    """What the selected executor needs: a reconstructable job and a persistent instance for
    every executor whose steps leave the run's process."""
    (name,) = config
    return [] if name == "in_process" else dg.multiple_process_executor_requirements()


@dg.executor(
    name="steps_executor",
    config_schema=dg.Field(
        dg.Selector({name: d.config_schema.as_field() for name, d in EXECUTORS.items()}),
        default_value={DEFAULT_EXECUTOR: {}},
        description="Where the run's steps execute: multiprocess (default), in_process, or "
        "celery (a Celery broker and its workers, on any host).",
    ),
    requirements=_requirements,
)
def steps_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """The executor the run config selects, built by that executor's own definition."""
    ((name, config),) = init_context.executor_config.items()
    chosen = EXECUTORS[name]
    return chosen.executor_creation_fn(
        dg.InitExecutorContext(
            job=init_context.job,
            executor_def=chosen,
            executor_config=config,
            instance=init_context.instance,
        )
    )

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

If the broker goes away during a Celery run (Redis stopped, its host down or cut off), the
run fails within a bounded time, not a hang: ``deploy/celery_run.yaml`` bounds the run worker's
waits on Redis (socket and connect timeouts, reconnect retries), and the error that ends the
run is re-raised as ``CeleryBrokerLost``, naming the broker's host:port and what to do, with
Celery's or Redis's own error chained to it (README, "Bad input and faults").

``kronos-pipeline`` submits its runs with ``in_process`` (a run's steps in its run worker).
"""

import functools
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import dagster as dg
from dagster_celery import celery_executor
from dagster_celery.executor import CeleryExecutor
from kombu.exceptions import OperationalError


@functools.cache
def broker_errors() -> tuple[type[BaseException], ...]:
    """What redis-py (the result backend's client) and kombu (the broker's) raise when Redis
    cannot be reached or stops answering; Celery may wrap one (its result store's "Retry limit
    exceeded" RuntimeError), so an error counts as the broker's when one of these is in its
    chain. redis-py is imported here, on first use: it takes about 0.2 s of every process that
    loads the code location, and only a failed Celery run asks."""
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)


class CeleryBrokerLost(dg.DagsterError):
    """A Celery run ended because its broker (or result backend) could not be reached."""


def _host_port(url: str) -> str:
    """``host:port`` of a broker or backend URL, without its credentials."""
    parts = urlsplit(url)
    default = {"redis": 6379, "rediss": 6380, "amqp": 5672, "pyamqp": 5672}.get(parts.scheme)
    return f"{parts.hostname}:{parts.port or default}"


def _broker_error(error: BaseException) -> BaseException | None:
    """The broker error in ``error``'s chain (itself, its causes and contexts), if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, broker_errors()):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def broker_lost_message(broker: str, backend: str, error: BaseException) -> str:
    """What a run that lost its broker says: where the broker is, what failed, what to do."""
    where = _host_port(broker)
    backend_where = _host_port(backend) if "://" in backend else backend
    also = "" if backend_where == where else f" (result backend {backend_where})"
    return (
        f"Lost the Celery broker at {where}{also}: it did not answer "
        f"({type(error).__name__}: {error}). The run cannot submit steps or learn their results without it. Restart the broker "
        "(Redis), check that the workers reconnected (their logs say 'Connected to'), then "
        "re-execute this run from failure. A step in flight when the broker went away may "
        "have finished on its worker, but its result is lost: re-execution runs it again."
    )


class BrokerAwareCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor, whose run fails with ``CeleryBrokerLost`` (the original
    error chained) when the broker goes away; everything else is dagster-celery's."""

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        try:
            yield from super().execute(plan_context, execution_plan)
        except Exception as error:
            lost = _broker_error(error)
            if lost is None:
                raise
            raise CeleryBrokerLost(broker_lost_message(self.broker, self.backend, lost)) from error


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
    """The executor the run config selects, built by that executor's own definition (Celery's
    then made a ``BrokerAwareCeleryExecutor``, with the same settings)."""
    ((name, config),) = init_context.executor_config.items()
    chosen = EXECUTORS[name]
    built = chosen.executor_creation_fn(
        dg.InitExecutorContext(
            job=init_context.job,
            executor_def=chosen,
            executor_config=config,
            instance=init_context.instance,
        )
    )
    if not isinstance(built, CeleryExecutor):
        return built
    return BrokerAwareCeleryExecutor(
        retries=built.retries,
        broker=built.broker,
        backend=built.backend,
        include=built.include,
        config_source=vars(built.config_source),
    )

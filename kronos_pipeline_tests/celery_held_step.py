"""A one-step job on the code location's executor (``steps_executor``) whose step is surely
running when a test takes the broker away: it writes its pid to a marker file, then holds."""

import os
import time
from pathlib import Path

import dagster as dg

from kronos_pipeline.defs.executor import steps_executor


@dg.op(config_schema={"marker": str, "seconds": float})
def hold(context: dg.OpExecutionContext) -> None:
    Path(context.op_config["marker"]).write_text(str(os.getpid()))
    time.sleep(context.op_config["seconds"])


@dg.job(executor_def=steps_executor)
def held_step_job() -> None:
    hold()


defs = dg.Definitions(jobs=[held_step_job])

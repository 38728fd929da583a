"""A tiny code location for the CLI's tests: the CLI's runs go through a real deployment of it
(``dagster dev`` on a temporary instance), in seconds rather than the pipeline's minutes.

``tiny`` fails its blocking check (so its run fails); ``pooled`` records who holds its pool's
slot while it runs; ``slow`` runs until its run is canceled.
"""

import os
import time

import dagster as dg

TEST_POOL = "cli_test_pool"


@dg.asset(check_specs=[dg.AssetCheckSpec("tiny_complete", asset="tiny", blocking=True)])
def tiny(context: dg.AssetExecutionContext):
    context.log.debug("tiny debug line")
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(
        check_name="tiny_complete", passed=False, description="TINY missing 2019-12-31"
    )


@dg.asset(deps=[tiny])
def tiny_child() -> None:
    return None


@dg.asset(pool=TEST_POOL)
def pooled(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Materializes the run ids holding a slot of :data:`TEST_POOL` while it runs, and its pid."""
    info = context.instance.event_log_storage.get_concurrency_info(TEST_POOL)
    holders = sorted({slot.run_id for slot in info.claimed_slots if slot.run_id})
    return dg.MaterializeResult(
        metadata={"slot_holders": dg.MetadataValue.json(holders), "pid": os.getpid()}
    )


@dg.asset
def slow(context: dg.AssetExecutionContext) -> None:
    context.log.info("slow started")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
    raise RuntimeError("slow was not canceled within 120 s")


defs = dg.Definitions(
    assets=[tiny, tiny_child, pooled, slow],
    jobs=[
        dg.define_asset_job("tiny_job", selection=["tiny", "tiny_child"]),
        dg.define_asset_job("pooled_job", selection=["pooled"]),
        dg.define_asset_job("slow_job", selection=["slow"]),
    ],
)

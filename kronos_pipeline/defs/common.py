"""Shared pieces of the data-stage assets: asset options and check-result builders."""

from __future__ import annotations

import dagster as dg
import polars as pl

from kronos_pipeline.defs.partitions import trading_day_partitions
from kronos_pipeline.quality import QualityReport
from kronos_pipeline.warehouse import WAREHOUSE_POOL

# Every DuckDB writer shares one pool (limit 1 in dagster_home/dagster.yaml) and each run may
# cover a whole range of trading days, so twenty years load in one run.
DAILY_ASSET_OPTIONS: dict = {
    "partitions_def": trading_day_partitions,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "pool": WAREHOUSE_POOL,
    "kinds": {"duckdb", "polars"},
}


def spec(asset: str, name: str, description: str, blocking: bool = False) -> dg.AssetCheckSpec:
    """A check spec on ``asset``; ``blocking`` ones stop downstream steps when they fail."""
    return dg.AssetCheckSpec(name=name, asset=asset, description=description, blocking=blocking)


def quality_result(
    asset: str, name: str, report: QualityReport, also: tuple[bool, str] | None = None
) -> dg.AssetCheckResult:
    """An ERROR check result from a great-expectations report; ``also`` adds one more
    (passed, note) condition checked outside GX."""
    extra_ok, note = also or (True, "")
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=report.success and extra_ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.summary() + (f"; {note}" if note else ""),
        metadata={
            "rows": report.rows,
            "expectations": len(report.results),
            "failed": dg.MetadataValue.json(report.failures),
        },
    )


def markdown_table(frame: pl.DataFrame, max_rows: int = 50) -> dg.MetadataValue:
    """A small frame as a Markdown table for the UI."""
    if frame.height == 0:
        return dg.MetadataValue.md("(none)")
    head = frame.head(max_rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * head.width]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in head.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))

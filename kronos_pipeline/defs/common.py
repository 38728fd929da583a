"""Shared pieces of the data-stage assets: asset options and check-result builders."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
import polars as pl

from kronos_pipeline.defs.conditions import DAILY
from kronos_pipeline.defs.partitions import day_partitions
from kronos_pipeline.quality import QualityReport, TableSchema

# Writers of the lake need no pool (each day is its own partition file) and a backfill of any
# range of weekdays is one run, so twenty years load in one run.
DAILY_ASSET_OPTIONS: dict = {
    "partitions_def": day_partitions,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "kinds": {"duckdb", "polars"},
    "automation_condition": DAILY,
}


_DAGSTER_TYPES = {"Float64": "double", "String": "varchar", "Date": "date", "Int64": "bigint"}


def column_schema(schema: TableSchema) -> dg.TableSchema:
    """The declared schema as Dagster column-schema metadata (shown on the asset page)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=_DAGSTER_TYPES.get(str(c.dtype), str(c.dtype).lower()),
                description=c.description or None,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in schema.columns
        ]
    )


def observed_schema(frame: pl.DataFrame, declared: TableSchema) -> dg.TableSchema:
    """The schema of the frame actually written (its own names and types), so that the
    schema-change checks compare what was written, run to run, not the declaration."""
    nullable = {c.name: c.nullable for c in declared.columns}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=_DAGSTER_TYPES.get(str(dtype), str(dtype).lower()),
                constraints=dg.TableColumnConstraints(nullable=nullable.get(name, True)),
            )
            for name, dtype in frame.schema.items()
        ]
    )


def table_metadata(schema: TableSchema, frame: pl.DataFrame | None = None) -> dict:
    """``dagster/column_schema`` (declared, or observed on ``frame``), ``dagster/table_name``
    and, with ``frame``, ``dagster/row_count``."""
    out = {
        "dagster/column_schema": column_schema(schema)
        if frame is None
        else observed_schema(frame, schema),
        "dagster/table_name": f"warehouse.main.{schema.table}",
    }
    if frame is not None:
        out["dagster/row_count"] = frame.height
    return out


def blocking_failure(failed: list[tuple[str, str]], what: str) -> dg.Failure:
    """The step's error when blocking checks failed before anything was written."""
    return dg.Failure(
        description=f"{what} wrote nothing: a blocking check failed: "
        + " | ".join(f"{name}: {desc}" for name, desc in failed),
        allow_retries=False,
    )


def failed_blocking(
    results: list[dg.AssetCheckResult], specs: Iterable[dg.AssetCheckSpec]
) -> list[tuple[str, str]]:
    """``(check name, description)`` of every result that failed with ERROR severity and whose
    spec (looked up by asset and check name, e.g. in ``context.assets_def.check_specs``) is
    blocking: a check blocks by its name, never by its position in a list."""
    blocking = {s.key for s in specs if s.blocking}
    return [
        (r.check_name, r.description or "")
        for r in results
        if not r.passed
        and r.severity == dg.AssetCheckSeverity.ERROR
        and dg.AssetCheckKey(r.asset_key, r.check_name) in blocking
    ]


def add_counts(total: dict, more: dict) -> dict:
    """Check metadata of a run's folds added up: numeric counts summed, other values (flags,
    text) the newest fold's. A step over several folds reports one check for all of them."""
    counts = (int, float)
    return {
        **total,
        **{
            k: total.get(k, 0) + v if isinstance(v, counts) and not isinstance(v, bool) else v
            for k, v in more.items()
        },
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

"""vendor_files -> raw_bars, bars_quarantine and the point-in-time side tables.

Validate, then publish: the step computes every table, runs every check in memory, and writes
all of them in one transaction only when no blocking check failed. Otherwise it reports the
check results and fails, and nothing it computed is visible.
"""

import dagster as dg

from kronos_pipeline import quality
from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.data.ingest_step import (
    SourceMismatch,
    plan_ingest,
    publish,
    read_prior,
    refuse_other_source,
)
from kronos_pipeline.data.sources import load_source, source_file_count, source_fingerprint
from kronos_pipeline.defs.common import (
    DAILY_ASSET_OPTIONS,
    blocking_failure,
    spec,
    table_metadata,
)
from kronos_pipeline.defs.conditions import SESSION_BARS, SESSION_FRESHNESS
from kronos_pipeline.defs.partitions import partition_window
from kronos_pipeline.defs.resources import SettingsResource, WarehouseResource
from kronos_pipeline.settings import get_settings

KINDS = DAILY_ASSET_OPTIONS["kinds"]


@dg.observable_source_asset(
    name="vendor_files",
    group_name="sources",
    description="The configured source: a folder of AlphaVantage daily-adjusted files (with "
    "optional constituents.csv and delistings.csv), a tidy table, or the synthetic market. "
    "Produced outside the pipeline; watched every minute by observe_vendor_folder, its data "
    "version is the "
    "fingerprint of the files (names, sizes, modification times), so a delivered file is a "
    "new version and the session's bars run (defs/conditions.py).",
)
def vendor_files(settings: SettingsResource) -> dg.ObserveResult:
    data = settings.get().data
    return dg.ObserveResult(
        data_version=dg.DataVersion(source_fingerprint(data)),
        metadata={"source_kind": data.source_kind, "files": source_file_count(data)},
    )


SIDE_TABLES = {
    "ticker_history": (
        quality.TICKER_HISTORY,
        "Point-in-time ticker list: alive from the first bar to a declared delisting.",
    ),
    "sector_history": (
        quality.SECTOR_HISTORY,
        "Point-in-time sector membership with validity ranges; never emptied by a source "
        "without constituents.",
    ),
}
CHECKS = [
    ("raw_bars", "bars_quality", "GX: declared schema (names, types, nullability), positive "
     "prices, unique keys, rows = expected bars that were accepted", True),
    ("raw_bars", "source_files", "Every file readable, with the declared header and rows", True),
    ("raw_bars", "bars_complete", "Every session x ticker alive is a bar or a quarantined line; "
     "missing pairs are named", True),
    ("raw_bars", "bars_gaps", "Warns on isolated vendor gaps (the ticker trades again later)",
     False),
    ("raw_bars", "lines_reconcile", "Per file: lines read = accepted + quarantined", True),
    ("bars_quarantine", "quarantine_schema", "GX: declared schema, every row has a reason", True),
    ("bars_quarantine", "quarantine_share", "Warns when more than 0.1% of lines are rejected",
     False),
    ("ticker_history", "ticker_history_schema", "GX: declared schema, one row per ticker", True),
    ("sector_history", "sector_history_schema", "GX: declared schema, unique validity starts",
     True),
    ("sector_history", "sectors_known", "Warns when the source had no constituents (the last "
     "known mapping is kept) or a ticker has no sector", False),
]  # fmt: skip


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "raw_bars",
            deps=[vendor_files],
            description="Validated OHLCV bars as delivered (not adjusted).",
            kinds=KINDS,
            metadata=table_metadata(quality.RAW_BARS),
            automation_condition=SESSION_BARS,
            freshness_policy=SESSION_FRESHNESS,
        ),
        dg.AssetSpec(
            "bars_quarantine",
            deps=[vendor_files],
            description="Rejected source lines with file, line, raw text and reason.",
            kinds=KINDS,
            metadata=table_metadata(quality.BARS_QUARANTINE),
            automation_condition=SESSION_BARS,
        ),
        *[
            dg.AssetSpec(
                name,
                deps=[vendor_files],
                description=d,
                kinds=KINDS,
                metadata=table_metadata(s),
                automation_condition=SESSION_BARS,
            )  # fmt: skip
            for name, (s, d) in SIDE_TABLES.items()
        ],
    ],
    check_specs=[spec(a, n, d, blocking=b) for a, n, d, b in CHECKS],
    group_name="data",
    **{k: v for k, v in DAILY_ASSET_OPTIONS.items() if k not in ("kinds", "automation_condition")},
)
def ingest_bars(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Read the source, validate every line and the window's completeness, then publish."""
    start, end = partition_window(context)
    settings = get_settings()
    source = load_source(settings.data)
    db = warehouse.get()
    prior = read_prior(db)
    try:
        refuse_other_source(db, source.identity, prior.identity)
    except SourceMismatch as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    plan = plan_ingest(source, prior, start, end, settings.data.calendar)
    results = [
        dg.AssetCheckResult(
            asset_key=c.asset,
            check_name=c.name,
            passed=c.passed,
            severity=dg.AssetCheckSeverity.ERROR if c.blocking else dg.AssetCheckSeverity.WARN,
            description=c.description[:2000],
            metadata={
                k: dg.MetadataValue.json(v) if isinstance(v, (list, dict)) else v
                for k, v in c.metadata.items()
            },
        )
        for c in plan.checks
    ]
    if plan.blocking_failures:
        yield from results
        raise blocking_failure(
            [(f"{c.asset}.{c.name}", c.description) for c in plan.blocking_failures],
            f"ingest {start}..{end}",
        )
    publish(db, plan)
    window = plan.window
    yield dg.MaterializeResult(
        asset_key="raw_bars",
        metadata={
            **table_metadata(quality.RAW_BARS, window.bars),
            "source": source.identity,
            "tickers": window.bars["ticker"].n_unique(),
            "window": f"{start}..{end}",
            "expected_bars": plan.complete.expected,
            # An exchange holiday materializes with no session; its checks expect no bar.
            "sessions": len(trading_days(start, end, settings.data.calendar)),
        },
    )
    yield dg.MaterializeResult(
        asset_key="bars_quarantine",
        metadata={
            **table_metadata(quality.BARS_QUARANTINE, window.quarantine),
            "files_rejected_whole": int((plan.files["accepted"] == 0).sum()),
        },
    )
    yield dg.MaterializeResult(
        asset_key="ticker_history",
        metadata=table_metadata(quality.TICKER_HISTORY, plan.tickers),
    )
    yield dg.MaterializeResult(
        asset_key="sector_history",
        metadata={
            **table_metadata(quality.SECTOR_HISTORY, plan.sectors.history),
            "note": plan.sectors.note,
        },
    )
    yield from results


DATA_TABLE_ASSETS = ["raw_bars", "bars_quarantine", "ticker_history", "sector_history"]

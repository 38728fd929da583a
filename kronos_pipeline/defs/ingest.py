"""raw_bars and bars_quarantine: every source line lands in exactly one of them."""

import dagster as dg
import polars as pl

from kronos_pipeline import quality
from kronos_pipeline.data.sources import load_source
from kronos_pipeline.defs.common import DAILY_ASSET_OPTIONS, markdown_table, quality_result, spec
from kronos_pipeline.defs.partitions import partition_window
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.settings import get_settings

# Quarantined share of all lines above which the quarantine check warns.
QUARANTINE_WARN_SHARE = 0.001
KINDS = DAILY_ASSET_OPTIONS["kinds"]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "raw_bars", description="Validated OHLCV bars as delivered (not adjusted).", kinds=KINDS
        ),
        dg.AssetSpec(
            "bars_quarantine",
            description="Rejected source lines with file, line, raw text and reason.",
            kinds=KINDS,
        ),
    ],
    check_specs=[
        spec(
            "raw_bars",
            "bars_quality",
            "GX: schema, non-null, positive prices, unique (ticker, date)",
            blocking=True,
        ),
        spec(
            "raw_bars",
            "lines_reconcile",
            "Per file: lines read = accepted + quarantined",
            blocking=True,
        ),
        spec(
            "bars_quarantine", "quarantine_share", "Warns when more than 0.1% of lines are rejected"
        ),
    ],
    group_name="data",
    **{k: v for k, v in DAILY_ASSET_OPTIONS.items() if k != "kinds"},
)
def ingest_bars(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Read the configured source, validate every line, write the window's bars and rejects."""
    start, end = partition_window(context)
    source = load_source(get_settings().data)
    window = source.ingest.filter_dates(start, end)
    db = warehouse.get()
    db.replace_window("raw_bars", window.bars, start, end, order_by=("ticker", "date"))
    db.replace_window("bars_quarantine", window.quarantine, start, end, include_null_dates=True)
    db.replace_table("ingest_files", source.ingest.files)
    db.replace_table("ticker_sectors", source.sectors)
    db.replace_table("source_tickers", source.ingest.ticker_spans())
    files = source.ingest.files
    mismatched = files.filter(pl.col("lines") != pl.col("accepted") + pl.col("quarantined"))
    total_lines, total_rejected = int(files["lines"].sum()), int(files["quarantined"].sum())
    reasons = window.quarantine.group_by("reason").len().sort("len", descending=True)
    yield dg.MaterializeResult(
        asset_key="raw_bars",
        metadata={
            "source": source.kind,
            "rows": window.bars.height,
            "tickers": window.bars["ticker"].n_unique(),
            "window": f"{start}..{end}",
        },
    )
    yield dg.MaterializeResult(
        asset_key="bars_quarantine",
        metadata={
            "rows": window.quarantine.height,
            "files_rejected_whole": int((files["accepted"] == 0).sum()),
        },
    )
    yield quality_result(
        "raw_bars",
        "bars_quality",
        quality.validate(window.bars, "raw_bars", quality.bars_suite(window.bars.columns)),
    )
    yield dg.AssetCheckResult(
        asset_key="raw_bars",
        check_name="lines_reconcile",
        passed=mismatched.height == 0,
        description=f"{total_lines} lines = {int(files['accepted'].sum())} accepted + {total_rejected} quarantined",
        metadata={"files": files.height, "mismatched_files": mismatched["source_file"].to_list()},
    )
    share = total_rejected / max(total_lines, 1)
    yield dg.AssetCheckResult(
        asset_key="bars_quarantine",
        check_name="quarantine_share",
        passed=share <= QUARANTINE_WARN_SHARE,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{total_rejected} of {total_lines} lines quarantined ({share:.4%})",
        metadata={"reasons": markdown_table(reasons)},
    )

"""prices_pit: split-adjusted prices and total returns, as of each date."""

import dagster as dg
import polars as pl

from kronos_pipeline import quality
from kronos_pipeline.data.pit import (
    RAW_PRICE_COLUMNS,
    adjustment_agreement,
    missing_history,
    prices_pit,
)
from kronos_pipeline.defs.common import (
    DAILY_ASSET_OPTIONS,
    blocking_failure,
    failed_blocking,
    quality_result,
    spec,
    table_metadata,
)
from kronos_pipeline.defs.partitions import partition_window
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.settings import get_settings


@dg.asset(
    name="prices_pit",
    deps=["raw_bars"],
    group_name="data",
    description="PIT split-adjusted OHLCV, dividend-inclusive daily total return and index.",
    metadata=table_metadata(quality.PRICES_PIT),
    check_specs=[
        spec(
            "prices_pit",
            "prices_quality",
            "GX: declared schema, one row per raw bar, positive factors, bounded returns",
            blocking=True,
        ),
        spec(
            "prices_pit",
            "adjustment_consistency",
            "Our returns vs the vendor adjusted_close on days without corporate actions",
        ),
        spec(
            "prices_pit",
            "history_complete",
            "raw_bars holds every ticker's bars from its first source date",
            blocking=True,
        ),
    ],
    **DAILY_ASSET_OPTIONS,
)
def prices_pit_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    start, end = partition_window(context)
    db = warehouse.get()
    # The adjustment is anchored at each ticker's first bar: compute on all history <= end.
    bars = db.read_table("raw_bars", end=end, columns=", ".join(RAW_PRICE_COLUMNS))
    prices = prices_pit(bars).filter(pl.col("date").is_between(start, end))
    # Split factors and history counts start at each ticker's first bar: if earlier raw_bars
    # partitions were never loaded, values here would silently differ from a full load.
    gaps = missing_history(bars, db.read("select ticker, first_date from source_tickers"), start)
    expected_rows = bars.filter(pl.col("date").is_between(start, end)).height
    # The same thresholds as the adjustment_consistency tripwire (settings.tripwires).
    trip = get_settings().tripwires
    agreement = adjustment_agreement(prices, trip.adjustment_rel_tol)
    share = agreement["share"]
    report = quality.validate(
        prices, "prices_pit", quality.prices_suite(expected_rows), quality.PRICES_PIT
    )
    results = [
        quality_result("prices_pit", "prices_quality", report),
        dg.AssetCheckResult(
            asset_key="prices_pit",
            check_name="history_complete",
            passed=gaps.height == 0,
            description=(
                "every ticker's history starts at its first source date"
                if gaps.height == 0
                else f"{gaps.height} tickers lack earlier raw_bars (first: {gaps['ticker'][0]} "
                f"from {gaps['first_date'][0]}); materialize raw_bars from "
                f"{gaps['first_date'].min()} first"
            ),
        ),
        dg.AssetCheckResult(
            asset_key="prices_pit",
            check_name="adjustment_consistency",
            passed=agreement["checked"] == 0 or share >= trip.adjustment_min_share,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{agreement['agree']} of {agreement['checked']} ticker-days agree "
            f"within {trip.adjustment_rel_tol:g} relative",
            metadata={
                "share_agree": float(share) if agreement["checked"] else None,
                "checked": agreement["checked"],
            },
        ),
    ]
    # Validate, then publish: a failed blocking check leaves the warehouse untouched.
    failed = failed_blocking(results, context.assets_def.check_specs)
    if failed:
        yield from results
        raise blocking_failure(failed, f"prices_pit {start}..{end}")
    db.replace_window("prices_pit", prices, start, end, order_by=("ticker", "date"))
    yield dg.MaterializeResult(
        asset_key="prices_pit",
        metadata={
            **table_metadata(quality.PRICES_PIT, prices),
            "splits": int((prices["split"] != 1.0).sum()),
            "dividends": int((prices["dividend"] > 0).sum()),
            "adjustment_agreement": agreement["share"],
        },
    )
    yield from results

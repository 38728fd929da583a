"""features and labels_forward: the feature store the models read."""

import dagster as dg
import polars as pl

from kronos_pipeline import quality
from kronos_pipeline.defs.common import DAILY_ASSET_OPTIONS, quality_result, spec
from kronos_pipeline.defs.partitions import partition_window
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.features.build import feature_names, features
from kronos_pipeline.features.labels import labels_due, labels_forward
from kronos_pipeline.settings import get_settings

MIN_FEATURES = 40
# Share of universe rows that must carry the factor-floor inputs.
MIN_FACTOR_COVERAGE = 0.95
FACTOR_INPUTS = ("mom_12_1", "mom_1m", "vol_60d")


@dg.asset(
    name="features",
    deps=["prices_pit", "universe", "raw_bars"],
    group_name="features",
    description="40+ PIT features per (date, ticker): momentum, volatility, beta, liquidity, technicals, sector-relative.",
    check_specs=[
        spec(
            "features", "features_quality", "GX: schema, unique keys, bounded ranges", blocking=True
        ),
        spec(
            "features",
            "factor_coverage",
            "Universe rows carry momentum, reversal and volatility inputs",
        ),
    ],
    **DAILY_ASSET_OPTIONS,
)
def features_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    start, end = partition_window(context)
    db = warehouse.get()
    # Rolling windows start at each ticker's first bar, so a date's values never depend on the run.
    prices = db.read_table("prices_pit", end=end)
    sectors = db.read("select * from ticker_sectors") if "ticker_sectors" in db.tables() else None
    table = features(prices, sectors).filter(pl.col("date").is_between(start, end))
    db.replace_window("features", table, start, end, order_by=("date", "ticker"))
    names = feature_names(table)
    members = db.read_table("universe", start, end, columns="date, ticker, in_universe").filter(
        "in_universe"
    )
    covered = table.join(members, on=["date", "ticker"]).select(
        [pl.col(c).is_not_null().mean().alias(c) for c in FACTOR_INPUTS]
    )
    coverage = {
        c: float(covered[c][0]) if covered.height and covered[c][0] is not None else 1.0
        for c in FACTOR_INPUTS
    }
    yield dg.MaterializeResult(
        asset_key="features", metadata={"rows": table.height, "features": len(names)}
    )
    report = quality.validate(table, "features", quality.features_suite(table.columns, names))
    yield quality_result(
        "features",
        "features_quality",
        report,
        also=(len(names) >= MIN_FEATURES, f"{len(names)} features"),
    )
    yield dg.AssetCheckResult(
        asset_key="features",
        check_name="factor_coverage",
        passed=all(v >= MIN_FACTOR_COVERAGE for v in coverage.values()),
        severity=dg.AssetCheckSeverity.WARN,
        description=", ".join(f"{k} {v:.1%}" for k, v in coverage.items())
        + " of universe rows non-null",
        metadata=coverage,
    )


@dg.asset(
    name="labels_forward",
    deps=["prices_pit", "universe"],
    group_name="features",
    description="Forward total and excess returns at 20/60/90 trading days with available_at.",
    check_specs=[
        spec(
            "labels_forward",
            "labels_quality",
            "Unique keys, maturity after the date, returns > -100%",
            blocking=True,
        ),
        spec(
            "labels_forward",
            "label_availability",
            "Every universe row whose horizon has matured has a label",
        ),
    ],
    **DAILY_ASSET_OPTIONS,
)
def labels_forward_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    start, end = partition_window(context)
    horizons = get_settings().labels.horizons
    db = warehouse.get()
    prices = db.read_table("prices_pit", columns="ticker, date, tri")
    members = db.read_table("universe", start, end, columns="date, ticker, in_universe")
    labels = labels_forward(prices, members, horizons).filter(pl.col("date").is_between(start, end))
    db.replace_window("labels_forward", labels, start, end, order_by=("date", "ticker", "horizon"))
    data_end = prices["date"].max()
    yield dg.MaterializeResult(
        asset_key="labels_forward",
        metadata={
            "rows": labels.height,
            "data_end": str(data_end),
            "delisted_inside_horizon": int((labels["end_date"] < labels["available_at"]).sum()),
        },
    )
    broken = labels.filter(
        (pl.col("available_at") <= pl.col("date"))
        | (pl.col("end_date") > pl.col("available_at"))
        | (pl.col("fwd_return") <= -1.0)
        | pl.col("fwd_return").is_null()
    )
    duplicates = labels.height - labels.select("date", "ticker", "horizon").n_unique()
    yield dg.AssetCheckResult(
        asset_key="labels_forward",
        check_name="labels_quality",
        passed=broken.height == 0 and duplicates == 0,
        description=f"{broken.height} malformed labels, {duplicates} duplicates",
    )
    expected = members.filter("in_universe").join(
        pl.DataFrame({"horizon": list(horizons)}, schema={"horizon": pl.Int32}), how="cross"
    )
    missing = expected.join(labels, on=["date", "ticker", "horizon"], how="anti")
    # Labels not yet matured at the end of the data are expected to be missing.
    matured_missing = labels_due(missing, data_end).filter("due")
    yield dg.AssetCheckResult(
        asset_key="labels_forward",
        check_name="label_availability",
        passed=matured_missing.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{missing.height} universe rows not yet matured, {matured_missing.height} matured but missing",
        metadata={"immature": missing.height - matured_missing.height},
    )

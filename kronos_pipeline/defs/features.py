"""features and labels_forward: the feature store the models read."""

import dagster as dg
import polars as pl

from kronos_pipeline import quality
from kronos_pipeline.data.side_tables import sector_segments
from kronos_pipeline.defs.common import (
    DAILY_ASSET_OPTIONS,
    blocking_failure,
    failed_blocking,
    quality_result,
    spec,
    table_metadata,
)
from kronos_pipeline.defs.conditions import maturing_labels
from kronos_pipeline.defs.partitions import LABEL_HORIZON, LABEL_LOOKBACK, partition_window
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.features.build import feature_names, features, history_start
from kronos_pipeline.features.labels import labels_due, labels_forward
from kronos_pipeline.settings import get_settings

MIN_FEATURES = 40
# Share of universe rows that must carry the factor-floor inputs.
MIN_FACTOR_COVERAGE = 0.95
FACTOR_INPUTS = ("mom_12_1", "mom_1m", "vol_60d")


@dg.asset(
    name="features",
    deps=["prices_pit", "universe", "raw_bars", "sector_history"],
    group_name="features",
    description="40+ PIT features per (date, ticker): momentum, volatility, beta, liquidity, technicals, sector-relative.",
    metadata=table_metadata(quality.FEATURES),
    check_specs=[
        spec(
            "features",
            "features_quality",
            "GX: declared schema (every declared feature), one row per PIT price row, bounded ranges",
            blocking=True,
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
    # A year's rows are computed from the bars dated history_start(year) on (features.build),
    # so a date's values never depend on the run's window.
    prices = db.read_table("prices_pit", history_start(start), end)
    # Sectors as known on each date: the window is cut where a sector changes.
    history = db.read_table("sector_history") if "sector_history" in db.tables() else None
    table = pl.concat(
        [
            features(prices.filter(pl.col("date") <= seg_end), sectors, seg_start, seg_end)
            for seg_start, seg_end, sectors in sector_segments(history, start, end)
        ]
    )
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
    expected_rows = prices.filter(pl.col("date").is_between(start, end)).height
    report = quality.validate(
        table, "features", quality.features_suite(expected_rows), quality.FEATURES
    )
    quality_check = quality_result(
        "features",
        "features_quality",
        report,
        also=(len(names) >= MIN_FEATURES, f"{len(names)} features"),
    )
    coverage_check = dg.AssetCheckResult(
        asset_key="features",
        check_name="factor_coverage",
        passed=all(v >= MIN_FACTOR_COVERAGE for v in coverage.values()),
        severity=dg.AssetCheckSeverity.WARN,
        description=", ".join(f"{k} {v:.1%}" for k, v in coverage.items())
        + " of universe rows non-null",
        metadata=coverage,
    )
    results = [quality_check, coverage_check]
    if failed := failed_blocking(results, context.assets_def.check_specs):
        yield from results
        raise blocking_failure(failed, "features")
    db.replace_window("features", table, start, end, order_by=("date", "ticker"))
    yield dg.MaterializeResult(
        asset_key="features",
        metadata={**table_metadata(quality.FEATURES, table), "features": len(names)},
    )
    yield from results


@dg.asset(
    name="labels_forward",
    # A day's labels read the prices of the sessions after it, up to its longest horizon: the
    # one dependency on later partitions in the graph, declared so that it is seen (and so that
    # a day's labels rerun as those sessions arrive). Nothing fitted reads a label before its
    # maturity (the folds purge it).
    deps=[dg.AssetDep("prices_pit", partition_mapping=LABEL_HORIZON), "universe"],
    group_name="features",
    description="Forward total and excess returns at 20/60/90 trading days with available_at.",
    metadata=table_metadata(quality.LABELS_FORWARD),
    check_specs=[
        spec(
            "labels_forward",
            "labels_quality",
            "GX: declared schema and unique keys; maturity after the date, returns > -100%",
            blocking=True,
        ),
        spec(
            "labels_forward",
            "label_availability",
            "Every universe row whose horizon has matured has a label",
        ),
    ],
    **{**DAILY_ASSET_OPTIONS, "automation_condition": maturing_labels(LABEL_LOOKBACK)},
)
def labels_forward_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    start, end = partition_window(context)
    horizons = get_settings().labels.horizons
    db = warehouse.get()
    # A label dated d reads the prices from d on (its own tri, the closes up to d + h), so the
    # window's labels come out the same from the prices dated ``start`` or later.
    prices = db.read_table("prices_pit", start=start, columns="ticker, date, tri")
    if prices.height == 0:  # a day after the data's end: no session to label, as before
        prices = db.read_table("prices_pit", columns="ticker, date, tri")
    members = db.read_table("universe", start, end, columns="date, ticker, in_universe")
    labels = labels_forward(prices, members, horizons).filter(pl.col("date").is_between(start, end))
    data_end = prices["date"].max()
    broken = labels.filter(
        (pl.col("available_at") <= pl.col("date"))
        | (pl.col("end_date") > pl.col("available_at"))
        | (pl.col("fwd_return") <= -1.0)
        | pl.col("fwd_return").is_null()
    )
    report = quality.validate(
        labels, "labels_forward", quality.labels_suite(), quality.LABELS_FORWARD
    )
    quality_check = dg.AssetCheckResult(
        asset_key="labels_forward",
        check_name="labels_quality",
        passed=broken.height == 0 and report.success,
        description=f"{broken.height} malformed labels; {report.summary()}",
        metadata={"failed": dg.MetadataValue.json(report.failures)},
    )
    expected = members.filter("in_universe").join(
        pl.DataFrame({"horizon": list(horizons)}, schema={"horizon": pl.Int32}), how="cross"
    )
    missing = expected.join(labels, on=["date", "ticker", "horizon"], how="anti")
    # Labels not yet matured at the end of the data are expected to be missing.
    matured_missing = labels_due(missing, data_end).filter("due")
    availability_check = dg.AssetCheckResult(
        asset_key="labels_forward",
        check_name="label_availability",
        passed=matured_missing.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{missing.height} universe rows not yet matured, {matured_missing.height} matured but missing",
        metadata={"immature": missing.height - matured_missing.height},
    )
    results = [quality_check, availability_check]
    if failed := failed_blocking(results, context.assets_def.check_specs):
        yield from results
        raise blocking_failure(failed, "labels_forward")
    db.replace_window("labels_forward", labels, start, end, order_by=("date", "ticker", "horizon"))
    yield dg.MaterializeResult(
        asset_key="labels_forward",
        metadata={
            **table_metadata(quality.LABELS_FORWARD, labels),
            "data_end": str(data_end),
            "delisted_inside_horizon": int((labels["end_date"] < labels["available_at"]).sum()),
        },
    )
    yield from results

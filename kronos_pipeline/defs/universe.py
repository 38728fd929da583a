"""universe: which names are tradable on each date."""

import datetime as dt

import dagster as dg
import polars as pl

from kronos_pipeline import quality
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
from kronos_pipeline.features.universe import universe, universe_prices
from kronos_pipeline.settings import get_settings

# A date with fewer members than this gives noisy cross-sectional metrics: the check warns.
MIN_MEMBERS_WARN = 20


@dg.asset(
    name="universe",
    deps=["prices_pit"],
    group_name="data",
    description="Per date: history, price and liquidity filters, liquidity rank, top-N membership.",
    metadata=table_metadata(quality.UNIVERSE),
    check_specs=[
        spec(
            "universe",
            "universe_rules",
            "Members are eligible, unique, and within top-N",
            blocking=True,
        ),
        spec(
            "universe",
            "universe_quality",
            "GX: declared schema, one row per PIT price row of the window",
            blocking=True,
        ),
        spec("universe", "universe_breadth", "Warns on dates with fewer than 20 members"),
    ],
    **DAILY_ASSET_OPTIONS,
)
def universe_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    start, end = partition_window(context)
    settings = get_settings()
    cfg, top_n = settings.universe, settings.effective_top_n
    db = warehouse.get()
    # The medians are exact: the bars from a few months before ``start`` (the whole history
    # when a name's gap needs more) give the whole table's rows.
    reads: list[dt.date | None] = []

    def read(since: dt.date | None) -> pl.DataFrame:
        reads.append(since)
        return db.read_table(
            "prices_pit", since, end, columns="ticker, date, close, dollar_volume, bar_index"
        )

    prices = universe_prices(read, start, cfg.liquidity_window_days)
    members = universe(
        prices,
        cfg.min_history_days,
        cfg.min_price,
        cfg.min_median_dollar_volume,
        cfg.liquidity_window_days,
        top_n,
        start,
        end,
    )
    per_date = (
        members.group_by("date")
        .agg(
            n=pl.col("in_universe").sum(),
            warm=pl.col("history_days").max() >= cfg.min_history_days,
        )
        .sort("date")
    )
    # Before any name has the minimum history the universe is empty by construction.
    thin = per_date.filter(pl.col("warm") & (pl.col("n") < MIN_MEMBERS_WARN))
    broken = members.filter(
        (pl.col("in_universe") & ~pl.col("eligible"))
        | (pl.col("in_universe") & (pl.col("liquidity_rank") > (top_n or 10**9)))
    )
    duplicates = members.height - members.select("date", "ticker").n_unique()
    expected_rows = prices.filter(pl.col("date").is_between(start, end)).height
    report = quality.validate(
        members, "universe", quality.universe_suite(expected_rows), quality.UNIVERSE
    )
    results = [
        dg.AssetCheckResult(
            asset_key="universe",
            check_name="universe_rules",
            passed=broken.height == 0 and duplicates == 0,
            description=f"{broken.height} members break a rule, {duplicates} duplicate (date, ticker)",
        ),
        quality_result("universe", "universe_quality", report),
        dg.AssetCheckResult(
            asset_key="universe",
            check_name="universe_breadth",
            passed=thin.height == 0,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{thin.height} of {per_date.height} dates have fewer than "
            f"{MIN_MEMBERS_WARN} members ({int((~per_date['warm']).sum())} warm-up dates before "
            f"any name has {cfg.min_history_days} bars)",
            metadata={"first_thin_dates": [str(d) for d in thin["date"].head(10)]},
        ),
    ]
    failed = failed_blocking(results, context.assets_def.check_specs)
    if failed:
        yield from results
        raise blocking_failure(failed, f"universe {start}..{end}")
    db.replace_window("universe", members, start, end, order_by=("date", "ticker"))
    yield dg.MaterializeResult(
        asset_key="universe",
        metadata={
            **table_metadata(quality.UNIVERSE, members),
            "member_rows": int(members["in_universe"].sum()),
            "top_n": top_n or "all",
            "median_members": float(per_date["n"].median() or 0),
            # Which prices the medians read: a few months, or (a gap left a median short of
            # bars in them) the whole history.
            "prices_read_from": str(reads[-1]) if reads[-1] else "the first bar (whole history)",
        },
    )
    yield from results

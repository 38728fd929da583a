"""The day's signal: per model and horizon (every candidate, the Kronos heads included, and
the baselines), the ranked universe with its scores and, for every Kronos-derived model, the
quantiles of its forecast's sampled paths. A date-level asset on the fold's month; each date it covers
goes to the ``signals`` table and to ``<data_dir>/signals/<date>.parquet`` (written to a
temporary name and renamed), validated against the universe members of the date first."""

import io

import dagster as dg
import polars as pl

from kronos_pipeline.defs.common import blocking_failure
from kronos_pipeline.defs.partitions import partition_window
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.defs.walkforward import SCORE_ASSET_OPTIONS
from kronos_pipeline.evaluation.signal import (  # noqa: F401 - this stage's public names
    QUANTILE_COLUMNS,
    SCORE_TABLES,
    SIGNAL_COLUMNS,
    kronos_models,
    no_signal_reason,
    signal_frame,
    signal_problems,
)
from kronos_pipeline.files import atomic_write_bytes
from kronos_pipeline.settings import get_settings


@dg.asset(
    name="signals",
    deps=[
        dg.AssetDep(a, partition_mapping=dg.TimeWindowPartitionMapping())
        for a in (*SCORE_TABLES, "kronos_forecasts", "universe")
    ],
    **SCORE_ASSET_OPTIONS,
    group_name="signals",
    kinds={"duckdb", "parquet"},
    description="Per scored date: every candidate and baseline model's ranked universe per "
    "horizon (Kronos, its volnorm variant and both heads included), with the forecast "
    "quantiles of every Kronos-derived model; warehouse table signals and "
    "data/signals/<date>.parquet.",
    check_specs=[
        dg.AssetCheckSpec(
            "signal_complete",
            asset="signals",
            blocking=True,
            description="Every model ranks exactly the universe members of the date, 1..n; "
            "every Kronos-derived row carries finite, ordered forecast quantiles",
        )
    ],  # fmt: skip
)
def signals_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db = get_settings(), warehouse.get()
    start, end = partition_window(context)
    signal = signal_frame(db, start, end)
    if signal.is_empty():
        if start == end and (reason := no_signal_reason(db, start, end)):
            raise dg.Failure(reason, allow_retries=False)
        # An exchange holiday or days off the cadence: done, there is nothing to rank.
        note = f"no scored session between {start} and {end}"
        yield dg.MaterializeResult(metadata={"dates": 0, "rows": 0, "note": note})
        yield dg.AssetCheckResult(check_name="signal_complete", passed=True, description=note)
        return
    days = sorted(signal["date"].unique())
    members = db.read(
        "select date, ticker from universe where in_universe and date = any(?::date[])",
        [days],
    ).with_columns(pl.col("date").cast(pl.Date))
    problems = signal_problems(signal, members, kronos_models(db, start, end))
    check = dg.AssetCheckResult(
        check_name="signal_complete", passed=not problems,
        description="; ".join(problems[:10]) or f"{len(days)} dates, {signal.height} rows",
        metadata={"dates": len(days), "rows": signal.height, "problems": len(problems)},
    )  # fmt: skip
    if problems:  # validate, then publish
        yield check
        raise blocking_failure([("signal_complete", check.description)], "signals")
    db.replace_window("signals", signal, start, end)
    folder = s.warehouse.data_dir / "signals"
    folder.mkdir(parents=True, exist_ok=True)
    for day in days:
        buffer = io.BytesIO()
        signal.filter(pl.col("date") == day).write_parquet(buffer)
        atomic_write_bytes(folder / f"{day}.parquet", buffer.getvalue())
    yield dg.MaterializeResult(
        metadata={
            "dates": len(days),
            "newest": str(days[-1]),
            "rows": signal.height,
            "models": ", ".join(sorted(signal["model"].unique())),
            "file": dg.MetadataValue.path(str(folder / f"{days[-1]}.parquet")),
        }
    )
    yield check

"""The ingest step, validate then publish: compute every table, check it in memory, and only
then write all of them in one warehouse transaction.

:func:`plan_ingest` is pure: from the source and what the warehouse already knows it builds the
window's raw bars and quarantine, the merged point-in-time side tables and every check outcome.
:func:`publish` refuses a plan with a failed blocking check (:class:`BlockingCheckFailed`,
nothing is written) or from another source than the warehouse's (:class:`SourceMismatch`), and
otherwise writes all tables in one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import polars as pl

from kronos_pipeline import quality
from kronos_pipeline.data.completeness import (
    Completeness,
    completeness,
    expected_bars,
    name_pairs,
)
from kronos_pipeline.data.ingest import IngestResult
from kronos_pipeline.data.side_tables import (
    SectorMerge,
    current_sectors,
    merge_sector_history,
    merge_ticker_history,
)
from kronos_pipeline.data.sources import SourceData
from kronos_pipeline.quality import SECTOR_HISTORY, TICKER_HISTORY
from kronos_pipeline.warehouse import Warehouse

SOURCE_TABLE = "warehouse_source"  # identity of the source the warehouse was built from
# Quarantined share of all lines above which the quarantine check warns.
QUARANTINE_WARN_SHARE = 0.001


class BlockingCheckFailed(RuntimeError):
    """A blocking check failed: the step wrote nothing."""


class SourceMismatch(RuntimeError):
    """The run reads another source than the one the warehouse was built from."""


@dataclass(frozen=True)
class CheckOutcome:
    asset: str
    name: str
    passed: bool
    blocking: bool
    description: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Prior:
    """What the warehouse knows before the run."""

    identity: str | None
    tickers: pl.DataFrame
    sectors: pl.DataFrame
    data_end: dt.date | None


@dataclass(frozen=True)
class IngestPlan:
    start: dt.date
    end: dt.date
    identity: str
    prior_identity: str | None
    window: IngestResult
    files: pl.DataFrame
    tickers: pl.DataFrame
    sectors: SectorMerge
    complete: Completeness
    checks: list[CheckOutcome]

    @property
    def blocking_failures(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.blocking and not c.passed]


def read_prior(db: Warehouse) -> Prior:
    """The source identity, side tables and last bar date the warehouse holds (empty if new)."""
    tables = set(db.tables())
    identity = (
        db.read(f"select identity from {SOURCE_TABLE}")["identity"][0]
        if SOURCE_TABLE in tables
        else None
    )
    tickers = db.read_table("ticker_history") if "ticker_history" in tables else None
    sectors = db.read_table("sector_history") if "sector_history" in tables else None
    # The newest day file's name (a day's file exists only while it has rows), none opened.
    end = db.distinct_dates("raw_bars")["date"].max() if "raw_bars" in tables else None
    return Prior(
        identity,
        TICKER_HISTORY.empty() if tickers is None else tickers,
        SECTOR_HISTORY.empty() if sectors is None else sectors,
        end,
    )


def plan_ingest(
    source: SourceData, prior: Prior, start: dt.date, end: dt.date, calendar: str = "XNYS"
) -> IngestPlan:
    """Every table of the ingest for [start, end] and every check outcome, nothing written."""
    ingest = source.ingest
    window = ingest.filter_dates(start, end)
    tickers = merge_ticker_history(prior.tickers, ingest.bars, source.delistings)
    change_from = prior.data_end + dt.timedelta(days=1) if prior.data_end else None
    sectors = merge_sector_history(
        prior.sectors, source.sectors, source.sectors_source, tickers, change_from
    )
    last_bar = ingest.bars.group_by("ticker").agg(last_date=pl.col("date").max())
    complete = completeness(
        expected_bars(tickers, start, end, calendar), window.bars, window.quarantine, last_bar
    )
    checks = _checks(source, window, tickers, sectors, complete)
    return IngestPlan(
        start,
        end,
        source.identity,
        prior.identity,
        window,
        ingest.files,
        tickers,
        sectors,
        complete,
        checks,
    )


def _checks(
    source: SourceData,
    window: IngestResult,
    tickers: pl.DataFrame,
    sectors: SectorMerge,
    complete: Completeness,
) -> list[CheckOutcome]:
    files = source.ingest.files
    out = []
    bars_report = quality.validate(
        window.bars, "raw_bars", quality.bars_suite(complete.accepted), quality.RAW_BARS
    )
    out.append(
        CheckOutcome(
            "raw_bars",
            "bars_quality",
            bars_report.success,
            True,
            bars_report.summary(),
            {"failed": bars_report.failures},
        )
    )
    broken = source.ingest.blocking_file_errors()
    out.append(
        CheckOutcome(
            "raw_bars",
            "source_files",
            broken.height == 0,
            True,
            f"{files.height} files read, every one with the declared vendor layout and rows"
            if broken.height == 0
            else f"{broken.height} files lost their bars: "
            + "; ".join(f"{f}: {p}" for f, p in broken.select("source_file", "problem").rows()),
            {"files": broken.select("source_file", "status", "problem").to_dicts()},
        )
    )
    out.append(
        CheckOutcome(
            "raw_bars",
            "bars_complete",
            complete.passed,
            True,
            complete.describe(),
            {
                "expected": complete.expected,
                "accepted": complete.accepted,
                "quarantined": complete.quarantined,
                "missing": complete.absent.height,
                "unexpected": complete.unexpected.height,
                "first_missing": [
                    f"{t} {d}" for t, d in complete.absent.select("ticker", "date").head(20).rows()
                ],
            },
        )
    )
    out.append(
        CheckOutcome(
            "raw_bars",
            "bars_gaps",
            complete.holes.height == 0,
            False,
            "no isolated vendor gaps"
            if complete.holes.height == 0
            else f"{complete.holes.height} isolated vendor gaps: {name_pairs(complete.holes)}",
            {"gaps": complete.holes.height},
        )
    )
    mismatched = files.filter(pl.col("lines") != pl.col("accepted") + pl.col("quarantined"))
    total_lines, total_rejected = int(files["lines"].sum()), int(files["quarantined"].sum())
    out.append(
        CheckOutcome(
            "raw_bars",
            "lines_reconcile",
            mismatched.height == 0,
            True,
            f"{total_lines} lines = {int(files['accepted'].sum())} accepted + {total_rejected} "
            "quarantined",
            {"files": files.height, "mismatched_files": mismatched["source_file"].to_list()},
        )
    )
    q_report = quality.validate(
        window.quarantine, "bars_quarantine", quality.quarantine_suite(), quality.BARS_QUARANTINE
    )
    out.append(
        CheckOutcome(
            "bars_quarantine",
            "quarantine_schema",
            q_report.success,
            True,
            q_report.summary(),
            {"failed": q_report.failures},
        )
    )
    share = total_rejected / max(total_lines, 1)
    reasons = window.quarantine.group_by("reason").len().sort("len", descending=True)
    out.append(
        CheckOutcome(
            "bars_quarantine",
            "quarantine_share",
            share <= QUARANTINE_WARN_SHARE,
            False,
            f"{total_rejected} of {total_lines} lines quarantined ({share:.4%})",
            {"reasons": [list(r) for r in reasons.head(20).rows()]},
        )
    )
    t_report = quality.validate(
        tickers, "ticker_history", quality.schema_suite(TICKER_HISTORY), TICKER_HISTORY
    )
    out.append(
        CheckOutcome(
            "ticker_history",
            "ticker_history_schema",
            t_report.success,
            True,
            t_report.summary(),
            {"failed": t_report.failures},
        )
    )
    s_report = quality.validate(
        sectors.history, "sector_history", quality.schema_suite(SECTOR_HISTORY), SECTOR_HISTORY
    )
    out.append(
        CheckOutcome(
            "sector_history",
            "sector_history_schema",
            s_report.success,
            True,
            s_report.summary(),
            {"failed": s_report.failures},
        )
    )
    alive = window.bars["ticker"].unique()
    unmapped = sorted(set(alive) - set(current_sectors(sectors.history)["ticker"]))
    out.append(
        CheckOutcome(
            "sector_history",
            "sectors_known",
            not sectors.kept_last_known and not unmapped,
            False,
            sectors.note
            + (f"; {len(unmapped)} tickers without a sector: {unmapped[:10]}" if unmapped else ""),
            {"kept_last_known": sectors.kept_last_known, "unmapped": unmapped[:50]},
        )
    )
    return out


def refuse_other_source(db: Warehouse, identity: str, prior_identity: str | None) -> None:
    """Raise :class:`SourceMismatch` when the warehouse was built from another source."""
    if prior_identity is None or prior_identity == identity:
        return
    raise SourceMismatch(
        f"the warehouse {db.path} was built from the {prior_identity}; this run reads the "
        f"{identity}. Nothing was written. To load this source, start a new warehouse: set "
        "KRONOS_WAREHOUSE__DATA_DIR to an empty folder (or KRONOS_WAREHOUSE__LAKE_URL to a new "
        f"location), or delete the lake {db.path} to rebuild it from this source."
    )


def publish(db: Warehouse, plan: IngestPlan) -> None:
    """Write the plan's tables in one transaction, or raise and write nothing."""
    refuse_other_source(db, plan.identity, plan.prior_identity)
    if plan.blocking_failures:
        raise BlockingCheckFailed(
            f"ingest {plan.start}..{plan.end} wrote nothing: "
            + " | ".join(f"{c.asset}.{c.name}: {c.description}" for c in plan.blocking_failures)
        )
    start, end, window = plan.start, plan.end, plan.window
    with db.transaction() as tx:
        tx.replace_window("raw_bars", window.bars, start, end, order_by=("ticker", "date"))
        tx.replace_window(
            "bars_quarantine",
            window.quarantine,
            start,
            end,
            include_null_dates=True,
            order_by=("source_file", "line"),
        )
        tx.replace_table("ingest_files", plan.files)
        tx.replace_table("ticker_history", plan.tickers)
        tx.replace_table("sector_history", plan.sectors.history)
        # One row per ticker, for readers that want the mapping valid now.
        tx.replace_table("ticker_sectors", current_sectors(plan.sectors.history))
        tx.replace_table("source_tickers", plan.tickers.select("ticker", "first_date"))
        tx.replace_table(
            SOURCE_TABLE,
            pl.DataFrame({"identity": [plan.identity]}, schema={"identity": pl.String}),
        )

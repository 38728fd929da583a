"""Point-in-time side tables: the ticker list and sector membership, with validity ranges.

``ticker_history``: one row per ticker ever seen, alive from ``first_date`` (its first bar, the
date it became known) to ``delisted_on`` (a declared delisting; null = alive). A source that no
longer carries a ticker never removes it: the completeness check then names its missing bars.

``sector_history``: (ticker, sector, valid_from, valid_to). A constituents snapshot is applied
from each ticker's first bar when the ticker has no sector yet (the snapshot is the only
sector information the vendor gives, see FeatureSettings.use_sector_relative); a later
snapshot that changes a ticker's sector closes the old row and opens a new one from the first
session after the data the warehouse already held, so history already computed never changes.
A source without constituents keeps the last known mapping, and says so.

Both merges are pure functions of (prior table, source): rerunning with the same source leaves
the tables identical.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from kronos_pipeline.quality import SECTOR_HISTORY, TICKER_HISTORY


@dataclass(frozen=True)
class SectorMerge:
    """The merged sector history and what the merge did, for the check and the UI."""

    history: pl.DataFrame
    kept_last_known: bool  # the source gave no constituents: the prior mapping stays
    opened: int  # rows added
    closed: int  # rows whose validity ended at a sector change
    note: str


def merge_ticker_history(
    prior: pl.DataFrame, bars: pl.DataFrame, delistings: pl.DataFrame
) -> pl.DataFrame:
    """Prior ticker rows plus the source's: earliest first bar wins, declared delistings set
    ``delisted_on``; tickers the source lacks keep their prior row."""
    seen = (
        bars.sort("ticker", "date", "source_file")
        .group_by("ticker", maintain_order=True)
        .agg(first_date=pl.col("date").first(), source_file=pl.col("source_file").first())
    )
    merged = (
        pl.concat(
            [
                prior.select("ticker", "first_date", "source_file"),
                seen.select("ticker", "first_date", "source_file"),
            ]
        )
        .sort("ticker", "first_date", "source_file")
        .group_by("ticker", maintain_order=True)
        .first()
    )
    declared = delistings.group_by("ticker").agg(new=pl.col("delisted_on").max())
    out = (
        merged.join(prior.select("ticker", "delisted_on"), on="ticker", how="left")
        .join(declared, on="ticker", how="left")
        .with_columns(delisted_on=pl.coalesce("new", "delisted_on"))
    )
    return out.select(TICKER_HISTORY.names).cast(TICKER_HISTORY.polars).sort("ticker")


def merge_sector_history(
    prior: pl.DataFrame,
    mapping: pl.DataFrame | None,
    source: str,
    tickers: pl.DataFrame,
    change_from: dt.date | None,
) -> SectorMerge:
    """Merge a ``mapping`` (ticker, sector; None when the source has none) into ``prior``.

    ``tickers`` is the merged ticker history (new rows start at each ticker's first bar);
    ``change_from`` is the first session after the data already in the warehouse (None for a
    new warehouse), where a changed sector takes effect.
    """
    prior = prior.select(SECTOR_HISTORY.names).cast(SECTOR_HISTORY.polars)
    if mapping is None:
        n = prior.filter(pl.col("valid_to").is_null()).height
        note = (
            f"the source has no constituents: kept the last known mapping ({n} tickers)"
            if n
            else "the source has no constituents and none is known: sectors are unknown"
        )
        return SectorMerge(prior.sort("ticker", "valid_from"), True, 0, 0, note)
    open_rows = prior.filter(pl.col("valid_to").is_null())
    incoming = (
        mapping.select("ticker", "sector")
        .unique("ticker")
        .join(tickers.select("ticker", "first_date"), on="ticker", how="inner")
    )
    cmp = incoming.join(open_rows.select("ticker", old="sector"), on="ticker", how="left")
    new_tickers = cmp.filter(pl.col("old").is_null() & ~pl.col("ticker").is_in(prior["ticker"]))
    changed = cmp.filter(pl.col("old").is_not_null() & (pl.col("old") != pl.col("sector")))
    # A ticker whose rows are all closed (not in open_rows, but in prior) reopens like a change.
    reopened = cmp.filter(pl.col("old").is_null() & pl.col("ticker").is_in(prior["ticker"]))
    start = change_from
    opened = pl.concat(
        [
            new_tickers.select("ticker", "sector", valid_from="first_date"),
            pl.concat([changed, reopened]).select(
                "ticker",
                "sector",
                valid_from=pl.max_horizontal(
                    pl.col("first_date"), pl.lit(start, pl.Date)
                ).fill_null(pl.col("first_date")),
            ),
        ]
    ).with_columns(valid_to=pl.lit(None, pl.Date), source=pl.lit(source))
    close_at = {
        t: v
        for t, v in zip(opened["ticker"], opened["valid_from"], strict=True)
        if t in set(changed["ticker"])
    }
    history = prior.with_columns(
        valid_to=pl.when(pl.col("valid_to").is_null() & pl.col("ticker").is_in(list(close_at)))
        .then(
            pl.col("ticker").replace_strict(close_at, default=None, return_dtype=pl.Date)
            - pl.duration(days=1)
        )
        .otherwise(pl.col("valid_to"))
    )
    history = pl.concat([history, opened.select(SECTOR_HISTORY.names).cast(SECTOR_HISTORY.polars)])
    note = f"{new_tickers.height} tickers added, {changed.height} sector changes from {source}"
    return SectorMerge(
        history.sort("ticker", "valid_from"), False, opened.height, changed.height, note
    )


def current_sectors(history: pl.DataFrame) -> pl.DataFrame:
    """The open rows: ticker -> sector valid now (one row per ticker)."""
    return (
        history.filter(pl.col("valid_to").is_null())
        .select("ticker", "sector")
        .unique("ticker", keep="last")
        .sort("ticker")
    )


def sector_segments(
    history: pl.DataFrame | None, start: dt.date, end: dt.date
) -> list[tuple[dt.date, dt.date, pl.DataFrame | None]]:
    """[start, end] cut where any sector changes: (segment start, end, ticker -> sector)."""
    if history is None or history.height == 0:
        return [(start, end, None)]
    if "valid_from" not in history.columns:  # a plain mapping
        return [(start, end, history.select("ticker", "sector"))]
    # Only sector changes cut the range; a ticker's first row starts at its first bar anyway.
    changes = history.filter(pl.col("valid_from") > pl.col("valid_from").min().over("ticker"))
    inside = changes.filter((pl.col("valid_from") > start) & (pl.col("valid_from") <= end))[
        "valid_from"
    ]
    bounds = sorted({start, *inside.to_list()})
    out = []
    for i, seg_start in enumerate(bounds):
        seg_end = bounds[i + 1] - dt.timedelta(days=1) if i + 1 < len(bounds) else end
        out.append((seg_start, seg_end, sectors_as_of(history, seg_start)))
    return out


def sectors_as_of(history: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    """ticker -> sector valid on ``day`` (rows with valid_from <= day <= valid_to).

    A ticker whose first bar is after ``day`` has no row yet; for the features that only
    matters on and after its first bar, and every row of it starts there.
    """
    d = pl.lit(day, pl.Date)
    valid = history.filter(
        (pl.col("valid_from") <= d) & (pl.col("valid_to").is_null() | (pl.col("valid_to") >= d))
    )
    # Rows that start later still map their ticker: features of a ticker begin at its first bar.
    later = (
        history.filter(pl.col("valid_from") > d).sort("valid_from").unique("ticker", keep="first")
    )
    later = later.join(valid.select("ticker"), on="ticker", how="anti")
    return pl.concat([valid, later]).select("ticker", "sector").sort("ticker")

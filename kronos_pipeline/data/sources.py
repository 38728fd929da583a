"""Pick the configured source (vendor directory, tidy table, or the synthetic market)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from kronos_pipeline.data.ingest import (
    IngestResult,
    SourceError,
    read_tidy,
    read_vendor_dir,
    validate_lines,
)
from kronos_pipeline.data.synthetic import synthetic_market
from kronos_pipeline.settings import DataSettings


@dataclass(frozen=True)
class SourceData:
    """Validated bars with quarantine, and the ticker -> sector map (may be empty)."""

    kind: str
    ingest: IngestResult
    sectors: pl.DataFrame  # ticker, sector


def read_constituents(path) -> pl.DataFrame:
    """``Symbol,Name,Sector`` (the shared data's layout) or ``ticker,sector`` -> ticker, sector."""
    table = pl.read_csv(path, infer_schema=False)
    lower = {c.lower(): c for c in table.columns}
    ticker = lower.get("symbol") or lower.get("ticker")
    sector = lower.get("sector") or lower.get("gics sector")
    if ticker is None or sector is None:
        raise SourceError(
            f"{path}: constituents need Symbol/ticker and Sector columns, got {table.columns}"
        )
    return table.select(ticker=pl.col(ticker).str.to_uppercase(), sector=pl.col(sector)).unique(
        "ticker"
    )


def load_source(data: DataSettings) -> SourceData:
    """Read and validate the configured source."""
    if data.source_kind == "vendor":
        assert data.vendor_dir is not None
        constituents = data.constituents_path or data.vendor_dir / "constituents.csv"
        sectors = (
            read_constituents(constituents)
            if constituents.exists()
            else pl.DataFrame(schema={"ticker": pl.String, "sector": pl.String})
        )
        return SourceData(
            "vendor", read_vendor_dir(data.vendor_dir, exclude=(constituents.name,)), sectors
        )
    if data.source_kind == "tidy":
        assert data.tidy_path is not None
        sectors = (
            read_constituents(data.constituents_path)
            if data.constituents_path
            else pl.DataFrame(schema={"ticker": pl.String, "sector": pl.String})
        )
        return SourceData("tidy", read_tidy(data.tidy_path), sectors)
    market = synthetic_market(
        n_tickers=data.synthetic_tickers,
        start=data.synthetic_start,
        end=data.synthetic_end,
        seed=data.synthetic_seed,
    )
    return SourceData(
        "synthetic", validate_lines(market.lines), market.constituents.select("ticker", "sector")
    )

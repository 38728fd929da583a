"""Pick the configured source (vendor directory, tidy table, or the synthetic market)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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

DELISTINGS_FILE = "delistings.csv"  # optional in a vendor folder: ticker,delisted_on
DELISTINGS_SCHEMA = {"ticker": pl.String, "delisted_on": pl.Date}


@dataclass(frozen=True)
class SourceData:
    """Validated bars with quarantine, the sector snapshot and the declared delistings.

    ``sectors`` is None when the source carries no constituents (the warehouse then keeps the
    last known mapping); ``identity`` names the source, so that a warehouse built from one
    source refuses rows from another.
    """

    kind: str
    ingest: IngestResult
    sectors: pl.DataFrame | None  # ticker, sector
    sectors_source: str
    delistings: pl.DataFrame  # ticker, delisted_on
    identity: str


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


def read_delistings(path: Path) -> pl.DataFrame:
    """``ticker,delisted_on`` (last session, YYYY-MM-DD); an absent file declares none."""
    if not path.exists():
        return pl.DataFrame(schema=DELISTINGS_SCHEMA)
    table = pl.read_csv(path, infer_schema=False)
    if set(DELISTINGS_SCHEMA) - set(table.columns):
        raise SourceError(f"{path}: needs columns ticker,delisted_on, got {table.columns}")
    out = table.select(
        ticker=pl.col("ticker").str.strip_chars().str.to_uppercase(),
        delisted_on=pl.col("delisted_on").str.to_date("%Y-%m-%d", strict=False),
    )
    bad = out.with_row_index("line", offset=2).filter(pl.col("delisted_on").is_null())
    if bad.height:
        raise SourceError(f"{path} line {bad['line'][0]}: delisted_on is not a YYYY-MM-DD date")
    return out


def load_source(data: DataSettings) -> SourceData:
    """Read and validate the configured source."""
    if data.source_kind == "vendor":
        assert data.vendor_dir is not None
        constituents = data.constituents_path or data.vendor_dir / "constituents.csv"
        ingest = read_vendor_dir(data.vendor_dir, exclude=(constituents.name, DELISTINGS_FILE))
        return SourceData(
            "vendor",
            ingest,
            read_constituents(constituents) if constituents.exists() else None,
            str(constituents),
            read_delistings(data.vendor_dir / DELISTINGS_FILE),
            f"vendor folder {data.vendor_dir.resolve()}",
        )
    if data.source_kind == "tidy":
        assert data.tidy_path is not None
        path = data.constituents_path
        return SourceData(
            "tidy",
            read_tidy(data.tidy_path),
            read_constituents(path) if path and path.exists() else None,
            str(path),
            pl.DataFrame(schema=DELISTINGS_SCHEMA),
            f"tidy table {data.tidy_path.resolve()}",
        )
    market = synthetic_market(
        n_tickers=data.synthetic_tickers,
        start=data.synthetic_start,
        end=data.synthetic_end,
        seed=data.synthetic_seed,
    )
    return SourceData(
        "synthetic",
        validate_lines(market.lines),
        market.constituents.select("ticker", "sector"),
        "synthetic market",
        market.delistings,
        f"synthetic market seed={data.synthetic_seed} tickers={data.synthetic_tickers} "
        f"{data.synthetic_start}..{data.synthetic_end}",
    )


def _source_files(data: DataSettings) -> list[Path]:
    root = data.vendor_dir if data.source_kind == "vendor" else data.tidy_path
    if not root.exists():
        return []
    return sorted(root.iterdir()) if root.is_dir() else [root]


def source_fingerprint(data: DataSettings) -> str:
    """Changes whenever the configured source does: names, sizes and modification times of
    the vendor files or the tidy table; the generator's settings for the synthetic market."""
    if data.source_kind == "synthetic":
        stamp = data.model_dump_json()
    else:
        stamp = "|".join(
            f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in _source_files(data)
        )
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


def source_file_count(data: DataSettings) -> int:
    """Files of the configured source (0 for the synthetic market)."""
    return 0 if data.source_kind == "synthetic" else len(_source_files(data))

"""A small real vendor folder (three tickers, the last 60 sessions of 2019) and helpers to run
the ingest step into a warehouse, plant one fault, and compare table contents byte for byte."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import shutil
from pathlib import Path

import polars as pl
import pytest

from kronos_pipeline.data.ingest_step import plan_ingest, publish, read_prior
from kronos_pipeline.data.sources import load_source
from kronos_pipeline.settings import load_settings
from kronos_pipeline.warehouse import Warehouse
from kronos_pipeline_tests.data.conftest import shared_vendor_dir, vendor_file

TICKERS = ("AAPL", "KO", "XOM")
KEEP_ROWS = 60
START, END = dt.date(2019, 10, 4), dt.date(2019, 12, 31)
TABLES = (
    "raw_bars",
    "bars_quarantine",
    "ingest_files",
    "ticker_history",
    "sector_history",
    "ticker_sectors",
    "source_tickers",
    "warehouse_source",
)


def read_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


@pytest.fixture
def vendor(tmp_path: Path) -> Path:
    """A fresh copy per test: the header and the newest KEEP_ROWS rows of each ticker."""
    folder = tmp_path / "vendor"
    folder.mkdir()
    for ticker in TICKERS:
        lines = read_lines(vendor_file(ticker))
        write_lines(folder / vendor_file(ticker).name, [lines[0], *lines[-KEEP_ROWS:]])
    shutil.copy(shared_vendor_dir() / "constituents.csv", folder)
    return folder


def ingest(folder: Path, db: Warehouse, start: dt.date = START, end: dt.date = END) -> None:
    """The ingest step of raw_bars: plan, validate in memory, publish (or raise)."""
    settings = load_settings(environ={"KRONOS_DATA__VENDOR_DIR": str(folder)})
    source = load_source(settings.data)
    publish(db, plan_ingest(source, read_prior(db), start, end))


def digest(db: Warehouse) -> dict[str, str]:
    """sha256 of every ingest table's content, rows in a canonical order, as CSV."""
    out = {}
    for table in TABLES:
        frame = db.read_table(table)
        frame = frame.sort(frame.columns, nulls_last=True)
        out[table] = hashlib.sha256(frame.write_csv().encode()).hexdigest()
    return out


@pytest.fixture
def clean(vendor: Path, tmp_path: Path) -> tuple[Warehouse, dict[str, str]]:
    """A warehouse after a clean ingest of the folder, and its digest."""
    db = Warehouse(tmp_path / "lake")
    ingest(vendor, db)
    return db, digest(db)


def clean_digest(vendor: Path, tmp_path: Path) -> dict[str, str]:
    """The digest of a clean run into a brand-new warehouse."""
    db = Warehouse(tmp_path / "reference_lake")
    ingest(vendor, db)
    return digest(db)


def bars(db: Warehouse) -> pl.DataFrame:
    return db.read_table("raw_bars").sort("ticker", "date")

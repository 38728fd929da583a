"""Shared fixtures of the data tests: the real vendor sample beside the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kronos_pipeline.data.ingest import IngestResult, read_vendor_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The real sample lies beside the repository (CI clones next to ../shared); never copied in.
SHARED_VENDOR_DIR = REPO_ROOT.parent / "shared" / "data" / "sp500_daily"
#: AAPL has 2-for-1 splits (2000, 2005), a 7-for-1 split (2014-06-09) and dividends; the others
#: add splits of their own (MSFT 2003, KO 2012, NVDA four, one 3-for-2) and steady dividends.
SLICE_TICKERS = ("AAPL", "MSFT", "KO", "NVDA", "XOM")


def shared_vendor_dir() -> Path:
    """The shared data folder; a missing folder is a failure, not a skip."""
    if not SHARED_VENDOR_DIR.is_dir():
        pytest.fail(
            f"real data not found at {SHARED_VENDOR_DIR}: the tests expect "
            "../shared/data/sp500_daily beside the repository root"
        )
    return SHARED_VENDOR_DIR


def vendor_file(ticker: str) -> Path:
    """The vendor file of ``ticker`` in the shared folder."""
    matches = sorted(shared_vendor_dir().glob(f"DA-{ticker}-T-*.csv.gz"))
    assert len(matches) == 1, f"expected one vendor file for {ticker}, found {matches}"
    return matches[0]


@pytest.fixture(scope="session")
def full_vendor_ingest() -> IngestResult:
    """Every file of the shared folder read once (about 10-20 s)."""
    return read_vendor_dir(shared_vendor_dir())


@pytest.fixture(scope="session")
def vendor_slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary vendor folder holding copies of the :data:`SLICE_TICKERS` files only."""
    folder = tmp_path_factory.mktemp("vendor_slice")
    for ticker in SLICE_TICKERS:
        shutil.copy(vendor_file(ticker), folder)
    return folder

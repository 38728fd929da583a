"""Fault injection on the ingest step: each test plants one fault in a small real vendor folder
and asserts the outcome (a clear error, or a quarantined row), that nothing is lost or
duplicated, and that the rerun after the fault is gone is byte-identical to a clean run."""

from __future__ import annotations

import gzip
import shutil

import polars as pl
import pytest

from kronos_pipeline.data.ingest_step import BlockingCheckFailed
from kronos_pipeline_tests.faults.conftest import (
    bars,
    clean_digest,
    digest,
    ingest,
    read_lines,
    write_lines,
)


def _file(vendor, ticker):
    return next(vendor.glob(f"DA-{ticker}-T-*.csv.gz"))


def _refused_then_rerun(vendor, clean, tmp_path, plant, match):
    """Plant a fault, see the ingest refuse with ``match`` and write nothing, undo, rerun."""
    db, before = clean
    undo = plant()
    with pytest.raises(BlockingCheckFailed, match=match):
        ingest(vendor, db)
    assert digest(db) == before  # nothing of the failed run is visible
    undo()
    ingest(vendor, db)
    assert digest(db) == before == clean_digest(vendor, tmp_path)


def _rewrite(path, edit):
    original = path.read_bytes()

    def undo():
        path.write_bytes(original)

    write_lines(path, edit(read_lines(path)))
    return undo


def test_renamed_column_is_refused_naming_file_and_columns(vendor, clean, tmp_path):
    path = _file(vendor, "AAPL")
    _refused_then_rerun(
        vendor,
        clean,
        tmp_path,
        lambda: _rewrite(path, lambda ls: [ls[0].replace(",close,", ",closing,"), *ls[1:]]),
        rf"{path.name}: header differs from the declared vendor schema: missing \['close'\]; "
        r"unexpected \['closing'\]",
    )


def test_extra_column_is_refused_naming_it(vendor, clean, tmp_path):
    path = _file(vendor, "KO")
    _refused_then_rerun(
        vendor,
        clean,
        tmp_path,
        lambda: _rewrite(path, lambda ls: [ls[0] + ",vwap", *[x + ",1.0" for x in ls[1:]]]),
        rf"{path.name}: header differs .*unexpected \['vwap'\]",
    )


def test_truncated_gzip_is_refused_as_unreadable(vendor, clean, tmp_path):
    path = _file(vendor, "XOM")
    original = path.read_bytes()

    def plant():
        path.write_bytes(original[: len(original) // 2])
        return lambda: path.write_bytes(original)

    _refused_then_rerun(
        vendor, clean, tmp_path, plant, rf"{path.name}: unreadable file: .*fetch the file again"
    )


def test_file_with_a_header_only_is_refused(vendor, clean, tmp_path):
    path = _file(vendor, "KO")
    _refused_then_rerun(
        vendor,
        clean,
        tmp_path,
        lambda: _rewrite(path, lambda ls: ls[:1]),
        rf"{path.name}: the file holds a header and no rows",
    )


def test_ticker_that_vanishes_mid_history_fails_naming_the_missing_sessions(
    vendor, clean, tmp_path
):
    path = _file(vendor, "KO")
    # The vendor file stops ten sessions early (rows are oldest first).
    _refused_then_rerun(
        vendor,
        clean,
        tmp_path,
        lambda: _rewrite(path, lambda ls: ls[:-10]),
        r"bars_complete: .*10 missing: KO 2019-12-17\.\.2019-12-31 \(10 sessions\)",
    )


def test_duplicated_date_across_two_files_keeps_exactly_one_copy(vendor, clean, tmp_path):
    db, before = clean
    first = _file(vendor, "AAPL")
    lines = read_lines(first)
    dup_line = 31  # line number in the first file (header is line 1)
    dup_date = lines[dup_line - 1].split(",")[0]
    # A second AAPL file sorting after the first, holding that date on its line 2.
    second = vendor / "DA-AAPL-T-2020-01-31.csv.gz"
    write_lines(second, [lines[0], lines[dup_line - 1]])
    ingest(vendor, db)
    got = bars(db)
    assert got.filter(pl.col("ticker") == "AAPL").height == 60
    kept = got.filter((pl.col("ticker") == "AAPL") & (pl.col("date").cast(pl.String) == dup_date))
    assert kept.select("source_file", "line").rows() == [(first.name, dup_line)]
    quarantine = db.read_table("bars_quarantine")
    assert quarantine.select("source_file", "line").rows() == [(second.name, 2)]
    assert quarantine["reason"][0] == (
        f"duplicate date {dup_date} for AAPL (first at {first.name} line {dup_line})"
    )
    files = db.read_table("ingest_files")
    assert (files["lines"] == files["accepted"] + files["quarantined"]).all()
    # raw_bars is the clean one; removing the extra file restores every table.
    assert digest(db)["raw_bars"] == before["raw_bars"]
    second.unlink()
    ingest(vendor, db)
    assert digest(db) == before


def test_negative_price_and_high_below_low_are_quarantined_with_reasons(vendor, clean, tmp_path):
    db, before = clean
    path = _file(vendor, "XOM")

    def edit(ls):
        out = list(ls)
        f = out[5].split(",")
        f[1] = "-" + f[1]  # negative open
        out[5] = ",".join(f)
        g = out[9].split(",")
        g[2], g[3] = g[3], g[2]  # high below low
        out[9] = ",".join(g)
        return out

    undo = _rewrite(path, edit)
    ingest(vendor, db)  # rejected rows are quarantined; the dates stay accounted for
    reasons = db.read_table("bars_quarantine").sort("line")["reason"].to_list()
    assert reasons[0].startswith("non-positive open: -")
    assert reasons[1].startswith("high/low inconsistent with open/close")
    assert bars(db).height == 3 * 60 - 2
    undo()
    ingest(vendor, db)
    assert digest(db) == before


def test_folder_without_constituents_keeps_the_last_known_sectors_and_says_so(
    vendor, clean, tmp_path
):
    from kronos_pipeline.data.ingest_step import plan_ingest, read_prior
    from kronos_pipeline.data.sources import load_source
    from kronos_pipeline.settings import load_settings

    db, before = clean
    saved = tmp_path / "constituents.csv"
    shutil.move(vendor / "constituents.csv", saved)
    settings = load_settings(environ={"KRONOS_DATA__VENDOR_DIR": str(vendor)})
    plan = plan_ingest(load_source(settings.data), read_prior(db), *sorted(
        db.read("select min(date) a, max(date) b from raw_bars").row(0)
    ))  # fmt: skip
    check = next(c for c in plan.checks if c.name == "sectors_known")
    assert not check.passed and not check.blocking
    assert "kept the last known mapping (3 tickers)" in check.description
    ingest(vendor, db)
    assert digest(db) == before  # sector_history and ticker_sectors unchanged, not emptied
    assert db.read_table("ticker_sectors").height == 3
    shutil.move(saved, vendor / "constituents.csv")
    ingest(vendor, db)
    assert digest(db) == before


def test_not_vendor_data_is_quarantined_whole_and_counted(vendor, clean, tmp_path):
    db, before = clean
    # The real BF.B defect: an API error message instead of CSV; warned on, not blocking.
    bad = vendor / "DA-BF.B-T-2021-04-21.csv.gz"
    bad.write_bytes(gzip.compress(b"{\nError Message\n}\n", mtime=0))
    ingest(vendor, db)
    quarantine = db.read_table("bars_quarantine")
    assert quarantine.height == 3 and quarantine["reason"][0].startswith("not a vendor CSV file")
    assert digest(db)["raw_bars"] == before["raw_bars"]

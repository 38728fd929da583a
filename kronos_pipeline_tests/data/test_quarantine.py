"""Every rejected line lands in the quarantine with a reason naming what was wrong and where;
per file, lines read = accepted + quarantined."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import polars as pl
import pytest

from kronos_pipeline.data.ingest import VENDOR_HEADER, IngestResult, read_vendor_dir, validate_lines
from kronos_pipeline.data.synthetic import synthetic_market

from .conftest import shared_vendor_dir

BAD_FILE = "DA-BF.B-T-2021-04-21.csv.gz"

# --- the real sample (figures from its README) -----------------------------------------------


def test_api_error_file_is_quarantined_whole_as_not_vendor_csv(full_vendor_ingest: IngestResult):
    q = full_vendor_ingest.quarantine.filter(pl.col("source_file") == BAD_FILE)
    assert q["line"].to_list() == [1, 2, 3]
    assert q["raw"].to_list() == ["{", "Error Message", "}"]
    assert q["ticker"].unique().to_list() == ["BF.B"]
    assert q["date"].null_count() == 3
    assert all(r.startswith("not a vendor CSV file: header is '{'") for r in q["reason"])
    # It is the only defect the sample holds that the quarantine rules reject.
    assert full_vendor_ingest.quarantine.height == 3
    files = full_vendor_ingest.files.filter(pl.col("source_file") == BAD_FILE)
    assert files.select("lines", "accepted", "quarantined").row(0) == (3, 0, 3)


def test_real_sample_accepts_the_documented_row_and_ticker_counts(full_vendor_ingest):
    bars = full_vendor_ingest.bars
    assert bars.height == 2_237_909
    assert bars["ticker"].n_unique() == 501
    assert int((bars["split"] != 1.0).sum()) == 461
    assert bars.filter(pl.col("split") != 1.0)["ticker"].n_unique() == 267
    assert int((bars["dividend"] > 0).sum()) == 25_776
    assert bars.select("ticker", "date").is_duplicated().sum() == 0
    assert bars["date"].min() == dt.date(1999, 11, 1)
    assert bars["date"].max() == dt.date(2019, 12, 31)


def test_zero_volume_days_are_kept_not_quarantined(full_vendor_ingest):
    assert int((full_vendor_ingest.bars["volume"] == 0).sum()) == 185
    assert full_vendor_ingest.quarantine["source_file"].unique().to_list() == [BAD_FILE]


def test_every_real_file_reconciles_lines_with_accepted_plus_quarantined(full_vendor_ingest):
    files = full_vendor_ingest.files
    vendor_files = sorted(p for p in shared_vendor_dir().iterdir() if p.name.endswith(".csv.gz"))
    assert files["source_file"].to_list() == [p.name for p in vendor_files]
    assert files.height == 502
    assert files.filter(pl.col("lines") != pl.col("accepted") + pl.col("quarantined")).height == 0
    # Count the lines independently of the reader: data lines exclude the header.
    counted = {}
    for path in vendor_files:
        text = gzip.decompress(path.read_bytes()).decode()
        lines = text.splitlines()
        counted[path.name] = len(lines) - 1 if lines[0] == VENDOR_HEADER else len(lines)
    assert dict(zip(files["source_file"], files["lines"], strict=True)) == counted
    assert int(files["accepted"].sum()) == 2_237_909
    assert int(files["quarantined"].sum()) == 3


# --- synthetic planted defects ---------------------------------------------------------------

PLANTED_REASONS = {
    "non_numeric_close": "non-numeric close: 'n/a'",
    "high_below_low": "high/low inconsistent with open/close:",
    "negative_volume": "negative volume: -100",
    "bad_timestamp": "unparseable timestamp '2013-02-30'",
    "duplicate_date": "duplicate date ",
}


@pytest.mark.parametrize("seed", [7, 23])
def test_synthetic_planted_defects_each_land_in_quarantine_with_their_reason(seed):
    market = synthetic_market(
        n_tickers=30, start=dt.date(2012, 1, 3), end=dt.date(2013, 12, 31), seed=seed
    )
    result = validate_lines(market.lines)
    planted = market.planted_defects.sort("line")
    quarantine = result.quarantine.sort("line")
    assert quarantine["line"].to_list() == planted["line"].to_list()
    assert quarantine["ticker"].to_list() == planted["ticker"].to_list()
    for reason, kind in zip(quarantine["reason"], planted["kind"], strict=True):
        assert reason.startswith(PLANTED_REASONS[kind]), (kind, reason)
    assert result.bars.height + quarantine.height == market.lines.height
    assert result.files.select("lines", "accepted", "quarantined").row(0) == (
        market.lines.height,
        result.bars.height,
        5,
    )


# --- hand-made bad lines ---------------------------------------------------------------------

GOOD = "2019-01-02,10.0,11.0,9.5,10.5,10.5,1000,0.0,1.0"
HAND_LINES = [
    GOOD,  # line 2
    "2019-01-03,10.0,11.0,9.5,abc,10.5,1000,0.0,1.0",  # 3: non-numeric close
    "2019-01-04,10.0,11.0,9.5,10.5,10.5,-5,0.0,1.0",  # 4: negative volume
    "2019-01-07,10.0,9.0,9.5,10.5,10.5,1000,0.0,1.0",  # 5: high below low
    "2019-01-02,10.1,11.1,9.6,10.6,10.6,1001,0.0,1.0",  # 6: duplicate of line 2
    "2019-01-08,10.0,11.0,9.5,10.5,10.5,1000,0.0",  # 7: eight fields
    "2019-13-09,10.0,11.0,9.5,10.5,10.5,1000,0.0,1.0",  # 8: bad month
    "2019-01-10,10.0,11.0,9.5,10.5,10.5,1000,-0.2,1.0",  # 9: negative dividend
    "2019-01-11,10.0,11.0,9.5,10.5,10.5,1000,0.0,0",  # 10: zero split
    "2019-01-14,0,11.0,9.5,10.5,10.5,1000,0.0,1.0",  # 11: zero open
    "2019-01-15,10.0,11.0,9.5,10.5,10.5,0,0.0,1.0",  # 12: zero volume is valid
]
HAND_FILE = "DA-TEST-T-2019-12-31.csv"
EXPECTED_REASONS = {
    3: "non-numeric close: 'abc'",
    4: "negative volume: -5.0",
    5: "high/low inconsistent with open/close: o=10.0 h=9.0 l=9.5 c=10.5",
    6: f"duplicate date 2019-01-02 for TEST (first at {HAND_FILE} line 2)",
    7: "expected 9 fields, got 8",
    8: "unparseable timestamp '2019-13-09'",
    9: "negative dividend_amount: -0.2",
    10: "non-positive split_coefficient: 0.0",
    11: "non-positive open: 0.0",
}


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    folder: Path = tmp_path_factory.mktemp("hand_vendor")
    (folder / HAND_FILE).write_text("\n".join([VENDOR_HEADER, *HAND_LINES]) + "\n")
    good_gz = "\n".join([VENDOR_HEADER, GOOD]) + "\n"
    (folder / "DA-GOOD-T-2019-12-31.csv.gz").write_bytes(gzip.compress(good_gz.encode()))
    # A gzip header followed by garbage: the file cannot be decompressed.
    (folder / "DA-CORRUPT-T-2019-12-31.csv.gz").write_bytes(
        gzip.compress(good_gz.encode())[:12] + b"not deflate data"
    )
    (folder / "constituents.csv").write_text("Symbol,Name,Sector\nTEST,Test,Energy\n")
    return read_vendor_dir(folder)


def test_each_hand_made_bad_line_gets_a_reason_naming_column_and_value(hand_made):
    q = hand_made.quarantine.filter(pl.col("source_file") == HAND_FILE)
    assert dict(zip(q["line"], q["reason"], strict=True)) == EXPECTED_REASONS
    assert q["ticker"].unique().to_list() == ["TEST"]
    # raw holds the line as written, so the reject can be found in the file by eye
    assert dict(zip(q["line"], q["raw"], strict=True)) == {
        n: HAND_LINES[n - 2] for n in EXPECTED_REASONS
    }


def test_hand_made_good_lines_are_accepted_with_file_and_line(hand_made):
    bars = hand_made.bars.filter(pl.col("ticker") == "TEST")
    assert bars.select("date", "line", "volume").rows() == [
        (dt.date(2019, 1, 2), 2, 1000.0),
        (dt.date(2019, 1, 15), 12, 0.0),
    ]
    assert bars["source_file"].unique().to_list() == [HAND_FILE]


def test_corrupt_gzip_file_is_quarantined_as_unreadable(hand_made):
    q = hand_made.quarantine.filter(pl.col("source_file") == "DA-CORRUPT-T-2019-12-31.csv.gz")
    assert q.height == 1
    assert q["ticker"][0] == "CORRUPT"
    assert q["reason"][0].startswith("unreadable file: ")
    assert q["line"][0] is None


def test_hand_made_files_reconcile_and_constituents_are_not_read_as_bars(hand_made):
    counts = {
        row["source_file"]: (row["lines"], row["accepted"], row["quarantined"])
        for row in hand_made.files.iter_rows(named=True)
    }
    assert counts == {
        "DA-CORRUPT-T-2019-12-31.csv.gz": (1, 0, 1),
        "DA-GOOD-T-2019-12-31.csv.gz": (1, 1, 0),
        HAND_FILE: (11, 2, 9),
    }


def test_fields_split_like_pythons_split_on_commas():
    """The vendor line splitter (polars ``split_exact``) against ``str.split(",")``: the field
    count, the first nine fields stripped, nulls where a short line has none."""
    from kronos_pipeline.data.ingest import LINES_SCHEMA, VENDOR_COLUMNS, _split_fields

    raw = [
        "2019-10-30,1.0,2.0,0.5,1.5,1.5,100,0.0,1.0",  # a vendor row
        "",  # an empty line
        "2019-10-30",  # one field
        "a,b",
        " 2019-10-30 , 1 ,\t2\t,3,4,5,6,7,8",  # padded fields
        "1,2,3,4,5,6,7,8,9,10,11",  # too many
        ",,,,,,,,",  # nine empty fields
        ",,,,,,,,,",  # ten
    ]
    lines = pl.DataFrame(
        {"raw": raw, "line": range(2, len(raw) + 2), "source_file": "f.csv", "ticker": "T"}
    )
    got = _split_fields(lines)
    assert got.columns == list(LINES_SCHEMA)
    for row, text in zip(got.iter_rows(named=True), raw, strict=True):
        parts = text.split(",")
        assert row["n_fields"] == len(parts), text
        expected = [p.strip() for p in parts[: len(VENDOR_COLUMNS)]]
        expected += [None] * (len(VENDOR_COLUMNS) - len(expected))
        assert [row[c] for c in VENDOR_COLUMNS] == expected, text

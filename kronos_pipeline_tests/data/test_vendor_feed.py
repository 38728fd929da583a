"""The simulated vendor feed writes folders that the pipeline's own reader takes for the real
vendor's: the same rows up to the cut, one session more per delivery, planted splits and
listings as the vendor would show them."""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from pathlib import Path

import polars as pl
import pytest

from kronos_pipeline.data.ingest import read_vendor_dir
from kronos_pipeline.data.pit import adjustment_agreement, prices_pit
from kronos_pipeline.data.sources import load_source, read_constituents
from kronos_pipeline.settings import DataSettings
from kronos_pipeline_tests.vendor_feed import (
    SHARED_VENDOR_DIR,
    VendorFeed,
    VendorFeedError,
    session_before,
)

TICKERS = ["AAPL", "KO", "XOM"]
START, END = dt.date(2019, 9, 3), dt.date(2019, 10, 29)
# The month boundary a nightly run crosses: Wed 10-30, Thu 10-31, Fri 11-01, Mon 11-04.
NEXT = [dt.date(2019, 10, 30), dt.date(2019, 10, 31), dt.date(2019, 11, 1), dt.date(2019, 11, 4)]
VALUE_COLUMNS = ["open", "high", "low", "close", "adjusted_close", "volume", "dividend", "split"]


@pytest.fixture(scope="module")
def source_bars(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """The original files of TICKERS, read by the pipeline's reader (not the whole folder)."""
    folder = tmp_path_factory.mktemp("originals")
    for ticker in TICKERS:
        (original,) = SHARED_VENDOR_DIR.glob(f"DA-{ticker}-T-*.csv.gz")
        shutil.copy(original, folder)
    return read_vendor_dir(folder).bars


@pytest.fixture
def feed(tmp_path: Path) -> VendorFeed:
    return VendorFeed.create(tmp_path / "vendor", tickers=TICKERS, start=START, end=END)


def _values(bars: pl.DataFrame) -> pl.DataFrame:
    return bars.select("ticker", "date", *VALUE_COLUMNS, "source_file").sort("ticker", "date")


def _text(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode()


def test_copy_holds_the_source_rows_from_start_to_end_in_the_vendor_format(
    feed: VendorFeed, source_bars: pl.DataFrame
) -> None:
    copied = feed.read()
    assert copied.quarantine.height == 0
    assert copied.files["status"].to_list() == ["ok"] * len(TICKERS)
    expected = source_bars.filter(pl.col("date").is_between(START, END))
    assert _values(copied.bars).equals(_values(expected))
    for ticker in TICKERS:
        (original,) = SHARED_VENDOR_DIR.glob(f"DA-{ticker}-T-*.csv.gz")
        assert feed.path(ticker).name == original.name
        source_lines, copy_lines = (
            _text(original).splitlines(),
            _text(feed.path(ticker)).splitlines(),
        )
        assert copy_lines[0] == source_lines[0]  # the header, byte for byte
        first = source_lines.index(next(r for r in source_lines if r.startswith("2019-09-03")))
        assert copy_lines[1:] == source_lines[first : first + len(copy_lines) - 1]
        assert copy_lines[-1].startswith("2019-10-29,")


def test_constituents_hold_only_the_feed_tickers_with_their_original_sectors(
    feed: VendorFeed,
) -> None:
    source = load_source(DataSettings(vendor_dir=feed.target_dir))
    original = read_constituents(SHARED_VENDOR_DIR / "constituents.csv")
    assert source.sectors is not None
    assert source.sectors.sort("ticker").equals(
        original.filter(pl.col("ticker").is_in(TICKERS)).sort("ticker")
    )
    header = (feed.target_dir / "constituents.csv").read_text().splitlines()[0]
    assert header == (SHARED_VENDOR_DIR / "constituents.csv").read_text().splitlines()[0]


def test_deliver_appends_exactly_the_real_rows_of_that_day(
    feed: VendorFeed, source_bars: pl.DataFrame
) -> None:
    before = feed.read().bars
    texts = {t: _text(feed.path(t)) for t in TICKERS}
    delivery = feed.deliver(NEXT[0])
    after = feed.read().bars
    assert sorted(delivery.rows) == sorted(TICKERS) and delivery.missing == ()
    assert feed.last_day == NEXT[0]
    assert after.group_by("ticker").agg(pl.col("date").max())["date"].to_list() == [NEXT[0]] * 3
    # Nothing already delivered changed, not even its line number.
    assert after.filter(pl.col("date") <= END).sort("ticker", "date").equals(before)
    for ticker in TICKERS:
        assert _text(feed.path(ticker)) == texts[ticker] + delivery.rows[ticker] + "\n"
    assert _values(after.filter(pl.col("date") == NEXT[0])).equals(
        _values(source_bars.filter(pl.col("date") == NEXT[0]))
    )
    assert delivery.frame()["close"].to_list() == (
        source_bars.filter(pl.col("date") == NEXT[0]).sort("ticker")["close"].to_list()
    )
    assert not [p.name for p in feed.target_dir.iterdir() if p.name.startswith(".")]


def test_sessions_after_are_the_sources_next_trading_days(feed: VendorFeed) -> None:
    assert feed.sessions_after(END, 4) == NEXT
    with pytest.raises(VendorFeedError, match="only 0 source sessions"):
        feed.sessions_after(dt.date(2019, 12, 31), 1)


def test_deliver_refuses_a_skipped_session_or_a_past_day(feed: VendorFeed) -> None:
    with pytest.raises(VendorFeedError, match="would skip source sessions"):
        feed.deliver(NEXT[1])
    with pytest.raises(VendorFeedError, match="not after"):
        feed.deliver(END)
    with pytest.raises(VendorFeedError, match="not a session"):
        feed.deliver(dt.date(2019, 11, 2), allow_gap=True)  # a Saturday
    feed.deliver(NEXT[1], allow_gap=True)
    assert NEXT[0] not in feed.read().bars["date"].to_list()


def test_planted_split_divides_prices_by_four_on_its_day_and_every_later_one(
    feed: VendorFeed, source_bars: pl.DataFrame
) -> None:
    feed.deliver(NEXT[0])
    split_day = feed.deliver(NEXT[1], split={"AAPL": 4.0})
    feed.deliver(NEXT[2])
    assert split_day.splits == {"AAPL": 4.0} and feed.planted_factor("AAPL") == 4.0
    bars = feed.read().bars
    real = source_bars.filter(pl.col("date").is_in(NEXT[:3])).sort("ticker", "date")
    got = bars.filter(pl.col("date").is_in(NEXT[:3])).sort("ticker", "date")
    aapl_got, aapl_real = got.filter(ticker="AAPL"), real.filter(ticker="AAPL")
    assert aapl_got["split"].to_list() == [1.0, 4.0, 1.0]
    scale = pl.Series([1.0, 4.0, 4.0])
    for price in ("open", "high", "low", "close"):
        assert (aapl_got[price] * scale - aapl_real[price]).abs().max() < 1e-9
    assert (aapl_got["volume"] - aapl_real["volume"] * scale).abs().max() == 0
    assert aapl_got["adjusted_close"].equals(aapl_real["adjusted_close"])
    others = pl.col("ticker") != "AAPL"
    assert _values(got.filter(others)).equals(_values(real.filter(others)))
    # The pipeline's view: one 4-for-1 step in the split factor, total returns unchanged, and
    # the cross-check against the vendor's adjusted_close agrees on every checked day.
    prices = prices_pit(bars).filter(ticker="AAPL")
    real_prices = prices_pit(source_bars.filter(pl.col("date").is_between(START, NEXT[2])))
    assert prices.filter(date=NEXT[2])["split_factor"].item() == 4.0
    assert (
        prices["total_return"] - real_prices.filter(ticker="AAPL")["total_return"]
    ).abs().max() < 1e-12
    agreement = adjustment_agreement(prices)
    real_agreement = adjustment_agreement(real_prices.filter(ticker="AAPL"))
    # The split day itself is a corporate action, left out of the check; every other day agrees.
    assert agreement["checked"] == real_agreement["checked"] - 1
    assert agreement["share"] == real_agreement["share"] == 1.0
    on_split = prices.filter(date=NEXT[1])
    assert abs(on_split["total_return"].item() - on_split["vendor_return"].item()) < 1e-6


def test_a_listed_ticker_appears_with_its_first_bar_on_the_listing_day(
    feed: VendorFeed, source_bars: pl.DataFrame
) -> None:
    feed.list_new_ticker("NEWCO", NEXT[1], from_source_ticker="MSFT")
    first = feed.deliver(NEXT[0])
    assert "NEWCO" not in feed.tickers and first.listed == ()
    assert not list(feed.target_dir.glob("DA-NEWCO-*"))
    listed = feed.deliver(NEXT[1])
    feed.deliver(NEXT[2])
    assert listed.listed == ("NEWCO",)
    assert feed.path("NEWCO").name == "DA-NEWCO-T-2019-12-31.csv.gz"
    source = load_source(DataSettings(vendor_dir=feed.target_dir))
    spans = source.ingest.ticker_spans().filter(ticker="NEWCO")
    assert spans.row(0) == ("NEWCO", NEXT[1], NEXT[2], 2)
    assert source.sectors is not None
    assert source.sectors.filter(ticker="NEWCO")["sector"].to_list() == ["Information Technology"]
    msft = _text(next(SHARED_VENDOR_DIR.glob("DA-MSFT-T-*.csv.gz"))).splitlines()
    newco = _text(feed.path("NEWCO")).splitlines()
    assert newco[1:] == [r for r in msft if r.startswith(("2019-10-31", "2019-11-01"))]


def test_a_listing_before_the_last_day_is_written_at_once(feed: VendorFeed) -> None:
    feed.list_new_ticker("NEWCO", dt.date(2019, 10, 28))
    spans = feed.read().ticker_spans().filter(ticker="NEWCO")
    assert spans.row(0) == ("NEWCO", dt.date(2019, 10, 28), END, 2)
    assert feed.path("NEWCO").name == "DA-NEWCO-T-2019-12-31.csv.gz"  # from "A", the first name
    with pytest.raises(VendorFeedError, match="real ticker"):
        feed.list_new_ticker("MSFT", NEXT[0])


def test_a_delisted_ticker_gets_no_later_rows_and_is_declared(feed: VendorFeed) -> None:
    feed.delist("KO", NEXT[0])
    assert "KO" in feed.deliver(NEXT[0]).rows
    assert "KO" not in feed.deliver(NEXT[1]).rows
    source = load_source(DataSettings(vendor_dir=feed.target_dir))
    assert source.delistings.rows() == [("KO", NEXT[0])]
    assert source.ingest.ticker_spans().filter(ticker="KO")["last_date"].item() == NEXT[0]


def test_files_stay_gzip_like_the_originals_after_deliveries(feed: VendorFeed) -> None:
    feed.deliver(NEXT[0], split={"XOM": 2.0})
    for ticker in TICKERS:
        data = feed.path(ticker).read_bytes()
        assert data[:2] == b"\x1f\x8b"
        assert gzip.decompress(data).decode().endswith("\n")


def test_a_plain_newest_first_source_keeps_its_format(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    (original,) = SHARED_VENDOR_DIR.glob("DA-KO-T-*.csv.gz")
    header, *rows = _text(original).splitlines()
    plain = source_dir / original.name.removesuffix(".gz")
    plain.write_text("\r\n".join([header, *reversed(rows)]) + "\r\n")
    shutil.copy(SHARED_VENDOR_DIR / "constituents.csv", source_dir)
    feed = VendorFeed.create(
        tmp_path / "vendor", ["KO"], end=END, start=START, source_dir=source_dir
    )
    feed.deliver(NEXT[0])
    lines = feed.path("KO").read_bytes().decode().split("\r\n")
    assert feed.path("KO").name == plain.name
    assert lines[0] == header and lines[1].startswith("2019-10-30,")
    assert lines[-2].startswith("2019-09-03,") and lines[-1] == ""
    bars = read_vendor_dir(feed.target_dir).bars
    assert bars["date"].max() == NEXT[0] and bars["date"].min() == START


def test_session_before_gives_a_start_with_that_much_history(tmp_path: Path) -> None:
    start = session_before(END, 300)
    feed = VendorFeed.create(tmp_path / "vendor", ["AAPL"], end=END, start=start)
    assert feed.read().bars.height == 301

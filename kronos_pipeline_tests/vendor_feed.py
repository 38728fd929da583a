"""A simulated vendor that delivers real trading days one at a time, for nightly-run tests.

:meth:`VendorFeed.create` copies a few tickers of the real shared vendor folder into a test
folder, cut at ``end``, in the vendor's own format: the same file names
(``DA-<TICKER>-T-<snapshot>.csv.gz``), header, column order, row order, line endings and gzip
compression as each original, plus a ``constituents.csv`` restricted to those tickers (same
columns as the original). :meth:`VendorFeed.deliver` then appends the real rows of the next
session, optionally with a planted split; :meth:`VendorFeed.list_new_ticker` plants a new
listing and :meth:`VendorFeed.delist` a delisting.

Every file is rewritten whole from the feed's memory of what it delivered (a vendor re-sends the
full file) under a temporary name the vendor reader ignores (it ends in neither ``.csv`` nor
``.csv.gz``), then renamed over the old one, so a reader never sees half a file. File names never
change: the pipeline records which file each bar came from.

A planted ``k``-for-1 split on day d divides that ticker's open/high/low/close and
dividend_amount by ``k`` and multiplies its volume by ``k`` on d and every later delivered day
(cumulatively, if several are planted). ``adjusted_close`` is left as the vendor's: it is a
back-adjusted series, and a re-download after the split would only divide the whole series by
``k``, which changes none of its returns, so the pipeline's cross-check (our total return vs the
vendor's adjusted_close return, ``kronos_pipeline.data.pit.adjustment_agreement``) agrees on the
split day and after exactly as on the real rows, and no earlier row is restated.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kronos_pipeline.data.ingest import (
    VENDOR_HEADER,
    IngestResult,
    read_vendor_dir,
    ticker_from_filename,
)
from kronos_pipeline.data.sources import DELISTINGS_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real vendor sample beside the repository (``../shared/data/sp500_daily``).
SHARED_VENDOR_DIR = REPO_ROOT.parent / "shared" / "data" / "sp500_daily"
CONSTITUENTS_FILE = "constituents.csv"

#: Twelve liquid names with full history 1999-11-01..2019-12-31, no missing session, no
#: zero-volume day, and no split or dividend between 2019-10-18 and 2019-11-05.
LIQUID_TICKERS = (
    "AAPL",
    "MSFT",
    "JPM",
    "JNJ",
    "XOM",
    "PG",
    "KO",
    "WMT",
    "INTC",
    "CSCO",
    "PFE",
    "HD",
)

# Vendor columns by position (the layout of ingest.VENDOR_COLUMNS).
_OPEN, _HIGH, _LOW, _CLOSE, _ADJ, _VOLUME, _DIVIDEND, _SPLIT = range(1, 9)


class VendorFeedError(ValueError):
    """A feed request that the source or the feed's state cannot satisfy."""


@dataclass(frozen=True)
class _VendorFile:
    """One source file: its name, format and data rows (raw text, in file order)."""

    name: str
    gzipped: bool
    header: str
    newline: str
    newest_first: bool
    rows: tuple[str, ...]
    dates: tuple[dt.date, ...]

    def row_on(self, day: dt.date) -> str | None:
        try:
            return self.rows[self.dates.index(day)]
        except ValueError:
            return None

    def rows_between(self, start: dt.date | None, end: dt.date) -> list[str]:
        """Rows dated in [start, end] (start None: from the first), in the file's order."""
        return [
            r
            for r, d in zip(self.rows, self.dates, strict=True)
            if d <= end and (start is None or d >= start)
        ]


def _read_vendor_file(path: Path) -> _VendorFile:
    data = path.read_bytes()
    gzipped = path.name.endswith(".gz")
    text = (gzip.decompress(data) if gzipped else data).decode("utf-8")
    lines = text.splitlines()
    if not lines or lines[0].strip().lstrip("\ufeff") != VENDOR_HEADER:
        raise VendorFeedError(
            f"{path}: not a vendor CSV file (header {lines[0][:60] if lines else ''!r}, expected "
            f"{VENDOR_HEADER!r}); pick another ticker"
        )
    rows = tuple(line for line in lines[1:] if line.strip())
    try:
        dates = tuple(dt.date.fromisoformat(r.split(",", 1)[0]) for r in rows)
    except ValueError as exc:
        raise VendorFeedError(f"{path}: a row has no YYYY-MM-DD timestamp ({exc})") from exc
    newest_first = len(dates) > 1 and dates[0] > dates[-1]
    if list(dates) != sorted(dates, reverse=newest_first):
        raise VendorFeedError(f"{path}: rows are neither oldest- nor newest-first")
    return _VendorFile(
        name=path.name,
        gzipped=gzipped,
        header=lines[0],
        newline="\r\n" if "\r\n" in text else "\n",
        newest_first=newest_first,
        rows=rows,
        dates=dates,
    )


def _source_file(source_dir: Path, ticker: str) -> Path:
    matches = sorted(
        p
        for p in source_dir.glob(f"DA-{ticker}-T-*.csv*")
        if p.name.endswith((".csv", ".csv.gz")) and ticker_from_filename(p) == ticker
    )
    if len(matches) != 1:
        raise VendorFeedError(
            f"expected one vendor file for {ticker} in {source_dir}, found "
            f"{[p.name for p in matches]}"
        )
    return matches[0]


def _format_number(value: float, like: str) -> str:
    """``value`` written the vendor's way: an integer if ``like`` is one, else Python's shortest
    float repr (``72.4825``, ``4.0``), which is what the vendor's own fields look like."""
    if "." not in like and "e" not in like.lower():
        return str(round(value))
    return repr(float(value))


def _scaled_row(row: str, factor: float, planted: float) -> str:
    """A vendor row in share units after a cumulative planted split ``factor``; ``planted`` is
    the ratio of a split planted on this very row (1.0 when none), times the vendor's own."""
    if factor == 1.0 and planted == 1.0:
        return row
    fields = row.split(",")
    for i in (_OPEN, _HIGH, _LOW, _CLOSE, _DIVIDEND):
        fields[i] = _format_number(float(fields[i]) / factor, fields[i])
    fields[_VOLUME] = _format_number(float(fields[_VOLUME]) * factor, fields[_VOLUME])
    if planted != 1.0:
        fields[_SPLIT] = _format_number(float(fields[_SPLIT]) * planted, "1.0")
    return ",".join(fields)


@dataclass(frozen=True)
class Delivery:
    """What one :meth:`VendorFeed.deliver` call wrote.

    ``rows``: ticker -> the vendor line appended to its file (as written, planted split applied);
    ``missing``: tickers of the feed with no source row that day (nothing appended);
    ``splits``: the planted split ratios of that day; ``listed``: tickers whose first bar it is.
    """

    day: dt.date
    rows: dict[str, str]
    missing: tuple[str, ...] = ()
    splits: dict[str, float] = field(default_factory=dict)
    listed: tuple[str, ...] = ()

    def frame(self) -> pl.DataFrame:
        """The delivered rows as a typed frame: ticker plus the nine vendor columns."""
        text = VENDOR_HEADER + "\n" + "\n".join(self.rows.values()) + "\n"
        table = pl.read_csv(io.StringIO(text), try_parse_dates=True)
        return table.insert_column(0, pl.Series("ticker", list(self.rows), pl.String))


@dataclass
class _Listing:
    source_ticker: str
    first_day: dt.date
    name: str
    sector: str


@dataclass
class VendorFeed:
    """A vendor folder under test that grows one real session at a time (see the module doc)."""

    target_dir: Path
    source_dir: Path
    last_day: dt.date
    _sources: dict[str, _VendorFile]  # ticker -> the real file its rows come from
    _written: dict[str, list[str]]  # ticker -> data rows now in its target file, file order
    _constituents_header: list[str]
    _constituents: list[list[str]]  # rows of the target constituents.csv
    _factors: dict[str, float] = field(default_factory=dict)  # cumulative planted split
    _listings: dict[str, _Listing] = field(default_factory=dict)
    _delisted: dict[str, dt.date] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        target_dir: Path,
        tickers: list[str] | tuple[str, ...],
        end: dt.date,
        start: dt.date | None = None,
        source_dir: Path = SHARED_VENDOR_DIR,
    ) -> VendorFeed:
        """Copy ``tickers``' vendor files from ``source_dir`` into ``target_dir``, cut to rows
        dated in [``start``, ``end``] (``start`` None keeps all history), with a
        ``constituents.csv`` holding only those tickers.

        Features look back up to 252 sessions: keep ``start`` at least ~300 sessions before
        ``end`` (:func:`session_before` finds it) if the test computes them.
        """
        if not source_dir.is_dir():
            raise VendorFeedError(
                f"source vendor folder {source_dir} does not exist: the tests expect "
                "../shared/data/sp500_daily beside the repository root"
            )
        tickers = [t.upper() for t in tickers]
        if not tickers or len(set(tickers)) != len(tickers):
            raise VendorFeedError(f"tickers must be distinct and non-empty, got {tickers}")
        target_dir.mkdir(parents=True, exist_ok=True)
        sources = {t: _read_vendor_file(_source_file(source_dir, t)) for t in tickers}
        header, rows = _read_constituents(source_dir / CONSTITUENTS_FILE)
        symbol = _column(header, "symbol", "ticker")
        by_symbol = {r[symbol].upper(): r for r in rows}
        absent = [t for t in tickers if t not in by_symbol]
        if absent:
            raise VendorFeedError(f"{absent} not in {source_dir / CONSTITUENTS_FILE}")
        feed = cls(
            target_dir=target_dir,
            source_dir=source_dir,
            last_day=end,
            _sources=sources,
            _written={},
            _constituents_header=header,
            _constituents=[r for r in rows if r[symbol].upper() in tickers],
        )
        for ticker, source in sources.items():
            kept = source.rows_between(start, end)
            if not kept:
                raise VendorFeedError(
                    f"{ticker} has no source rows in [{start}, {end}] ({source.name})"
                )
            feed._written[ticker] = kept
            feed._write_file(ticker)
        feed._write_constituents()
        return feed

    @property
    def tickers(self) -> list[str]:
        """Tickers with a file in the folder, in creation/listing order."""
        return list(self._written)

    def path(self, ticker: str) -> Path:
        """The vendor file of ``ticker`` in the target folder."""
        return self.target_dir / self._file_name(ticker)

    def read(self) -> IngestResult:
        """The target folder read back through the pipeline's vendor reader."""
        return read_vendor_dir(self.target_dir)

    def sessions_after(self, day: dt.date, n: int) -> list[dt.date]:
        """The next ``n`` trading days after ``day`` on which any source ticker of the feed has
        a real row (the source's calendar, not the exchange's)."""
        later = sorted({d for d in self._source_dates() if d > day})
        if len(later) < n:
            raise VendorFeedError(
                f"only {len(later)} source sessions after {day} (last {max(self._source_dates())}),"
                f" {n} asked"
            )
        return later[:n]

    def deliver(
        self,
        day: dt.date,
        split: dict[str, float] | None = None,
        allow_gap: bool = False,
    ) -> Delivery:
        """Append the real vendor rows of ``day`` to every live ticker's file.

        ``split``: ticker -> ratio of a split planted on ``day`` (4.0 = 4-for-1): that row's
        split_coefficient is multiplied by it, prices and dividend divided, volume multiplied,
        and so are all its later deliveries. ``day`` must follow :attr:`last_day`; skipping a
        source session raises unless ``allow_gap`` (the skipped rows are then never delivered,
        like a vendor gap).
        """
        split = {t.upper(): float(k) for t, k in (split or {}).items()}
        if day <= self.last_day:
            raise VendorFeedError(f"{day} is not after the feed's last day {self.last_day}")
        skipped = [d for d in self._source_dates() if self.last_day < d < day]
        if skipped and not allow_gap:
            raise VendorFeedError(
                f"delivering {day} would skip source sessions {sorted(skipped)[:5]}: deliver "
                "them first or pass allow_gap=True"
            )
        if day not in self._source_dates():
            raise VendorFeedError(f"{day} is not a session of the source (no ticker has a row)")
        live = self._live_tickers(day)
        for ticker, ratio in split.items():
            if ticker not in live:
                raise VendorFeedError(f"cannot plant a split for {ticker}: not live on {day}")
            if ratio <= 0:
                raise VendorFeedError(f"split ratio for {ticker} must be positive, got {ratio}")
        rows, missing, listed = {}, [], []
        for ticker in live:
            real = self._source_of(ticker).row_on(day)
            if real is None:
                if ticker in split:
                    raise VendorFeedError(f"{ticker} has no source row on {day} to split")
                missing.append(ticker)
                continue
            planted = split.get(ticker, 1.0)
            self._factors[ticker] = self._factors.get(ticker, 1.0) * planted
            rows[ticker] = _scaled_row(real, self._factors[ticker], planted)
            if ticker not in self._written:
                listed.append(ticker)
                self._written[ticker] = []
                self._constituents.append(self._constituents_row(ticker))
            written = self._written[ticker]
            if self._source_of(ticker).newest_first:
                written.insert(0, rows[ticker])
            else:
                written.append(rows[ticker])
            self._write_file(ticker)
        if listed:
            self._write_constituents()
        self.last_day = day
        return Delivery(day, rows, tuple(missing), split, tuple(listed))

    def list_new_ticker(
        self,
        ticker: str,
        day: dt.date,
        from_source_ticker: str | None = None,
        sector: str | None = None,
        name: str | None = None,
    ) -> None:
        """Plant a listing: ``ticker``'s first bar is ``day``, its rows those of the real
        ``from_source_ticker`` from ``day`` on (default: the first source ticker, by name, not in
        the feed and trading on ``day``).

        Its file (named like the source ticker's, with the new ticker) and its constituents row
        (``sector`` defaults to the source ticker's) appear with its first bar: now if ``day`` is
        at or before :attr:`last_day` (its rows up to there are written), else at
        ``deliver(day)``.
        """
        ticker = ticker.upper()
        if ticker in self._written or ticker in self._listings:
            raise VendorFeedError(f"{ticker} is already in the feed")
        if any(p.name.startswith(f"DA-{ticker}-T-") for p in self.source_dir.iterdir()):
            raise VendorFeedError(f"{ticker} is a real ticker of the source; pick a new name")
        source_ticker = (from_source_ticker or self._unused_ticker_on(day)).upper()
        source = _read_vendor_file(_source_file(self.source_dir, source_ticker))
        if source.row_on(day) is None:
            raise VendorFeedError(f"{source_ticker} has no source row on {day} to list from")
        header, rows = _read_constituents(self.source_dir / CONSTITUENTS_FILE)
        symbol, sector_col = (
            _column(header, "symbol", "ticker"),
            _column(header, "sector", "gics sector"),
        )
        sectors = {r[symbol].upper(): r[sector_col] for r in rows}
        if sector is None and source_ticker not in sectors:
            raise VendorFeedError(f"{source_ticker} has no sector in constituents; pass sector=")
        self._sources[ticker] = source
        self._listings[ticker] = _Listing(
            source_ticker,
            day,
            name or f"{ticker} Inc. (simulated listing of {source_ticker})",
            sector or sectors[source_ticker],
        )
        if day <= self.last_day:
            self._written[ticker] = source.rows_between(day, self.last_day)
            self._constituents.append(self._constituents_row(ticker))
            self._write_file(ticker)
            self._write_constituents()

    def delist(self, ticker: str, last_day: dt.date) -> None:
        """Declare ``ticker``'s last session ``last_day`` (at or after :attr:`last_day`) in
        ``delistings.csv``; later deliveries append no row for it."""
        ticker = ticker.upper()
        if ticker not in self._written and ticker not in self._listings:
            raise VendorFeedError(f"{ticker} is not in the feed")
        if last_day < self.last_day:
            raise VendorFeedError(
                f"{ticker}: delisting on {last_day} would restate rows already delivered up to "
                f"{self.last_day}"
            )
        self._delisted[ticker] = last_day
        text = "ticker,delisted_on\n" + "".join(
            f"{t},{d.isoformat()}\n" for t, d in sorted(self._delisted.items())
        )
        _atomic_write(self.target_dir / DELISTINGS_FILE, text.encode())

    def planted_factor(self, ticker: str) -> float:
        """The cumulative planted split ratio of ``ticker`` so far (1.0 when none)."""
        return self._factors.get(ticker.upper(), 1.0)

    # -- internals ---------------------------------------------------------------------------

    def _source_of(self, ticker: str) -> _VendorFile:
        return self._sources[ticker]

    def _source_dates(self) -> set[dt.date]:
        return {d for s in self._sources.values() for d in s.dates}

    def _live_tickers(self, day: dt.date) -> list[str]:
        candidates = list(self._written) + [t for t in self._listings if t not in self._written]
        return [
            t
            for t in candidates
            if (t not in self._listings or self._listings[t].first_day <= day)
            and (t not in self._delisted or day <= self._delisted[t])
        ]

    def _unused_ticker_on(self, day: dt.date) -> str:
        used = {s.name for s in self._sources.values()}
        for path in sorted(self.source_dir.iterdir()):
            if path.name in used or not path.name.endswith((".csv", ".csv.gz")):
                continue
            if path.name == CONSTITUENTS_FILE:
                continue
            try:
                if _read_vendor_file(path).row_on(day) is not None:
                    return ticker_from_filename(path)
            except VendorFeedError:
                continue
        raise VendorFeedError(f"no unused source ticker trades on {day}")

    def _constituents_row(self, ticker: str) -> list[str]:
        """A constituents row for a planted listing, in the columns of the original file."""
        listing = self._listings[ticker]
        values = {"symbol": ticker, "ticker": ticker, "name": listing.name}
        values |= {"sector": listing.sector, "gics sector": listing.sector}
        return [values.get(c.strip().lower(), "") for c in self._constituents_header]

    def _file_name(self, ticker: str) -> str:
        source = self._sources[ticker]
        if ticker not in self._listings:
            return source.name
        prefix = f"DA-{self._listings[ticker].source_ticker}-T-"
        return f"DA-{ticker}-T-" + source.name[len(prefix) :]

    def _write_file(self, ticker: str) -> None:
        source = self._sources[ticker]
        nl = source.newline
        text = source.header + nl + "".join(r + nl for r in self._written[ticker])
        data = text.encode("utf-8")
        _atomic_write(self.path(ticker), gzip.compress(data, mtime=0) if source.gzipped else data)

    def _write_constituents(self) -> None:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self._constituents_header)
        writer.writerows(self._constituents)
        _atomic_write(self.target_dir / CONSTITUENTS_FILE, out.getvalue().encode("utf-8"))


def session_before(
    end: dt.date, sessions: int, ticker: str = "AAPL", source_dir: Path = SHARED_VENDOR_DIR
) -> dt.date:
    """The date ``sessions`` rows of ``ticker`` before ``end`` in the source (a ``start`` that
    keeps ``sessions + 1`` sessions of history up to ``end``)."""
    dates = sorted(d for d in _read_vendor_file(_source_file(source_dir, ticker)).dates if d <= end)
    if len(dates) <= sessions:
        raise VendorFeedError(f"{ticker} has only {len(dates)} sessions up to {end}")
    return dates[-sessions - 1]


def _read_constituents(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise VendorFeedError(f"{path} is empty")
    return rows[0], [r for r in rows[1:] if r]


def _column(header: list[str], *names: str) -> int:
    """Index of the first of ``names`` (case-insensitive) in a constituents header."""
    lower = [c.strip().lower() for c in header]
    for name in names:
        if name in lower:
            return lower.index(name)
    raise VendorFeedError(f"constituents header {header} has none of the columns {names}")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling the vendor reader ignores, then rename it over
    ``path`` (atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def redated_source(
    target_dir: Path,
    tickers: list[str] | tuple[str, ...],
    last_session: dt.date,
    sessions: int,
    calendar: str = "XNYS",
    source_dir: Path = SHARED_VENDOR_DIR,
) -> Path:
    """A vendor folder (a source for :meth:`VendorFeed.create`) holding the real rows of
    ``tickers``' last ``sessions`` sessions of the sample, moved onto the ``sessions`` exchange
    sessions that end at ``last_session``: the n-th real row of a ticker becomes its row of the
    n-th session. Rows, format and constituents are the vendor's; only the dates change, so a
    test can deliver "today's" session to a daemon that only looks at the newest partitions.
    The tickers must have a row on every one of those real sessions (``LIQUID_TICKERS`` do)."""
    from kronos_pipeline.data.calendar import trading_days

    days = trading_days(last_session - dt.timedelta(days=2 * sessions + 30), last_session, calendar)
    new_dates = [d.date() for d in days[-sessions:]]
    if len(new_dates) != sessions:
        raise VendorFeedError(f"fewer than {sessions} sessions up to {last_session}")
    target_dir.mkdir(parents=True, exist_ok=True)
    for ticker in tickers:
        path = _source_file(source_dir, ticker)
        source = _read_vendor_file(path)
        order = sorted(range(len(source.rows)), key=lambda i: source.dates[i])[-sessions:]
        moved = [new_dates[k] .isoformat() + "," + source.rows[i].split(",", 1)[1]
                 for k, i in enumerate(order)]  # fmt: skip
        if source.newest_first:
            moved.reverse()
        nl = source.newline
        text = (source.header + nl + "".join(r + nl for r in moved)).encode("utf-8")
        _atomic_write(
            target_dir / path.name, gzip.compress(text, mtime=0) if source.gzipped else text
        )
    (target_dir / CONSTITUENTS_FILE).write_bytes((source_dir / CONSTITUENTS_FILE).read_bytes())
    return target_dir

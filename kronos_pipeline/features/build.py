"""Point-in-time features per (date, ticker).

Each feature on row (t, ticker) is built from that ticker's rows dated <= t and, for market and
sector terms, from other tickers' rows dated t or earlier. Windows count the ticker's own bars
(trading days). A window without enough bars gives null, never a value from a shorter window.
Prices come from the forward-adjusted ``adj_*`` columns of ``prices_pit``, so every ratio is
split-consistent; momentum uses the dividend-inclusive total return index ``tri``.

Each calendar year's rows are computed from the bars dated :data:`WARMUP_DAYS` calendar days
before its 1 January on (:func:`history_start`), never from earlier ones. A rolling float sum
depends in its last bits on where the series starts, so this rule is what makes a row's value
a function of a fixed span of bars: whether the table is built whole, a year at a time, or
for one night from the prices dated ``history_start(day)`` on, the row comes out bit for bit
the same. The warm-up (about 310 sessions) covers the longest window, 252 bars plus the lag
of one, with room for about 55 missing bars; a name with more gaps than that gets null in its
longest windows early in a year, as a name that lists late does.

Units: returns and momentum are fractions; volatilities are annualised (x sqrt(252)) fractions;
Amihud illiquidity is |return| per USD 1e9 traded; RSI is 0-100.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl

ANNUALISE = math.sqrt(252.0)
MONTH = 21  # trading days in a month
UNKNOWN_SECTOR = "Unknown"
#: Calendar days of bars before a year's 1 January that its rows are computed from.
WARMUP_DAYS = 450


def history_start(day: dt.date) -> dt.date:
    """The first date of the bars that the features of ``day``'s calendar year are computed
    from: read the prices from here on to build any date of that year (see module doc)."""
    return dt.date(day.year, 1, 1) - dt.timedelta(days=WARMUP_DAYS)


def _roll(expr: pl.Expr, kind: str, window: int) -> pl.Expr:
    fn = getattr(expr, f"rolling_{kind}")
    return fn(window, min_samples=window)


def _lag(expr: pl.Expr, n: int) -> pl.Expr:
    return expr.shift(n)


def market_returns(prices: pl.DataFrame) -> pl.DataFrame:
    """Equal-weight daily total return across all names with a return on each date.

    Each date's mean adds its returns in ticker order, in one numpy pass: polars' parallel
    ``group_by`` mean combined partial sums in an order that changed with the machine's load
    (5 runs in 300 differed in the last bits under a busy CPU), and the features built on it
    (betas, correlations) with it. Sorted first, the sum never depends on the rows' order."""
    rows = (
        prices.filter(pl.col("total_return").is_not_null())
        .select("date", "ticker", "total_return")
        .sort("date", "ticker")
    )
    if rows.height == 0:
        return pl.DataFrame(
            schema={"date": prices.schema["date"], "mkt_ret": pl.Float64,
                    "mkt_names": pl.UInt32, "mkt_tri": pl.Float64}
        )  # fmt: skip
    days = rows["date"].to_numpy()
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    counts = np.diff(np.r_[starts, rows.height])
    sums = np.add.reduceat(rows["total_return"].to_numpy(), starts)
    return pl.DataFrame(
        {
            "date": rows["date"].gather(starts),
            "mkt_ret": sums / counts,
            "mkt_names": pl.Series(counts, dtype=pl.UInt32),
        }
    ).with_columns(mkt_tri=(1.0 + pl.col("mkt_ret")).cum_prod())


def _per_ticker_features() -> list[pl.Expr]:
    r, tri = pl.col("total_return"), pl.col("tri")
    close, high, low, open_ = (pl.col(f"adj_{c}") for c in ("close", "high", "low", "open"))
    mkt = pl.col("mkt_ret")
    log_vol = (pl.col("volume") + 1.0).log()
    log_dv = (pl.col("dollar_volume") + 1.0).log()
    prev_close = close.shift(1)
    true_range = pl.max_horizontal(high, prev_close) - pl.min_horizontal(low, prev_close)
    gain = (close - prev_close).clip(lower_bound=0.0)
    loss = (prev_close - close).clip(lower_bound=0.0)

    def mom(n: int, skip: int = 0) -> pl.Expr:
        return _lag(tri, skip) / _lag(tri, n) - 1.0

    def vol(n: int) -> pl.Expr:
        return _roll(r, "std", n) * ANNUALISE

    cov60 = _roll(r * mkt, "mean", 60) - _roll(r, "mean", 60) * _roll(mkt, "mean", 60)
    var_m60 = _roll(mkt, "var", 60) * 59.0 / 60.0
    cov252 = _roll(r * mkt, "mean", 252) - _roll(r, "mean", 252) * _roll(mkt, "mean", 252)
    var_m252 = _roll(mkt, "var", 252) * 251.0 / 252.0
    beta60 = cov60 / var_m60
    var_r60 = _roll(r, "var", 60) * 59.0 / 60.0
    mkt_tri = pl.col("mkt_tri")

    exprs = {
        "ret_1d": r,
        "mom_1w": mom(5),
        "mom_1m": mom(MONTH),
        "mom_3m": mom(3 * MONTH),
        "mom_6m": mom(6 * MONTH),
        "mom_12m": mom(12 * MONTH),
        "mom_12_1": mom(12 * MONTH, MONTH),
        "mom_6_1": mom(6 * MONTH, MONTH),
        "mom_3_1": mom(3 * MONTH, MONTH),
        "vol_20d": vol(20),
        "vol_60d": vol(60),
        "vol_120d": vol(120),
        "vol_252d": vol(252),
        "downside_vol_60d": (_roll(r.clip(upper_bound=0.0) ** 2, "mean", 60)).sqrt() * ANNUALISE,
        "upside_vol_60d": (_roll(r.clip(lower_bound=0.0) ** 2, "mean", 60)).sqrt() * ANNUALISE,
        "vol_ratio_20_60": vol(20) / vol(60),
        "skew_60d": r.rolling_skew(60, min_samples=60),
        "kurt_60d": r.rolling_kurtosis(60, min_samples=60),
        "max_ret_1m": _roll(r, "max", MONTH),
        "min_ret_1m": _roll(r, "min", MONTH),
        "beta_60d": beta60,
        "beta_252d": cov252 / var_m252,
        "corr_mkt_60d": cov60 / (var_r60 * var_m60).sqrt(),
        "resid_vol_60d": (var_r60 - beta60**2 * var_m60).clip(lower_bound=0.0).sqrt() * ANNUALISE,
        "idio_mom_1m": mom(MONTH) - beta60 * (_lag(mkt_tri, 0) / _lag(mkt_tri, MONTH) - 1.0),
        "mkt_rel_mom_12_1": mom(12 * MONTH, MONTH)
        - (_lag(mkt_tri, MONTH) / _lag(mkt_tri, 12 * MONTH) - 1.0),
        "volume_z_60d": (log_vol - _roll(log_vol, "mean", 60)) / _roll(log_vol, "std", 60),
        "dollar_volume_z_60d": (log_dv - _roll(log_dv, "mean", 60)) / _roll(log_dv, "std", 60),
        "log_dollar_volume_1m": _roll(pl.col("dollar_volume"), "mean", MONTH).log1p(),
        "volume_trend_1m_6m": (
            _roll(pl.col("volume"), "mean", MONTH) / _roll(pl.col("volume"), "mean", 6 * MONTH)
        ).log(),
        "amihud_1m": _roll(
            pl.when(pl.col("dollar_volume") > 0).then(r.abs() / pl.col("dollar_volume") * 1e9),
            "mean",
            MONTH,
        ),
        "zero_volume_share_60d": _roll((pl.col("volume") == 0).cast(pl.Float64), "mean", 60),
        "range_1d": (high - low) / close,
        "range_1m": _roll((high - low) / close, "mean", MONTH),
        "atr_14d": _roll(true_range, "mean", 14) / close,
        "gap_1d": open_ / prev_close - 1.0,
        "gap_abs_1m": _roll((open_ / prev_close - 1.0).abs(), "mean", MONTH),
        "intraday_ret_1d": close / open_ - 1.0,
        "close_location_1d": pl.when(high > low).then((close - low) / (high - low)),
        "stoch_1m": (close - _roll(low, "min", MONTH))
        / (_roll(high, "max", MONTH) - _roll(low, "min", MONTH)),
        "rsi_14d": 100.0
        * _roll(gain, "mean", 14)
        / (_roll(gain, "mean", 14) + _roll(loss, "mean", 14)),
        "ma_dist_20d": close / _roll(close, "mean", 20) - 1.0,
        "ma_dist_50d": close / _roll(close, "mean", 50) - 1.0,
        "ma_dist_200d": close / _roll(close, "mean", 200) - 1.0,
        "ma_cross_50_200": _roll(close, "mean", 50) / _roll(close, "mean", 200) - 1.0,
        "dist_52w_high": close / _roll(high, "max", 252) - 1.0,
        "dist_52w_low": close / _roll(low, "min", 252) - 1.0,
        "dividend_yield_12m": pl.col("dividend").rolling_sum(252, min_samples=252)
        / pl.col("close"),
        "log_price": pl.col("close").log(),
    }
    return [e.over("ticker", order_by="date").alias(name) for name, e in exprs.items()]


SECTOR_RELATIVE = ("mom_12_1", "mom_1m", "vol_60d")


def features(
    prices: pl.DataFrame,
    sectors: pl.DataFrame | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> pl.DataFrame:
    """PIT feature table: ``date, ticker, sector`` then one column per feature (see module doc).

    ``prices`` is the ``prices_pit`` table; ``sectors`` maps ``ticker -> sector`` (names missing
    from it get ``"Unknown"``). Sector-relative features subtract the same-date mean over the
    sector's names.

    ``start``/``end``: return only the rows dated in [start, end] (either bound optional).
    Each calendar year's rows are computed from the prices dated ``history_start`` of that year
    up to its last row wanted, so ``prices`` needs only the rows from ``history_start(start)``
    on, and gives the same rows bit for bit as the whole table.
    """
    if prices.height == 0:
        return _features_of(prices, sectors, start, end)
    first = start if start is not None else prices["date"].min()
    last = end if end is not None else prices["date"].max()
    if first > last:
        return _features_of(prices.clear(), sectors, start, end)
    parts = [
        _features_of(prices.filter(pl.col("date").is_between(history_start(a), b)), sectors, a, b)
        for a, b in (
            (max(first, dt.date(year, 1, 1)), min(last, dt.date(year, 12, 31)))
            for year in range(first.year, last.year + 1)
        )
    ]
    return pl.concat(parts)


def _features_of(
    prices: pl.DataFrame,
    sectors: pl.DataFrame | None,
    start: dt.date | None,
    end: dt.date | None,
) -> pl.DataFrame:
    """The features of the rows dated in [start, end], computed over every row of ``prices``
    (the caller's span: :func:`features`)."""
    market = market_returns(prices)
    frame = prices.join(market.select("date", "mkt_ret", "mkt_tri"), on="date", how="left")
    if sectors is not None and sectors.height:
        frame = frame.join(sectors.select("ticker", "sector"), on="ticker", how="left")
    else:
        frame = frame.with_columns(sector=pl.lit(None, dtype=pl.String))
    frame = frame.with_columns(pl.col("sector").fill_null(UNKNOWN_SECTOR)).sort("ticker", "date")
    out = frame.select("date", "ticker", "sector", *_per_ticker_features())
    if start is not None:
        out = out.filter(pl.col("date") >= start)
    if end is not None:
        out = out.filter(pl.col("date") <= end)
    out = out.with_columns(
        [
            (pl.col(name) - pl.col(name).mean().over("date", "sector")).alias(f"sector_rel_{name}")
            for name in SECTOR_RELATIVE
        ]
    )
    # Infinities (e.g. a zero range day) become null: models and checks treat them as missing.
    numeric = [c for c in out.columns if c not in ("date", "ticker", "sector")]
    out = out.with_columns(
        [pl.when(pl.col(c).is_finite()).then(pl.col(c)).alias(c) for c in numeric]
    )
    return out.sort("date", "ticker")


def feature_names(table: pl.DataFrame) -> list[str]:
    """The numeric feature columns of a feature table."""
    return [c for c in table.columns if c not in ("date", "ticker", "sector")]

"""Evaluation metrics (SPEC section 5), Alphalens ``performance.py`` style.

One function per metric, its formula in the docstring, plain arrays / DataFrames in and out, no I/O.

Conventions used throughout:

- Scores and labels are long tables keyed by ``model, horizon, date, ticker``.
- ``rank_ic`` uses ``excess_return`` (Spearman is invariant to per-date demeaning anyway).
- Deciles are assigned per date exactly as ``pandas.qcut(score, 10, labels=False) + 1`` does for
  distinct scores; ties are broken by ticker so the assignment is deterministic.
- Returns are fractions; costs are basis points (1 bp = 1e-4) charged one way per unit traded.
- "Median RankIC" of a model and horizon is the median over its scoring dates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kronos_pipeline.settings import GateSettings

N_QUANTILES = 10  # deciles
TRADING_DAYS_PER_YEAR = 252  # annualisation of daily volatility
REGIME_VOL_WINDOW_DAYS = 20  # SPEC 5: realised 20-day volatility of the equal-weight market
REGIME_LABELS = ("low", "mid", "high")
MIN_NAMES_PER_DATE = 3  # fewer names than this: no cross-sectional statistic that date
HAC_MIN_BLOCKS = 4  # SPEC 5: a HAC t needs about 4 x (lag + 1) scoring dates, else "n/a"
NON_OVERLAP_MIN_DATES = 6  # fewest non-overlapping dates for their t-stat, else "n/a"
CHURN_INTERVAL_SESSIONS = 5  # SPEC 6: churn over the same 5 sessions whatever the cadence
MAX_IMPUTED_HOLD_SHARE = 0.5  # SPEC 6: above it, net figures read "n/a (imputed)"
Z_975 = 1.959963984540054  # two-sided 5 % normal critical value

KEYS = ["model", "horizon", "date"]
#: Fewest scoring dates inside a fold or a volatility regime for it to be judged: the default
#: of ``gates.min_scoring_dates`` (settings is the source of truth; callers pass theirs).
MIN_JUDGED_DATES = GateSettings().min_scoring_dates
MOMENTUM_MODEL = "factor_momentum_12_1"


# --------------------------------------------------------------------------------------------
# Single-date / single-series metrics
# --------------------------------------------------------------------------------------------


def rank_ic(score: np.ndarray, label: np.ndarray) -> float:
    """Spearman rank correlation across names on one date.

    ``RankIC = corr(rank(score), rank(label))`` with average ranks for ties (Pearson correlation
    of the ranks). NaN pairs are dropped; NaN when fewer than 3 pairs remain or a side is constant.
    """
    from scipy import stats  # imported on use: the code location loads faster

    s = np.asarray(score, dtype=float)
    y = np.asarray(label, dtype=float)
    ok = np.isfinite(s) & np.isfinite(y)
    if ok.sum() < MIN_NAMES_PER_DATE:
        return float("nan")
    rs = stats.rankdata(s[ok])
    ry = stats.rankdata(y[ok])
    rs -= rs.mean()
    ry -= ry.mean()
    denom = np.sqrt((rs * rs).sum() * (ry * ry).sum())
    return float((rs * ry).sum() / denom) if denom > 0 else float("nan")


def ic_ir(ic: np.ndarray) -> float:
    """Information ratio of the RankIC series: ``mean(ic) / std(ic, ddof=1)`` (per scoring date,
    not annualised). NaNs are ignored."""
    x = np.asarray(ic, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan")
    sd = x.std(ddof=1)
    return float(x.mean() / sd) if sd > 0 else float("nan")


def hit_rate(ic: np.ndarray) -> float:
    """Share of scoring dates with ``RankIC > 0`` (fraction). NaNs are ignored."""
    x = np.asarray(ic, dtype=float)
    x = x[np.isfinite(x)]
    return float((x > 0).mean()) if len(x) else float("nan")


def newey_west_lag(horizon: int, spacing: float) -> int:
    """HAC lag that covers the overlap of ``horizon``-day labels scored every ``spacing`` sessions.

    ``lag = ceil(h / spacing) - 1`` (SPEC section 5): RankICs of two scoring dates share label
    days when they are fewer than ``h`` sessions apart, i.e. up to ``lag`` scoring dates apart.
    """
    spacing = max(1.0, float(spacing)) if np.isfinite(spacing) else 1.0
    return max(0, int(np.ceil(horizon / spacing - 1e-9)) - 1)


def min_dates_for_hac(lag: int) -> int:
    """Fewest scoring dates for which :func:`newey_west_t` reports a number: ``4 (lag + 1)``."""
    return HAC_MIN_BLOCKS * (int(lag) + 1)


def _size_adjusted(t: float, df: float) -> float:
    """Rescale ``t`` so that ``|t| > 1.96`` is a 5 % test when ``t`` is Student-t with ``df``
    degrees of freedom: ``t * 1.96 / t_{df}^{-1}(0.975)``."""
    from scipy import stats  # imported on use: the code location loads faster

    return float(t * Z_975 / stats.t.ppf(0.975, df))


def hac_degrees_of_freedom(n: int, lag: int) -> float:
    """Degrees of freedom of the truncated-kernel variance estimate: ``n / (1.5 lag + 1)``.

    The estimate sums ``2 lag + 1`` sample autocovariances. For i.i.d. data they are
    uncorrelated and it behaves like a chi-square variable with ``n / (2 lag + 1)`` degrees of
    freedom; for a slow score against fully overlapping labels they move together and the
    figure is nearer ``n / (lag + 1)``. The midpoint keeps the test's size within 0.035-0.066
    in simulation over both, for every cadence, horizon and length the report prints a number
    for (``bench/t_stat_size.py``).
    """
    return max(1.0, n / (1.5 * lag + 1))


def newey_west_t(values: np.ndarray, lag: int) -> float:
    """HAC t-statistic of the mean of ``values`` whose ``|t| > 1.96`` has a 5 % size.

    The long-run variance is statsmodels' HAC estimate (``cov_type="HAC"``) with ``maxlags =
    lag`` and the truncated (uniform) kernel, i.e. the Hansen-Hodrick form of Newey-West that
    weights every autocovariance inside the label overlap fully:
    ``s^2 = (g0 + 2 sum_{j<=lag} g_j) / n``. Two small-sample corrections then give the test its
    size on series as short as a few overlap blocks:

    - demeaning bias: the autocovariances around the sample mean sum to less than the truth by
      about ``(2 lag + 1) / n``, so ``s^2`` is divided by ``1 - (2 lag + 1) / n``;
    - the variance estimate has about ``n / (1.5 lag + 1)`` degrees of freedom
      (:func:`hac_degrees_of_freedom`), so ``t`` is rescaled to the normal critical value from
      Student-t with that many (see :func:`_size_adjusted`).

    With ``lag`` from :func:`newey_west_lag`, simulated false-positive rates of ``|t| > 1.96``
    under the null lie in 0.02-0.09 for the pipeline's cadences and horizons (a test asserts
    it). The truncated kernel's estimate can come out negative (negative autocovariances, as for
    a score without persistence); the Bartlett kernel, which is always positive, is then used
    with the same corrections. NaN ("n/a") when fewer than :func:`min_dates_for_hac` finite
    values remain or the series is constant.
    """
    from statsmodels.regression.linear_model import OLS  # imported on use: loads faster

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    lag = max(0, int(lag))
    if n < max(3, min_dates_for_hac(lag)) or np.allclose(x, x[0]):
        return float("nan")
    ols = OLS(x, np.ones((n, 1)))
    var = float("nan")
    for kernel in ("uniform", "bartlett"):
        fit = ols.fit(
            cov_type="HAC", cov_kwds={"maxlags": lag, "kernel": kernel, "use_correction": False}
        )
        var = float(fit.cov_params()[0, 0]) / (1.0 - (2 * lag + 1) / n)
        if var > 0:
            break
    if not var > 0:
        return float("nan")
    return _size_adjusted(float(x.mean()) / np.sqrt(var), hac_degrees_of_freedom(n, lag))


def non_overlapping_positions(session_pos: np.ndarray, horizon: int) -> np.ndarray:
    """Indices of a greedy subsequence of scoring dates at least ``horizon`` sessions apart.

    ``session_pos`` are the dates' positions in the trading calendar, ascending. Starting from the
    first date, each next kept date is the first one ``>= horizon`` sessions after the last kept
    one, so no two kept labels share a day.
    """
    keep, last = [], None
    for i, p in enumerate(np.asarray(session_pos)):
        if last is None or p - last >= horizon:
            keep.append(i)
            last = p
    return np.asarray(keep, dtype=int)


def non_overlapping_t(values: np.ndarray) -> float:
    """t-statistic of the mean over non-overlapping dates (independent under the null).

    ``t = mean / (std(ddof=1) / sqrt(n))`` rescaled from Student-t with ``n - 1`` degrees of
    freedom to the normal critical value (see :func:`_size_adjusted`), so ``|t| > 1.96`` is a 5 %
    test. NaN ("n/a") with fewer than ``NON_OVERLAP_MIN_DATES`` values or a constant series.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < NON_OVERLAP_MIN_DATES or np.allclose(x, x[0]):
        return float("nan")
    t = float(x.mean() / (x.std(ddof=1) / np.sqrt(n)))
    return _size_adjusted(t, n - 1)


def session_positions(dates: Sequence | pd.DatetimeIndex, calendar: str = "XNYS") -> np.ndarray:
    """Position of each date in the exchange calendar's sessions (for session counts)."""
    from kronos_pipeline.data.calendar import trading_days

    d = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates)))
    if len(d) == 0:
        return np.zeros(0, dtype=int)
    sessions = pd.DatetimeIndex(trading_days(d.min(), d.max(), calendar))
    pos = sessions.get_indexer(d.normalize())
    # A date off the calendar (synthetic sources are on it) falls back to weekday counting.
    if (pos < 0).any():
        return np.busday_count(d.min().date(), d.date).astype(int)
    return pos.astype(int)


def quantile_of(score: np.ndarray, n_quantiles: int = N_QUANTILES) -> np.ndarray:
    """Quantile bucket (1 = lowest score, ``n_quantiles`` = highest) of each score on one date.

    With ``j`` the 0-based position in ascending score order and ``n`` names:
    ``bucket = 1 + clip(ceil(q * j / (n - 1)) - 1, 0, q - 1)``, the bucket ``pandas.qcut`` gives
    for distinct values. Ties keep their input order (stable sort).
    """
    s = np.asarray(score, dtype=float)
    n = len(s)
    out = np.zeros(n, dtype=int)
    if n < n_quantiles:
        return out
    order = np.argsort(s, kind="stable")
    j = np.empty(n, dtype=np.int64)
    j[order] = np.arange(n)
    out[:] = 1 + np.clip(-(-(n_quantiles * j) // (n - 1)) - 1, 0, n_quantiles - 1)
    return out


def top_turnover(current: Sequence[str], previous: Sequence[str]) -> float:
    """Churn of one basket: share of names in ``current`` that were not in ``previous``.

    ``turnover = |current \\ previous| / |current|`` (fraction, 0 = unchanged, 1 = all new).
    """
    cur = set(current)
    if not cur:
        return float("nan")
    return len(cur - set(previous)) / len(cur)


def break_even_cost_bps(gross_return: float, turnover: float) -> float:
    """Cost (bps, one way per unit traded) at which the net return is zero.

    ``net = gross - cost_bps * 1e-4 * traded`` so ``break_even = 1e4 * gross / traded``, where
    ``traded = 2 * turnover`` (a replaced name is sold and its replacement bought). NaN when nothing
    is traded; negative when the gross return is already negative.
    """
    traded = 2.0 * turnover
    if not np.isfinite(traded) or traded <= 0 or not np.isfinite(gross_return):
        return float("nan")
    return float(1e4 * gross_return / traded)


def net_of_cost(gross_return: np.ndarray, turnover: np.ndarray, cost_bps: float) -> np.ndarray:
    """Return net of trading cost: ``gross - cost_bps * 1e-4 * 2 * turnover``.

    ``turnover`` is the long-short book's churn (top-decile plus bottom-decile share of names
    replaced); each replaced name is one sale and one purchase, each paying ``cost_bps`` one way.
    """
    return np.asarray(gross_return, dtype=float) - cost_bps * 1e-4 * 2.0 * np.asarray(
        turnover, dtype=float
    )


def realised_market_vol(market: pd.DataFrame, window: int = REGIME_VOL_WINDOW_DAYS) -> pd.Series:
    """Annualised realised volatility of the equal-weight market, point in time.

    ``vol(t) = std(mkt_ret[t - window + 1 .. t], ddof=1) * sqrt(252)``; ``market`` has columns
    ``date, mkt_ret`` (daily total return, fraction). Indexed by date; NaN for the first
    ``window - 1`` dates.
    """
    m = market[["date", "mkt_ret"]].copy()
    m["date"] = pd.to_datetime(m["date"])
    m = m.sort_values("date").set_index("date")["mkt_ret"].astype(float)
    return (
        m.rolling(window, min_periods=window).std(ddof=1) * np.sqrt(TRADING_DAYS_PER_YEAR)
    ).rename("mkt_vol_20d")


def volatility_regimes(
    market: pd.DataFrame, dates: Sequence | pd.DatetimeIndex, window: int = REGIME_VOL_WINDOW_DAYS
) -> pd.DataFrame:
    """Volatility tercile of each evaluated date.

    Terciles are cut at the 1/3 and 2/3 quantiles of ``mkt_vol_20d`` over the given ``dates``
    (the evaluated scoring dates, so every model shares the same regimes). Returns
    ``date, mkt_vol_20d, vol_regime`` with ``vol_regime`` in ``low / mid / high`` (NaN vol: no
    regime).
    """
    vol = realised_market_vol(market, window)
    d = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates))).unique().sort_values()
    v = vol.reindex(d)
    out = pd.DataFrame({"date": d, "mkt_vol_20d": v.to_numpy()})
    ok = out["mkt_vol_20d"].notna()
    out["vol_regime"] = pd.Series(pd.NA, index=out.index, dtype="object")
    if ok.sum() >= len(REGIME_LABELS):
        q1, q2 = np.quantile(out.loc[ok, "mkt_vol_20d"], [1 / 3, 2 / 3])
        vals = out.loc[ok, "mkt_vol_20d"]
        out.loc[ok, "vol_regime"] = np.where(
            vals <= q1, REGIME_LABELS[0], np.where(vals <= q2, REGIME_LABELS[1], REGIME_LABELS[2])
        )
    return out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def eval_rows(
    scores: pd.DataFrame, labels: pd.DataFrame, as_of: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Scores joined to matured labels.

    ``scores``: ``model, horizon, date, ticker, score, fold``; ``labels``: ``date, ticker, horizon,
    fwd_return, excess_return, available_at``. Inner join on ``date, ticker, horizon``; rows with a
    missing score or label are dropped, and with ``as_of`` only labels with
    ``available_at <= as_of`` (matured) are kept. Sorted by ``model, horizon, date, ticker``.
    """
    lab = labels[["date", "ticker", "horizon", "fwd_return", "excess_return", "available_at"]]
    if as_of is not None:
        lab = lab[pd.to_datetime(lab["available_at"]) <= pd.Timestamp(as_of)]
    sc = scores[["model", "horizon", "fold", "date", "ticker", "score"]].copy()
    sc["date"] = pd.to_datetime(sc["date"])
    sc["horizon"] = sc["horizon"].astype(int)
    lab = lab.copy()
    lab["date"] = pd.to_datetime(lab["date"])
    lab["horizon"] = lab["horizon"].astype(int)
    out = sc.merge(lab, on=["date", "ticker", "horizon"], how="inner")
    out = out.dropna(subset=["score", "excess_return", "fwd_return"])
    out = out[np.isfinite(out["score"].astype(float))]
    return out.sort_values(["model", "horizon", "date", "ticker"], ignore_index=True)


def _grouped_pearson(df: pd.DataFrame, keys: list[str], x: str, y: str) -> pd.Series:
    """Pearson correlation of columns ``x`` and ``y`` within each ``keys`` group."""
    g = df.groupby(keys, sort=True)
    mx = g[x].transform("mean")
    my = g[y].transform("mean")
    dx = df[x] - mx
    dy = df[y] - my
    tmp = pd.DataFrame({"xy": dx * dy, "xx": dx * dx, "yy": dy * dy})
    for k in keys:
        tmp[k] = df[k].to_numpy()
    s = tmp.groupby(keys, sort=True)[["xy", "xx", "yy"]].sum()
    n = g.size()
    denom = np.sqrt(s["xx"] * s["yy"])
    r = s["xy"] / denom.where(denom > 0)
    return r.where(n >= MIN_NAMES_PER_DATE)


def _grouped_spearman(df: pd.DataFrame, keys: list[str], x: str, y: str) -> pd.Series:
    """Spearman (average-rank Pearson) correlation of ``x`` and ``y`` within each group."""
    d = df[[*keys, x, y]].dropna(subset=[x, y]).copy()
    g = d.groupby(keys, sort=True)
    d["_rx"] = g[x].rank(method="average")
    d["_ry"] = g[y].rank(method="average")
    return _grouped_pearson(d, keys, "_rx", "_ry")


def assign_quantiles(
    df: pd.DataFrame, keys: Sequence[str] = KEYS, n_quantiles: int = N_QUANTILES
) -> pd.Series:
    """Per-group score quantile (see :func:`quantile_of`), ties broken by ticker.

    Vectorised over groups; 0 where a group has fewer than ``n_quantiles`` names.
    """
    keys = list(keys)
    order = df.sort_values([*keys, "score", "ticker"], kind="stable").index
    d = df.loc[order, keys]
    j = d.groupby(keys, sort=False).cumcount().to_numpy()
    n = d.groupby(keys, sort=False)[keys[0]].transform("size").to_numpy()
    q = n_quantiles
    with np.errstate(divide="ignore", invalid="ignore"):
        bucket = 1 + np.clip(-(-(q * j) // np.maximum(n - 1, 1)) - 1, 0, q - 1)
    bucket = np.where(n >= q, bucket, 0)
    return pd.Series(bucket, index=order).reindex(df.index)


def _basket_replacement(
    df: pd.DataFrame, bucket: int, pairs: pd.DataFrame, index_on: str
) -> pd.Series:
    """Share of the names in a quantile basket at ``later`` that were not in it at ``date``.

    ``pairs`` has ``model, horizon, date, later`` (NaT on either side: no pair). The result is
    indexed by ``model, horizon`` and ``index_on`` (``"date"`` or ``"later"``); NaN where no pair.
    """
    basket = df.loc[df["quantile"] == bucket, ["model", "horizon", "date", "ticker"]]
    p = pairs.dropna(subset=["date", "later"])[["model", "horizon", "date", "later"]]
    new = p.merge(basket.rename(columns={"date": "later"}), on=["model", "horizon", "later"])
    new = new.merge(basket.assign(_was=True), on=["model", "horizon", "date", "ticker"], how="left")
    new["_was"] = new["_was"].fillna(False).astype(bool)
    out = 1.0 - new.groupby(["model", "horizon", index_on], sort=True)["_was"].mean()
    out.index = out.index.set_names(KEYS)
    return out


def _consecutive_pairs(dates: pd.DataFrame) -> pd.DataFrame:
    """``model, horizon, date, later``: each scoring date and the model's next one."""
    d = dates[KEYS].drop_duplicates().sort_values(KEYS)
    return d.assign(later=d.groupby(["model", "horizon"])["date"].shift(-1))


def churn_pairs(
    dates: pd.DataFrame, calendar: str = "XNYS", interval: int = CHURN_INTERVAL_SESSIONS
) -> pd.DataFrame:
    """``model, horizon, date, later``: each scoring date ``later`` and the same model's
    scoring date exactly ``interval`` sessions before it (``date``), so churn covers the same
    calendar interval for a daily, a weekly and a monthly model. Dates without such an earlier
    scoring date (the first ``interval`` sessions, a weekly date after a holiday or across a
    month boundary, every monthly date) have no pair and no churn.
    """
    d = dates[KEYS].drop_duplicates().sort_values(KEYS).reset_index(drop=True)
    unique = np.sort(d["date"].unique())
    pos = pd.Series(session_positions(unique, calendar), index=pd.DatetimeIndex(unique))
    earlier = pd.Series(pd.NaT, index=d.index, dtype="datetime64[ns]")
    for _, g in d.groupby(["model", "horizon"], sort=False):
        p = pos.reindex(pd.DatetimeIndex(g["date"])).to_numpy()
        j = np.clip(np.searchsorted(p, p - int(interval), side="left"), 0, len(p) - 1)
        ok = p[j] == p - int(interval)
        vals = np.full(len(g), np.datetime64("NaT"), dtype="datetime64[ns]")
        vals[ok] = g["date"].to_numpy()[j[ok]]
        earlier.loc[g.index] = vals
    return pd.DataFrame(
        {"model": d["model"], "horizon": d["horizon"], "date": earlier, "later": d["date"]}
    )


def hold_pairs(dates: pd.DataFrame, calendar: str = "XNYS") -> pd.DataFrame:
    """``model, horizon, date, later``: each scoring date ``t`` and the first scoring date of the
    same model at least ``horizon`` sessions after it, the portfolio that replaces the one
    formed at ``t`` when it is held ``horizon`` sessions (NaT when the model scored no such date).
    """
    d = dates[KEYS].drop_duplicates().sort_values(KEYS).reset_index(drop=True)
    unique = np.sort(d["date"].unique())
    pos = pd.Series(session_positions(unique, calendar), index=pd.DatetimeIndex(unique))
    later = pd.Series(pd.NaT, index=d.index, dtype="datetime64[ns]")
    for (_, horizon), g in d.groupby(["model", "horizon"], sort=False):
        p = pos.reindex(pd.DatetimeIndex(g["date"])).to_numpy()
        j = np.searchsorted(p, p + int(horizon), side="left")
        ok = j < len(p)
        vals = np.full(len(g), np.datetime64("NaT"), dtype="datetime64[ns]")
        vals[ok] = g["date"].to_numpy()[j[ok]]
        later.loc[g.index] = vals
    return d.assign(later=later)


def _rank_autocorr(df: pd.DataFrame) -> pd.Series:
    """Spearman correlation between a name's score at t and at the previous scoring date, over
    names present on both dates."""
    dates = df[KEYS].drop_duplicates().sort_values(KEYS)
    dates["prev_date"] = dates.groupby(["model", "horizon"])["date"].shift(1)
    cur = df[[*KEYS, "ticker", "score"]].merge(dates, on=KEYS).dropna(subset=["prev_date"])
    prev = df[[*KEYS, "ticker", "score"]].rename(columns={"date": "prev_date", "score": "prev"})
    both = cur.merge(prev, on=["model", "horizon", "prev_date", "ticker"])
    return _grouped_spearman(both, KEYS, "score", "prev")


def per_date_metrics(
    rows: pd.DataFrame,
    cost_bps: float,
    momentum: pd.DataFrame | None = None,
    market: pd.DataFrame | None = None,
    n_quantiles: int = N_QUANTILES,
    calendar: str = "XNYS",
    book_scores: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per ``model, horizon, date`` metrics from eval rows.

    Columns: ``model, horizon, fold, date, n_names``;
    ``rank_ic`` (Spearman of score vs ``excess_return``);
    ``top_return, bottom_return`` (equal-weight mean ``fwd_return`` of the top / bottom decile) and
    ``spread_return = top_return - bottom_return`` (fraction over ``h`` trading days);
    ``top_turnover, bottom_turnover`` (share of the decile replaced since the previous scoring
    date, fraction; NaN on the first date; not a cost); ``ls_turnover = top_turnover +
    bottom_turnover``; ``churn`` (SPEC 5-6: share of the top decile at ``t`` that was not in it
    at the model's scoring date :data:`CHURN_INTERVAL_SESSIONS` sessions earlier, see
    :func:`churn_pairs`; NaN where the model scored no date exactly that far back, so every
    cadence is measured over the same interval);
    ``hold_top_turnover, hold_bottom_turnover`` (share of each leg replaced when the portfolio
    formed at ``t`` is rolled into the one formed ``h`` sessions later, see :func:`hold_pairs`;
    1 per leg, imputed, with ``hold_cost_bounded`` True, where the model scored no date that
    late; the
    portfolios come from ``book_scores``, every score of the models including dates whose labels
    have not matured, when given, else from the eval rows);
    ``hold_turnover`` (their sum);
    ``net_spread_return = spread_return - cost_bps * 1e-4 * 2 * hold_turnover`` (SPEC 5: the
    cost of the hold actually taken, not of consecutive-date churn);
    ``session`` (position of the date in the exchange calendar, for session counts);
    ``rank_autocorr`` (Spearman of score vs previous scoring date's score);
    ``momentum_corr`` (Spearman of score vs ``mom_12_1``; needs ``momentum`` with
    ``date, ticker, mom_12_1``); ``mkt_vol_20d, vol_regime`` (needs ``market`` with
    ``date, mkt_ret``).
    """
    cols = ["model", "horizon", "fold", "date", "ticker", "score", "excess_return", "fwd_return"]
    df = rows[cols].reset_index(drop=True)
    if df.empty:
        return pd.DataFrame(
            columns=[
                "model", "horizon", "fold", "date", "n_names", "rank_ic", "top_return",
                "bottom_return", "spread_return", "top_turnover", "bottom_turnover",
                "ls_turnover", "churn", "hold_top_turnover", "hold_bottom_turnover",
                "hold_cost_bounded", "hold_turnover", "net_spread_return", "rank_autocorr",
                "momentum_corr", "session", "mkt_vol_20d", "vol_regime",
            ]
        )  # fmt: skip
    g = df.groupby(KEYS, sort=True)
    out = pd.DataFrame({"fold": g["fold"].first(), "n_names": g.size()})
    out["rank_ic"] = _grouped_spearman(df, KEYS, "score", "excess_return")
    df["quantile"] = assign_quantiles(df, KEYS, n_quantiles)
    ret = df[df["quantile"] > 0].groupby([*KEYS, "quantile"])["fwd_return"].mean().unstack()
    out["top_return"] = ret.get(n_quantiles)
    out["bottom_return"] = ret.get(1)
    out["spread_return"] = out["top_return"] - out["bottom_return"]
    consecutive = _consecutive_pairs(df)
    out["top_turnover"] = _basket_replacement(df, n_quantiles, consecutive, "later")
    out["bottom_turnover"] = _basket_replacement(df, 1, consecutive, "later")
    out["ls_turnover"] = out["top_turnover"] + out["bottom_turnover"]
    out["churn"] = _basket_replacement(df, n_quantiles, churn_pairs(df, calendar), "later")
    # Portfolios are formed from the scores alone, so the one that replaces a hold exists even
    # where its own labels have not matured yet (the last h sessions of the data).
    book = df
    if book_scores is not None:
        pairs = df[["model", "horizon"]].drop_duplicates()
        book = book_scores[["model", "horizon", "date", "ticker", "score"]].merge(pairs)
        book = book.assign(date=pd.to_datetime(book["date"]), horizon=book["horizon"].astype(int))
        book = book[np.isfinite(book["score"].astype(float))].reset_index(drop=True)
        book["quantile"] = assign_quantiles(book, KEYS, n_quantiles)
    held = hold_pairs(book, calendar).merge(out.index.to_frame(index=False), on=KEYS)
    out["hold_top_turnover"] = _basket_replacement(book, n_quantiles, held, "date")
    out["hold_bottom_turnover"] = _basket_replacement(book, 1, held, "date")
    # No portfolio h sessions later to roll into: the book is sold and a new one bought
    # (turnover 1 per leg), the most a hold can cost, so the net figure is never flattered.
    has_next = pd.MultiIndex.from_frame(held.dropna(subset=["later"])[KEYS])
    out["hold_cost_bounded"] = ~out.index.isin(has_next)
    for leg in ("hold_top_turnover", "hold_bottom_turnover"):
        out[leg] = out[leg].where(~out["hold_cost_bounded"], 1.0)
    out["hold_turnover"] = out["hold_top_turnover"] + out["hold_bottom_turnover"]
    out["net_spread_return"] = net_of_cost(out["spread_return"], out["hold_turnover"], cost_bps)
    pos = pd.Series(session_positions(np.sort(df["date"].unique()), calendar))
    pos.index = pd.DatetimeIndex(np.sort(df["date"].unique()))
    out["rank_autocorr"] = _rank_autocorr(df)
    if momentum is not None:
        mom = momentum[["date", "ticker", "mom_12_1"]].copy()
        mom["date"] = pd.to_datetime(mom["date"])
        m = df[[*KEYS, "ticker", "score"]].merge(mom, on=["date", "ticker"])
        out["momentum_corr"] = _grouped_spearman(m, KEYS, "score", "mom_12_1")
    else:
        out["momentum_corr"] = np.nan
    out = out.reset_index()
    out["session"] = pos.reindex(pd.DatetimeIndex(out["date"])).to_numpy()
    if market is not None:
        regimes = volatility_regimes(market, out["date"].unique())
        out = out.merge(regimes, on="date", how="left")
    else:
        out["mkt_vol_20d"] = np.nan
        out["vol_regime"] = pd.Series(pd.NA, index=out.index, dtype="object")
    return out


def decile_returns(rows: pd.DataFrame, n_quantiles: int = N_QUANTILES) -> pd.DataFrame:
    """Mean ``fwd_return`` per score quantile: ``model, horizon, quantile, mean_fwd_return``.

    Equal-weight mean within each date's quantile, then the mean over dates (fraction over
    ``h`` trading days).
    """
    df = rows[["model", "horizon", "date", "ticker", "score", "fwd_return"]].reset_index(drop=True)
    df["quantile"] = assign_quantiles(df, KEYS, n_quantiles)
    per_date = df[df["quantile"] > 0].groupby([*KEYS, "quantile"])["fwd_return"].mean()
    out = per_date.groupby(["model", "horizon", "quantile"]).mean().rename("mean_fwd_return")
    return out.reset_index()


def hac_inputs(g: pd.DataFrame, horizon: int) -> tuple[float, int]:
    """Session spacing of one model's scoring dates (median gap) and its HAC lag."""
    sessions = np.sort(g["session"].dropna().to_numpy(float))
    gaps = np.diff(sessions)
    spacing = float(np.median(gaps)) if len(gaps) else 1.0
    return spacing, newey_west_lag(horizon, spacing)


def hold_imputed_share(hold_cost_bounded: pd.Series) -> float:
    """Share of dates whose hold turnover was imputed (1 per leg: no later book to roll into),
    fraction; NaN for no dates."""
    x = hold_cost_bounded.astype(bool)
    return float(x.mean()) if len(x) else float("nan")


def _summary(g: pd.DataFrame, horizon: int) -> dict[str, float]:
    """Summary of one model and horizon's per-date rows ``g`` (sorted by date). Net spread and
    break-even are NaN when more than :data:`MAX_IMPUTED_HOLD_SHARE` of the hold turnovers are
    imputed: they would be the gross spread minus a constant, not a measurement."""
    ic = g["rank_ic"].to_numpy(dtype=float)
    gross = float(g["spread_return"].mean())
    hold = float(g["hold_turnover"].mean())
    imputed = hold_imputed_share(g["hold_cost_bounded"])
    measured = bool(imputed <= MAX_IMPUTED_HOLD_SHARE)
    spacing, lag = hac_inputs(g, horizon)
    finite = g[np.isfinite(ic)]
    apart = non_overlapping_positions(finite["session"].to_numpy(), horizon)
    churn = g["churn"].dropna() if "churn" in g else pd.Series(dtype=float)
    return {
        "n_dates": int(np.isfinite(ic).sum()),
        "mean_rank_ic": float(np.nanmean(ic)) if np.isfinite(ic).any() else float("nan"),
        "median_rank_ic": float(np.nanmedian(ic)) if np.isfinite(ic).any() else float("nan"),
        "std_rank_ic": float(np.nanstd(ic, ddof=1)) if np.isfinite(ic).sum() > 1 else float("nan"),
        "ic_ir": ic_ir(ic),
        "hit_rate": hit_rate(ic),
        "scoring_spacing_sessions": spacing,
        "nw_lag": lag,
        "nw_min_dates": min_dates_for_hac(lag),
        "nw_t": newey_west_t(ic, lag),
        "n_dates_non_overlapping": int(len(apart)),
        "t_non_overlapping": non_overlapping_t(finite["rank_ic"].to_numpy(float)[apart]),
        "churn": float(churn.mean()) if len(churn) else float("nan"),
        "n_churn_dates": int(len(churn)),
        "rank_autocorr": float(g["rank_autocorr"].mean()),
        "mean_spread_return": gross,
        "mean_net_spread_return": float(g["net_spread_return"].mean()) if measured else np.nan,
        "mean_ls_turnover": float(g["ls_turnover"].mean()),
        "mean_hold_turnover": hold,
        "n_dates_hold_cost_bounded": int(g["hold_cost_bounded"].astype(bool).sum()),
        "hold_imputed_share": imputed,
        "break_even_cost_bps": break_even_cost_bps(gross, hold) if measured else np.nan,
        "median_momentum_corr": float(g["momentum_corr"].median()),
    }


def fold_summaries(per_date: pd.DataFrame) -> pd.DataFrame:
    """Per ``model, horizon, fold`` summary of the per-date metrics.

    ``median_rank_ic, mean_rank_ic, std_rank_ic``; ``ic_ir = mean / std``; ``hit_rate`` (share of
    dates with RankIC > 0); ``scoring_spacing_sessions`` (median sessions between scoring dates),
    ``nw_lag`` (:func:`newey_west_lag`), ``nw_min_dates`` (:func:`min_dates_for_hac`) and ``nw_t``
    (:func:`newey_west_t`, NaN = "n/a" when fewer than ``nw_min_dates`` dates remain);
    ``n_dates_non_overlapping`` and ``t_non_overlapping`` (over dates at least ``h`` sessions
    apart, :func:`non_overlapping_t`); ``churn`` (mean top-decile turnover over
    :data:`CHURN_INTERVAL_SESSIONS` sessions) over ``n_churn_dates`` dates; ``rank_autocorr``
    (mean); ``mean_spread_return`` and ``mean_net_spread_return`` (mean over dates of the
    top-minus-bottom decile ``h``-day return, gross and net of the cost of the hold);
    ``mean_ls_turnover`` (consecutive-date turnover of both legs); ``mean_hold_turnover``,
    ``n_dates_hold_cost_bounded`` and ``hold_imputed_share`` (dates whose hold turnover was
    imputed, count and share, see :func:`per_date_metrics`); ``break_even_cost_bps`` (from the
    hold turnover); ``median_momentum_corr``. Net spread and break-even are NaN ("n/a
    (imputed)") where ``hold_imputed_share > MAX_IMPUTED_HOLD_SHARE``.
    """
    rows = []
    for (model, horizon, fold), g in per_date.sort_values(["date"]).groupby(
        ["model", "horizon", "fold"], sort=True
    ):
        rows.append(
            {"model": model, "horizon": int(horizon), "fold": fold, **_summary(g, int(horizon))}
        )
    return pd.DataFrame(rows)


def positive_fold_share(folds: pd.DataFrame, min_dates: int) -> tuple[float, int]:
    """Share of folds with ``mean_net_spread_return > 0`` among the folds that can be judged:
    at least ``min_dates`` scoring dates and a measured net spread (NaN when more than
    :data:`MAX_IMPUTED_HOLD_SHARE` of the fold's hold turnovers are imputed). Returns
    ``(share, n_folds_judged)``; the share is NaN when no fold can be judged."""
    judged = folds[(folds["n_dates"] >= min_dates) & folds["mean_net_spread_return"].notna()]
    net = judged["mean_net_spread_return"]
    return (float((net > 0).mean()) if len(net) else float("nan")), int(len(net))


def regime_medians(g: pd.DataFrame, min_dates: int) -> dict[str, float]:
    """Median RankIC and date count per market volatility tercile of one model and horizon.

    ``regime_median_rank_ic_{low,mid,high}``, ``regime_n_dates_{low,mid,high}``;
    ``min_regime_median_rank_ic`` is the lowest median over the regimes with at least
    ``min_dates`` dates (NaN when none has), ``n_regimes_judged`` how many those are.
    """
    out: dict[str, float] = {}
    judged = []
    for label in REGIME_LABELS:
        ic = g.loc[g["vol_regime"] == label, "rank_ic"].dropna()
        value = float(ic.median()) if len(ic) else float("nan")
        out[f"regime_median_rank_ic_{label}"] = value
        out[f"regime_n_dates_{label}"] = int(len(ic))
        if len(ic) >= min_dates:
            judged.append(value)
    out["min_regime_median_rank_ic"] = min(judged) if judged else float("nan")
    out["n_regimes_judged"] = len(judged)
    return out


def model_comparison(
    per_date: pd.DataFrame, folds: pd.DataFrame, min_dates: int = MIN_JUDGED_DATES
) -> pd.DataFrame:
    """Overall comparison per ``model, horizon``, over every scoring date of every fold.

    The :func:`fold_summaries` columns computed on all dates at once (``nw_t`` on the full date
    series), plus ``n_folds``; ``positive_fold_share`` and ``n_folds_judged``
    (:func:`positive_fold_share` over folds of at least ``min_dates`` dates; NaN when more than
    :data:`MAX_IMPUTED_HOLD_SHARE` of the row's hold turnovers are imputed);
    ``median_fold_rank_ic`` (median of the folds' median RankIC); the volatility-regime columns
    of :func:`regime_medians` (regimes of at least ``min_dates`` dates judged).
    ``min_dates``: ``gates.min_scoring_dates``, the fewest dates inside a fold or a regime.
    """
    rows = []
    for (model, horizon), g in per_date.sort_values("date").groupby(["model", "horizon"]):
        f = folds[(folds["model"] == model) & (folds["horizon"] == horizon)]
        row = {"model": model, "horizon": int(horizon), **_summary(g, int(horizon))}
        share, judged = positive_fold_share(f, min_dates)
        if row["hold_imputed_share"] > MAX_IMPUTED_HOLD_SHARE:
            share = float("nan")
        row["n_folds"] = int(len(f))
        row["n_folds_judged"] = judged
        row["positive_fold_share"] = share
        row["median_fold_rank_ic"] = float(f["median_rank_ic"].median())
        row.update(regime_medians(g, min_dates))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Cross-model comparisons on common (date, ticker) pairs
# --------------------------------------------------------------------------------------------


def common_pairs(rows: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Eval rows of ``models`` restricted, per horizon, to the (date, ticker) pairs that every one
    of them scored, so that no comparison mixes date sets or universes (a weekly top-100 model
    against a daily full-universe one is compared on the weekly top-100 pairs)."""
    r = rows[rows["model"].isin(list(models))]
    if r.empty:
        return r
    n_models = r.groupby("horizon")["model"].transform("nunique")
    per_pair = r.groupby(["horizon", "date", "ticker"])["model"].transform("nunique")
    return r[per_pair == n_models]


def common_comparison(
    rows: pd.DataFrame, models: Sequence[str], calendar: str = "XNYS"
) -> pd.DataFrame:
    """Per ``model, horizon``, RankIC statistics over the pairs all ``models`` scored.

    Columns: ``model, horizon, n_common_dates, n_common_pairs, median_rank_ic, mean_rank_ic,
    nw_lag, nw_min_dates, nw_t`` (as :func:`newey_west_t`, lag from the common dates' spacing).
    """
    c = common_pairs(rows, models)
    columns = ["model", "horizon", "n_common_dates", "n_common_pairs", "median_rank_ic",
               "mean_rank_ic", "nw_lag", "nw_min_dates", "nw_t"]  # fmt: skip
    if c.empty:
        return _typed_empty(columns)
    ic = _grouped_spearman(c, KEYS, "score", "excess_return").rename("rank_ic").reset_index()
    dates = np.sort(ic["date"].unique())
    pos = pd.Series(session_positions(dates, calendar), index=pd.DatetimeIndex(dates))
    ic["session"] = pos.reindex(pd.DatetimeIndex(ic["date"])).to_numpy()
    out = []
    for (model, horizon), g in ic.sort_values("date").groupby(["model", "horizon"]):
        x = g["rank_ic"].to_numpy(float)
        _, lag = hac_inputs(g, int(horizon))
        finite = np.isfinite(x)
        out.append({
            "model": model, "horizon": int(horizon), "n_common_dates": int(finite.sum()),
            "n_common_pairs": int(((c["model"] == model) & (c["horizon"] == horizon)).sum()),
            "median_rank_ic": float(np.nanmedian(x)) if finite.any() else float("nan"),
            "mean_rank_ic": float(np.nanmean(x)) if finite.any() else float("nan"),
            "nw_lag": lag, "nw_min_dates": min_dates_for_hac(lag),
            "nw_t": newey_west_t(x, lag),
        })  # fmt: skip
    return pd.DataFrame(out, columns=columns)


def versus_reference(
    rows: pd.DataFrame, models: Sequence[str], reference: str, calendar: str = "XNYS"
) -> pd.DataFrame:
    """Each of ``models`` against ``reference`` (e.g. LightGBM) on the pairs both scored.

    Columns: ``model, horizon, n_common_dates, median_rank_ic`` (the model's, on the common
    pairs), ``reference_median_rank_ic`` (the reference's, on the same pairs) and
    ``diff = median_rank_ic - reference_median_rank_ic`` (the report's one sign convention:
    this model minus its comparator, negative = behind).
    """
    out = []
    for model in models:
        if model == reference:
            continue
        both = common_comparison(rows, [model, reference], calendar).set_index(["model", "horizon"])
        for h in sorted({h for m, h in both.index if m == model}):
            if (reference, h) not in both.index:
                continue
            mine, ref = both.loc[(model, h)], both.loc[(reference, h)]
            out.append({
                "model": model, "horizon": int(h), "n_common_dates": int(mine["n_common_dates"]),
                "median_rank_ic": float(mine["median_rank_ic"]),
                "reference_median_rank_ic": float(ref["median_rank_ic"]),
                "diff": float(mine["median_rank_ic"] - ref["median_rank_ic"]),
            })  # fmt: skip
    columns = ["model", "horizon", "n_common_dates", "median_rank_ic",
               "reference_median_rank_ic", "diff"]  # fmt: skip
    return pd.DataFrame(out, columns=columns) if out else _typed_empty(columns)


def _typed_empty(columns: Sequence[str]) -> pd.DataFrame:
    """An empty table whose columns have the types a filled one has (so it can be stored)."""
    kinds = {"model": "object", "horizon": "int64", "n_common_dates": "int64",
             "n_common_pairs": "int64", "nw_lag": "int64", "nw_min_dates": "int64"}  # fmt: skip
    return pd.DataFrame({c: pd.Series(dtype=kinds.get(c, "float64")) for c in columns})

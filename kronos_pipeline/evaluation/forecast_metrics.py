"""Forecast accuracy of sampled price paths, beside ranking (issue 12 item 4).

Ranking metrics (RankIC and the rest) ask whether a score orders names well; this module asks
whether the forecast *return* is close to what happened and whether its sample paths describe
the uncertainty honestly. Plain pandas / numpy in and out, no I/O (the report writes files).

Inputs:

- ``forecasts``: one row per (model, date, ticker, horizon) with ``last_close`` (traded close at
  t, share units of t), ``pred_return_mean`` (mean over sample paths of close_hat[t+h]/close[t]-1)
  and ``samples`` (the h-day price return of every sample path; one value = greedy decoding).
- ``realized``: (date, ticker, horizon, realized_return), the h-day split-adjusted price return
  without dividends, from :func:`realized_price_returns`. Only matured pairs exist; a forecast
  without its realized row is left out of every metric.

Definitions, per (model, horizon), over the n pairs (forecast, realized) with both finite;
``e = pred_return_mean - realized_return`` (return units, fractions, not %)::

    mae_return   = mean |e|                  rmse_return = sqrt(mean e^2)
    mape_return  = mean |e| / |realized|     over pairs with realized != 0 (a fraction)
    price        = last_close * (1 + return), so the price error is last_close * e
    mae_price, rmse_price as above on the price error (currency of last_close)
    mape_price   = mean |price error| / realized price, over realized price != 0
    directional_accuracy = share of sign(pred) == sign(realized), over pairs with
                   realized != 0 and pred != 0 (a zero point forecast calls no direction,
                   so the random walk's is NaN rather than a 0 that reads as "always wrong")
    coverage_10_90 = share of realized in [q10, q90] of the pair's samples
    interval_width_10_90 = mean (q90 - q10), return units
    crps         = mean over pairs of  mean_i |X_i - y| - 0.5 * mean_{i,j} |X_i - X_j|

CRPS is the energy form for the empirical distribution of the m samples, with the mean over
all m^2 ordered pairs (i = j included); it equals the integral of (F_m(x) - 1{x >= y})^2 dx
exactly. It is computed from sorted samples, using
``sum_{i,j} |x_i - x_j| = 2 * sum_k (2k - m + 1) x_(k)`` (k from 0, ascending).

Sample quantiles use the Weibull plotting position (``numpy.quantile(method="weibull")``, the
p * (m + 1)-th order statistic, interpolated): when the realized return and the m samples are
exchangeable draws, P(realized <= q_p) = p exactly at any m (inside 1/(m+1) <= p <= m/(m+1)),
so a well-calibrated forecaster shows nominal coverage on average. The default linear rule
would show 0.775 instead of 0.8 for the 10-90 interval at m = 64.

``sample_count`` is the smallest number of finite samples of a pair in the group. With fewer
than 2 (greedy decoding), coverage, width, CRPS and calibration are NaN: one path describes no
distribution.

Naive forecasts (:func:`naive_forecasts`), point in time: at t with horizon h, R(t) is the set
of overlapping h-day returns adj_close[e] / adj_close[e - h] - 1 whose end session e lies in the
``trailing`` sessions ending at t (e <= t, so every one is known at t; up to ``trailing``
returns). ``naive_random_walk`` forecasts 0; ``naive_drift`` forecasts mean(R(t)). Both carry a
sample distribution so that their quantile metrics exist: R(t) demeaned, then shifted onto the
point forecast (for the drift that is R(t) itself). The pred_return_mean of a naive row is
therefore the mean of its samples, as it is for Kronos.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

FORECAST_COLUMNS = (
    "model",
    "date",
    "ticker",
    "horizon",
    "last_close",
    "pred_return_mean",
    "samples",
)
REALIZED_COLUMNS = ("date", "ticker", "horizon", "realized_return")
#: ``numpy.quantile`` method of every sample quantile: these metrics, the q10/q50/q90 that
#: ``kronos_forecasts`` stores and the signal carries, and the engine's ``quantile``.
QUANTILE_METHOD = "weibull"
METRIC_COLUMNS = (
    "model",
    "horizon",
    "n",
    "mae_return",
    "rmse_return",
    "mape_return",
    "mae_price",
    "rmse_price",
    "mape_price",
    "directional_accuracy",
    "coverage_10_90",
    "interval_width_10_90",
    "crps",
    "sample_count",
)
CALIBRATION_COLUMNS = ("model", "horizon", "nominal", "observed", "n", "sample_count")

#: Nominal levels of the calibration table (fractions).
CALIBRATION_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
#: Sessions of history behind the naive forecasts' drift and spread (one trading year).
NAIVE_TRAILING_SESSIONS = 252
#: Fewest trailing h-day returns a naive forecast stands on; keys with fewer get no naive row.
NAIVE_MIN_RETURNS = 20
NAIVE_MODELS = ("naive_random_walk", "naive_drift")

_KEY = ["date", "ticker", "horizon"]
_INTERVAL = (0.1, 0.9)


def _pandas(frame, name: str, columns: Iterable[str]) -> pd.DataFrame:
    """A pandas copy of ``frame`` (polars accepted) with ``date`` as datetime64[ns]; says which
    columns are missing otherwise."""
    if hasattr(frame, "to_pandas") and not isinstance(frame, pd.DataFrame):
        frame = frame.to_pandas()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {missing}; it has {list(frame.columns)}. "
            f"Pass a frame with {list(columns)}."
        )
    out = frame.copy()
    if "date" in out:
        out["date"] = pd.to_datetime(out["date"]).astype("datetime64[ns]")
    if "horizon" in out:
        out["horizon"] = out["horizon"].astype(int)
    return out


def realized_price_returns(prices: pd.DataFrame, horizons: Sequence[int]) -> pd.DataFrame:
    """h-day price return from t to the h-th session after t, for every horizon h (trading days).

    ``prices`` is ``prices_pit``-like (ticker, date, adj_close); ``adj_close`` is the close
    times the cumulative split factor, continuous over splits and without dividends, so
    ``adj_close[t+h] / adj_close[t] - 1`` is the split-adjusted price return in t's share units
    (any anchor of the split factor gives the same ratio). The h-th session after t is the h-th
    next row of the ticker. Rows whose t+h is not in the data (not matured) are absent.

    Returns: ``date, ticker, horizon, realized_return`` (a fraction).
    """
    frame = _pandas(prices, "prices", ("ticker", "date", "adj_close"))
    frame = frame[["ticker", "date", "adj_close"]].sort_values(["ticker", "date"], kind="stable")
    if frame.duplicated(["ticker", "date"]).any():
        dup = frame[frame.duplicated(["ticker", "date"], keep=False)].iloc[0]
        raise ValueError(
            f"prices holds several rows for ticker {dup['ticker']} on {dup['date']:%Y-%m-%d}; "
            "pass one row per (ticker, date), as prices_pit has."
        )
    by_ticker = frame.groupby("ticker", sort=False)["adj_close"]
    parts = []
    for h in horizons:
        realized = by_ticker.shift(-int(h)) / frame["adj_close"] - 1.0
        part = pd.DataFrame(
            {
                "date": frame["date"],
                "ticker": frame["ticker"],
                "horizon": int(h),
                "realized_return": realized.astype(float),
            }
        )
        parts.append(part[np.isfinite(part["realized_return"])])
    if not parts:
        return pd.DataFrame({c: [] for c in REALIZED_COLUMNS})
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(_KEY, kind="stable").reset_index(drop=True)


def naive_forecasts(
    prices: pd.DataFrame,
    keys: pd.DataFrame,
    horizons: Sequence[int],
    trailing: int = NAIVE_TRAILING_SESSIONS,
    *,
    min_returns: int = NAIVE_MIN_RETURNS,
) -> pd.DataFrame:
    """``naive_random_walk`` and ``naive_drift`` forecasts for the (date, ticker) ``keys``, in
    the shape of the Kronos forecasts (see the module docstring for the definitions).

    Args:
        prices: ``prices_pit``-like (ticker, date, close, adj_close): ``close`` is the traded
            close (``last_close``), ``adj_close`` gives the returns.
        keys: (date, ticker) pairs to forecast at; pairs whose date is not a row of the ticker
            in ``prices`` are absent from the result.
        horizons: horizons in trading days (rows of the ticker).
        trailing: sessions whose h-day returns (by end date, <= t) make up R(t).
        min_returns: keys with fewer returns in R(t) get no naive row.

    Only rows dated <= t enter the forecast at t: point in time.
    """
    frame = _pandas(prices, "prices", ("ticker", "date", "close", "adj_close"))
    frame = frame.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    frame["pos"] = frame.groupby("ticker", sort=False).cumcount()
    wanted = _pandas(keys, "keys", ("date", "ticker"))[["date", "ticker"]].drop_duplicates()
    located = wanted.merge(frame[["ticker", "date", "pos", "close"]], on=["ticker", "date"])
    histories = dict(iter(frame.groupby("ticker", sort=False)["adj_close"]))
    rows = []
    for ticker, at in located.groupby("ticker", sort=True):
        adj = histories[ticker].to_numpy(dtype=float)
        pos = at["pos"].to_numpy()
        for h in horizons:
            h = int(h)
            returns = np.full(len(adj), np.nan)  # returns[e]: from session e - h to e
            if len(adj) > h:
                returns[h:] = adj[h:] / adj[:-h] - 1.0
            padded = np.concatenate([np.full(trailing - 1, np.nan), returns])
            windows = sliding_window_view(padded, trailing)[pos]  # R(t) ends at pos
            for date, close, window in zip(at["date"], at["close"], windows, strict=True):
                known = window[np.isfinite(window)]
                if known.size < max(min_returns, 1):
                    continue
                spread = known - known.mean()
                for model, point in zip(NAIVE_MODELS, (0.0, known.mean()), strict=True):
                    rows.append(
                        (model, date, ticker, h, float(close), float(point), spread + point)
                    )
    out = pd.DataFrame(rows, columns=list(FORECAST_COLUMNS))
    out["date"] = out["date"].astype("datetime64[ns]")
    out["horizon"] = out["horizon"].astype(int)
    return out.sort_values(["model", *_KEY], kind="stable").reset_index(drop=True)


def _paired(forecasts: pd.DataFrame, realized: pd.DataFrame) -> pd.DataFrame:
    """Forecast rows joined to their realized return, both finite."""
    f = _pandas(forecasts, "forecasts", FORECAST_COLUMNS)
    r = _pandas(realized, "realized", REALIZED_COLUMNS)[list(REALIZED_COLUMNS)]
    dup = f.duplicated(["model", *_KEY])
    if dup.any():
        row = f[dup].iloc[0]
        raise ValueError(
            f"forecasts holds several rows for model {row['model']}, {row['ticker']} on "
            f"{row['date']:%Y-%m-%d}, horizon {row['horizon']}; pass one per key."
        )
    if r.duplicated(_KEY).any():
        raise ValueError("realized holds several rows per (date, ticker, horizon); pass one.")
    pairs = f.merge(r, on=_KEY, how="inner")
    finite = np.isfinite(pairs["pred_return_mean"].astype(float)) & np.isfinite(
        pairs["realized_return"].astype(float)
    )
    return pairs[finite].reset_index(drop=True)


def _sample_matrices(samples: Sequence) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Finite samples of every row, grouped by count: (counts, [(row indices, (k, m) sorted
    samples), ...]), so quantiles and CRPS are computed on whole matrices."""
    arrays = [np.asarray(s, dtype=float).ravel() for s in samples]
    arrays = [a[np.isfinite(a)] for a in arrays]
    counts = np.array([a.size for a in arrays], dtype=int)
    groups = []
    for m in np.unique(counts):
        idx = np.flatnonzero(counts == m)
        groups.append((idx, np.sort(np.stack([arrays[i] for i in idx]), axis=1)))
    return counts, groups


def sample_quantiles(samples: Sequence, levels: Sequence[float]) -> np.ndarray:
    """(rows, levels) Weibull-position quantiles of each row's samples; NaN for rows with
    fewer than 2 finite samples."""
    counts, groups = _sample_matrices(samples)
    out = np.full((len(counts), len(levels)), np.nan)
    for idx, x in groups:
        if x.shape[1] >= 2:
            out[idx] = np.quantile(x, list(levels), axis=1, method=QUANTILE_METHOD).T
    return out


def crps_samples(samples: Sequence, realized: Sequence[float]) -> np.ndarray:
    """CRPS of each row's sample distribution against its realized value (return units):
    ``mean_i |X_i - y| - 0.5 * mean_{i,j} |X_i - X_j|`` over all m^2 pairs; NaN for rows with
    fewer than 2 finite samples."""
    y = np.asarray(realized, dtype=float)
    counts, groups = _sample_matrices(samples)
    out = np.full(len(counts), np.nan)
    for idx, x in groups:
        m = x.shape[1]
        if m < 2:
            continue
        weights = 2.0 * np.arange(m) - m + 1.0
        pair_mean = 2.0 * (x @ weights) / m**2  # mean |X_i - X_j| from the sorted samples
        out[idx] = np.abs(x - y[idx, None]).mean(axis=1) - 0.5 * pair_mean
    return out


def _mean_where(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def forecast_metrics(forecasts: pd.DataFrame, realized: pd.DataFrame) -> pd.DataFrame:
    """Point and distribution accuracy per (model, horizon); columns :data:`METRIC_COLUMNS`,
    formulas in the module docstring. Return metrics are fractions, price metrics are in the
    currency of ``last_close``; ``n`` is the number of (forecast, realized) pairs."""
    pairs = _paired(forecasts, realized)
    rows = []
    for (model, h), g in pairs.groupby(["model", "horizon"], sort=True):
        pred = g["pred_return_mean"].to_numpy(dtype=float)
        y = g["realized_return"].to_numpy(dtype=float)
        close = g["last_close"].to_numpy(dtype=float)
        err = pred - y
        price_err = close * err
        price_real = close * (1.0 + y)
        abs_y = np.abs(y)
        abs_price = np.abs(price_real)
        counts, _ = _sample_matrices(g["samples"])
        sample_count = int(counts.min())
        row = {
            "model": model,
            "horizon": int(h),
            "n": len(g),
            "mae_return": float(np.abs(err).mean()),
            "rmse_return": float(np.sqrt((err**2).mean())),
            "mape_return": _mean_where(np.abs(err) / np.where(y != 0, abs_y, 1.0), y != 0),
            "mae_price": float(np.abs(price_err).mean()),
            "rmse_price": float(np.sqrt((price_err**2).mean())),
            "mape_price": _mean_where(
                np.abs(price_err) / np.where(price_real != 0, abs_price, 1.0), price_real != 0
            ),
            "directional_accuracy": _mean_where(
                (np.sign(pred) == np.sign(y)).astype(float), (y != 0) & (pred != 0)
            ),
            "coverage_10_90": float("nan"),
            "interval_width_10_90": float("nan"),
            "crps": float("nan"),
            "sample_count": sample_count,
        }
        if sample_count >= 2:
            q = sample_quantiles(g["samples"], _INTERVAL)
            row["coverage_10_90"] = float(((q[:, 0] <= y) & (y <= q[:, 1])).mean())
            row["interval_width_10_90"] = float((q[:, 1] - q[:, 0]).mean())
            row["crps"] = float(crps_samples(g["samples"], y).mean())
        rows.append(row)
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def calibration_table(
    forecasts: pd.DataFrame,
    realized: pd.DataFrame,
    levels: Sequence[float] = CALIBRATION_LEVELS,
) -> pd.DataFrame:
    """Per (model, horizon, nominal level p): ``observed`` = share of pairs whose realized
    return is <= the p-quantile of the pair's samples (p for a calibrated forecaster), ``n``
    pairs and ``sample_count`` (smallest per pair). NaN ``observed`` where sample_count < 2
    (greedy). Columns :data:`CALIBRATION_COLUMNS`."""
    pairs = _paired(forecasts, realized)
    rows = []
    for (model, h), g in pairs.groupby(["model", "horizon"], sort=True):
        y = g["realized_return"].to_numpy(dtype=float)
        counts, _ = _sample_matrices(g["samples"])
        sample_count = int(counts.min())
        q = sample_quantiles(g["samples"], levels) if sample_count >= 2 else None
        for j, p in enumerate(levels):
            observed = float((y <= q[:, j]).mean()) if q is not None else float("nan")
            rows.append((model, int(h), float(p), observed, len(g), sample_count))
    return pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))

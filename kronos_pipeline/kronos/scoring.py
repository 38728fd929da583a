"""Kronos scores for the walk-forward evaluation (SPEC section 4); library code, no Dagster.

* **Input windows** are point in time: for a scoring date ``t`` and a ticker, the last
  ``lookback`` bars dated ``<= t``, split-adjusted in the share units of ``t``
  (:func:`kronos_pipeline.data.pit.as_of_adjusted`: ``adj_* / split_factor(t)``,
  ``adj_volume * split_factor(t)``), with ``amount = close * volume``. No bar after ``t`` is read.
* **Scores**: one decode of ``max(horizons)`` steps per series; for horizon ``h`` (trading days)
  ``score = mean_s(close_hat[s, h]) / close[t] - 1`` over the sampled paths ``s``, and the
  volatility-normalised variant ``(mean_s(close_hat[s, h]) - close[t]) / std(close)``, the
  population standard deviation of the close over the window, kept under the model name
  ``<model>_volnorm``.
* **Training** (walk-forward checkpoints): compact tokenizer + predictor trained from scratch on
  PIT bars that end at the fold's training cut, within a wall-clock budget.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import polars as pl

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.data.pit import as_of_adjusted
from kronos_pipeline.evaluation.forecast_metrics import QUANTILE_METHOD

BAR_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "amount")
CLOSE_INDEX = 3  # position of ``close`` in the engine's path columns
SCORE_COLUMNS = ["model", "horizon", "date", "ticker", "score", "fold"]
#: Score-table dtypes, as ``baseline_scores`` stores them (date as a naive timestamp).
SCORE_SCHEMA = {
    "model": pl.String,
    "horizon": pl.Int64,
    "date": pl.Datetime("us"),
    "ticker": pl.String,
    "score": pl.Float64,
    "fold": pl.String,
}
VOLNORM_SUFFIX = "_volnorm"
TRAINED_MODEL = "kronos_walkforward"
ZERO_SHOT_MODEL = "kronos_zero_shot"
#: Score model name of fine-tuned checkpoints.
FINETUNE_MODEL = "kronos_finetune"
Strategy = Literal["published", "scratch", "finetune"]
STRATEGIES: tuple[str, ...] = ("published", "scratch", "finetune")


def strategy_model_name(strategy: Strategy) -> str:
    """Model name of a strategy's scores; the same for every period, accepted or not."""
    if strategy == "published":
        return ZERO_SHOT_MODEL
    if strategy == "scratch":
        return TRAINED_MODEL
    if strategy == "finetune":
        return FINETUNE_MODEL
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


MANIFEST_NAME = "manifest.json"


def model_name(zero_shot: bool) -> str:
    """Model name of the scores: published weights carry ``zero_shot`` (the evaluation's
    contamination split keys on it); walk-forward checkpoints do not."""
    return ZERO_SHOT_MODEL if zero_shot else TRAINED_MODEL


# --------------------------------------------------------------------------------------
# PIT bars and windows
# --------------------------------------------------------------------------------------


def pit_bars(prices: pl.DataFrame, as_of: dt.date | pd.Timestamp) -> pl.DataFrame:
    """Bars of every ticker dated ``<= as_of``, split-adjusted as seen on ``as_of``.

    ``prices``: rows of ``prices_pit`` (``ticker, date, adj_open..adj_close, adj_volume,
    split_factor``). Returns ``ticker, date, open, high, low, close, volume, amount`` sorted by
    ticker and date; prices in USD per share of ``as_of``, volume in shares of ``as_of``,
    ``amount = close * volume`` (USD).
    """
    day = pd.Timestamp(as_of).date()
    adjusted = as_of_adjusted(prices, day)
    return (
        adjusted.select(
            "ticker",
            "date",
            *[pl.col(f"asof_{c}").alias(c) for c in ("open", "high", "low", "close", "volume")],
        )
        .with_columns(amount=pl.col("close") * pl.col("volume"))
        .sort("ticker", "date")
    )


@dataclass
class ScoringWindows:
    """Engine inputs: one PIT window per (date, ticker) in ``keys``.

    ``keys``: pandas frame ``date`` (datetime64), ``ticker``; ``windows[i]``: the last
    ``lookback`` bars (columns :data:`BAR_COLUMNS`); ``timestamps[i]``: their dates;
    ``skipped``: (date, ticker) pairs asked for but with fewer than ``min_bars`` bars.
    """

    keys: pd.DataFrame
    windows: list[pd.DataFrame]
    timestamps: list[pd.DatetimeIndex]
    skipped: list[tuple[dt.date, str]]

    def __len__(self) -> int:
        return len(self.windows)


def build_windows(
    prices: pl.DataFrame,
    members: pl.DataFrame,
    lookback: int,
    min_bars: int | None = None,
) -> ScoringWindows:
    """PIT windows of the last ``lookback`` bars as of each member's date.

    ``members``: ``date, ticker`` pairs to score (universe members of each scoring date).
    A pair gets a window only if its ticker has a bar on that date and at least ``min_bars``
    (default ``lookback``) bars up to it; other pairs are listed in ``skipped``.
    """
    need = lookback if min_bars is None else min_bars
    keys, windows, stamps, skipped = [], [], [], []
    for (day,), group in sorted(members.group_by("date"), key=lambda kv: kv[0][0]):
        wanted = sorted(group["ticker"].unique().to_list())
        bars = pit_bars(prices.filter(pl.col("ticker").is_in(wanted)), day)
        tails = bars.group_by("ticker", maintain_order=True).tail(lookback)
        by_ticker = {t: f for (t,), f in tails.partition_by("ticker", as_dict=True).items()}
        for ticker in wanted:
            frame = by_ticker.get(ticker)
            if frame is None or frame.height < need or frame["date"][-1] != day:
                skipped.append((day, ticker))
                continue
            pdf = frame.select(BAR_COLUMNS).to_pandas()
            if not np.isfinite(pdf.to_numpy()).all():
                skipped.append((day, ticker))
                continue
            keys.append((pd.Timestamp(day), ticker))
            windows.append(pdf)
            stamps.append(pd.DatetimeIndex(pd.to_datetime(frame["date"].to_numpy())))
    key_frame = pd.DataFrame(keys, columns=["date", "ticker"])
    key_frame["date"] = pd.to_datetime(key_frame["date"])
    return ScoringWindows(key_frame, windows, stamps, skipped)


def future_sessions(
    dates: Iterable[pd.Timestamp], steps: int, calendar: str = "XNYS"
) -> dict[pd.Timestamp, pd.DatetimeIndex]:
    """The ``steps`` trading days after each date (exchange calendar, not weekdays)."""
    days = sorted({pd.Timestamp(d).normalize() for d in dates})
    if not days:
        return {}
    sessions = trading_days(days[0], days[-1] + pd.Timedelta(days=2 * steps + 15), calendar)
    out = {}
    for day in days:
        after = sessions[sessions > day][:steps]
        if len(after) != steps:
            raise ValueError(f"{calendar} calendar has fewer than {steps} sessions after {day}")
        out[day] = after
    return out


# --------------------------------------------------------------------------------------
# Paths -> scores
# --------------------------------------------------------------------------------------


def paths_to_scores(
    paths: np.ndarray,
    last_close: np.ndarray,
    close_std: np.ndarray,
    keys: pd.DataFrame,
    horizons: Sequence[int],
    model: str,
    fold_id: str,
) -> pd.DataFrame:
    """Long scores from sampled paths.

    Args:
        paths: [n, sample_count, pred_len, 6] forecasts in input units (close at index 3);
            step ``h`` (1-based, trading days) is ``paths[:, :, h - 1]``.
        last_close: [n] close at the scoring date (USD).
        close_std: [n] population std of the close over the input window (USD).
        keys: ``date, ticker`` of the n series.
        horizons: trading days; each must be ``<= pred_len``.

    Returns:
        ``model, horizon, date, ticker, score, fold`` rows, for ``model`` (``mean / last - 1``)
        and ``model + "_volnorm"`` (``(mean - last) / std``).
    """
    if paths.ndim != 4 or paths.shape[0] != len(keys):
        raise ValueError(f"paths {paths.shape} do not match {len(keys)} keys")
    if max(horizons) > paths.shape[2]:
        raise ValueError(f"horizon {max(horizons)} exceeds the decoded {paths.shape[2]} steps")
    mean_close = paths[:, :, :, CLOSE_INDEX].astype(np.float64).mean(axis=1)  # [n, pred_len]
    last = np.asarray(last_close, np.float64)
    std = np.asarray(close_std, np.float64)
    parts = []
    for h in horizons:
        predicted = mean_close[:, h - 1]
        for name, score in (
            (model, predicted / last - 1.0),
            (model + VOLNORM_SUFFIX, (predicted - last) / std),
        ):
            parts.append(
                keys.assign(model=name, horizon=int(h), score=score, fold=fold_id)[SCORE_COLUMNS]
            )
    if not parts:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def series_seed(seed: int, day: pd.Timestamp, ticker: str) -> int:
    """A seed per (date, ticker), so a series' sampled paths do not depend on its batch."""
    return (seed * 1_000_003 + zlib.crc32(f"{pd.Timestamp(day).date()}|{ticker}".encode())) % (
        2**31
    )


def score_windows(
    engine: Any,
    inputs: ScoringWindows,
    horizons: Sequence[int],
    model: str,
    fold_id: str,
    *,
    calendar: str = "XNYS",
    sample_count: int = 1,
    temperature: float = 1.0,
    top_k: int = 1,
    top_p: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Forecast ``max(horizons)`` steps for every window (one decode) and turn the paths into
    scores with :func:`paths_to_scores`. ``engine``: a :class:`KronosEngine` (or any object
    with its ``forecast`` signature returning ``.paths``)."""
    if len(inputs) == 0:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    steps = max(horizons)
    futures = future_sessions(inputs.keys["date"], steps, calendar)
    result = engine.forecast(
        inputs.windows,
        inputs.timestamps,
        [futures[pd.Timestamp(d)] for d in inputs.keys["date"]],
        pred_len=steps,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        sample_count=sample_count,
        seeds=[series_seed(seed, d, t) for d, t in inputs.keys.itertuples(index=False)],
    )
    closes = [w["close"].to_numpy(np.float64) for w in inputs.windows]
    return paths_to_scores(
        result.paths,
        np.array([c[-1] for c in closes]),
        np.array([c.std() for c in closes]),
        inputs.keys,
        horizons,
        model,
        fold_id,
    )


#: Quantiles of the sampled h-day return kept on every forecast row.
FORECAST_QUANTILES = (0.1, 0.5, 0.9)
FORECAST_SCHEMA = {
    "model": pl.String, "fold": pl.String, "date": pl.Datetime("us"), "ticker": pl.String,
    "horizon": pl.Int64, "last_close": pl.Float64, "close_std": pl.Float64,
    "pred_return_mean": pl.Float64, "pred_return_q10": pl.Float64,
    "pred_return_q50": pl.Float64, "pred_return_q90": pl.Float64,
    "sample_count": pl.Int64, "samples": pl.List(pl.Float64), "embedding": pl.List(pl.Float32),
}  # fmt: skip


def forecast_windows(
    engine: Any,
    inputs: ScoringWindows,
    horizons: Sequence[int],
    model: str,
    fold_id: str,
    *,
    calendar: str = "XNYS",
    sample_count: int = 1,
    temperature: float = 1.0,
    top_k: int = 1,
    top_p: float = 1.0,
    seed: int = 0,
) -> pl.DataFrame:
    """One row per (series, horizon): the sampled h-day price returns ``close_hat[t+h] /
    close[t] - 1`` of every path (``samples``), their mean and 10/50/90 % quantiles (the
    Weibull rule of the forecast metrics), the
    close and its window std (for the volatility-normalised score) and the series' embedding
    (the predictor's mean final hidden state). A series' row depends on that series alone."""
    if len(inputs) == 0:
        return pl.DataFrame(schema=FORECAST_SCHEMA)
    steps = max(horizons)
    futures = future_sessions(inputs.keys["date"], steps, calendar)
    result = engine.forecast(
        inputs.windows, inputs.timestamps,
        [futures[pd.Timestamp(d)] for d in inputs.keys["date"]],
        pred_len=steps, temperature=temperature, top_k=top_k, top_p=top_p,
        sample_count=sample_count,
        seeds=[series_seed(seed, d, t) for d, t in inputs.keys.itertuples(index=False)],
        return_embeddings=True,
    )  # fmt: skip
    closes = [w["close"].to_numpy(np.float64) for w in inputs.windows]
    last = np.array([c[-1] for c in closes])
    std = np.array([c.std() for c in closes])
    paths = result.paths[:, :, :, CLOSE_INDEX].astype(np.float64)  # [n, samples, steps]
    keys = inputs.keys.assign(date=pd.to_datetime(inputs.keys["date"]))
    embeddings = [list(map(float, e)) for e in np.asarray(result.embeddings, np.float32)]
    parts = []
    for h in horizons:
        rets = paths[:, :, h - 1] / last[:, None] - 1.0  # [n, samples]
        q = np.quantile(rets, FORECAST_QUANTILES, axis=1, method=QUANTILE_METHOD)
        parts.append(pl.DataFrame({
            "model": model, "fold": fold_id, "date": keys["date"].to_numpy().astype("datetime64[us]"),
            "ticker": keys["ticker"].to_numpy(), "horizon": int(h), "last_close": last,
            "close_std": std, "pred_return_mean": rets.mean(axis=1),
            "pred_return_q10": q[0], "pred_return_q50": q[1], "pred_return_q90": q[2],
            "sample_count": rets.shape[1], "samples": [list(r) for r in rets],
            "embedding": embeddings,
        }, schema_overrides={"samples": pl.List(pl.Float64), "embedding": pl.List(pl.Float32)}))  # fmt: skip
    return pl.concat(parts).cast(FORECAST_SCHEMA).sort("horizon", "date", "ticker")


def forecasts_to_scores(forecasts: pl.DataFrame) -> pl.DataFrame:
    """The scores a forecast implies, as :func:`paths_to_scores` defines them: ``model``
    (mean predicted return) and ``model_volnorm`` (mean predicted move over the window's
    close std), in the layout of ``baseline_scores``."""
    f = forecasts
    mean = f.select(
        "model", "horizon", "date", "ticker", pl.col("pred_return_mean").alias("score"), "fold"
    )
    vol = f.select(
        (pl.col("model") + VOLNORM_SUFFIX).alias("model"), "horizon", "date", "ticker",
        (pl.col("pred_return_mean") * pl.col("last_close") / pl.col("close_std")).alias("score"),
        "fold",
    )  # fmt: skip
    return pl.concat([mean, vol]).cast(SCORE_SCHEMA).sort("model", "horizon", "date", "ticker")


def to_score_table(scores: pd.DataFrame) -> pl.DataFrame:
    """Scores as a polars frame with the dtypes of ``baseline_scores``."""
    frame = scores.assign(date=pd.to_datetime(scores["date"]))
    return pl.from_pandas(frame[SCORE_COLUMNS]).cast(SCORE_SCHEMA)


# --------------------------------------------------------------------------------------
# Walk-forward checkpoints
# --------------------------------------------------------------------------------------


def validation_fraction(n_dates: int, window: int, floor: float = 0.2, cap: float = 0.5) -> float:
    """Share of the training dates held out for validation: at least ``floor``, and enough for
    two whole windows of ``window`` bars (validation windows must lie inside the held-out
    period), capped at ``cap`` so training keeps at least half of the dates."""
    if n_dates <= 0:
        return floor
    return float(min(cap, max(floor, 2 * window / n_dates)))


def train_checkpoint(
    bars: pl.DataFrame,
    train_cut: dt.date,
    directory: Path,
    kronos: Any,
    lookback: int,
) -> dict[str, Any]:
    """Train a compact tokenizer + predictor on ``bars`` dated ``<= train_cut`` and write them
    to ``directory/tokenizer`` and ``directory/predictor`` (``config.json`` +
    ``model.safetensors`` + ``training_metadata.json``) plus ``manifest.json``.

    ``kronos``: :class:`~kronos_pipeline.settings.KronosSettings` (``train_*`` fields; the
    wall-clock budget ``train_max_minutes`` is split 1/3 tokenizer, 2/3 predictor).
    Returns the manifest.
    """
    from kronos_pipeline.kronos.train import TrainConfig, train_kronos

    cut = pd.Timestamp(train_cut).date()
    late = bars.filter(pl.col("date") > cut).height
    if late:
        raise ValueError(f"train_checkpoint: {late} bars dated after the training cut {cut}")

    n_dates = bars.filter(pl.col("date") <= cut)["date"].n_unique()
    val_fraction = validation_fraction(n_dates, lookback + kronos.train_horizon)

    def cfg(share: float) -> TrainConfig:
        return TrainConfig(
            val_fraction=val_fraction,
            lookback=lookback,
            horizon=kronos.train_horizon,
            stride=kronos.train_stride,
            epochs=kronos.train_epochs,
            windows_per_epoch=kronos.train_windows_per_epoch,
            batch_size=kronos.train_batch_size,
            max_minutes=kronos.train_max_minutes * share,
            seed=kronos.seed,
            device=kronos.train_device,
            patience=max(1, kronos.train_epochs),
        )

    output = train_kronos(bars.to_pandas(), cut, cfg(1 / 3), cfg(2 / 3))
    tok_dir, pred_dir = output.write(directory)
    manifest = {
        "kind": "walkforward",
        "model": TRAINED_MODEL,
        "train_cut": str(cut),
        "tokenizer": str(tok_dir),
        "predictor": str(pred_dir),
        "tickers": int(bars["ticker"].n_unique()),
        "bars": bars.height,
        "first_bar": str(bars["date"].min()),
        "last_bar": str(bars["date"].max()),
        "tokenizer_val_loss": output.tokenizer.best_val_loss,
        "predictor_val_loss": output.predictor.best_val_loss,
        "predictor_start_val_loss": output.predictor.start_val_loss,
    }
    write_manifest(directory, manifest)
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (what the scoring step loads) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a checkpoint folder; says what to run when it is missing."""
    path = directory / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: materialize kronos_checkpoint for this fold first"
        )
    return json.loads(path.read_text())

"""Where a refit period's Kronos checkpoint comes from, and the guard on fine-tuned ones.

Library code, no Dagster. :func:`fit_period_checkpoint` writes ``manifest.json`` (the file the
scoring step reads, :func:`kronos_pipeline.kronos.scoring.read_manifest`) for one of three
strategies (``KronosSettings.strategy``):

* ``published``: the published weights as they are (kind ``zero_shot``); nothing is trained.
* ``scratch``: compact tokenizer + predictor trained from scratch at the cut
  (:func:`kronos_pipeline.kronos.scoring.train_checkpoint`, kind ``walkforward``).
* ``finetune``: the predictor of the previous accepted checkpoint (else the published one)
  fine-tuned (LoRA through peft, or every weight) on PIT windows ending at the cut; its
  tokenizer stays frozen. Two guards decide whether the result replaces the start:
  the training loop's (validation cross-entropy not worse than the start's,
  :func:`kronos_pipeline.kronos.train.fine_tune`), then, against a previous checkpoint, the
  forecast figures on the validation block (:func:`validation_figures`,
  :func:`accept_decision`). A rejected run writes no weights; its manifest points at the
  previous weights and says why.

The validation block is the last ``validation_sessions`` sessions up to the cut. Fine-tuning
windows all end before it (and before the training loop's own validation period, which
contains it), so neither the fine-tuned model nor, with a refit period at least as long, the
previous checkpoint trained on the block's outcomes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import torch

from kronos_pipeline.kronos import hub, scoring
from kronos_pipeline.kronos import train as T
from kronos_pipeline.kronos.scoring import (  # noqa: F401 - also this module's names
    FINETUNE_MODEL,
    STRATEGIES,
    Strategy,
    strategy_model_name,
)
from kronos_pipeline.kronos.windows import FEATURE_COLUMNS, cut_windows, prepare_bars
from kronos_pipeline.settings import KronosSettings, LabelSettings

PREDICTOR_DIR = "predictor"


# --------------------------------------------------------------------------------------
# Validation block and forecast figures
# --------------------------------------------------------------------------------------


def _bars_to_cut(bars: object, cut: dt.date) -> pd.DataFrame:
    """Bars as :func:`prepare_bars` tidies them; refuses any bar dated after ``cut``."""
    frame = prepare_bars(bars)
    late = int((frame["date"] > pd.Timestamp(cut)).sum())
    if late:
        raise ValueError(
            f"{late} bars dated after the cut {cut}: pass only bars dated <= the cut "
            "(scoring.pit_bars(prices, cut) gives them)"
        )
    return frame


def validation_block(sessions: Sequence, cut: dt.date, length: int) -> pd.DatetimeIndex:
    """The last ``length`` sessions dated ``<= cut`` (all of them when fewer exist)."""
    days = pd.DatetimeIndex(pd.to_datetime(np.asarray(sessions))).normalize().unique()
    days = days[days <= pd.Timestamp(cut)].sort_values()
    return days[-length:]


def _validation_inputs(
    frame: pd.DataFrame,
    cut: dt.date,
    horizons: Sequence[int],
    settings: KronosSettings,
) -> tuple[scoring.ScoringWindows, pd.DataFrame, pd.DatetimeIndex]:
    """Windows of the forecast dates and their realised returns.

    Forecast dates: every ``validation_stride``-th session of the block, from its first, that
    has at least ``min(horizons)`` sessions after it up to the cut. A (date, ticker) needs a
    bar on the date and ``lookback`` bars up to it. Realised return for horizon ``h``:
    ``close(t+h) / close(t) - 1``, ``t+h`` the h-th session after ``t``, kept only when that
    session is ``<= cut`` and the ticker has a bar on it.
    """
    sessions = pd.DatetimeIndex(np.sort(frame["date"].unique()))
    block = validation_block(sessions, cut, settings.validation_sessions)
    position = {day: i for i, day in enumerate(sessions)}
    last = len(sessions) - 1
    dates = [d for d in block[:: settings.validation_stride] if position[d] + min(horizons) <= last]
    if not dates:
        raise ValueError(
            f"validation block {block[0].date()}..{block[-1].date()} ({len(block)} sessions) "
            f"has no forecast date whose {min(horizons)}-session outcome is known by the cut "
            f"{cut}: raise kronos.validation_sessions above the shortest horizon"
        )
    keys, windows, stamps, realised = [], [], [], []
    lookback = settings.lookback
    for ticker, bars in frame.groupby("ticker", sort=True):
        bar_dates = pd.DatetimeIndex(bars["date"])
        values = bars[list(FEATURE_COLUMNS)].to_numpy(np.float64)
        row_of = {day: i for i, day in enumerate(bar_dates)}
        for day in dates:
            i = row_of.get(day)
            if i is None or i + 1 < lookback:
                continue
            window = values[i + 1 - lookback : i + 1]
            if not np.isfinite(window).all():
                continue
            keys.append((day, ticker))
            windows.append(pd.DataFrame(window, columns=list(FEATURE_COLUMNS)))
            stamps.append(bar_dates[i + 1 - lookback : i + 1])
            for h in horizons:
                if position[day] + h > last:
                    continue
                j = row_of.get(sessions[position[day] + h])
                if j is not None and np.isfinite(values[j, 3]):
                    realised.append((day, ticker, int(h), values[j, 3] / values[i, 3] - 1.0))
    key_frame = pd.DataFrame(keys, columns=["date", "ticker"])
    key_frame["date"] = pd.to_datetime(key_frame["date"])
    outcome = pd.DataFrame(realised, columns=["date", "ticker", "horizon", "realised"])
    outcome["date"] = pd.to_datetime(outcome["date"])
    return scoring.ScoringWindows(key_frame, windows, stamps, []), outcome, block


def validation_figures(
    tokenizer: torch.nn.Module,
    predictor: torch.nn.Module,
    bars: object,
    cut: dt.date | str | pd.Timestamp,
    horizons: Sequence[int],
    settings: KronosSettings,
    *,
    calendar: str = "XNYS",
) -> dict[str, Any]:
    """Forecast figures of one model on the validation block ending at ``cut``.

    ``bars``: long ``ticker, date, open, high, low, close, volume[, amount]`` bars dated
    ``<= cut`` (split-adjusted as of the cut; a constant rescaling per ticker does not change
    a normalised window, nor a return). One decode of ``max(horizons)`` steps per forecast date
    and ticker (engine settings from ``settings``: device, dtype, batch size, sampling, seed);
    the predicted h-day return is ``mean_s(close_hat[s, h]) / close(t) - 1``, as the scores.

    Figures, per horizon ``h`` (trading days):

    * ``rank_ic``: median over forecast dates of the Spearman correlation across tickers between
      predicted and realised h-day return (dates with fewer than 3 names skipped);
    * ``mae``: mean over (date, ticker) of ``|predicted - realised|`` (fraction of the price).

    Headline ``rank_ic`` and ``mae``: their means over the horizons (NaN when a horizon has no
    figure). Returns ``{"rank_ic", "mae", "by_horizon": {str(h): {"rank_ic", "mae", "dates",
    "rows"}}, "block_start", "block_end", "forecast_dates", "series"}``.
    """
    from kronos_pipeline.evaluation.metrics import rank_ic
    from kronos_pipeline.kronos.engine import KronosEngine

    day = pd.Timestamp(cut).date()
    frame = _bars_to_cut(bars, day)
    inputs, outcome, block = _validation_inputs(frame, day, horizons, settings)
    engine = KronosEngine(
        tokenizer, predictor, device=settings.device, dtype=settings.dtype,
        batch_size=settings.batch_size, max_context=settings.max_context,
    )  # fmt: skip
    scores = scoring.score_windows(
        engine, inputs, horizons, "validation", "", calendar=calendar,
        sample_count=settings.sample_count, temperature=settings.temperature,
        top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed,
    )  # fmt: skip
    scores = scores[scores["model"] == "validation"]
    rows = scores.merge(outcome, on=["date", "ticker", "horizon"], how="inner")
    by_horizon: dict[str, dict[str, float | int]] = {}
    for h in horizons:
        g = rows[rows["horizon"] == int(h)]
        ics = [
            rank_ic(d["score"].to_numpy(), d["realised"].to_numpy()) for _, d in g.groupby("date")
        ]
        ics = [ic for ic in ics if np.isfinite(ic)]
        by_horizon[str(int(h))] = {
            "rank_ic": float(np.median(ics)) if ics else float("nan"),
            "mae": float((g["score"] - g["realised"]).abs().mean()) if len(g) else float("nan"),
            "dates": len(ics),
            "rows": len(g),
        }
    return {
        "rank_ic": float(np.mean([v["rank_ic"] for v in by_horizon.values()])),
        "mae": float(np.mean([v["mae"] for v in by_horizon.values()])),
        "by_horizon": by_horizon,
        "block_start": str(block[0].date()),
        "block_end": str(block[-1].date()),
        "forecast_dates": int(inputs.keys["date"].nunique()),
        "series": len(inputs),
    }


def accept_decision(
    new: dict[str, Any], previous: dict[str, Any] | None, min_ic_gain: float
) -> tuple[bool, str]:
    """Whether a fine-tuned checkpoint replaces the previous one, and why.

    Accepted iff there is no previous checkpoint, or both
    ``new["rank_ic"] >= previous["rank_ic"] + min_ic_gain`` and ``new["mae"] <= previous["mae"]``
    (figures of :func:`validation_figures` on the same block). A figure that is not finite
    cannot show a gain: the new checkpoint is then rejected.
    """
    figures = f"new RankIC {new['rank_ic']:.4f}, MAE {new['mae']:.5f}"
    if previous is None:
        return True, f"accepted: no previous checkpoint to beat ({figures})"
    figures += f"; previous RankIC {previous['rank_ic']:.4f}, MAE {previous['mae']:.5f}"
    values = [new["rank_ic"], new["mae"], previous["rank_ic"], previous["mae"]]
    if not np.isfinite(values).all():
        return False, f"rejected: a figure could not be computed ({figures})"
    failed = []
    if not new["rank_ic"] >= previous["rank_ic"] + min_ic_gain:
        failed.append(
            f"RankIC gain {new['rank_ic'] - previous['rank_ic']:+.4f} < {min_ic_gain:.4f}"
        )
    if not new["mae"] <= previous["mae"]:
        failed.append(f"MAE worse by {new['mae'] - previous['mae']:.5f}")
    if failed:
        return False, f"rejected: {', '.join(failed)} ({figures})"
    return True, f"accepted: RankIC gain >= {min_ic_gain:.4f} and MAE not worse ({figures})"


# --------------------------------------------------------------------------------------
# Checkpoints per strategy
# --------------------------------------------------------------------------------------


def _weights_sha256(source: str, revision: str | None) -> str:
    return hub.file_sha256(hub.resolve_checkpoint_dir(source, revision) / hub.WEIGHTS_NAME)


def _bars_summary(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "tickers": int(frame["ticker"].nunique()),
        "bars": len(frame),
        "first_bar": str(frame["date"].min().date()) if len(frame) else None,
        "last_bar": str(frame["date"].max().date()) if len(frame) else None,
    }


def _published_manifest(settings: KronosSettings, cut: dt.date) -> dict[str, Any]:
    return {
        "kind": "zero_shot",
        "strategy": "published",
        "model": scoring.ZERO_SHOT_MODEL,
        "train_cut": str(cut),
        "predictor": settings.predictor,
        "predictor_revision": settings.predictor_revision,
        "tokenizer": settings.tokenizer,
        "tokenizer_revision": settings.tokenizer_revision,
        "predictor_sha256": _weights_sha256(settings.predictor, settings.predictor_revision),
        "pretrain_cutoff": str(settings.pretrain_cutoff),
        "last_bar": str(settings.pretrain_cutoff),
    }


def _start_of(settings: KronosSettings, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint a fine-tune starts from: the previous accepted one, else the published."""
    if previous is not None:
        return {
            "from": "previous",
            "predictor": str(previous["predictor"]),
            "predictor_revision": previous.get("predictor_revision"),
            "tokenizer": str(previous["tokenizer"]),
            "tokenizer_revision": previous.get("tokenizer_revision"),
            # Weights descended from the published ones saw what they saw (SPEC 4).
            "pretrain_cutoff": previous.get("pretrain_cutoff"),
        }
    return {
        "from": "published",
        "predictor": settings.predictor,
        "predictor_revision": settings.predictor_revision,
        "tokenizer": settings.tokenizer,
        "tokenizer_revision": settings.tokenizer_revision,
        "pretrain_cutoff": str(settings.pretrain_cutoff),
    }


def finetune_config(settings: KronosSettings, val_fraction: float) -> T.TrainConfig:
    """The :class:`~kronos_pipeline.kronos.train.TrainConfig` of a fine-tuning run."""
    return T.TrainConfig(
        mode=settings.finetune_mode,
        lookback=settings.lookback,
        horizon=settings.train_horizon,
        val_fraction=val_fraction,
        stride=settings.train_stride,
        epochs=settings.train_epochs,
        windows_per_epoch=settings.train_windows_per_epoch,
        max_val_windows=settings.finetune_val_windows,
        batch_size=settings.train_batch_size,
        lr=settings.finetune_lr,
        max_minutes=settings.train_max_minutes,
        seed=settings.seed,
        device=settings.train_device,
        patience=max(1, settings.train_epochs),
        lora_rank=settings.lora_r,
        lora_alpha=float(settings.lora_alpha),
        lora_target_modules=tuple(settings.lora_targets),
    )


def finetune_val_fraction(n_dates: int, settings: KronosSettings) -> float:
    """Share of the dates up to the cut held out from fine-tuning: the validation block, and at
    least one window plus one stride (the training loop validates on whole windows)."""
    window = settings.lookback + settings.train_horizon
    held_out = max(settings.validation_sessions, window + settings.train_stride) + 1
    if held_out >= n_dates:
        raise ValueError(
            f"fine-tuning needs more than {held_out} sessions of bars up to the cut (the "
            f"validation block of {settings.validation_sessions} and a {window}-bar window), "
            f"got {n_dates}: load more history (kronos.train_history_days) or shorten "
            "kronos.validation_sessions"
        )
    return held_out / n_dates


def _write_predictor(model: torch.nn.Module, result: T.TrainResult, directory: Path) -> Path:
    """Write the merged predictor under ``directory/predictor`` through a temporary folder
    renamed into place, so a crash never leaves half a checkpoint under the final name."""
    final = directory / PREDICTOR_DIR
    tmp = directory / f".{PREDICTOR_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    merged = dataclasses.replace(result, model=model)
    T.write_trained_checkpoint(merged, tmp, save_adapter=False)
    if final.exists():
        old = directory / f".{PREDICTOR_DIR}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def _finetune(
    frame: pd.DataFrame,
    cut: dt.date,
    directory: Path,
    settings: KronosSettings,
    previous: dict[str, Any] | None,
    horizons: Sequence[int],
    calendar: str,
) -> dict[str, Any]:
    start = _start_of(settings, previous)
    tokenizer = hub.load_tokenizer(start["tokenizer"], revision=start["tokenizer_revision"])
    start_predictor = hub.load_predictor(start["predictor"], revision=start["predictor_revision"])
    n_dates = frame["date"].nunique()
    cfg = finetune_config(settings, finetune_val_fraction(n_dates, settings))
    windows = cut_windows(frame, cut, cfg.lookback, cfg.horizon, cfg.val_fraction, cfg.stride)
    t0 = time.perf_counter()
    result = T.fine_tune(windows, start_predictor, cfg, kind="predictor", tokenizer=tokenizer)
    train_s = time.perf_counter() - t0
    new_predictor = T.plain_model(result.model).eval()

    t0 = time.perf_counter()
    if result.accepted:
        new_fig = validation_figures(
            tokenizer, new_predictor, frame, cut, horizons, settings, calendar=calendar
        )
        prev_fig = (
            validation_figures(
                tokenizer, start_predictor, frame, cut, horizons, settings, calendar=calendar
            )
            if previous is not None
            else None
        )
        accepted, reason = accept_decision(new_fig, prev_fig, settings.accept_min_ic_gain)
    else:  # the training loop kept the start: there is no new model to judge
        new_fig, prev_fig = None, None
        accepted, reason = (
            False,
            f"rejected by the training loop's guard: {result.metadata['guard_reason']}",
        )
    validation_s = time.perf_counter() - t0

    if accepted:
        pred_dir = _write_predictor(new_predictor, result, directory)
        predictor, revision = str(pred_dir), None
        sha = hub.file_sha256(pred_dir / hub.WEIGHTS_NAME)
    else:
        stale = directory / PREDICTOR_DIR  # weights an earlier run of this period accepted
        if stale.exists() and stale.resolve() != Path(start["predictor"]).expanduser().resolve():
            shutil.rmtree(stale)
        predictor, revision = start["predictor"], start["predictor_revision"]
        sha = _weights_sha256(predictor, revision)
    val_summary = windows.summary()
    return {
        "kind": "finetune",
        "strategy": "finetune",
        "model": FINETUNE_MODEL,
        "finetune_mode": settings.finetune_mode,
        "train_cut": str(cut),
        "predictor": predictor,
        "predictor_revision": revision,
        "predictor_sha256": sha,
        "tokenizer": start["tokenizer"],
        "tokenizer_revision": start["tokenizer_revision"],
        "start": {k: start[k] for k in ("from", "predictor", "predictor_revision")},
        "pretrain_cutoff": start["pretrain_cutoff"],
        **_bars_summary(frame),
        # Newest bar any fine-tuning window (training or validation) read.
        "last_train_bar": val_summary["val"]["last_date"] or val_summary["train"]["last_date"],
        "windows": {"train": val_summary["train"], "val": val_summary["val"]},
        "lora": result.metadata.get("lora"),
        "predictor_val_loss": result.best_val_loss,
        "predictor_start_val_loss": result.start_val_loss,
        "training": {
            k: result.metadata[k] for k in ("steps", "stopped_by", "tokens_per_s", "elapsed_s")
        },
        "decision": {
            "accepted": accepted,
            "reason": reason,
            "min_ic_gain": settings.accept_min_ic_gain,
            "loss_guard_accepted": result.accepted,
            "new": new_fig,
            "previous": prev_fig,
        },
        "train_elapsed_s": round(train_s, 3),
        "validation_elapsed_s": round(validation_s, 3),
    }


def fit_period_checkpoint(
    strategy: Strategy,
    bars: pl.DataFrame | pd.DataFrame,
    cut: dt.date | str | pd.Timestamp,
    directory: str | Path,
    settings: KronosSettings,
    previous: dict[str, Any] | None = None,
    *,
    horizons: Sequence[int] | None = None,
    calendar: str = "XNYS",
) -> dict[str, Any]:
    """The checkpoint of one refit period, described by ``directory/manifest.json``.

    Args:
        strategy: ``published``, ``scratch`` or ``finetune`` (see the module docstring).
        bars: ``ticker, date, open, high, low, close, volume[, amount]`` dated ``<= cut``,
            split-adjusted as of the cut (``scoring.pit_bars``); unused by ``published``.
        cut: the period's training cut; no bar after it may be passed.
        directory: the period's checkpoint folder (created).
        settings: ``KronosSettings`` (``train_*``, ``finetune_*``, ``lora_*``, validation and
            engine fields).
        previous: the manifest of the previous period's checkpoint (``finetune`` starts from it
            and must beat it); ignored by the other strategies.
        horizons: forecast horizons of the guard, trading days (default: the labels').
        calendar: exchange calendar of the forecast timestamps.

    Returns:
        The manifest written. Every strategy: ``kind``, ``strategy``, ``model`` (score model
        name), ``train_cut``, ``predictor``/``predictor_revision``, ``tokenizer``/
        ``tokenizer_revision``, ``predictor_sha256`` and ``last_bar``. ``finetune`` also:
        ``decision`` (``accepted``, ``reason``, ``new`` and ``previous`` figures,
        ``min_ic_gain``, ``loss_guard_accepted``), ``start``, ``pretrain_cutoff`` (None when the
        weights never descended from the published ones), losses, windows and timings.
    """
    day = pd.Timestamp(cut).date()
    out = Path(directory)
    horizons = tuple(horizons if horizons is not None else LabelSettings().horizons)
    if strategy == "published":
        manifest = _published_manifest(settings, day)
    elif strategy == "scratch":
        frame = pl.from_pandas(bars) if isinstance(bars, pd.DataFrame) else bars
        manifest = scoring.train_checkpoint(frame, day, out, settings, settings.lookback)
        weights = Path(manifest["predictor"]) / hub.WEIGHTS_NAME
        manifest.update(
            strategy="scratch",
            predictor_revision=None,
            tokenizer_revision=None,
            predictor_sha256=hub.file_sha256(weights),
        )
    elif strategy == "finetune":
        frame = _bars_to_cut(bars, day)
        manifest = _finetune(frame, day, out, settings, previous, horizons, calendar)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    scoring.write_manifest(out, manifest)
    return manifest


def verify_pointed_weights(manifest: dict[str, Any]) -> None:
    """Raise when the predictor weights a manifest points at changed since it was written
    (a manifest that kept a previous period's weights points into that period's folder)."""
    expected = manifest.get("predictor_sha256")
    if expected is None:
        return
    actual = _weights_sha256(str(manifest["predictor"]), manifest.get("predictor_revision"))
    if actual != expected:
        raise hub.KronosCheckpointError(
            f"the predictor weights at {manifest['predictor']} changed since this manifest was "
            f"written (sha256 {expected[:12]}... recorded, {actual[:12]}... found): "
            "materialize this period's kronos_checkpoint again"
        )

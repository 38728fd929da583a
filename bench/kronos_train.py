"""Benchmark: train the compact Kronos tokenizer + predictor on real daily bars.

Reads the vendor CSVs directly (one gzip CSV per ticker, AlphaVantage daily-adjusted layout),
split-adjusts them point-in-time (forward cumulative product of ``split_coefficient``:
``price * cumprod(split)``, ``volume / cumprod(split)``), keeps the first ``--tickers`` tickers
(alphabetical) with at least 95 % of the trading days between ``--start`` and ``--end``, and
trains both models with the training cut at ``--end`` under one wall-clock budget.

The budget is split between the stages from a short throughput calibration on the same
windows (so the learning-rate schedule fits the time); each stage also has a hard
``max_minutes`` stop. Prints a table and optionally writes JSON; peak memory is the process's
peak resident set size (``ru_maxrss``).

Usage::

    .venv/bin/python bench/kronos_train.py --data ../shared/data/sp500_daily --tickers 100 \\
        --start 2010-01-01 --end 2019-12-31 --budget-minutes 10 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kronos_pipeline.kronos import hub
from kronos_pipeline.kronos import train as T
from kronos_pipeline.kronos.windows import WindowSet, cut_windows, fixed_subset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "sp500_daily").resolve()


def load_bars(data_dir: Path, n_tickers: int, start: str, end: str) -> pd.DataFrame:
    """Split-adjusted long bars of the first ``n_tickers`` tickers with full history."""
    files = sorted(data_dir.glob("DA-*-T-*.csv.gz"))
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    frames: list[pd.DataFrame] = []
    expected_days = None
    for path in files:
        ticker = path.name[3:].rsplit("-T-", 1)[0]
        try:
            df = pd.read_csv(path, parse_dates=["timestamp"])
        except Exception:  # noqa: BLE001 - a broken vendor file is skipped
            continue
        need = {"timestamp", "open", "high", "low", "close", "volume", "split_coefficient"}
        if not need <= set(df.columns):
            continue
        df = df.sort_values("timestamp").reset_index(drop=True)
        factor = df["split_coefficient"].astype(float).replace(0.0, 1.0).cumprod()
        out = pd.DataFrame(
            {
                "ticker": ticker,
                "date": df["timestamp"],
                "open": df["open"] * factor,
                "high": df["high"] * factor,
                "low": df["low"] * factor,
                "close": df["close"] * factor,
                "volume": df["volume"] / factor,
            }
        )
        out = out[(out["date"] >= lo) & (out["date"] <= hi)]
        if expected_days is None:
            expected_days = len(pd.bdate_range(lo, hi)) * 0.96  # ~holidays
        if len(out) < 0.95 * expected_days:
            continue
        frames.append(out)
        if len(frames) == n_tickers:
            break
    if len(frames) < n_tickers:
        raise SystemExit(f"only {len(frames)} tickers with full history in {data_dir}")
    return pd.concat(frames, ignore_index=True)


def measure_rate(
    kind: str, windows: WindowSet, cfg: T.TrainConfig, tok=None
) -> tuple[float, float]:
    """Throughput (window bars per second) of a fresh compact model: training (4 timed
    steps of ``batch_size`` windows) and validation (2 timed forward passes of
    ``eval_batch_size`` windows)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    starts = rng.choice(windows.train_starts, size=cfg.batch_size * 6, replace=False)
    if kind == "tokenizer":
        model = T.build_tokenizer(T.COMPACT_TOKENIZER_CONFIG)
    else:
        model = T.build_predictor(T.COMPACT_PREDICTOR_CONFIG)

    def loss_of(chunk: np.ndarray) -> tuple[torch.Tensor, int]:
        x, stamp = windows.batch(chunk)
        xt, st = torch.from_numpy(x), torch.from_numpy(stamp)
        if kind == "tokenizer":
            return T.tokenizer_losses(model, xt)[0], x.shape[0] * x.shape[1]
        return T.predictor_losses(model, tok, xt, st)[0], x.shape[0] * x.shape[1]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    elapsed, tokens = 0.0, 0
    for i in range(6):
        t0 = time.perf_counter()
        loss, n = loss_of(starts[i * cfg.batch_size : (i + 1) * cfg.batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            elapsed += time.perf_counter() - t0
            tokens += n
    train_rate = tokens / elapsed
    model.eval()
    eval_starts = rng.choice(windows.train_starts, size=cfg.eval_batch_size * 2, replace=False)
    t0 = time.perf_counter()
    tokens = 0
    with torch.no_grad():
        for i in range(2):
            tokens += loss_of(eval_starts[i * cfg.eval_batch_size : (i + 1) * cfg.eval_batch_size])[
                1
            ]
    return train_rate, tokens / (time.perf_counter() - t0)


def unigram_ce(tok: torch.nn.Module, windows: WindowSet, n: int, seed: int) -> float:
    """Baseline: cross-entropy (nats/token, mean of s1 and s2) of the validation tokens under
    the token frequencies of training windows (add-one smoothing)."""
    rng = np.random.default_rng(seed)
    tr = fixed_subset(windows.train_starts, rng, n)
    va = fixed_subset(windows.val_starts, rng, n)
    cfg = tok.config
    out = []
    with torch.no_grad():
        enc = [tok.encode(torch.from_numpy(windows.batch(s)[0]), half=True) for s in (tr, va)]
    for half, bits in ((0, cfg.s1_bits), (1, cfg.s2_bits)):
        counts = np.bincount(enc[0][half].numpy().ravel(), minlength=2**bits) + 1.0
        logp = np.log(counts / counts.sum())
        out.append(-logp[enc[1][half].numpy().ravel()].mean())
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tickers", type=int, default=100)
    ap.add_argument("--start", default="2010-01-01")
    ap.add_argument("--end", default="2019-12-31")
    ap.add_argument("--lookback", type=int, default=252)
    ap.add_argument("--horizon", type=int, default=90)
    ap.add_argument("--budget-minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: temp)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)

    t_all = time.perf_counter()
    bars = load_bars(args.data, args.tickers, args.start, args.end)
    t_load = time.perf_counter() - t_all
    base = T.TrainConfig(
        lookback=args.lookback,
        horizon=args.horizon,
        val_fraction=0.15,
        batch_size=32,
        eval_batch_size=64,
        max_val_windows=256,
        seed=args.seed,
        num_threads=args.threads,
        log_every=20,
        patience=3,
    )
    windows = cut_windows(
        bars, args.end, base.lookback, base.horizon, base.val_fraction, base.stride
    )
    t_windows = time.perf_counter() - t_all
    print(json.dumps(windows.summary(), indent=1))

    # Calibrate throughput, then split the remaining budget 30 / 70 between the stages.
    tok_rate, tok_eval_rate = measure_rate("tokenizer", windows, base)
    probe_tok = T.build_tokenizer(T.COMPACT_TOKENIZER_CONFIG).eval()
    pred_rate, pred_eval_rate = measure_rate("predictor", windows, base, tok=probe_tok)
    spent = time.perf_counter() - t_all
    remaining = args.budget_minutes * 60.0 - spent - 20.0  # 20 s for writing and slack
    length = windows.window_length
    plans = {}
    stages = (
        ("tokenizer", 0.3, tok_rate, tok_eval_rate),
        ("predictor", 0.7, pred_rate, pred_eval_rate),
    )
    for kind, share, rate, eval_rate in stages:
        stage_s = remaining * share
        epochs = 6
        eval_s = (epochs + 1) * base.max_val_windows * length / eval_rate
        train_windows = max(base.batch_size, (stage_s - eval_s) * 0.9 * rate / length)
        per_epoch = int(math.ceil(train_windows / epochs / base.batch_size)) * base.batch_size
        plans[kind] = dataclasses.replace(
            base,
            epochs=epochs,
            windows_per_epoch=per_epoch,
            lr=2e-3 if kind == "predictor" else 1e-3,
            max_minutes=stage_s / 60.0,
        )
    plan_text = {
        k: (v.epochs, v.windows_per_epoch, round(v.max_minutes, 2)) for k, v in plans.items()
    }
    print(
        f"calibration (train/eval bars/s): tokenizer {tok_rate:.0f}/{tok_eval_rate:.0f}, "
        f"predictor {pred_rate:.0f}/{pred_eval_rate:.0f}; "
        f"plans (epochs, windows/epoch, max minutes): {plan_text}"
    )

    t_train = time.perf_counter()
    tok_res = T.train_tokenizer(windows, plans["tokenizer"])
    pred_res = T.train_predictor(windows, tok_res.model, plans["predictor"])
    train_s = time.perf_counter() - t_train
    wall_s = time.perf_counter() - t_all

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="kronos_bench_"))
    output = T.KronosTrainingOutput(tokenizer=tok_res, predictor=pred_res)
    tok_dir, pred_dir = output.write(out_dir)
    loaded = hub.load_predictor(pred_dir)
    same = all(
        torch.equal(v, loaded.state_dict()[k]) for k, v in pred_res.model.state_dict().items()
    )
    baseline = unigram_ce(tok_res.model, windows, 256, args.seed)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    rows = []
    for res in (tok_res, pred_res):
        m = res.metadata
        rows.append(
            {
                "stage": res.kind,
                "params": sum(p.numel() for p in res.model.parameters()),
                "steps": m["steps"],
                "windows_seen": m["steps"] * base.batch_size,
                "bars_per_s": m["tokens_per_s"],
                "wall_s": m["elapsed_s"],
                "val_metric": m["val_metric"],
                "start_val": round(res.start_val_loss, 4),
                "best_val": round(res.best_val_loss, 4),
                "stopped_by": m["stopped_by"],
            }
        )
    print()
    print(pd.DataFrame(rows).to_string(index=False))
    summary = {
        "date_utc": pd.Timestamp.now("UTC").isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} threads",
        "load_average_after": os.getloadavg(),
        "tickers": len(windows.tickers),
        "bars": int(len(windows.values)),
        "train_windows": int(len(windows.train_starts)),
        "val_windows": int(len(windows.val_starts)),
        "val_windows_evaluated": base.max_val_windows,
        "window_bars": length,
        "data_load_s": round(t_load, 1),
        "windowing_s": round(t_windows - t_load, 1),
        "train_s": round(train_s, 1),
        "wall_s_total": round(wall_s, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "predictor_val_ce_nats": round(pred_res.best_val_loss, 4),
        "unigram_baseline_ce_nats": round(baseline, 4),
        "uniform_ce_nats": round(math.log(2**8), 4),
        "tokenizer_val_mse": round(tok_res.best_val_loss, 5),
        "checkpoint_dir": str(out_dir),
        "reload_identical": same,
        "stages": rows,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

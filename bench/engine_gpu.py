"""Benchmark: the Kronos engine's decode at the pipeline's defaults, on any device.

Kronos-small and Tokenizer-base shapes with random weights (or ``--compact``: the
walk-forward models' ``COMPACT_*_CONFIG``), lookback 252, 90 steps. Printed tables:

* ``throughput``: ``--series`` windows of 252 bars, greedy, at the engine's auto row count
  (or ``--batch-sizes``), fp32 and bf16, with and without CUDA graphs (``--graphs``), after
  one untimed warm-up call; for bf16 the deviation of the predicted close from fp32's;
* ``date``: one scoring date as ``kronos_forecasts`` runs it: 100 windows of mixed lengths
  (150-252 bars), 8 sampled paths (top_p 0.9), 90 steps; the first call (which captures
  the CUDA graphs, if any) and the median of the next three;
* ``step profile``: ``torch.profiler`` over one micro-batch of 20 steps: operator calls per
  decode step (every device), and on CUDA the kernel launches per step (graph replays
  counted as one launch each, plus what runs outside them), device-to-host copies and
  synchronisations during the decode loop, and the share of the wall time the GPU is busy
  (union of kernel intervals over the wall time).

On CUDA the decode loop also runs under ``torch.cuda.set_sync_debug_mode("error")``: any
host synchronisation inside it fails the run.

    python bench/engine_gpu.py --device cuda [--series 4096] [--graphs both] [--compact]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kronos_pipeline.kronos import Kronos, KronosTokenizer  # noqa: E402
from kronos_pipeline.kronos.engine import KronosEngine  # noqa: E402
from kronos_pipeline.kronos.hub import resolve_device  # noqa: E402
from kronos_pipeline.kronos.train import (  # noqa: E402
    COMPACT_PREDICTOR_CONFIG,
    COMPACT_TOKENIZER_CONFIG,
)

TOKENIZER_BASE = dict(
    d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4,
    ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=10, s2_bits=10,
    beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05, group_size=4,
)  # fmt: skip
KRONOS_SMALL = dict(
    s1_bits=10, s2_bits=10, n_layers=8, d_model=512, n_heads=8, ff_dim=1024,
    ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, token_dropout_p=0.0,
    learn_te=True,
)  # fmt: skip
LOOKBACK, STEPS = 252, 90


def make_windows(n: int, steps: int, seed: int, mixed: bool):
    """``n`` random-walk OHLCV windows (252 bars, or 150-252 when ``mixed``)."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2012-01-02", periods=LOOKBACK + steps)
    windows, stamps, futures = [], [], []
    for _ in range(n):
        t = LOOKBACK - (int(rng.integers(0, 103)) if mixed else 0)
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.015, t)))
        frame = pd.DataFrame(
            {
                "open": close * (1 + rng.normal(0, 0.003, t)),
                "high": close * 1.01,
                "low": close * 0.99,
                "close": close,
                "volume": rng.uniform(1e5, 1e6, t),
            }
        )
        windows.append(frame)
        stamps.append(days[LOOKBACK - t : LOOKBACK])
        futures.append(days[LOOKBACK:])
    return windows, stamps, futures


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def no_sync_in_decode(engine: KronosEngine):
    """On CUDA: fail on any host synchronisation inside the decode loop."""
    if engine.device.type != "cuda" or not hasattr(engine, "_decode_loop"):
        yield
        return
    original = engine._decode_loop

    def guarded(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    engine._decode_loop = guarded
    try:
        yield
    finally:
        engine._decode_loop = original


def busy_union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -1.0
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _profile_forecast(engine: KronosEngine, steps: int) -> tuple[list, float]:
    from torch.profiler import ProfilerActivity, profile

    rows = engine.batch_size
    w, s, f = make_windows(rows, steps, seed=7, mixed=False)
    f = [x[:steps] for x in f]
    engine.forecast(w, s, f, pred_len=steps, top_k=1)  # warm-up (and capture)
    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        wall, _ = timed(engine.device, lambda: engine.forecast(w, s, f, pred_len=steps, top_k=1))
    return prof, wall


def _counts(prof) -> dict:
    events = prof.events()
    cpu = [e for e in events if e.device_type.name == "CPU"]
    top_ops = [
        e for e in cpu
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]  # fmt: skip
    launch_names = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                    "cuLaunchKernelEx", "cudaGraphLaunch")  # fmt: skip
    return {
        "ops": len(top_ops),
        "launches": sum(e.name in launch_names for e in cpu),
        "memcpy": sum(e.name.startswith("cudaMemcpy") for e in cpu),
        "syncs": sum("Synchronize" in e.name for e in cpu),
        "kernels": [
            (e.time_range.start, e.time_range.end) for e in events if e.device_type.name == "CUDA"
        ],  # fmt: skip
    }


def step_profile(engine: KronosEngine, steps: int = 21) -> dict:
    """Per decode step, by difference: one micro-batch forecast ``steps`` steps and one
    forecast 1 step (prefill, first token and the tokenizer's decode are in both), the
    difference divided by ``steps - 1``. Needs no hook in the engine, so any revision
    can be measured the same way. Operators are the top-level ``aten::`` calls (views
    included); launches are kernel launches plus CUDA graph launches."""
    long_prof, wall = _profile_forecast(engine, steps)
    short_prof, _ = _profile_forecast(engine, 1)
    a, b = _counts(long_prof), _counts(short_prof)
    per = max(steps - 1, 1)
    out = {
        "rows": engine.batch_size,
        "wall_s": wall,
        "aten_ops_per_step": (a["ops"] - b["ops"]) / per,
    }
    if engine.device.type == "cuda":
        out["launches_per_step"] = (a["launches"] - b["launches"]) / per
        out["memcpy_per_step"] = (a["memcpy"] - b["memcpy"]) / per
        out["syncs_per_step"] = (a["syncs"] - b["syncs"]) / per
        out["gpu_busy_share"] = busy_union(a["kernels"]) / (wall * 1e6)
        out["top_kernels"] = long_prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--series", type=int, default=4096)
    parser.add_argument("--batch-sizes", default="auto")
    parser.add_argument("--date-batch-sizes", default="auto,1024")
    parser.add_argument("--graphs", default="both", choices=["off", "on", "both"])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--compact", action="store_true", help="the walk-forward compact models")
    parser.add_argument("--skip", default="", help="comma-separated tables to skip")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    tok_cfg = COMPACT_TOKENIZER_CONFIG if args.compact else TOKENIZER_BASE
    pred_cfg = COMPACT_PREDICTOR_CONFIG if args.compact else KRONOS_SMALL
    tok, pred = KronosTokenizer(**tok_cfg).eval(), Kronos(**pred_cfg).eval()
    name = "compact" if args.compact else "Kronos-small"
    print(
        f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, {os.cpu_count()} CPUs, threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, model {name}",
        flush=True,
    )
    graph_modes = {"off": [False], "on": [True], "both": [False, True]}[args.graphs]
    if device.type != "cuda":
        graph_modes = [False]
    dtypes = args.dtypes.split(",")
    sizes = [None if b == "auto" else int(b) for b in args.batch_sizes.split(",")]
    skip = set(args.skip.split(","))

    def engine_for(dtype, bs, graphs):
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        return KronosEngine(tok, pred, device=str(device), dtype=dtype, batch_size=bs,
                            cuda_graphs=graphs)  # fmt: skip

    if "throughput" not in skip:
        print(
            "\n| table | dtype | graphs | rows | series | s | series/s | peak GiB | close dev vs fp32 |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        w, s, f = make_windows(args.series, STEPS, seed=1, mixed=False)
        for graphs in graph_modes:
            for bs in sizes:
                fp32_close = None
                for dtype in dtypes:
                    try:
                        engine = engine_for(dtype, bs, graphs)
                        n = engine.batch_size
                        engine.forecast(w[:n], s[:n], f[:n], pred_len=STEPS, top_k=1)  # warm-up
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        with no_sync_in_decode(engine):
                            sec, res = timed(
                                device,
                                lambda e=engine: e.forecast(w, s, f, pred_len=STEPS, top_k=1),
                            )
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"| throughput | {dtype} | {graphs} | {bs} | FAILED: {exc!r} |")
                        continue
                    peak = (
                        torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda"
                        else float("nan")
                    )
                    close = res.paths[:, 0, :, 3]
                    dev = ""
                    if dtype == "float32":
                        fp32_close = close
                    elif fp32_close is not None:
                        rel = np.abs(close - fp32_close) / np.abs(fp32_close)
                        dev = f"median {np.median(rel):.1e}, p99 {np.quantile(rel, 0.99):.1e}"
                    extra = (
                        f" ({engine.row_bytes / 2**20:.1f} MiB/row"
                        + (" measured)" if engine.row_bytes_measured else " estimated)")
                        if engine.row_bytes
                        else ""
                    )
                    print(f"| throughput | {dtype} | {graphs} | {n}{extra} | {len(w)} | {sec:.2f} | "
                          f"{len(w) / sec:.0f} | {peak:.1f} | {dev} |", flush=True)  # fmt: skip
                    del engine

    if "date" not in skip:
        print("\n| table | dtype | graphs | rows | first call s | next calls s (median of 3) |")
        print("|---|---|---|---|---|---|")
        w, s, f = make_windows(100, STEPS, seed=2, mixed=True)
        kw = dict(pred_len=STEPS, top_k=0, top_p=0.9, sample_count=8)
        date_sizes = [None if b == "auto" else int(b) for b in args.date_batch_sizes.split(",")]
        if device.type != "cuda":
            date_sizes = sizes
        for graphs in graph_modes:
            for dtype in dtypes:
                for bs in date_sizes:
                    try:
                        engine = engine_for(dtype, bs, graphs)
                        with no_sync_in_decode(engine):
                            first, _ = timed(device, lambda e=engine: e.forecast(w, s, f, **kw))
                            nxt = [timed(device, lambda e=engine: e.forecast(w, s, f, **kw))[0]
                                   for _ in range(3)]  # fmt: skip
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"| date | {dtype} | {graphs} | {bs} | FAILED: {exc!r} | |")
                        continue
                    print(f"| date | {dtype} | {graphs} | {engine.batch_size} | {first:.2f} | "
                          f"{statistics.median(nxt):.2f} |", flush=True)  # fmt: skip
                    del engine

    if "profile" not in skip:
        print("\n| table | dtype | graphs | rows | aten ops/step | launches/step | memcpy/step "
              "| syncs/step | GPU busy |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        tables = []
        for graphs in graph_modes:
            for dtype in dtypes:
                try:
                    engine = engine_for(dtype, sizes[0], graphs)
                    p = step_profile(engine)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"| profile | {dtype} | {graphs} | FAILED: {exc!r} |")
                    continue
                print(
                    f"| profile | {dtype} | {graphs} | {p['rows']} | {p['aten_ops_per_step']:.0f} | "
                    f"{p.get('launches_per_step', float('nan')):.1f} | "
                    f"{p.get('memcpy_per_step', float('nan')):.2f} | "
                    f"{p.get('syncs_per_step', float('nan')):.2f} | "
                    f"{p.get('gpu_busy_share', float('nan')):.0%} |",
                    flush=True,
                )
                if "top_kernels" in p:
                    tables.append((dtype, graphs, p["top_kernels"]))
                del engine
        for dtype, graphs, table in tables:
            print(f"\n## top operators, {dtype}, graphs {graphs}\n{table}")


if __name__ == "__main__":
    main()

"""Benchmark: reference Kronos ``predict_batch`` against our KV-cached engine.

Both run on the same random weights of the real shapes (Kronos-small + Tokenizer-base, and
a Kronos-mini-shaped model with the Tokenizer-base shape), lookback 252, greedy decoding
(top_k=1).
The reference re-runs the whole window per generated step, so it is measured on one batch
of 12 series only; ours on 64 series with micro-batches of 12 and 64 rows, in float32 and
bfloat16. Everything runs in one process, interleaved, because the machine is shared and
noisy. Printed per row: wall seconds, series/s, peak extra memory (RSS on CPU, allocator
peak on CUDA) and, for ours, the deviation from the reference (fp32) or from our fp32
(bf16) on the same series. Each engine configuration is warmed up once (untimed) first:
a nightly scoring process runs many micro-batches, and the first touch of freshly mapped
memory is several times slower on this VM than reuse.

The run also measures this machine's ceiling, in the same process: the oneDNN linear rate
(GFLOP/s, at the prefill's shape) and the memory read rate (GB/s, summing a 512 MiB
tensor). From them it prints a bound on series/s for each shape: linear FLOPs (tokenizer
encode and decode, predictor prefill and decode, heads) at that rate plus the K/V cache
reads of decoding at that bandwidth. Everything else (attention arithmetic, norms,
softmax, the reference's quirks) is left out. It bounds any implementation that runs the
compute-bound and the memory-bound phases one after the other on these kernels.

Ours runs at fixed row counts (every micro-batch padded to ``batch``; see the engine's
docstring), so a partial last micro-batch costs a full one. ``--batch-sizes`` lists the
row counts (``auto``: the engine's choice, from free memory on accelerators);
``--cuda-graphs`` decodes through the static step captured in CUDA graphs.

Usage: ``python bench/kronos_engine.py [--quick] [--threads N] [--markdown out.md]
[--device cuda] [--shapes Kronos-small] [--steps 90] [--batch-sizes 12,64,auto]
[--cuda-graphs]``
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kronos_pipeline.kronos import Kronos, KronosTokenizer  # noqa: E402
from kronos_pipeline.kronos.engine import KronosEngine  # noqa: E402
from kronos_pipeline.kronos.hub import resolve_device  # noqa: E402

TOKENIZER = dict(
    d_in=6,
    d_model=256,
    n_heads=4,
    ff_dim=512,
    n_enc_layers=4,
    n_dec_layers=4,
    ffn_dropout_p=0.0,
    attn_dropout_p=0.0,
    resid_dropout_p=0.0,
    s1_bits=10,
    s2_bits=10,
    beta=0.05,
    gamma0=1.0,
    gamma=1.1,
    zeta=0.05,
    group_size=4,
)
SMALL = dict(
    s1_bits=10,
    s2_bits=10,
    n_layers=8,
    d_model=512,
    n_heads=8,
    ff_dim=1024,
    ffn_dropout_p=0.0,
    attn_dropout_p=0.0,
    resid_dropout_p=0.0,
    token_dropout_p=0.0,
    learn_te=True,
)
MINI = dict(SMALL, n_layers=4, d_model=256, n_heads=4, ff_dim=512)
SHAPES = {"Kronos-small": SMALL, "Kronos-mini shape": MINI}
LOOKBACK = 252


class PeakMemory:
    """Peak extra memory (MiB) during a ``with`` block.

    On Linux the kernel's peak-RSS counter is reset at entry (``/proc/self/clear_refs``)
    and read at exit (``VmHWM``), so nothing runs beside the timed code; elsewhere RSS is
    sampled every 2 ms by a thread. On CUDA: the allocator's peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _hwm() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        try:  # hand freed heap pages back so that the baseline is the live memory
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self._base = self._rss()
        self._thread = None
        if self._reset_hwm():
            return self
        self._max = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
            return
        if self._thread is None:
            self.peak_mib = (self._hwm() - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mib = (max(self._max, self._rss()) - self._base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def linear_rate(dtype: torch.dtype, device: torch.device, seconds: float = 2.0) -> float:
    """GFLOP/s of the engine's linear at the prefill's shape (4032 x 512 -> 1024): on CPU
    the oneDNN packed linear the engine uses, elsewhere ``torch.nn.functional.linear``."""
    from kronos_pipeline.kronos.inference import prepare_for_inference

    layer = prepare_for_inference(nn.Sequential(nn.Linear(512, 1024))).to(device, dtype)[0]
    layer.pack()
    x = torch.randn(4032, 512, dtype=dtype, device=device)
    with torch.inference_mode():
        layer(x)
        _sync(device)
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(10):
                layer(x)
            _sync(device)
            calls += 10
        elapsed = time.perf_counter() - t0
    return 2 * 4032 * 512 * 1024 * calls / elapsed / 1e9


def read_bandwidth(device: torch.device, seconds: float = 2.0) -> float:
    """GB/s of summing a 512 MiB float32 tensor (a streaming read)."""
    x = torch.ones(2**27, device=device)
    x.sum()
    _sync(device)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x.sum()
        _sync(device)
        calls += 1
    return x.numel() * 4 * calls / (time.perf_counter() - t0) / 1e9


def bound_series_per_s(
    cfg: dict, steps: int, gflops: float, gbps: float, kv_bytes: int = 4
) -> tuple[float, float, float]:
    """(series/s bound, linear GFLOP per series, decode K/V GB per series); see the module
    docstring. ``kv_bytes``: bytes per cached value (float32 cache: 4)."""
    d, ff, layers = cfg["d_model"], cfg["ff_dim"], cfg["n_layers"]
    vocab = 2 ** cfg["s1_bits"] + 2 ** cfg["s2_bits"]
    block = 4 * d * d + 3 * d * ff  # q, k, v, out + SwiGLU, multiply-adds per token
    dt, fft = TOKENIZER["d_model"], TOKENIZER["ff_dim"]
    tok_block = 4 * dt * dt + 3 * dt * fft
    enc = TOKENIZER["n_enc_layers"] - 1
    dec = TOKENIZER["n_dec_layers"] - 1
    macs = LOOKBACK * enc * tok_block  # tokenizer encode
    macs += (LOOKBACK + steps) * dec * tok_block  # tokenizer decode
    macs += LOOKBACK * (layers * block + 2 * d * d)  # prefill + dependency-layer k, v
    macs += steps * (layers * block + 4 * d * d + d * vocab)  # decode + dep layer + heads
    kv = sum(
        (layers + 1) * 2 * (LOOKBACK + i) * d * kv_bytes for i in range(1, steps)
    )  # self-attention layers + the dependency layer, K and V
    seconds = 2 * macs / (gflops * 1e9) + kv / (gbps * 1e9)
    return 1.0 / seconds, 2 * macs / 1e9, kv / 1e9


def make_bars(n: int, pred_len: int, seed: int = 0):
    """Random-walk OHLCV windows (lookback 252) with business-day timestamps."""
    rng = np.random.default_rng(seed)
    windows, stamps, futures = [], [], []
    for _ in range(n):
        close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, LOOKBACK)))
        opened = close * np.exp(rng.normal(0.0, 0.01, LOOKBACK))
        windows.append(
            pd.DataFrame(
                {
                    "open": opened,
                    "high": np.maximum(opened, close) * 1.01,
                    "low": np.minimum(opened, close) * 0.99,
                    "close": close,
                    "volume": rng.lognormal(12.0, 0.8, LOOKBACK),
                }
            )
        )
        ts = pd.bdate_range("2019-01-02", periods=LOOKBACK + pred_len)
        stamps.append(ts[:LOOKBACK])
        futures.append(ts[LOOKBACK:])
    return windows, stamps, futures


@dataclass
class Row:
    shape: str
    impl: str
    dtype: str
    steps: int
    batch: int
    series: int
    seconds: float
    peak_mib: float
    deviation: str

    @property
    def rate(self) -> float:
        return self.series / self.seconds


def rel_dev(a: np.ndarray, b: np.ndarray) -> float:
    """Max relative deviation of a from b."""
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def bf16_dev(a: np.ndarray, b: np.ndarray) -> str:
    """Median and max |close_a - close_b| / close_b (close column)."""
    d = np.abs(a[..., 3] - b[..., 3]) / np.abs(b[..., 3])
    return f"close rel dev median {np.median(d):.2e}, max {d.max():.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps only, fewer series")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--series", type=int, default=64, help="series for our engine")
    parser.add_argument("--ref-series", type=int, default=12, help="series for the reference")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument(
        "--device", default="cpu", help="cpu (default), cuda, mps or auto (cuda > mps > cpu)"
    )
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"comma-separated, of {list(SHAPES)}"
    )
    parser.add_argument("--steps", default=None, help="comma-separated steps (default 20,90)")
    parser.add_argument(
        "--batch-sizes", default="12,64", help="comma-separated rows per micro-batch, or auto"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="static decode step in CUDA graphs"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from kronos_finance._vendor.kronos_model import Kronos as RefKronos
    from kronos_finance._vendor.kronos_model import KronosPredictor
    from kronos_finance._vendor.kronos_model import KronosTokenizer as RefTokenizer

    steps_list = [20] if args.quick else [20, 90]
    if args.steps:
        steps_list = [int(x) for x in args.steps.split(",")]
    shapes = {name: SHAPES[name] for name in args.shapes.split(",")}
    batch_sizes = [None if b == "auto" else int(b) for b in args.batch_sizes.split(",")]
    n_ours = 24 if args.quick else args.series
    device = resolve_device(args.device)
    header = (
        f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, "
        f"load avg at start {os.getloadavg()[0]:.1f}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + (", cuda_graphs" if args.cuda_graphs else "")
    )
    print(header, flush=True)
    ceiling = {
        "float32": linear_rate(torch.float32, device),
        "bfloat16": linear_rate(torch.bfloat16, device),
        "read GB/s": read_bandwidth(device),
    }
    print(
        "machine ceiling: oneDNN linear {float32:.0f} GFLOP/s fp32, {bfloat16:.0f} GFLOP/s "
        "bf16; memory read {read GB/s:.1f} GB/s".format(**ceiling),
        flush=True,
    )
    rows: list[Row] = []

    def show(row: Row) -> None:
        rows.append(row)
        print(
            f"{row.shape:18s} {row.impl:9s} {row.dtype:8s} steps {row.steps:3d} "
            f"batch {row.batch:3d} series {row.series:3d}: {row.seconds:7.2f} s "
            f"{row.rate:7.3f} series/s peak +{row.peak_mib:7.0f} MiB  {row.deviation} "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    for shape, cfg in shapes.items():
        torch.manual_seed(0)
        ref_tok, ref_pred = RefTokenizer(**TOKENIZER).eval(), RefKronos(**cfg).eval()
        tok, pred = KronosTokenizer(**TOKENIZER), Kronos(**cfg)
        tok.load_state_dict(ref_tok.state_dict())
        pred.load_state_dict(ref_pred.state_dict())
        engines = {
            (dtype, bs): KronosEngine(
                tok, pred, device=device, dtype=dtype, batch_size=bs, cuda_graphs=args.cuda_graphs
            )
            for dtype in ("float32", "bfloat16")
            for bs in batch_sizes
        }
        for steps in steps_list:
            windows, stamps, futures = make_bars(max(n_ours, args.ref_series), steps, seed=steps)
            nr = args.ref_series
            ref = KronosPredictor(ref_pred, ref_tok, device=str(device), max_context=512)
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                with torch.no_grad():
                    frames = ref.predict_batch(
                        windows[:nr],
                        [pd.Series(s) for s in stamps[:nr]],
                        [pd.Series(f) for f in futures[:nr]],
                        pred_len=steps,
                        T=1.0,
                        top_k=1,
                        top_p=1.0,
                        sample_count=1,
                        verbose=False,
                    )
                seconds = time.perf_counter() - t0
            ref_out = np.stack([f.values for f in frames])
            show(Row(shape, "reference", "float32", steps, nr, nr, seconds, mem.peak_mib, ""))
            fp32_out = None
            for dtype in ("float32", "bfloat16"):
                for key in batch_sizes:
                    engine = engines[(dtype, key)]
                    bs = engine.batch_size
                    engine.forecast(  # warm-up, untimed
                        windows[:bs], stamps[:bs], futures[:bs], pred_len=steps, top_k=1
                    )
                    with PeakMemory(device) as mem:
                        t0 = time.perf_counter()
                        result = engine.forecast(
                            windows[:n_ours],
                            stamps[:n_ours],
                            futures[:n_ours],
                            pred_len=steps,
                            top_k=1,
                        )
                        seconds = time.perf_counter() - t0
                    out = result.mean()
                    if dtype == "float32":
                        dev = f"max rel dev vs reference {rel_dev(out[:nr], ref_out):.1e}"
                        fp32_out = out
                    else:
                        dev = bf16_dev(out, fp32_out)
                    show(Row(shape, "ours", dtype, steps, bs, n_ours, seconds, mem.peak_mib, dev))
        del engines

    print("\nSpeed-ups (ours / reference fp32, same shape and steps):")
    for r in rows:
        if r.impl == "ours":
            base = next(
                x
                for x in rows
                if x.impl == "reference" and x.shape == r.shape and x.steps == r.steps
            )
            speedup = r.rate / base.rate
            print(
                f"  {r.shape:18s} {r.dtype:8s} steps {r.steps:3d} batch {r.batch:3d}: "
                f"x{speedup:6.1f}"
            )
    bounds = []
    for shape, cfg in shapes.items():
        for steps in steps_list:
            for dtype in ("float32", "bfloat16"):
                rate, gflop, kv_gb = bound_series_per_s(
                    cfg,
                    steps,
                    ceiling[dtype],
                    ceiling["read GB/s"],
                    kv_bytes=4 if dtype == "float32" else 2,
                )
                best = max(
                    r.rate
                    for r in rows
                    if r.impl == "ours"
                    and r.shape == shape
                    and r.steps == steps
                    and r.dtype == dtype
                )
                bounds.append((shape, steps, dtype, gflop, kv_gb, rate, best))
    print("\nMachine bound (linear FLOPs at the measured rate + decode K/V reads at the measured")
    print("bandwidth; everything else free) against our best micro-batch:")
    for shape, steps, dtype, gflop, kv_gb, rate, best in bounds:
        print(
            f"  {shape:18s} {dtype:8s} steps {steps:3d}: {gflop:5.1f} GFLOP + {kv_gb:4.2f} GB "
            f"per series -> bound {rate:6.1f} series/s; ours {best:6.2f} ({best / rate:.0%})"
        )
    if args.markdown:
        lines = [
            header.lstrip("# "),
            "",
            "| shape | impl | dtype | steps | batch | series | s | series/s | x ref | peak MiB "
            "| deviation |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            base = next(
                x
                for x in rows
                if x.impl == "reference" and x.shape == r.shape and x.steps == r.steps
            )
            lines.append(
                f"| {r.shape} | {r.impl} | {r.dtype} | {r.steps} | {r.batch} | {r.series} | "
                f"{r.seconds:.1f} | {r.rate:.3f} | {r.rate / base.rate:.1f} | {r.peak_mib:.0f} | "
                f"{r.deviation} |"
            )
        lines += [
            "",
            "Machine ceiling measured in the same run: oneDNN linear {float32:.0f} GFLOP/s fp32, "
            "{bfloat16:.0f} GFLOP/s bf16; memory read {read GB/s:.1f} GB/s.".format(**ceiling),
            "",
            "| shape | dtype | steps | linear GFLOP/series | decode K/V GB/series "
            "| bound series/s | ours best series/s | ours / bound |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for shape, steps, dtype, gflop, kv_gb, rate, best in bounds:
            lines.append(
                f"| {shape} | {dtype} | {steps} | {gflop:.1f} | {kv_gb:.2f} | {rate:.1f} | "
                f"{best:.2f} | {best / rate:.0%} |"
            )
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

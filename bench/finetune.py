"""Benchmark: one refit period of strategy ``finetune`` (issue 14), through the library call the
pipeline makes (:func:`kronos_pipeline.kronos.strategy.fit_period_checkpoint`).

Rows (each in its own process, so that its peak RSS is its own):

* ``lora-small``: LoRA (settings' r / alpha / q,v targets) on a Kronos-small-shaped predictor
  with a Kronos-Tokenizer-base-shaped tokenizer, both randomly initialised (the published
  shapes; the weights are not downloaded, so losses and figures mean nothing, times do);
* ``full-compact``: every weight of the compact predictor (``train.COMPACT_*_CONFIG``, random)
  fine-tuned.

Each period starts from the "published" weights with a previous checkpoint (the published
manifest), so the guard computes both models' figures, as every period after the first does.
Bars: the first ``--tickers`` tickers (alphabetical) of ``../shared/data/sp500_daily`` with
full history between ``--start`` and ``--end`` (split-adjusted, as ``bench/kronos_train.py``
loads them); cut = ``--end``. Settings are the defaults except ``train_max_minutes``
(``--budget-minutes``), ``validation_stride`` (``--validation-stride``), device cpu.

Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/finetune.py --tickers 100 --budget-minutes 3 --compact-budget-minutes 1.5 \\
        --validation-stride 252 --threads 1 --json /tmp/finetune.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "sp500_daily").resolve()
HORIZONS = (20, 60, 90)

#: Published shapes (config.json fields) of Kronos-small and Kronos-Tokenizer-base, dropout off.
KRONOS_SMALL = dict(
    s1_bits=10, s2_bits=10, n_layers=8, d_model=512, n_heads=8, ff_dim=1024, ffn_dropout_p=0.0,
    attn_dropout_p=0.0, resid_dropout_p=0.0, token_dropout_p=0.0, learn_te=True,
)  # fmt: skip
TOKENIZER_BASE = dict(
    d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4,
    ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=10, s2_bits=10,
    beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05, group_size=4,
)  # fmt: skip


def run_row(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from kronos_train import load_bars

    from kronos_pipeline.kronos import hub
    from kronos_pipeline.kronos import strategy as S
    from kronos_pipeline.kronos import train as T
    from kronos_pipeline.kronos.predictor import Kronos
    from kronos_pipeline.kronos.tokenizer import KronosTokenizer
    from kronos_pipeline.settings import KronosSettings

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bars = load_bars(Path(args.data), args.tickers, args.start, args.end)
    bars["amount"] = bars["close"] * bars["volume"]
    cut = bars["date"].max().date()
    load_s = time.perf_counter() - t0

    small = args.row == "lora-small"
    tok_cfg = TOKENIZER_BASE if small else T.COMPACT_TOKENIZER_CONFIG
    pred_cfg = KRONOS_SMALL if small else T.COMPACT_PREDICTOR_CONFIG
    torch.manual_seed(0)
    tokenizer, predictor = KronosTokenizer(**tok_cfg), Kronos(**pred_cfg)
    n_params = sum(p.numel() for p in predictor.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hub.save_checkpoint(tokenizer, root / "tok")
        hub.save_checkpoint(predictor, root / "pred")
        settings = KronosSettings(
            strategy="finetune",
            predictor=str(root / "pred"),
            tokenizer=str(root / "tok"),
            finetune_mode="lora" if small else "full",
            train_max_minutes=args.budget_minutes if small else args.compact_budget_minutes,
            validation_stride=args.validation_stride,
            device="cpu",
            train_device="cpu",
        )
        previous = S.fit_period_checkpoint("published", bars, cut, root / "p0", settings)
        t0 = time.perf_counter()
        m = S.fit_period_checkpoint(
            "finetune", bars, cut, root / "p1", settings, previous, horizons=HORIZONS
        )
        period_s = time.perf_counter() - t0
    d = m["decision"]
    figures = d["new"] or {}
    lora_params = None
    if small:
        from kronos_pipeline.kronos.lora import apply_lora

        wrapped = apply_lora(
            predictor, settings.lora_r, settings.lora_alpha, target_modules=settings.lora_targets
        )
        lora_params = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    return {
        "row": args.row,
        "predictor_params": n_params,
        "trainable_params": lora_params if small else n_params,
        "tickers": m["tickers"],
        "bars": m["bars"],
        "train_windows": m["windows"]["train"]["windows"],
        "val_windows": m["windows"]["val"]["windows"],
        "budget_min": settings.train_max_minutes,
        "steps": m["training"]["steps"],
        "stopped_by": m["training"]["stopped_by"],
        "tokens_per_s": m["training"]["tokens_per_s"],
        "train_s": m["train_elapsed_s"],
        "guard_s": m["validation_elapsed_s"],
        "guard_series_per_model": figures.get("series"),
        "guard_forecast_dates": figures.get("forecast_dates"),
        "guard_s_per_series": round(m["validation_elapsed_s"] / (2 * figures["series"]), 2)
        if figures.get("series")
        else None,
        "period_s": round(period_s, 1),
        "load_s": round(load_s, 1),
        "accepted": d["accepted"],
        "loss_guard_accepted": d["loss_guard_accepted"],
        "start_val_loss": m["predictor_start_val_loss"],
        "best_val_loss": m["predictor_val_loss"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


COLUMNS = [
    ("row", "row"), ("predictor_params", "params"), ("trainable_params", "trainable"),
    ("tickers", "tickers"), ("train_windows", "train windows"), ("budget_min", "budget min"),
    ("steps", "steps"), ("stopped_by", "stopped by"), ("tokens_per_s", "tokens/s"),
    ("train_s", "train s"), ("guard_series_per_model", "guard series/model"),
    ("guard_s", "guard s (2 models)"), ("guard_s_per_series", "guard s/series"), ("period_s", "period s"), ("accepted", "accepted"),
    ("peak_rss_mib", "peak RSS MiB"),
]  # fmt: skip


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(name for _, name in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(str(r.get(k, "")) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--tickers", type=int, default=100)
    parser.add_argument("--start", default="2015-01-01")
    parser.add_argument("--end", default="2019-12-31")
    parser.add_argument("--budget-minutes", type=float, default=3.0)
    parser.add_argument("--compact-budget-minutes", type=float, default=1.5)
    parser.add_argument("--validation-stride", type=int, default=252)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="lora-small,full-compact")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args)))
        return
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    rows = []
    for row in args.rows.split(","):
        cmd = [sys.executable, __file__, "--row", row]
        for name in ("data", "tickers", "start", "end", "budget_minutes",
                     "compact_budget_minutes", "validation_stride", "threads"):  # fmt: skip
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"row {row} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{row}: {rows[-1]}", file=sys.stderr)
    import torch

    header = (
        f"{started}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"load avg at start {load:.1f}, at end {os.getloadavg()[0]:.1f}"
    )
    print(header)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: the Kronos engine at two git revisions, side by side in one run.

Each revision is checked out into a temporary worktree; the same workloads then run in
fresh subprocesses, alternating between the revisions (``--rounds`` times), so that a noisy
shared machine slows both alike. Workloads, on the compact walk-forward models (random
weights of ``COMPACT_*_CONFIG``) with lookback-252 windows, CPU, greedy:

* ``embed``: the embeddings of ``--series`` windows (what ``kronos_heads`` runs on its
  training dates): ``engine.embed`` where the revision has it, else one-step decodes;
* ``forecast``: 90-step greedy decodes of ``--series`` // 4 windows;
* ``date``: one scoring date as ``kronos_forecasts`` runs it: 100 windows, 8 sampled paths
  (top_p 0.9), 90 steps;
* ``small``: Kronos-small shapes (random weights, 8 layers, width 512) with the
  Tokenizer-base shapes, 16 windows, 90 greedy steps: the CPU throughput of the large model.

``--workloads`` picks some of them. Bits are compared per workload: a revision that changes
the decode's arithmetic (another summation order) gives other bits, and says so.

Prints the median seconds per workload and revision and their ratio, and checks that both
revisions produced the same paths and embeddings, bit for bit. ``--threads 1 --clock cpu``
times CPU seconds of one thread (``time.process_time``), the measure that a machine shared
with other work disturbs least; the default is wall seconds at torch's thread count.

    .venv/bin/python bench/engine_revisions.py [--base cf89aee] [--head HEAD] [--series 1024]
        [--threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _runs import REPO

WORKER = r"""
import hashlib, json, sys, time
import numpy as np, pandas as pd, torch
from kronos_pipeline.kronos.engine import KronosEngine
from kronos_pipeline.kronos.train import (COMPACT_PREDICTOR_CONFIG, COMPACT_TOKENIZER_CONFIG,
                                          build_predictor, build_tokenizer)
kind, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
tok_cfg, pred_cfg = COMPACT_TOKENIZER_CONFIG, COMPACT_PREDICTOR_CONFIG
if kind == "small":
    tok_cfg = dict(tok_cfg, d_model=256, ff_dim=512, n_enc_layers=4, n_dec_layers=4,
                   s1_bits=10, s2_bits=10)
    pred_cfg = dict(pred_cfg, s1_bits=10, s2_bits=10, n_layers=8, d_model=512, n_heads=8,
                    ff_dim=1024)
engine = KronosEngine(build_tokenizer(tok_cfg), build_predictor(pred_cfg), device="cpu")
rng, length = np.random.default_rng(0), 252
steps = 1 if kind == "embed" else 90
n = {"embed": n, "forecast": max(1, n // 4), "date": 100, "small": 16}[kind]
sampling = (dict(top_k=0, top_p=0.9, sample_count=8) if kind == "date"
            else dict(top_k=1, sample_count=1))
days = pd.bdate_range("2015-01-01", periods=length + steps)
windows = []
for _ in range(n):
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, length)))
    windows.append(pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99,
                                 "close": close, "volume": rng.uniform(1e5, 1e6, length)}))
started, cpu_started = time.perf_counter(), time.process_time()
if kind == "embed" and hasattr(engine, "embed"):
    out = engine.embed(windows, [days[:length]] * n).tobytes()
else:
    result = engine.forecast(windows, [days[:length]] * n, [days[length:]] * n, pred_len=steps,
                             return_embeddings=True, **sampling)
    out = result.embeddings.tobytes() if kind == "embed" else (
        result.paths.tobytes() + result.embeddings.tobytes())
wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
digest = hashlib.sha256(out).hexdigest()
import kronos_pipeline
print(json.dumps({"wall": wall, "cpu": cpu, "series": n, "digest": digest,
                  "module": kronos_pipeline.__file__}))
"""


def worktree(rev: str, root: Path) -> Path:
    path = root / rev.replace("/", "_")
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO,
                   check=True, capture_output=True)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="cf89aee")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--series", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default="embed,forecast,date,small")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    kinds = args.workloads.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: worktree(rev, Path(tmp)) for rev in (args.base, args.head)}
        results: dict[tuple[str, str], list[dict]] = {}
        try:
            for _ in range(args.rounds):
                for kind in kinds:
                    for rev, tree in trees.items():
                        env = {**os.environ, "PYTHONPATH": str(tree)}
                        out = subprocess.run(
                            [sys.executable, "-c", WORKER, kind, str(args.series), str(args.threads)],
                            env=env, cwd=tree,
                            check=True, capture_output=True, text=True,
                        ).stdout.strip().splitlines()[-1]  # fmt: skip
                        record = json.loads(out)
                        assert record["module"].startswith(str(tree)), record  # not the checkout
                        results.setdefault((kind, rev), []).append(record)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                               capture_output=True)  # fmt: skip
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f} at the end; {args.rounds} alternating rounds; "
        f"{args.clock} seconds, threads {args.threads or 'torch default'}\n"
    )
    print(f"| workload | series | {args.base} s | {args.head} s | ratio | same bits |")
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        base, head = results[(kind, args.base)], results[(kind, args.head)]
        b = statistics.median(r[args.clock] for r in base)
        h = statistics.median(r[args.clock] for r in head)
        same = {r["digest"] for r in base} == {r["digest"] for r in head}
        print(f"| {kind} | {base[0]['series']} | {b:.2f} | {h:.2f} | {b / h:.2f}x | {same} |")


if __name__ == "__main__":
    main()

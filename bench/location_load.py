"""Benchmark: how long loading the code location takes, this checkout against another revision.

Every run worker, step process, code server and Celery worker imports
``kronos_pipeline.definitions`` before it does anything, so its load time is paid once per run
of a nightly chain. Each round times a fresh ``python -c "import kronos_pipeline.definitions"``
in this checkout and in a temporary ``git worktree`` of ``--rev``, alternating, and the table
gives the median wall seconds and which of the slow libraries the load imported.

    .venv/bin/python bench/location_load.py [--rev ffa2a8e] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "great_expectations", "statsmodels", "matplotlib", "scipy.stats", "lightgbm")
PROBE = (
    "import sys, kronos_pipeline.definitions; "
    f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
)


def _load(tree: Path) -> tuple[float, str]:
    """Wall seconds of one fresh load in ``tree``, and the heavy modules it imported."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return time.perf_counter() - started, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="ffa2a8e", help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.rev], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
        try:
            trees = {f"{args.rev} (--rev)": other, "this checkout": REPO}
            times: dict[str, list[float]] = {name: [] for name in trees}
            loaded: dict[str, str] = {}
            for tree in trees.values():  # a first, untimed load warms the file cache
                _load(tree)
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    seconds, loaded[name] = _load(tree)
                    times[name].append(seconds)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO,
                           check=False, capture_output=True)  # fmt: skip
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print()
    print("| revision | median s | min s | max s | slow libraries imported by the load |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} | {loaded[name] or 'none'} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark: a six-fold backfill, serial against concurrent, on the scale-out deployment
(issue 21 item 5).

The deployment of ``kronos_pipeline_tests/defs/test_scale_out.py``: PostgreSQL for the instance,
``dagster-daemon`` and ``dagster-webserver`` as separate processes, Redis and two
``dagster-celery`` workers, the warehouse a lake of Parquet partitions. The same backfill
(``lightgbm_models`` of six folds and ``baseline_scores`` of their weekdays, synthetic market
of 16 names) runs once with one run at a time and once with ``--max-runs`` at once, each on a
fresh instance and warehouse; then the same folds run serially in one process with no
deployment. Prints a table: wall seconds, runs, the most runs executing at one instant, and
the mean wall of a run.

    .venv/bin/python bench/scale_out.py [--max-runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from kronos_pipeline_tests.defs.test_scale_out import (
        WORKERS,
        concurrent_and_serial,
        most_at_once,
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for max_runs in (1, args.max_runs):
            folder = Path(tmp) / f"max{max_runs}"
            folder.mkdir()
            out = concurrent_and_serial(folder, max_runs, serial_too=max_runs != 1)
            runs = out["runs"]
            assert {r["status"].value for r in runs} == {"SUCCESS"}, "a run failed"
            walls = [r["end"] - r["start"] for r in runs]
            rows.append((f"backfill, {max_runs} run(s) at once, Celery ({len(WORKERS)} workers)",
                         out["concurrent_s"], len(runs), most_at_once(runs),
                         statistics.mean(walls)))  # fmt: skip
            if "serial_s" in out:
                rows.append(("the same folds serially in one process, no deployment",
                             out["serial_s"], None, None, None))  # fmt: skip
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"CPU per worker: {os.cpu_count()} cores shared by {len(WORKERS)} Celery workers "
          "(LightGBM 1 thread per fit), the run workers, the daemon, the webserver, Postgres "
          "and Redis")  # fmt: skip
    print()
    print("| what | wall s | runs | most at once | mean run wall s |")
    print("|---|---|---|---|---|")
    for what, wall, n, most, mean in rows:
        cells = [f"{wall:.1f}", str(n or ""), str(most or ""), f"{mean:.1f}" if mean else ""]
        print(f"| {what} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

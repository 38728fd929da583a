"""Benchmark: ``kronos-pipeline smoke`` from a fresh warehouse and a fresh SQLite instance
(issue 12's SMOKE targets: <= 4 min on the synthetic market, <= 6 min on the real sample).

Runs the command once in a temporary folder and prints a table: the command's wall seconds,
each run's wall seconds (the CLI's summary) and every step's.

    .venv/bin/python bench/smoke.py [--vendor-dir ../shared/data/sp500_daily] [--without-kronos]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

from _runs import REPO, timed
from _runs import steps as steps_of

# A summary line: "  ok     kronos_job 2019-05 176.5s (run ..." (the label is optional).
RUN = re.compile(r"^\s+(ok|FAILED)\s+(\S+)(?: (\S+))? ([\d.]+)s \(run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor-dir", default=None, help="the real sample (default: synthetic)")
    parser.add_argument("--without-kronos", action="store_true")
    args = parser.parse_args()
    cli = str(Path(sys.executable).parent / "kronos-pipeline")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")},
            "DAGSTER_HOME": str(home),
            "KRONOS_WAREHOUSE__DATA_DIR": str(root / "data"),
            "KRONOS_REPORT__OUTPUT_ROOT": str(root / "runs"),
        }
        cmd = [cli, "smoke"]
        if args.vendor_dir:
            cmd += ["--vendor-dir", args.vendor_dir]
        if args.without_kronos:
            cmd.append("--without-kronos")
        wall, out = timed(cmd, env)
    runs = [m.groups() for m in map(RUN.match, out.splitlines()) if m]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end; python {platform.python_version()}")  # fmt: skip
    print(f"command: {' '.join(['kronos-pipeline', *cmd[1:]])}\n")
    print("| what | wall s |")
    print("|---|---|")
    print(f"| **{' '.join(['smoke', *cmd[2:]])}** | **{wall:.1f}** |")
    for _, job, label, seconds in runs:
        print(f"| run {job} {label or ''} | {float(seconds):.1f} |")
    for name, seconds in steps_of(out):
        print(f"| - {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()

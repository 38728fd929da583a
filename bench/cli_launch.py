"""Benchmark: what submitting through the instance costs a CLI command (issue 20, item 6).

Runs ``kronos-pipeline backfill --dates A:B`` (one ``data_job`` run) on a small synthetic
market in a fresh ``DAGSTER_HOME``, with no daemon running, so the command starts ``dagster
dev``, submits the run to its queue and stops it. Prints when each phase ended, from the
command's own output lines (timestamped as they arrive), and the run's own timeline from its
status events in the instance: queued, taken off the queue, run worker started, steps, end.

    .venv/bin/python bench/cli_launch.py [--repo PATH]

``--repo`` runs another checkout's CLI the same way (e.g. one from before this change, whose
runs executed in the CLI's process), for a side-by-side figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _runs import REPO, STEP

MARKET = {
    "KRONOS_DATA__SYNTHETIC_START": "2017-01-03",
    "KRONOS_DATA__SYNTHETIC_END": "2017-04-28",
    "KRONOS_DATA__SYNTHETIC_TICKERS": "12",
}


def _timeline(home: Path, repo: Path) -> list[tuple[str, float]]:
    """The run's status events, seconds after it was queued (or created)."""
    sys.path.insert(0, str(repo))
    import dagster as dg

    from kronos_pipeline.instance import instance_at

    instance = instance_at(home)
    try:
        [run] = instance.get_runs()
        records = instance.get_records_for_run(run.run_id).records
        kinds = ("PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "STEP_START",
                 "PIPELINE_SUCCESS")  # fmt: skip
        first: dict[str, float] = {}
        last_step = 0.0
        for record in records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            first.setdefault(event.event_type_value, record.timestamp)
            if event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                last_step = record.timestamp
        first["last step ended"] = last_step
        origin = min(first.values())
        return [(k, first[k] - origin) for k in (*kinds, "last step ended") if k in first]
    finally:
        instance.dispose()
        del dg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(REPO), help="checkout whose CLI to run")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    base = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        shutil.copy(repo / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        env = {**base, **MARKET, "DAGSTER_HOME": str(home), "PYTHONPATH": str(repo),
               "KRONOS_WAREHOUSE__DATA_DIR": str(Path(tmp) / "data")}  # fmt: skip
        cmd = [sys.executable, "-m", "kronos_pipeline.cli", "backfill", "--dates",
               f"{MARKET['KRONOS_DATA__SYNTHETIC_START']}:{MARKET['KRONOS_DATA__SYNTHETIC_END']}"]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
        lines = [(time.perf_counter() - started, line.rstrip()) for line in proc.stdout]
        proc.wait()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit("\n".join(line for _, line in lines))
        timeline = _timeline(home, repo)
    steps = sum(float(m.group(2)) for _, line in lines if (m := STEP.match(line)))
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {repo}")  # fmt: skip
    print(f"command: kronos-pipeline backfill --dates (one data_job run); wall {wall:.1f} s, "
          f"steps {steps:.1f} s\n")  # fmt: skip
    print("| s after start | the command printed |")
    print("|---|---|")
    for at, line in lines:
        if not STEP.match(line) and not line.startswith("  "):
            print(f"| {at:.1f} | `{line[:110]}` |")
    print("\n| s after the run was created | run event |")
    print("|---|---|")
    for kind, at in timeline:
        print(f"| {at:.1f} | {kind} |")


if __name__ == "__main__":
    main()

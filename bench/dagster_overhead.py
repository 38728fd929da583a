"""Benchmark: what Dagster adds to the data chain on a persistent instance (issue 10, item 1).

Runs, side by side in one invocation, each in a fresh process and a fresh temporary folder:

1. the plain library chain, ``bench/data_chain.py`` (ingest, PIT prices, universe, features,
   labels, written to DuckDB; no checks, no Dagster);
2. ``kronos-pipeline backfill --dates A:B`` over the whole source: ``data_job`` over every
   weekday partition in one run, recorded in a new ``DAGSTER_HOME`` (what ``smoke``/``full``
   do), the CLI's ranged-run bookkeeping in force (``BOOKKEEPING_ENV``): once on the shipped
   SQLite ``dagster.yaml`` and once on ``dagster.postgres.yaml`` over a throwaway PostgreSQL
   server on loopback (``kronos_pipeline_tests.postgres_server``; Debian's ``postgresql``).

Prints a table: wall seconds of each, the run's step seconds (its steps run the chain plus the
data checks), Dagster's bookkeeping (run wall minus step seconds), and the instance's size.

    .venv/bin/python bench/dagster_overhead.py [--vendor-dir DIR] [--instances sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from _runs import REPO, timed
from _runs import steps as steps_of


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@dataclass
class Backfill:
    """One whole-history ``backfill --dates`` on a fresh instance of one kind."""

    kind: str
    wall: float
    steps: list[tuple[str, float]]
    instance_mib: float | None  # the SQLite files; None for a Postgres database

    @property
    def step_s(self) -> float:
        return sum(s for _, s in self.steps)


def _backfill(kind: str, root: Path, base: dict, vendor_dir: str, span: tuple) -> Backfill:
    """``backfill --dates first:last`` in a new DAGSTER_HOME and warehouse under ``root``."""
    cli = str(Path(sys.executable).parent / "kronos-pipeline")
    home = root / f"home-{kind}"
    home.mkdir()
    env = {**base, "DAGSTER_HOME": str(home), "KRONOS_DATA__VENDOR_DIR": vendor_dir,
           "KRONOS_WAREHOUSE__DATA_DIR": str(root / f"data-{kind}")}  # fmt: skip
    command = [cli, "backfill", "--dates", f"{span[0]}:{span[1]}"]
    if kind == "sqlite":
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        wall, out = timed(command, env)
        return Backfill(kind, wall, steps_of(out), _du_mib(home))
    from kronos_pipeline_tests.postgres_server import postgres_server

    shutil.copy(REPO / "dagster_home" / "dagster.postgres.yaml", home / "dagster.yaml")
    with postgres_server() as server:
        wall, out = timed(command, {**env, **server.env()})
    return Backfill(kind, wall, steps_of(out), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor-dir", default=str(REPO.parent / "shared/data/sp500_daily"))
    parser.add_argument("--instances", default="sqlite,postgres",
                        help="comma-separated: sqlite, postgres")  # fmt: skip
    args = parser.parse_args()
    kinds = [k for k in args.instances.split(",") if k]
    if not set(kinds) <= {"sqlite", "postgres"}:
        parser.error(f"--instances: sqlite and/or postgres, not {args.instances!r}")
    py = str(Path(sys.executable))
    base = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    sys.path.insert(0, str(REPO))
    from kronos_pipeline.data.sources import load_source
    from kronos_pipeline.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chain_wall, _ = timed([py, "bench/data_chain.py", "--vendor-dir", args.vendor_dir],
                               {**base, "PYTHONPATH": str(REPO)})  # fmt: skip
        source = {**base, "KRONOS_DATA__VENDOR_DIR": args.vendor_dir}
        bars = load_source(load_settings(environ=source).data).ingest.bars
        first, last = bars["date"].min(), bars["date"].max()
        runs = [_backfill(k, root, base, args.vendor_dir, (first, last)) for k in kinds]
        imports_wall, _ = timed([py, "-c", "import kronos_pipeline.cli, kronos_pipeline.definitions"],
                                 base)  # fmt: skip
        weekdays = len(pd.bdate_range(first, last))
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; python {platform.python_version()}")  # fmt: skip
    print(f"source: {args.vendor_dir}: {bars.height:,} bars, {first}..{last}, "
          f"{weekdays:,} weekday partitions")  # fmt: skip
    print()
    print("| what | " + " | ".join(f"{r.kind} wall s" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))

    def row(label: str, values) -> None:
        print(f"| {label} | " + " | ".join(values) + " |")

    row("plain chain (bench/data_chain.py, no checks, no Dagster)",
        [f"{chain_wall:.1f}"] * len(runs))  # fmt: skip
    row(f"`kronos-pipeline backfill --dates {first}:{last}` (data_job, {weekdays:,} weekday "
        "partitions, persistent instance)", [f"{r.wall:.1f}" for r in runs])  # fmt: skip
    for i, (name, _) in enumerate(runs[0].steps):
        row(f"- step {name}", [f"{r.steps[i][1]:.1f}" if i < len(r.steps) else "" for r in runs])
    row("steps together (chain + data checks)", [f"{r.step_s:.1f}" for r in runs])
    row("Dagster bookkeeping: run wall - steps (deployment, process starts, imports)",
        [f"{r.wall - r.step_s:.1f}" for r in runs])  # fmt: skip
    row("- of which one `import kronos_pipeline.definitions`", [f"{imports_wall:.1f}"] * len(runs))
    row("run wall - plain chain wall", [f"{r.wall - chain_wall:.1f}" for r in runs])
    for r in runs:
        if r.instance_mib is not None:
            print(f"\ninstance size after the {r.kind} run: {r.instance_mib:.1f} MiB")


if __name__ == "__main__":
    main()

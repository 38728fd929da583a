"""Benchmark: what Dagster adds to the data chain on a persistent instance (issue 10, item 1).

Runs, side by side in one invocation, each in a fresh process and a fresh temporary folder:

1. the plain library chain, ``bench/data_chain.py`` (ingest, PIT prices, universe, features,
   labels, written to DuckDB; no checks, no Dagster);
2. ``kronos-pipeline backfill --dates A:B`` over the whole source: ``data_job`` over every
   weekday partition in one run, recorded in a new SQLite ``DAGSTER_HOME`` (what
   ``smoke``/``full`` do), the CLI's ranged-run bookkeeping in force (``BOOKKEEPING_ENV``).

Prints a table: wall seconds of each, the run's step seconds (its steps run the chain plus the
data checks), Dagster's bookkeeping (run wall minus step seconds), and the instance's size.

    .venv/bin/python bench/dagster_overhead.py [--vendor-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from _runs import REPO, timed
from _runs import steps as steps_of


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor-dir", default=str(REPO.parent / "shared/data/sp500_daily"))
    args = parser.parse_args()
    py = str(Path(sys.executable))
    cli = str(Path(sys.executable).parent / "kronos-pipeline")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chain_wall, _ = timed([py, "bench/data_chain.py", "--vendor-dir", args.vendor_dir],
                               {**base, "PYTHONPATH": str(REPO)})  # fmt: skip
        home = root / "home"
        home.mkdir()
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        env = {**base, "DAGSTER_HOME": str(home), "KRONOS_WAREHOUSE__DATA_DIR": str(root / "data"),
               "KRONOS_DATA__VENDOR_DIR": args.vendor_dir}  # fmt: skip
        sys.path.insert(0, str(REPO))
        from kronos_pipeline.data.sources import load_source
        from kronos_pipeline.settings import load_settings

        bars = load_source(load_settings(environ=env).data).ingest.bars
        first, last = bars["date"].min(), bars["date"].max()
        run_wall, out = timed([cli, "backfill", "--dates", f"{first}:{last}"], env)
        imports_wall, _ = timed([py, "-c", "import kronos_pipeline.cli, kronos_pipeline.definitions"],
                                 env)  # fmt: skip
        steps = steps_of(out)
        step_s = sum(s for _, s in steps)
        instance_mib = _du_mib(home)
        weekdays = len(pd.bdate_range(first, last))
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; python {platform.python_version()}")  # fmt: skip
    print(f"source: {args.vendor_dir}: {bars.height:,} bars, {first}..{last}, "
          f"{weekdays:,} weekday partitions")  # fmt: skip
    print()
    print("| what | wall s |")
    print("|---|---|")
    print(
        f"| plain chain (bench/data_chain.py, with DuckDB writes, no checks) | {chain_wall:.1f} |"
    )
    print(f"| `kronos-pipeline backfill --dates {first}:{last}` (data_job, {weekdays:,} weekday "
          f"partitions, persistent SQLite instance) | {run_wall:.1f} |")  # fmt: skip
    for name, seconds in steps:
        print(f"| - step {name} | {seconds:.1f} |")
    print(f"| steps together (chain + data checks) | {step_s:.1f} |")
    print(f"| Dagster bookkeeping: run wall - steps (process start and imports included) | "
          f"{run_wall - step_s:.1f} |")  # fmt: skip
    print(f"| - of which process start and imports (`import kronos_pipeline.definitions`) | "
          f"{imports_wall:.1f} |")  # fmt: skip
    print(
        f"| **Dagster bookkeeping without start-up** | **{run_wall - step_s - imports_wall:.1f}** |"
    )
    print(f"| run wall - plain chain wall | {run_wall - chain_wall:.1f} |")
    print(f"\ninstance size after the run: {instance_mib:.1f} MiB ({home.name}/, SQLite)")


if __name__ == "__main__":
    main()

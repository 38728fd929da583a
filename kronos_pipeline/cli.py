"""Command line for people who never open the UI: smoke, full, nightly, backfill, report.

Each command runs the same Dagster jobs the UI runs, in-process, against the instance in
``$DAGSTER_HOME`` (``dagster_home/`` of the repository by default), so the runs, checks and
metadata show up in ``dagster dev`` afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kronos_pipeline.settings import REPO_ROOT, SettingsError, get_settings


def _configure_env(args: argparse.Namespace, mode: str | None) -> None:
    """Settings are read from the environment by the code location: set them before import."""
    if mode:
        os.environ["KRONOS_MODE"] = mode
    if getattr(args, "vendor_dir", None):
        os.environ["KRONOS_DATA__VENDOR_DIR"] = str(Path(args.vendor_dir).resolve())
    if getattr(args, "tidy_path", None):
        os.environ["KRONOS_DATA__TIDY_PATH"] = str(Path(args.tidy_path).resolve())
    if getattr(args, "run_name", None):
        os.environ["KRONOS_REPORT__RUN_NAME"] = args.run_name
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))
    # Validate now, before any instance or job: a bad setting stops here with its name.
    get_settings.cache_clear()
    get_settings()


def _instance():
    import dagster as dg

    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _run(
    job_name: str,
    instance,
    partition_key: str | None = None,
    key_range: tuple[str, str] | None = None,
) -> None:
    from kronos_pipeline.definitions import defs

    tags = {}
    if key_range is not None:
        tags = {
            "dagster/asset_partition_range_start": key_range[0],
            "dagster/asset_partition_range_end": key_range[1],
        }
    label = partition_key or (f"{key_range[0]}..{key_range[1]}" if key_range else "")
    print(f"-> {job_name} {label}", flush=True)
    started = time.perf_counter()
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, partition_key=partition_key, tags=tags, raise_on_error=False
    )
    failed_checks = [
        f"{e.event_specific_data.asset_key.to_user_string()}:{e.event_specific_data.check_name}"
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    ]
    print(
        f"   {'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.1f}s"
        + (f"; checks not passed: {', '.join(failed_checks)}" if failed_checks else ""),
        flush=True,
    )
    if not result.success:
        for event in result.all_events:
            if event.event_type_value == "STEP_FAILURE":
                print(event.event_specific_data.error.message, file=sys.stderr)
        raise SystemExit(f"{job_name} failed (run {result.run_id})")


def _source_range() -> tuple[str, str]:
    """First and last trading day of the configured source, as partition keys."""
    from kronos_pipeline.data.sources import load_source
    from kronos_pipeline.settings import get_settings

    bars = load_source(get_settings().data).ingest.bars
    return str(bars["date"].min()), str(bars["date"].max())


def _fold_keys(spec: str | None) -> list[str]:
    from kronos_pipeline.defs.evaluation import _selected_fold_ids, fold_partitions

    if not spec:
        return _selected_fold_ids()
    keys = fold_partitions.get_partition_keys()
    first, _, last = spec.partition(":")
    last = last or first
    if first not in keys or last not in keys:
        raise SystemExit(f"folds {spec!r}: known folds run {keys[0]}..{keys[-1]} (YYYY-MM)")
    return keys[keys.index(first) : keys.index(last) + 1]


def _evaluate(instance, folds: list[str], with_kronos: bool = False) -> None:
    _run("folds_job", instance)
    for key in folds:
        _run("baseline_scores_job", instance, partition_key=key)
    if with_kronos:
        for key in folds:
            _run("kronos_job", instance, partition_key=key)
    try:
        _run("evaluation_job", instance)
    finally:
        # Written before the gate checks, so it is there when a gate fails the run too.
        _print_report_path()


def _print_report_path() -> None:
    from kronos_pipeline.settings import get_settings

    report = get_settings().report
    print(f"report: {report.output_root / report.run_name / 'REPORT_SUMMARY.md'}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    """smoke / full: every data partition of the source in one run, then the selected folds.

    The bulk load runs on an in-memory Dagster instance: a run over N trading days records
    about 2 x N events per asset, which a SQLite instance stores one commit at a time (tens of
    minutes for twenty years). The warehouse holds the data either way; the fold and
    evaluation runs that follow are recorded in $DAGSTER_HOME and show in the UI.
    """
    import dagster as dg

    _configure_env(args, args.command)
    instance = _instance()
    _run("data_job", dg.DagsterInstance.ephemeral(), key_range=_source_range())
    _evaluate(instance, _fold_keys(None), with_kronos=args.with_kronos)


def cmd_nightly(args: argparse.Namespace) -> None:
    """The newest trading day (or --date) through the data stage, then the report."""
    _configure_env(args, None)
    instance = _instance()
    day = args.date or _source_range()[1]
    _run("data_job", instance, partition_key=day)
    if not args.data_only:
        _run("evaluation_job", instance)


def cmd_backfill(args: argparse.Namespace) -> None:
    """Backfill a range of trading days (--dates A:B) and/or folds (--folds YYYY-MM:YYYY-MM)."""
    _configure_env(args, None)
    instance = _instance()
    if args.dates:
        first, _, last = args.dates.partition(":")
        _run("data_job", instance, key_range=(first, last or first))
    if args.folds:
        _evaluate(instance, _fold_keys(args.folds), with_kronos=args.with_kronos)


def cmd_report(args: argparse.Namespace) -> None:
    """Recompute metrics, tripwires, gates and the report from the scores in the warehouse."""
    _configure_env(args, None)
    instance = _instance()
    try:
        _run("evaluation_job", instance)
    finally:
        _print_report_path()


def cmd_freeze(args: argparse.Namespace) -> None:
    """Freeze the baselines of the last evaluation (BASELINE_FLOOR.json, fold_summaries.json);
    later reports compare against them."""
    _configure_env(args, None)
    from kronos_pipeline.defs.evaluation import freeze_dir
    from kronos_pipeline.evaluation import freeze
    from kronos_pipeline.settings import get_settings
    from kronos_pipeline.warehouse import Warehouse

    s = get_settings()
    db = Warehouse(s.warehouse.duckdb_path, s.warehouse.lock_timeout_s)
    if "model_comparison" not in db.tables():
        raise SystemExit(
            f"freeze: {s.warehouse.duckdb_path} holds no evaluation; run `kronos-pipeline smoke`, "
            "`full` or `report` first"
        )
    comparison = db.read("select * from model_comparison").to_pandas()
    folds = db.read("select * from fold_summaries").to_pandas()
    paths = freeze.freeze(
        comparison, folds, freeze_dir(s),
        {"mode": s.mode, "source": s.data.source_kind, "run_name": s.report.run_name,
         "folds": f"{folds['fold'].min()}..{folds['fold'].max()}"},
    )  # fmt: skip
    for path in paths.values():
        print(f"frozen: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kronos-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def source_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--vendor-dir",
            help="folder of AlphaVantage daily-adjusted files (default: synthetic market)",
        )
        p.add_argument("--tidy-path", help="tidy Parquet/CSV table instead of vendor files")
        p.add_argument("--run-name", help="report folder name under the output root")

    for name, help_text in (
        ("smoke", "last 3 folds, top-100 universe"),
        ("full", "every fold, full universe"),
    ):
        p = sub.add_parser(name, help=help_text)
        source_options(p)
        p.add_argument(
            "--with-kronos",
            action="store_true",
            help="also train (per fold, small budget) and score Kronos before the evaluation",
        )
        p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("nightly", help="score the newest trading day")
    source_options(p)
    p.add_argument(
        "--date", help="trading day to run (YYYY-MM-DD); default: the last day in the data"
    )
    p.add_argument("--data-only", action="store_true", help="skip the evaluation stage")
    p.set_defaults(func=cmd_nightly)
    p = sub.add_parser("backfill", help="backfill trading days and/or folds")
    source_options(p)
    p.add_argument("--dates", help="YYYY-MM-DD:YYYY-MM-DD")
    p.add_argument("--folds", help="YYYY-MM:YYYY-MM")
    p.add_argument(
        "--with-kronos", action="store_true", help="also train and score Kronos per fold"
    )
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("report", help="rebuild metrics, gates and the report")
    source_options(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("freeze", help="freeze the baselines of the last evaluation")
    source_options(p)
    p.set_defaults(func=cmd_freeze)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SettingsError as exc:
        print(f"kronos-pipeline: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

"""Faults of the evaluation stage: SIGKILL while a report is being written, and an evaluation
with no scores at all."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from kronos_pipeline.defs.evaluation import _read_scores
from kronos_pipeline.evaluation import report
from kronos_pipeline.warehouse import Warehouse

REPO_ROOT = Path(__file__).resolve().parents[2]

# A report written from a tiny evaluation; with "slow", it stops after the CSVs and the JSON,
# inside the plots, until it is killed.
WRITE_REPORT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kronos_pipeline.evaluation import report
    from kronos_pipeline_tests.faults.test_evaluation_faults import tiny_report_inputs
    if sys.argv[2] == "slow":
        def stuck(*args, **kwargs):
            print("inside", flush=True)
            time.sleep(60)
        report.plot_decile_returns = stuck
    report.write_report(Path(sys.argv[1]), **tiny_report_inputs(sys.argv[3]))
    print("done", flush=True)
    """
)


def tiny_report_inputs(run_label: str) -> dict:
    """Everything write_report needs, from a two-model, two-date evaluation."""
    from kronos_pipeline.evaluation.pipeline import evaluate_scores
    from kronos_pipeline.settings import load_settings

    dates = pd.to_datetime(["2019-01-02", "2019-01-03"])
    tickers = [f"T{i:02d}" for i in range(30)]
    rows = []
    for d in dates:
        for i, t in enumerate(tickers):
            for model, score in (("lightgbm", i), ("random", (i * 7) % 30)):
                rows.append({"model": model, "horizon": 20, "date": d, "ticker": t,
                             "score": float(score), "fold": "2019-01"})  # fmt: skip
    scores = pd.DataFrame(rows)
    labels = scores[scores["model"] == "lightgbm"][["date", "ticker"]].assign(
        horizon=20, fwd_return=[0.001 * i for i in range(len(dates) * len(tickers))],
        available_at=pd.Timestamp("2019-02-01"),
    )  # fmt: skip
    labels["excess_return"] = labels["fwd_return"] - labels["fwd_return"].mean()
    ev = evaluate_scores(scores, labels, load_settings(environ={}))
    return dict(
        comparison=ev.comparison, fold_summaries=ev.fold_summaries, per_date=ev.per_date,
        eval_rows=ev.eval_rows, deciles=ev.deciles, tripwires=ev.tripwires,
        verdicts=ev.verdicts, reference=ev.reference, data_source="synthetic",
        run_info={"run": run_label},
    )  # fmt: skip


def _write(out_dir: Path, mode: str, label: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITE_REPORT, str(out_dir), mode, label],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigkill_during_a_report_write_leaves_the_previous_report_whole(tmp_path):
    out_dir = tmp_path / "runs" / "latest"
    first = _write(out_dir, "fast", "first")
    assert first.communicate(timeout=120)[0].strip().endswith("done")
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    assert sorted(before) == sorted(report.REPORT_FILES)

    killed = _write(out_dir, "slow", "second")
    assert killed.stdout.readline().strip() == "inside"  # CSVs and JSON of run 2 are written
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    # Readers still see run 1 exactly, every file of it, nothing of run 2.
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    assert "- run: first" in (out_dir / "REPORT_SUMMARY.md").read_text()

    rerun = _write(out_dir, "fast", "second")
    assert rerun.communicate(timeout=120)[0].strip().endswith("done")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(report.REPORT_FILES)
    assert "- run: second" in (out_dir / "REPORT_SUMMARY.md").read_text()
    # Only the published folder and the killed run's abandoned staging folder remain.
    leftovers = [p for p in out_dir.parent.iterdir() if p.name != "latest"]
    assert len(leftovers) == 2  # the current target, and the killed run's staging folder


def test_an_evaluation_with_no_scores_says_what_to_materialize(tmp_path):
    db = Warehouse(tmp_path / "lake")
    with pytest.raises(dg.Failure, match="no scores to evaluate") as err:
        _read_scores(db, ["2019-10", "2019-12"])
    message = str(err.value.description)
    assert "2019-10..2019-12" in message
    assert "kronos-pipeline backfill --folds 2019-10:2019-12" in message
    assert "tables present: none" in message

"""Checks on the evaluation tables fail when the tables do not follow from their inputs."""

import dataclasses

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation import metrics as m
from kronos_pipeline.evaluation import table_checks
from kronos_pipeline.evaluation.folds import make_folds
from kronos_pipeline.evaluation.report import REPORT_FILES

from .conftest import nyse_dates


def _rows(n_dates=30, n_names=20, seed=0):
    rng = np.random.default_rng(seed)
    dates = nyse_dates("2019-01-02", "2019-03-29")[:n_dates]
    d, t = np.meshgrid(np.arange(n_dates), np.arange(n_names), indexing="ij")
    return pd.DataFrame({
        "model": "x", "horizon": 20, "fold": "2019-01", "date": dates[d.ravel()],
        "ticker": [f"T{i}" for i in t.ravel()], "score": rng.standard_normal(d.size),
        "excess_return": rng.standard_normal(d.size), "fwd_return": rng.standard_normal(d.size),
    })  # fmt: skip


def test_folds_purged_fails_when_a_training_end_is_too_close():
    dates = nyse_dates("2015-01-02", "2017-12-29")
    folds = make_folds(dates, "2017-01", "2017-03", (20, 60))
    assert table_checks.folds_purged(folds)[0]
    f = folds[1]
    leaky = dataclasses.replace(
        f, train_end={**f.train_end, 20: f.test_start - pd.Timedelta(days=1)}
    )
    ok, description, _ = table_checks.folds_purged([folds[0], leaky, folds[2]])
    assert not ok and "2017-02 h=20: 1 sessions" in description
    assert not table_checks.folds_purged([folds[0], folds[2]])[0]  # a month missing


def test_eval_rows_reconcile_fails_on_lost_or_duplicated_rows():
    rows = _rows()
    assert table_checks.eval_rows_reconcile(rows, len(rows))[0]
    assert not table_checks.eval_rows_reconcile(rows.iloc[1:], len(rows))[0]
    assert not table_checks.eval_rows_reconcile(pd.concat([rows, rows.iloc[:1]]), len(rows) + 1)[0]
    assert not table_checks.eval_rows_reconcile(rows.iloc[:0], 0)[0]  # nothing to evaluate


def test_per_date_and_summaries_fail_on_missing_or_nan_metrics():
    rows = _rows()
    per_date = m.per_date_metrics(rows, 10.0)
    assert table_checks.per_date_complete(per_date, rows)[0]
    assert not table_checks.per_date_complete(per_date.iloc[1:], rows)[0]
    assert not table_checks.per_date_complete(per_date.assign(rank_ic=np.nan), rows)[0]
    folds = m.fold_summaries(per_date)
    comp = m.model_comparison(per_date, folds)
    assert table_checks.summaries_complete(folds, per_date)[0]
    assert table_checks.comparison_complete(comp, per_date)[0]
    assert not table_checks.comparison_complete(comp.assign(median_rank_ic=np.nan), per_date)[0]
    assert not table_checks.summaries_complete(folds.iloc[:0], per_date)[0]
    assert not table_checks.comparison_complete(pd.concat([comp, comp]), per_date)[0]


def test_report_files_check_names_what_is_missing(tmp_path):
    for name in REPORT_FILES:
        (tmp_path / name).write_text("x")
    assert table_checks.report_files_present(tmp_path, REPORT_FILES)[0]
    (tmp_path / "turnover.png").unlink()
    (tmp_path / "fold_summaries.csv").write_text("")
    ok, description, _ = table_checks.report_files_present(tmp_path, REPORT_FILES)
    assert not ok and "turnover.png" in description and "fold_summaries.csv" in description


def _scored(models=("random", "lightgbm"), horizons=(20,)):
    members = pd.DataFrame({"date": pd.Timestamp("2019-06-03"), "ticker": ["A", "B", "C"]})
    scores = pd.concat(
        [members.assign(model=m, horizon=h, score=[0.1, 0.2, 0.3], fold="2019-06")
         for m in models for h in horizons],
        ignore_index=True,
    )  # fmt: skip
    return scores, members


def test_scores_complete_fails_on_an_unscored_member_a_duplicate_or_a_nan():
    scores, members = _scored()
    args = (["random", "lightgbm"], [20])
    assert table_checks.scores_complete(scores, members, *args, always_scored=args[0])[0]
    missing = scores.drop(index=scores.index[(scores["model"] == "lightgbm")][:1])
    ok, desc, numbers = table_checks.scores_complete(missing, members, *args, always_scored=args[0])
    assert not ok and numbers["unscored"] == 1 and "lightgbm h20 2019-06-03 A" in desc
    doubled = pd.concat([scores, scores.iloc[:1]], ignore_index=True)
    assert table_checks.scores_complete(doubled, members, *args)[2]["duplicates"] == 1
    nan = scores.assign(score=scores["score"].where(scores.index != 0))
    assert table_checks.scores_complete(nan, members, *args)[2]["non_finite"] == 1
    only_random = scores[scores["model"] == "random"]
    assert not table_checks.scores_complete(only_random, members, *args)[0]  # a model absent

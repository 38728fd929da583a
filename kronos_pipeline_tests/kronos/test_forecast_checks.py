"""The blocking checks of ``kronos_forecasts`` and ``kronos_scores`` trip on each fault they
name: a duplicate key, a non-finite mean, quantile, sample path or embedding value,
quantiles out of order, missing paths; scores missing, doubled, non-finite."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from kronos_pipeline.kronos import scoring
from kronos_pipeline.kronos.forecast_checks import forecast_problems, score_problems

PATHS = 4


def _forecasts() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for ticker in ("AAA", "BBB", "CCC"):
        for horizon in (5, 10):
            samples = np.sort(rng.normal(0, 0.02, PATHS))
            q = np.quantile(samples, [0.1, 0.5, 0.9], method="weibull")
            rows.append({
                "model": "kronos_walkforward", "fold": "2019-10", "date": dt.datetime(2019, 10, 1),
                "ticker": ticker, "horizon": horizon, "last_close": 100.0, "close_std": 2.0,
                "pred_return_mean": float(samples.mean()), "pred_return_q10": q[0],
                "pred_return_q50": q[1], "pred_return_q90": q[2], "sample_count": PATHS,
                "samples": list(samples), "embedding": [0.1, -0.2, 0.3],
            })  # fmt: skip
    return pl.DataFrame(rows).cast(scoring.FORECAST_SCHEMA)


def _set(frame: pl.DataFrame, row: int, column: str, value) -> pl.DataFrame:
    values = frame[column].to_list()
    values[row] = value
    return frame.with_columns(pl.Series(column, values, dtype=frame.schema[column]))


def test_sound_forecasts_and_their_scores_pass():
    f = _forecasts()
    assert forecast_problems(f, PATHS)["passed"]
    assert score_problems(f, scoring.forecasts_to_scores(f))["passed"]


@pytest.mark.parametrize(
    ("fault", "counter"),
    [
        (lambda f: pl.concat([f, f.head(1)]), "duplicates"),
        (lambda f: _set(f, 2, "pred_return_mean", float("nan")), "non_finite"),
        (lambda f: _set(f, 1, "pred_return_q50", float("inf")), "non_finite"),
        (lambda f: _set(f, 0, "samples", [0.0, float("nan"), 0.1, 0.2]), "non_finite"),
        (lambda f: _set(f, 3, "embedding", [0.1, float("inf"), 0.3]), "non_finite"),
        (lambda f: _set(f, 4, "pred_return_q10", 0.5), "quantiles_out_of_order"),
        (lambda f: _set(f, 5, "samples", [0.0, 0.1]), "paths_missing"),
    ],
)
def test_forecasts_valid_trips_on_each_fault(fault, counter):
    result = forecast_problems(fault(_forecasts()), PATHS)
    assert not result["passed"]
    assert result["metadata"][counter] == 1, result["description"]


@pytest.mark.parametrize(
    ("fault", "counter"),
    [
        (lambda s: s.slice(1), "keys_without_both"),
        (lambda s: pl.concat([s, s.head(1)]), "duplicates"),
        (lambda s: _set(s, 0, "score", float("nan")), "non_finite"),
    ],
)
def test_scores_match_forecasts_trips_on_each_fault(fault, counter):
    f = _forecasts()
    result = score_problems(f, fault(scoring.forecasts_to_scores(f)))
    assert not result["passed"]
    assert result["metadata"][counter] >= 1, result["description"]


def test_a_flat_window_gives_a_non_finite_volnorm_score_that_blocks():
    f = _set(_forecasts(), 0, "close_std", 0.0)
    assert not score_problems(f, scoring.forecasts_to_scores(f))["passed"]

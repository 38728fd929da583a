"""Forecast accuracy beside ranking: every metric against a hand computation, calibration of a
planted forecaster, point-in-time naive forecasts, greedy decoding, and the report section."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.evaluation import report
from kronos_pipeline.evaluation.forecast_metrics import (
    CALIBRATION_COLUMNS,
    METRIC_COLUMNS,
    calibration_table,
    crps_samples,
    forecast_metrics,
    naive_forecasts,
    realized_price_returns,
)

D1, D2 = pd.Timestamp("2019-03-01"), pd.Timestamp("2019-03-04")

# (date, ticker, last_close, pred, realized, samples): four pairs worked out by hand below.
HAND = [
    (D1, "A", 50.0, 0.10, 0.05, [0.00, 0.08, 0.12, 0.20]),
    (D1, "B", 20.0, -0.05, 0.10, [-0.10, -0.06, -0.02, 0.02]),
    (D2, "A", 40.0, 0.04, -0.02, [-0.04, 0.02, 0.06, 0.08]),
    (D2, "B", 10.0, 0.03, 0.00, [-0.01, 0.00, 0.03, 0.05]),
]


def hand_frames(model: str = "kronos", greedy: bool = False):
    forecasts = pd.DataFrame(
        [(model, d, t, 20, c, p, [p] if greedy else s) for d, t, c, p, _, s in HAND],
        columns=["model", "date", "ticker", "horizon", "last_close", "pred_return_mean", "samples"],
    )
    # An unmatured forecast (no realized row) and a realized row nobody forecast: both ignored.
    forecasts.loc[len(forecasts)] = [model, D2, "C", 20, 5.0, 0.5, [0.1, 0.9]]
    realized = pd.DataFrame(
        [(d, t, 20, y) for d, t, _, _, y, _ in HAND] + [(D1, "Z", 20, 0.3)],
        columns=["date", "ticker", "horizon", "realized_return"],
    )
    return forecasts, realized


def naive_crps(samples, y) -> float:
    """The energy form by the double sum over all m^2 ordered pairs."""
    m = len(samples)
    first = sum(abs(x - y) for x in samples) / m
    second = sum(abs(a - b) for a in samples for b in samples) / m**2
    return first - 0.5 * second


def test_every_metric_matches_a_hand_computation():
    forecasts, realized = hand_frames()
    got = forecast_metrics(forecasts, realized)
    assert list(got.columns) == list(METRIC_COLUMNS)
    assert len(got) == 1
    row = got.iloc[0]
    assert row["model"] == "kronos" and row["horizon"] == 20
    assert row["n"] == 4  # the unmatured forecast and the unforecast realized row are out
    assert row["sample_count"] == 4
    # errors pred - realized: 0.05, -0.15, 0.06, 0.03
    assert row["mae_return"] == pytest.approx((0.05 + 0.15 + 0.06 + 0.03) / 4)
    assert row["rmse_return"] == pytest.approx(math.sqrt((0.0025 + 0.0225 + 0.0036 + 0.0009) / 4))
    # realized == 0 (the last pair) is left out of MAPE: |e|/|y| = 1, 1.5, 3
    assert row["mape_return"] == pytest.approx((1.0 + 1.5 + 3.0) / 3)
    # price errors last_close * e: 2.5, -3.0, 2.4, 0.3; realized prices 52.5, 22, 39.2, 10
    assert row["mae_price"] == pytest.approx((2.5 + 3.0 + 2.4 + 0.3) / 4)
    assert row["rmse_price"] == pytest.approx(math.sqrt((6.25 + 9.0 + 5.76 + 0.09) / 4))
    assert row["mape_price"] == pytest.approx((2.5 / 52.5 + 3.0 / 22 + 2.4 / 39.2 + 0.3 / 10) / 4)
    # signs (+,+) hit, (-,+) miss, (+,-) miss; realized == 0 excluded
    assert row["directional_accuracy"] == pytest.approx(1 / 3)
    # With 4 samples the Weibull 10 % / 90 % positions (0.5 and 4.5) clamp to min and max.
    # y in [min, max]: 0.05 in [0, .2] yes; .10 in [-.1, .02] no; -.02 in [-.04, .08] yes;
    # 0 in [-.01, .05] yes.
    assert row["coverage_10_90"] == pytest.approx(3 / 4)
    assert row["interval_width_10_90"] == pytest.approx((0.20 + 0.12 + 0.12 + 0.06) / 4)
    hand_crps = [naive_crps(s, y) for _, _, _, _, y, s in HAND]
    assert hand_crps[0] == pytest.approx(0.075 - 0.5 * 0.08)  # worked on paper: 0.035
    assert row["crps"] == pytest.approx(np.mean(hand_crps))


def test_crps_matches_the_double_sum_for_any_sample_count():
    rng = np.random.default_rng(7)
    samples = [rng.normal(size=m) for m in (2, 3, 3, 5, 17)]
    y = rng.normal(size=len(samples))
    expected = [naive_crps(list(s), v) for s, v in zip(samples, y, strict=True)]
    assert crps_samples(samples, y) == pytest.approx(expected)


def test_calibration_table_matches_hand_quantiles():
    forecasts, realized = hand_frames()
    got = calibration_table(forecasts, realized)
    assert list(got.columns) == list(CALIBRATION_COLUMNS)
    observed = got.set_index("nominal")["observed"]
    # Weibull positions p * 5 among 4 sorted samples, per pair (y <= q?):
    #   p=.1 -> min: F, F, F, F      p=.25 -> x1 + .25 (x2 - x1): .02 F, -.09 F, -.025 F, -.0075 F
    #   p=.5 -> mid x2, x3: .10 T, -.04 F, .04 T, .015 T
    #   p=.75 -> x3 + .75 (x4 - x3): .18 T, .01 F, .075 T, .045 T    p=.9 -> max: T, F, T, T
    assert observed.to_dict() == pytest.approx(
        {0.1: 0.0, 0.25: 0.0, 0.5: 0.75, 0.75: 0.75, 0.9: 0.75}
    )
    assert set(got["n"]) == {4}


def planted(n_pairs: int, n_samples: int, spread: float, seed: int = 12):
    """Realized returns drawn from the same distribution as the samples (per pair mean and
    volatility); ``spread`` scales the samples' standard deviation (1 = calibrated)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 0.02, n_pairs)
    sigma = rng.uniform(0.02, 0.10, n_pairs)
    realized_r = mu + sigma * rng.standard_normal(n_pairs)
    draws = mu[:, None] + spread * sigma[:, None] * rng.standard_normal((n_pairs, n_samples))
    dates = pd.bdate_range("2010-01-01", periods=n_pairs)
    forecasts = pd.DataFrame({
        "model": "planted", "date": dates, "ticker": "X", "horizon": 20, "last_close": 100.0,
        "pred_return_mean": draws.mean(axis=1), "samples": list(draws),
    })  # fmt: skip
    realized = pd.DataFrame(
        {"date": dates, "ticker": "X", "horizon": 20, "realized_return": realized_r}
    )
    return forecasts, realized


def within_sampling_error(observed: float, p: float, n: int, sds: float = 4.0) -> bool:
    return abs(observed - p) <= sds * math.sqrt(p * (1 - p) / n)


def test_a_calibrated_forecaster_shows_nominal_coverage_and_an_overconfident_one_does_not():
    n = 4000
    calibrated = planted(n, 64, spread=1.0)
    overconfident = planted(n, 64, spread=1 / 3)
    good = forecast_metrics(*calibrated).iloc[0]
    bad = forecast_metrics(*overconfident).iloc[0]
    assert within_sampling_error(good["coverage_10_90"], 0.8, n)
    assert not within_sampling_error(bad["coverage_10_90"], 0.8, n)
    for row in calibration_table(*calibrated).itertuples():
        assert within_sampling_error(row.observed, row.nominal, n), row
    bad_levels = calibration_table(*overconfident)
    tails = bad_levels[bad_levels["nominal"] != 0.5]
    assert not any(within_sampling_error(r.observed, r.nominal, n) for r in tails.itertuples())
    assert good["crps"] < bad["crps"]  # CRPS is proper: honest spread scores better


def prices_frame(adj: dict[str, list[float]], start: str = "2018-01-02") -> pd.DataFrame:
    frames = []
    for ticker, values in adj.items():
        dates = pd.bdate_range(start, periods=len(values))
        frames.append(pd.DataFrame({"ticker": ticker, "date": dates, "adj_close": values}))
    out = pd.concat(frames, ignore_index=True)
    out["close"] = out["adj_close"] * 2.0  # traded close in t's share units (after a split)
    return out


def test_realized_returns_use_adj_close_and_the_hth_next_row():
    prices = prices_frame({"A": [10.0, 11.0, 12.1, 9.68], "B": [5.0, 5.5]})
    # A raw close that halves overnight (a split) must not leak into the price return.
    prices.loc[(prices["ticker"] == "A") & (prices.index >= 2), "close"] /= 2
    got = realized_price_returns(prices, horizons=(1, 2)).set_index(["ticker", "horizon", "date"])
    a = got.loc[("A", 2)]["realized_return"]
    assert a.tolist() == pytest.approx([12.1 / 10 - 1, 9.68 / 11 - 1])
    assert len(got.loc[("A", 1)]) == 3 and len(got.loc[("B", 1)]) == 1  # last rows not matured
    assert ("B", 2) not in got.index.droplevel("date")
    assert got.loc[("B", 1)]["realized_return"].iloc[0] == pytest.approx(0.1)


def test_naive_forecasts_by_hand():
    adj = [100.0, 102.0, 101.0, 104.0, 103.0, 106.0, 108.0]
    prices = prices_frame({"A": adj})
    t = prices["date"].iloc[6]
    keys = pd.DataFrame({"date": [t], "ticker": ["A"]})
    got = naive_forecasts(prices, keys, horizons=(2,), trailing=3, min_returns=1)
    # R(t): the 2-day returns ending at sessions 4, 5, 6
    returns = np.array([103 / 101 - 1, 106 / 104 - 1, 108 / 103 - 1])
    drift = got[got["model"] == "naive_drift"].iloc[0]
    walk = got[got["model"] == "naive_random_walk"].iloc[0]
    assert drift["pred_return_mean"] == pytest.approx(returns.mean())
    assert np.sort(drift["samples"]) == pytest.approx(np.sort(returns))
    assert walk["pred_return_mean"] == 0.0
    assert np.sort(walk["samples"]) == pytest.approx(np.sort(returns - returns.mean()))
    assert drift["last_close"] == 216.0 and drift["horizon"] == 2
    # Too little history: no naive row rather than a forecast on nothing.
    assert naive_forecasts(prices, keys, horizons=(2,), trailing=3, min_returns=4).empty


def test_naive_drift_is_point_in_time():
    rng = np.random.default_rng(3)
    adj = list(100 * np.cumprod(1 + rng.normal(0.001, 0.02, 400)))
    prices = prices_frame({"A": adj})
    t = prices["date"].iloc[300]
    keys = pd.DataFrame({"date": [t], "ticker": ["A"]})

    def drift_at_t(frame):
        got = naive_forecasts(frame, keys, horizons=(20,))
        row = got[got["model"] == "naive_drift"].iloc[0]
        return row["pred_return_mean"], np.asarray(row["samples"])

    before, samples = drift_at_t(prices)
    future = prices.copy()
    future.loc[301:, "adj_close"] *= 3.0  # every price after t
    after, samples_after = drift_at_t(future)
    assert after == before and np.array_equal(samples_after, samples)
    past = prices.copy()
    past.loc[290, "adj_close"] *= 1.5  # a price inside the trailing year before t: it must move
    assert drift_at_t(past)[0] != pytest.approx(before)
    assert len(samples) == 252


def test_greedy_gives_nan_quantile_metrics_and_the_section_says_so():
    sampled = hand_frames("kronos")
    greedy = hand_frames("kronos_greedy", greedy=True)
    forecasts = pd.concat([sampled[0], greedy[0]], ignore_index=True)
    metrics = forecast_metrics(forecasts, sampled[1]).set_index("model")
    calibration = calibration_table(forecasts, sampled[1])
    g = metrics.loc["kronos_greedy"]
    assert g["sample_count"] == 1
    assert all(np.isnan(g[c]) for c in ("coverage_10_90", "interval_width_10_90", "crps"))
    assert g["mae_return"] == pytest.approx(metrics.loc["kronos", "mae_return"])
    assert calibration[calibration["model"] == "kronos_greedy"]["observed"].isna().all()
    md = report.forecast_section(metrics.reset_index(), calibration)
    assert "### Horizon 20 trading days" in md and "20.0" not in md
    greedy_row = next(r for r in md.splitlines() if r.startswith("| kronos_greedy | 4 |"))
    assert greedy_row.count("n/a (greedy)") == 3
    calib_rows = [r for r in md.splitlines() if r.startswith("| kronos_greedy | 20 |")]
    assert len(calib_rows) == 1 and calib_rows[0].count("n/a (greedy)") == 5
    sampled_row = next(r for r in md.splitlines() if r.startswith("| kronos | 4 |"))
    assert "n/a" not in sampled_row and "| 0.7500 |" in sampled_row


@pytest.fixture(scope="module")
def tiny_report_inputs() -> dict:
    """What write_report needs besides the forecasts, from a two-date, one-model evaluation."""
    from kronos_pipeline.evaluation.pipeline import evaluate_scores
    from kronos_pipeline.settings import load_settings

    keys = pd.MultiIndex.from_product(
        [pd.to_datetime(["2019-01-02", "2019-01-03"]), [f"T{i:02d}" for i in range(30)]],
        names=["date", "ticker"],
    ).to_frame(index=False)
    scores = keys.assign(model="lightgbm", horizon=20, score=np.arange(len(keys)) % 30 * 1.0,
                         fold="2019-01")  # fmt: skip
    labels = keys.assign(horizon=20, fwd_return=0.001 * np.arange(len(keys)),
                         available_at=pd.Timestamp("2019-02-01"))  # fmt: skip
    labels["excess_return"] = labels["fwd_return"] - labels["fwd_return"].mean()
    ev = evaluate_scores(scores, labels, load_settings(environ={}))
    return dict(
        comparison=ev.comparison, fold_summaries=ev.fold_summaries, per_date=ev.per_date,
        eval_rows=ev.eval_rows, deciles=ev.deciles, tripwires=ev.tripwires,
        verdicts=ev.verdicts, reference=ev.reference, data_source="synthetic",
    )  # fmt: skip


def test_forecast_files_and_section_in_the_report(tmp_path, tiny_report_inputs):
    metrics = forecast_metrics(*hand_frames())
    calibration = calibration_table(*hand_frames())
    paths = report.write_report(
        tmp_path / "with", **tiny_report_inputs, forecast_accuracy=(metrics, calibration)
    )
    names = sorted(p.name for p in (tmp_path / "with").iterdir())
    assert names == sorted([*report.REPORT_FILES, *report.FORECAST_FILES])
    assert paths["forecast_reliability.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = pd.read_csv(paths["forecast_metrics.csv"])
    assert written["crps"].iloc[0] == pytest.approx(metrics["crps"].iloc[0])
    assert len(pd.read_csv(paths["forecast_calibration.csv"])) == 5
    md = paths["REPORT_SUMMARY.md"].read_text()
    assert "## Forecast accuracy (beside ranking)" in md
    assert "![Reliability](forecast_reliability.png)" in md

    plain = report.write_report(tmp_path / "without", **tiny_report_inputs)
    assert "No Kronos forecasts in this run." in plain["REPORT_SUMMARY.md"].read_text()
    assert sorted(p.name for p in (tmp_path / "without").iterdir()) == sorted(report.REPORT_FILES)


def test_reliability_plot_leaves_no_temporary_file(tmp_path):
    calibration = calibration_table(*hand_frames())
    report.reliability_plot(calibration, tmp_path / "r.png")
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]

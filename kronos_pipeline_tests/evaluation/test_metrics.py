import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from alphalens import performance as al_perf
from alphalens import utils as al_utils
from scipy import stats

from kronos_pipeline.evaluation import metrics as m
from kronos_pipeline.settings import CostSettings

from .conftest import nyse_dates


def _rows(score: np.ndarray, label: np.ndarray, dates, tickers, model="x", horizon=20, fwd=None):
    """Eval rows for a (n_dates, n_names) grid."""
    d, t = np.meshgrid(np.arange(len(dates)), np.arange(len(tickers)), indexing="ij")
    return pd.DataFrame(
        {
            "model": model,
            "horizon": horizon,
            "fold": "f",
            "date": dates[d.ravel()],
            "ticker": np.array(tickers)[t.ravel()],
            "score": score.ravel(),
            "excess_return": label.ravel(),
            "fwd_return": (label if fwd is None else fwd).ravel(),
        }
    )


def test_rank_ic_hand_computed_with_ties():
    # ranks score: [1, 2.5, 2.5, 4]; ranks label: [2, 1, 3, 4]
    # centred: [-1.5, 0, 0, 1.5] . [-0.5, -1.5, 0.5, 1.5] = 0.75 + 2.25 = 3
    # norms: sqrt(4.5 * 5) -> 3 / sqrt(22.5)
    ic = m.rank_ic(np.array([0.1, 0.5, 0.5, 0.9]), np.array([0.0, -1.0, 2.0, 3.0]))
    assert ic == pytest.approx(3 / np.sqrt(22.5), abs=1e-12)
    assert m.rank_ic(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(m.rank_ic(np.array([1.0, 2]), np.array([1.0, 2])))


def test_ic_ir_and_hit_rate_hand_computed():
    ic = np.array([0.1, -0.05, 0.2, 0.05, np.nan])
    # mean 0.075, sample std sqrt(((.025)^2+(.125)^2+(.125)^2+(.025)^2)/3) = sqrt(0.0325/3)
    assert m.ic_ir(ic) == pytest.approx(0.075 / np.sqrt(0.0325 / 3), abs=1e-12)
    assert m.hit_rate(ic) == pytest.approx(0.75)


def test_newey_west_t_matches_the_hansen_hodrick_formula_with_its_corrections():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200).cumsum() * 0.01 + 0.02
    lag = 19
    n = len(x)
    e = x - x.mean()
    s = e @ e / n
    for j in range(1, lag + 1):
        s += 2 * (e[j:] @ e[:-j]) / n  # truncated kernel: every lag inside the overlap in full
    s /= 1 - (2 * lag + 1) / n  # demeaning bias
    t = x.mean() / np.sqrt(s / n)
    expected = t * 1.959963984540054 / stats.t.ppf(0.975, n / (1.5 * lag + 1))
    assert m.newey_west_t(x, lag) == pytest.approx(expected, rel=1e-10)
    ols = sm.OLS(x, np.ones(n)).fit(
        cov_type="HAC", cov_kwds={"maxlags": lag, "kernel": "uniform", "use_correction": False}
    )
    hh = float(ols.tvalues[0]) * np.sqrt(1 - (2 * lag + 1) / n)
    assert m.newey_west_t(x, lag) == pytest.approx(
        hh * 1.959963984540054 / stats.t.ppf(0.975, n / (1.5 * lag + 1)), rel=1e-10
    )


def test_newey_west_t_is_na_with_fewer_than_four_overlap_blocks():
    x = np.random.default_rng(0).standard_normal(79)
    assert np.isnan(m.newey_west_t(x, 19))  # 4 x (19 + 1) = 80 dates needed
    assert np.isfinite(m.newey_west_t(np.append(x, 0.3), 19))
    assert m.newey_west_lag(20, 1) == 19
    assert m.newey_west_lag(20, 5) == 3
    assert m.newey_west_lag(90, 5) == 17
    assert m.newey_west_lag(60, 21) == 2


def test_non_overlapping_dates_are_at_least_h_sessions_apart():
    pos = np.array([0, 5, 10, 19, 20, 21, 39, 40, 45, 80])
    assert m.non_overlapping_positions(pos, 20).tolist() == [0, 4, 7, 9]
    assert np.isnan(m.non_overlapping_t(np.array([0.1, 0.2, 0.0, 0.3, 0.1])))  # 5 < 6 dates


def test_quantile_of_matches_pandas_qcut():
    rng = np.random.default_rng(1)
    for n in [10, 11, 37, 100, 453]:
        s = rng.standard_normal(n)
        expected = pd.qcut(s, 10, labels=False) + 1
        np.testing.assert_array_equal(m.quantile_of(s), expected)


def test_turnover_and_break_even_hand_computed():
    assert m.top_turnover(["a", "b", "c", "d"], ["a", "b", "x", "y"]) == 0.5
    # gross 1% over the holding, ls turnover 0.25 -> traded 0.5 -> break-even 200 bps
    assert m.break_even_cost_bps(0.01, 0.25) == pytest.approx(200.0)
    net = m.net_of_cost(np.array([0.01]), np.array([0.25]), 10.0)
    assert net[0] == pytest.approx(0.01 - 10e-4 * 0.5)


@pytest.fixture(scope="module")
def grid():
    rng = np.random.default_rng(11)
    dates = nyse_dates("2019-01-02", "2019-03-29")
    tickers = [f"S{i:02d}" for i in range(50)]
    base = rng.standard_normal(len(tickers))
    score = base + 0.6 * rng.standard_normal((len(dates), len(tickers)))  # persistent scores
    label = 0.2 * score + rng.standard_normal(score.shape)
    fwd = label + 0.01 * rng.standard_normal(score.shape)
    return dates, tickers, score, label, fwd


def _alphalens_factor_data(rows: pd.DataFrame) -> pd.DataFrame:
    fd = rows.rename(columns={"ticker": "asset", "score": "factor", "excess_return": "1D"})
    fd = fd.set_index(["date", "asset"])[["1D", "factor"]]
    fd["factor_quantile"] = al_utils.quantize_factor(fd, quantiles=10)
    return fd


def test_per_date_metrics_match_alphalens_to_1e9(grid):
    dates, tickers, score, label, fwd = grid
    rows = _rows(score, label, dates, tickers, fwd=fwd)
    per_date = m.per_date_metrics(rows, CostSettings().cost_bps).set_index("date")
    fd = _alphalens_factor_data(rows)

    al_ic = al_perf.factor_information_coefficient(fd)["1D"]
    np.testing.assert_allclose(per_date["rank_ic"], al_ic.reindex(per_date.index), atol=1e-9)

    for quantile, column in [(10, "top_turnover"), (1, "bottom_turnover")]:
        al_turn = al_perf.quantile_turnover(fd["factor_quantile"], quantile)
        ours = per_date[column]
        assert np.isnan(ours.iloc[0])
        np.testing.assert_allclose(ours.iloc[1:], al_turn.reindex(ours.index[1:]), atol=1e-9)

    al_auto = al_perf.factor_rank_autocorrelation(fd)
    np.testing.assert_allclose(
        per_date["rank_autocorr"].iloc[1:], al_auto.reindex(per_date.index[1:]), atol=1e-9
    )

    # Decile spread against alphalens' mean return by quantile per date.
    fd_fwd = fd.copy()
    fd_fwd["1D"] = rows.set_index(["date", "ticker"])["fwd_return"].to_numpy()
    by_q, _ = al_perf.mean_return_by_quantile(fd_fwd, by_date=True, demeaned=False)
    by_q = by_q["1D"].unstack("factor_quantile")
    np.testing.assert_allclose(
        per_date["spread_return"], (by_q[10] - by_q[1]).reindex(per_date.index), atol=1e-9
    )


def test_rank_ic_vectorised_equals_scipy_per_date(grid):
    dates, tickers, score, label, _ = grid
    rows = _rows(np.round(score, 1), np.round(label, 1), dates, tickers)  # many ties
    per_date = m.per_date_metrics(rows, CostSettings().cost_bps)
    for i, d in enumerate(dates[:10]):
        expected = stats.spearmanr(np.round(score[i], 1), np.round(label[i], 1)).statistic
        assert per_date.loc[per_date["date"] == d, "rank_ic"].item() == pytest.approx(
            expected, abs=1e-12
        )


def test_planted_signal_gives_expected_rank_ic_within_sampling_error():
    # Bivariate normal with correlation rho: Spearman = 6/pi * arcsin(rho / 2).
    rho, n_names, n_dates = 0.2, 200, 250
    rng = np.random.default_rng(5)
    dates = nyse_dates("2018-01-02", "2018-12-31")[:n_dates]
    tickers = [f"S{i:03d}" for i in range(n_names)]
    z = rng.standard_normal((n_dates, n_names))
    label = rho * z + np.sqrt(1 - rho**2) * rng.standard_normal(z.shape)
    per_date = m.per_date_metrics(_rows(z, label, dates, tickers), CostSettings().cost_bps)
    expected = 6 / np.pi * np.arcsin(rho / 2)
    se = per_date["rank_ic"].std(ddof=1) / np.sqrt(n_dates)
    assert abs(per_date["rank_ic"].mean() - expected) < 4 * se
    assert se < 0.01  # the test has power: 4 se < 0.04, well below expected ~0.19


def test_spread_net_of_the_cost_of_the_hold_and_summaries(grid):
    dates, tickers, score, label, fwd = grid
    rows = _rows(score, label, dates, tickers, fwd=fwd)
    cost = CostSettings().cost_bps
    per_date = m.per_date_metrics(rows, cost)
    expected_net = per_date["spread_return"] - cost * 1e-4 * 2 * (
        per_date["hold_top_turnover"] + per_date["hold_bottom_turnover"]
    )
    np.testing.assert_allclose(per_date["net_spread_return"], expected_net, atol=1e-15)
    # one hand-checked date: top decile = 5 names with the highest scores
    i = 7
    order = np.argsort(score[i])
    top, bottom = fwd[i, order[-5:]].mean(), fwd[i, order[:5]].mean()
    assert per_date["spread_return"].iloc[i] == pytest.approx(top - bottom, abs=1e-15)
    # its hold: the top decile formed at i is replaced by the one formed 20 sessions later
    later = np.argsort(score[i + 20])
    replaced = len(set(later[-5:]) - set(order[-5:])) / 5
    assert per_date["hold_top_turnover"].iloc[i] == pytest.approx(replaced)
    assert not per_date["hold_cost_bounded"].iloc[i]
    # the last 20 dates have no portfolio 20 sessions later: the whole book is turned over
    assert (
        per_date["hold_cost_bounded"].to_numpy().tolist()
        == [False] * (len(dates) - 20) + [True] * 20
    )
    assert (per_date["hold_turnover"][per_date["hold_cost_bounded"]] == 2.0).all()

    per_date["fold"] = np.where(per_date["date"] < pd.Timestamp("2019-02-01"), "2019-01", "later")
    folds = m.fold_summaries(per_date)
    jan = folds[folds["fold"] == "2019-01"].iloc[0]
    ic = per_date.loc[per_date["fold"] == "2019-01", "rank_ic"]
    assert jan["median_rank_ic"] == pytest.approx(ic.median())
    assert jan["ic_ir"] == pytest.approx(ic.mean() / ic.std(ddof=1))
    assert jan["nw_lag"] == 19
    assert np.isnan(jan["nw_t"])  # 21 daily dates cannot carry a lag-19 HAC t: "n/a"
    comp = m.model_comparison(per_date, folds).iloc[0]
    assert comp["n_folds"] == 2
    assert comp["median_rank_ic"] == pytest.approx(per_date["rank_ic"].median())
    assert comp["positive_fold_share"] == pytest.approx(
        (folds["mean_net_spread_return"] > 0).mean()
    )
    assert comp["break_even_cost_bps"] == pytest.approx(
        1e4 * per_date["spread_return"].mean() / (2 * per_date["hold_turnover"].mean())
    )
    assert comp["hold_imputed_share"] == pytest.approx(20 / len(dates))
    assert comp["n_dates_hold_cost_bounded"] == 20
    # churn: the top decile at a date against the one 5 sessions earlier, whatever the cadence
    i = 12
    now, before = set(np.argsort(score[i])[-5:]), set(np.argsort(score[i - 5])[-5:])
    assert per_date["churn"].iloc[i] == pytest.approx(len(now - before) / 5)
    assert per_date["churn"].iloc[:5].isna().all() and per_date["churn"].iloc[5:].notna().all()
    assert comp["churn"] == pytest.approx(per_date["churn"].mean())
    assert comp["n_churn_dates"] == len(dates) - 5


def test_churn_is_measured_over_five_sessions_for_every_cadence(grid):
    dates, tickers, score, label, _ = grid
    daily = _rows(score, label, dates, tickers, model="daily")
    weekly_dates = dates[::5]  # every 5th session: a weekly model on the same scores
    weekly = daily[daily["date"].isin(weekly_dates)].assign(model="weekly")
    monthly = daily[daily["date"] == dates[0]].assign(model="monthly")
    both = pd.concat([daily, weekly, monthly, daily[daily["date"] == dates[30]].assign(
        model="monthly")], ignore_index=True)  # fmt: skip
    per_date = m.per_date_metrics(both, 10.0).set_index(["model", "date"])
    on_weekly = weekly_dates[1:]
    np.testing.assert_allclose(
        per_date.loc["weekly", "churn"].loc[on_weekly],
        per_date.loc["daily", "churn"].loc[on_weekly],
        atol=1e-15,
    )
    # consecutive-date turnover is a different number for the two cadences...
    assert not np.allclose(
        per_date.loc["weekly", "top_turnover"].loc[on_weekly],
        per_date.loc["daily", "top_turnover"].loc[on_weekly],
    )
    # ...and a monthly model has no date 5 sessions earlier: no churn, not a month's churn
    assert per_date.loc["monthly", "churn"].isna().all()
    comp = m.model_comparison(per_date.reset_index(), m.fold_summaries(per_date.reset_index()))
    monthly_row = comp.set_index("model").loc["monthly"]
    assert np.isnan(monthly_row["churn"]) and monthly_row["n_churn_dates"] == 0


def test_net_figures_are_na_when_more_than_half_of_the_hold_turnovers_are_imputed(grid):
    dates, tickers, score, label, fwd = grid
    # 60-session holds on 61 dates: only the first date has a book 60 sessions later
    per_date = m.per_date_metrics(_rows(score, label, dates, tickers, horizon=60, fwd=fwd), 10.0)
    assert per_date["hold_cost_bounded"].sum() == len(dates) - 1
    comp = m.model_comparison(per_date, m.fold_summaries(per_date)).iloc[0]
    assert comp["hold_imputed_share"] == pytest.approx((len(dates) - 1) / len(dates))
    for column in ("mean_net_spread_return", "break_even_cost_bps", "positive_fold_share"):
        assert np.isnan(comp[column]), column
    # the gross figures are still measurements and stay
    assert comp["mean_spread_return"] == pytest.approx(per_date["spread_return"].mean())
    assert comp["mean_hold_turnover"] == pytest.approx(per_date["hold_turnover"].mean())


def test_folds_and_regimes_below_the_minimum_of_dates_are_not_judged(grid):
    dates, tickers, score, label, fwd = grid
    rng = np.random.default_rng(2)
    mkt_dates = nyse_dates("2018-10-01", "2019-03-29")
    market = pd.DataFrame({"date": mkt_dates, "mkt_ret": rng.standard_normal(len(mkt_dates))})
    rows = _rows(score, label, dates, tickers, fwd=fwd)
    per_date = m.per_date_metrics(rows, 10.0, market=market)
    per_date["fold"] = per_date["date"].dt.strftime("%Y-%m")  # 21 / 19 / 21 dates
    folds = m.fold_summaries(per_date)
    assert folds["n_dates"].tolist() == [21, 19, 21]
    regime_dates = per_date["vol_regime"].value_counts()
    assert regime_dates.min() >= 20 and regime_dates.max() <= 21
    comp = m.model_comparison(per_date, folds, min_dates=20).iloc[0]
    # February (19 dates) is too short and March's net spread is 20 of 21 dates imputed, so
    # only January counts; every regime has its 20 dates
    assert np.isnan(folds.set_index("fold").loc["2019-03", "mean_net_spread_return"])
    assert comp["n_folds"] == 3 and comp["n_folds_judged"] == 1
    jan = folds.set_index("fold").loc["2019-01", "mean_net_spread_return"]
    assert comp["positive_fold_share"] == float(jan > 0)
    assert comp["n_regimes_judged"] == 3
    assert m.model_comparison(per_date, folds, min_dates=19).iloc[0]["n_folds_judged"] == 2
    few = m.model_comparison(per_date, folds, min_dates=22).iloc[0]
    assert few["n_folds_judged"] == 0 and np.isnan(few["positive_fold_share"])
    assert few["n_regimes_judged"] == 0 and np.isnan(few["min_regime_median_rank_ic"])
    assert few["regime_n_dates_low"] == regime_dates["low"]


def test_a_persistent_signal_costs_more_over_the_hold_than_consecutive_churn_says():
    rng = np.random.default_rng(5)
    dates = nyse_dates("2018-01-02", "2019-06-28")
    tickers = [f"S{i:03d}" for i in range(200)]
    # a slowly drifting score: consecutive dates barely differ, 20 sessions later much more
    score = np.cumsum(0.15 * rng.standard_normal((len(dates), len(tickers))), axis=0)
    label = 0.1 * score + rng.standard_normal(score.shape)
    per_date = m.per_date_metrics(_rows(score, label, dates, tickers), 10.0)
    rolled = per_date[~per_date["hold_cost_bounded"]]
    assert rolled["hold_turnover"].mean() > 3 * rolled["ls_turnover"].mean()
    consecutive_net = rolled["spread_return"] - 10e-4 * 2 * rolled["ls_turnover"]
    assert (rolled["net_spread_return"] < consecutive_net).mean() > 0.95
    comp = m.model_comparison(per_date, m.fold_summaries(per_date)).iloc[0]
    churn_break_even = 1e4 * comp["mean_spread_return"] / (2 * comp["mean_ls_turnover"])
    assert comp["break_even_cost_bps"] < churn_break_even / 3


def test_regimes_and_momentum_corr(grid):
    dates, tickers, score, label, _ = grid
    rows = _rows(score, label, dates, tickers)
    rng = np.random.default_rng(2)
    mkt_dates = nyse_dates("2018-10-01", "2019-03-29")
    market = pd.DataFrame(
        {"date": mkt_dates, "mkt_ret": rng.standard_normal(len(mkt_dates)) * 0.01}
    )
    momentum = rows[["date", "ticker"]].assign(mom_12_1=rows["score"] * 2 + 1)  # monotone in score
    per_date = m.per_date_metrics(rows, 10.0, momentum=momentum, market=market)
    np.testing.assert_allclose(per_date["momentum_corr"], 1.0, atol=1e-12)
    vol = market.set_index("date")["mkt_ret"].rolling(20).std() * np.sqrt(252)
    np.testing.assert_allclose(per_date["mkt_vol_20d"], vol.reindex(per_date["date"]), rtol=1e-12)
    counts = per_date["vol_regime"].value_counts()
    assert set(counts.index) == {"low", "mid", "high"} and counts.max() - counts.min() <= 1
    low = per_date.loc[per_date["vol_regime"] == "low", "rank_ic"].median()
    folds = m.fold_summaries(per_date)
    comp = m.model_comparison(per_date, folds).iloc[0]
    assert comp["regime_median_rank_ic_low"] == pytest.approx(low)


def test_eval_rows_keeps_only_matured_labels():
    scores = pd.DataFrame(
        {
            "model": "x",
            "horizon": 20,
            "fold": "f",
            "ticker": ["a", "b", "c"],
            "date": pd.Timestamp("2019-01-02"),
            "score": [1.0, np.nan, 2.0],
        }
    )
    labels = pd.DataFrame(
        {
            "ticker": ["a", "b", "c"],
            "date": pd.Timestamp("2019-01-02"),
            "horizon": 20,
            "fwd_return": 0.01,
            "excess_return": 0.0,
            "available_at": pd.to_datetime(["2019-01-31", "2019-01-31", "2019-02-01"]),
        }
    )
    out = m.eval_rows(scores, labels, as_of=pd.Timestamp("2019-01-31"))
    assert out["ticker"].tolist() == ["a"]


def test_the_replacing_portfolio_comes_from_scores_whose_labels_have_not_matured(grid):
    dates, tickers, score, label, fwd = grid
    rows = _rows(score, label, dates, tickers, fwd=fwd)
    matured = rows[rows["date"] < dates[-20]]  # the last 20 sessions have no label yet
    scores = rows[["model", "horizon", "date", "ticker", "score", "fold"]]
    alone = m.per_date_metrics(matured, 10.0)
    booked = m.per_date_metrics(matured, 10.0, book_scores=scores)
    assert alone["hold_cost_bounded"].sum() == 20
    assert booked["hold_cost_bounded"].sum() == 0
    full = m.per_date_metrics(rows, 10.0)
    np.testing.assert_allclose(booked["hold_turnover"], full["hold_turnover"][: len(booked)])

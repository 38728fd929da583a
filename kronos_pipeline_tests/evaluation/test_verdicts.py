"""No verdict on noise (SPEC sections 6-7): each rule broken on purpose.

A gate or tripwire passes only on a statistic that can be judged: enough scoring dates, a NW t
that is a number and above the bar wherever "better than" is claimed. What cannot be judged
is "not evaluated", with the dates it had and needed, and never counts as passed.
"""

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.evaluation import gates, report, tripwires
from kronos_pipeline.evaluation import metrics as m
from kronos_pipeline.evaluation.pipeline import evaluate_scores
from kronos_pipeline.settings import GateSettings, TripwireSettings, load_settings

from .conftest import nyse_dates

HORIZONS = (20, 60, 90)
DATES = nyse_dates("2019-01-02", "2019-04-02")  # 63 sessions: a SMOKE run's three months
WEEKLY = DATES[np.r_[True, DATES.to_period("W-SUN")[1:] != DATES.to_period("W-SUN")[:-1]]]
TICKERS = [f"T{i:03d}" for i in range(100)]


def _scores(model: str, dates, seed: int, fold_of=lambda d: d.strftime("%Y-%m")) -> pd.DataFrame:
    """I.i.d. normal scores for every (date, ticker, horizon): a model with no signal."""
    rng = np.random.default_rng(seed)
    keys = pd.MultiIndex.from_product(
        [pd.DatetimeIndex(dates), TICKERS, HORIZONS], names=["date", "ticker", "horizon"]
    ).to_frame(index=False)
    keys["fold"] = keys["date"].map(fold_of)
    return keys.assign(model=model, score=rng.standard_normal(len(keys)))


def _labels(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keys = pd.MultiIndex.from_product(
        [DATES, TICKERS, HORIZONS], names=["date", "ticker", "horizon"]
    ).to_frame(index=False)
    keys["excess_return"] = rng.standard_normal(len(keys)) * 0.05
    return keys.assign(fwd_return=keys["excess_return"], available_at=pd.Timestamp("2019-12-31"))


def _row(**values) -> pd.Series:
    """A comparison row where everything can be judged unless a test says otherwise: 300 daily
    dates at 20 days (the NW t needs 80), significant, regimes and folds all judged."""
    base = {
        "model": "kronos_small", "horizon": 20, "n_dates": 300, "nw_lag": 19,
        "nw_min_dates": 80, "median_rank_ic": 0.06, "nw_t": 2.5, "median_momentum_corr": 0.1,
        "churn": 0.2, "n_churn_dates": 295, "positive_fold_share": 0.6, "n_folds": 14,
        "n_folds_judged": 14, "hold_imputed_share": 0.1, "min_regime_median_rank_ic": 0.01,
        "n_regimes_judged": 3, "regime_n_dates_low": 100, "regime_n_dates_mid": 100,
        "regime_n_dates_high": 100,
    }  # fmt: skip
    return pd.Series(base | values)


def test_min_scoring_dates_is_a_floor_under_the_dates_the_nw_t_needs():
    g = GateSettings()
    assert g.min_scoring_dates == 15 and g.min_nw_t == 2.0
    # daily: 4 x (h + 0) dates; weekly: 4 x ceil(h / 5); monthly (lag 0 at 20 days): the floor
    for spacing, expected in ((1, (80, 240, 360)), (5, (16, 48, 72)), (21, (15, 15, 20))):
        needed = [
            gates.required_dates(
                _row(horizon=h, nw_lag=m.newey_west_lag(h, spacing), nw_min_dates=None), g
            )  # fmt: skip
            for h in HORIZONS
        ]
        assert tuple(needed) == expected


def test_random_scores_on_14_weekly_dates_never_pass_gate_2():
    # The SMOKE finding: a weekly no-signal model on 14 dates "passed" gate 2 because LightGBM,
    # on the same pairs, was no better. Both here score i.i.d. noise.
    scores = pd.concat([_scores("kronos_small", WEEKLY, 1), _scores("random", WEEKLY, 2),
                        _scores("lightgbm", DATES, 3)], ignore_index=True)  # fmt: skip
    ev = evaluate_scores(scores, _labels(), load_settings(environ={}))
    comp = ev.comparison.set_index(["model", "horizon"])
    assert (comp.loc["kronos_small", "n_dates"] == 14).all()
    versus = ev.versus_lightgbm.set_index(["model", "horizon"])
    # the old rule ("within 0.03 of LightGBM") would have passed every horizon
    assert (versus.loc["kronos_small", "diff"] >= -0.03).all()
    v = ev.verdicts[ev.verdicts["gate"] == "gate2"].set_index(["model", "horizon"])
    for model in ("kronos_small", "random"):
        assert (v.loc[model, "status"] == "not evaluated").all(), v.loc[model, "reason"]
        assert not v.loc[model, "passed"].any()
        assert "14 dates, 16 needed (NW t at 20d, lag 3)" in v.loc[(model, 20), "reason"]
        assert "14 dates, 72 needed (NW t at 90d, lag 17)" in v.loc[(model, 90), "reason"]
    check = gates.gate_check(ev.verdicts, "gate2")
    assert check.status == "not evaluated" and "14 dates, 16 needed" in check.description


def test_a_non_positive_median_never_passes_through_the_lightgbm_tolerance():
    g = GateSettings()
    # LightGBM at -0.02 on the same pairs: the model is "within 0.03", and its mean RankIC
    # is even significant (t 2.5), but its median is not positive
    versus = pd.Series({"diff": 0.01, "n_common_dates": 300})
    for median in (-0.01, 0.0):
        status, why = gates.gate2(_row(median_rank_ic=median), versus, g)
        assert status == "fail" and "positive, significant own median" in why
    # a positive median that is not significant does not pass either
    status, why = gates.gate2(_row(median_rank_ic=0.02, nw_t=1.5), versus, g)
    assert status == "fail" and "NW t +1.50 (>= 2.0?)" in why
    # nor one whose t cannot be computed: that is not evaluated
    assert gates.gate2(_row(median_rank_ic=0.02, n_dates=60), versus, g)[0] == "not evaluated"
    # the tolerance does pass a positive, significant median within 0.03 of LightGBM...
    assert gates.gate2(_row(median_rank_ic=0.02), pd.Series({"diff": -0.03, "n_common_dates":
                                                             300}), g)[0] == "pass"  # fmt: skip
    # ...but not on fewer common dates than the NW t needs
    few = gates.gate2(_row(median_rank_ic=0.02), pd.Series({"diff": 0.0, "n_common_dates": 40}), g)
    assert few[0] == "not evaluated" and "40 common dates, 80 needed" in few[1]


def test_a_better_than_claim_needs_enough_dates_and_a_nw_t_of_two():
    g = GateSettings()
    assert gates.rankic_leg(_row(), 0.05, g)[0] == "pass"
    short = gates.rankic_leg(_row(n_dates=64), 0.05, g)
    assert short == ("not evaluated", "64 dates, 80 needed (NW t at 20d, lag 19)")
    assert gates.rankic_leg(_row(nw_t=float("nan")), 0.05, g)[0] == "not evaluated"
    # a median above the bar that is not significant is not judged (SPEC section 6)
    assert gates.rankic_leg(_row(nw_t=1.99), 0.05, g)[0] == "not evaluated"
    assert gates.rankic_leg(_row(median_rank_ic=0.049), 0.05, g)[0] == "fail"
    # a median above the bar with a significantly negative mean is no "better than"
    assert gates.rankic_leg(_row(nw_t=-3.0), 0.05, g)[0] == "fail"
    # gate 1 on two horizons that pass and one that cannot be judged: passes
    rows = pd.DataFrame([_row(horizon=20), _row(horizon=60, nw_lag=59, nw_min_dates=240,
                         n_dates=300), _row(horizon=90, nw_lag=89, nw_min_dates=360)])  # fmt: skip
    assert gates.gate1(rows, g)[0] == "pass"
    # with only one judged horizon passing, the verdict waits for data
    rows.loc[1, "n_dates"] = 200
    status, why = gates.gate1(rows, g)
    assert status == "not evaluated" and "60d NOT EVALUATED: 200 dates, 240 needed" in why


def test_gate3_judges_regimes_folds_and_costs_only_on_enough_dates():
    g = GateSettings()
    judged = pd.DataFrame([_row(horizon=h) for h in HORIZONS])
    assert gates.gate3(judged, g)[0] == "pass"
    # 4-5 dates per volatility regime (a weekly SMOKE run): not judged, whatever the medians
    regimes = judged.assign(n_regimes_judged=0, min_regime_median_rank_ic=np.nan,
                            regime_n_dates_low=4, regime_n_dates_mid=5, regime_n_dates_high=5)  # fmt: skip
    status, why = gates.gate3(regimes, g)
    assert status == "not evaluated" and "4/5/5 dates (low/mid/high), 15 needed each" in why
    # one judged regime below the bar fails the gate even if another could not be judged
    one_bad = regimes.assign(n_regimes_judged=1, min_regime_median_rank_ic=-0.05)
    assert gates.gate3(one_bad, g)[0] == "fail"
    # hold turnover mostly imputed: cost survival reads n/a (imputed), not a measurement
    imputed = judged.assign(hold_imputed_share=np.where(judged["horizon"] == 60, 60 / 64, 0.1))
    status, why = gates.gate3(imputed, g)
    assert status == "not evaluated" and "positive net folds at 60d n/a (imputed): 94%" in why
    # no fold with 15 dates (weekly folds of 4-5 dates): not judged
    weekly = judged.assign(positive_fold_share=np.nan, n_folds_judged=0)
    assert "no fold with 15 dates" in gates.gate3(weekly, g)[1]
    # churn without dates 5 sessions apart (a monthly model) is not judged either
    monthly = judged.assign(churn=np.nan, n_churn_dates=0)
    status, why = gates.gate3(monthly, g)
    assert status == "not evaluated" and "churn at 20d on 0 dates 5 sessions apart" in why
    # too few dates at a horizon: nothing at that horizon is judged
    status, why = gates.gate3(judged.assign(n_dates=14), g)
    assert status == "not evaluated" and "20d: 14 dates, 15 needed" in why


def test_a_degenerate_t_never_passes_a_tripwire():
    # 63 daily dates at 90 days: lag 89 >= n, so the NW t is n/a. The old "worst-case-overlap
    # t" became the IC-IR there, one effective observation, and passed the control.
    scores = _scores("random", DATES, 8, fold_of=lambda d: "2019-q1")
    ev = evaluate_scores(scores, _labels(), load_settings(environ={}))
    row = ev.comparison.set_index("horizon").loc[90]
    assert row["n_dates"] == 63 and np.isnan(row["nw_t"]) and row["nw_min_dates"] == 360
    assert abs(row["median_rank_ic"]) >= 0.01 and abs(row["ic_ir"]) < 2  # the old pass
    result = ev.tripwires["random_scores"]
    assert result["status"] == "not evaluated" and result["passed"] is None
    assert "90d median" in result["reason"] and "63 dates, 360 needed at lag 89" in result["reason"]
    assert ev.tripwires["passed"] is False
    # only the dates were missing (the run warns, and carries on); a control that did not run
    # is not "too few dates"
    assert result["too_few_dates"] is True
    assert "too_few_dates" not in ev.tripwires["shuffled_labels"]


def test_a_negative_control_is_judged_by_its_median_or_its_nw_t_only():
    cfg = TripwireSettings()
    judge = lambda **v: tripwires.within_noise_at_horizon(_row(**v), cfg)["status"]  # noqa: E731
    assert judge(median_rank_ic=0.005, nw_t=float("nan"), n_dates=10) == "pass"  # small median
    assert judge(median_rank_ic=0.03, nw_t=1.5) == "pass"  # |t| < 2
    assert judge(median_rank_ic=0.03, nw_t=-2.5) == "fail"
    assert judge(median_rank_ic=0.03, nw_t=float("nan"), n_dates=64) == "not evaluated"
    assert judge(median_rank_ic=float("nan")) == "not evaluated"
    comparison = pd.DataFrame([_row(model="random", median_rank_ic=0.03, nw_t=-2.5, horizon=20),
                               _row(model="random", median_rank_ic=0.03, nw_t=float("nan"),
                                    horizon=90, n_dates=64)])  # fmt: skip
    # a horizon that fails beats one that cannot be judged
    assert tripwires.random_scores_control(comparison, cfg)["status"] == "fail"


@pytest.fixture(scope="module")
def mixed_cadences(tmp_path_factory):
    """A daily LightGBM and random baseline, a weekly Kronos candidate and the two LightGBM
    controls (the planted leak scores the label), written as a report."""
    labels = _labels()
    leak = labels.assign(model="lightgbm_planted_leak", score=labels["excess_return"],
                         fold=labels["date"].dt.strftime("%Y-%m"))  # fmt: skip
    scores = pd.concat([
        _scores("lightgbm", DATES, 3), _scores("random", DATES, 4),
        _scores("kronos_small", WEEKLY, 5), _scores("lightgbm_shuffled_labels", DATES, 6),
        leak[["model", "horizon", "date", "ticker", "score", "fold"]],
    ], ignore_index=True)  # fmt: skip
    ev = evaluate_scores(scores, labels, load_settings(environ={}))
    out = tmp_path_factory.mktemp("report") / "latest"
    paths = report.write_report(
        out, comparison=ev.comparison, fold_summaries=ev.fold_summaries, per_date=ev.per_date,
        eval_rows=ev.eval_rows, deciles=ev.deciles, tripwires=ev.tripwires,
        verdicts=ev.verdicts, reference=ev.reference, data_source="synthetic",
        common=ev.common, versus_lightgbm=ev.versus_lightgbm,
    )  # fmt: skip
    return ev, paths["REPORT_SUMMARY.md"].read_text()


def test_the_report_ranks_each_cadence_in_its_own_table(mixed_cadences):
    _, md = mixed_cadences
    section = md.split("## Horizon 20 trading days")[1].split("## Horizon 60")[0]
    daily = section.split("Scored daily")[1].split("Scored weekly")[0]
    weekly = section.split("Scored weekly")[1].split("Tripwire controls")[0]
    controls = section.split("Tripwire controls")[1].split("Cross-model comparison")[0]
    assert "| lightgbm |" in daily and "| random |" in daily and "| kronos_small |" not in daily
    assert "| kronos_small |" in weekly and "| lightgbm |" not in weekly
    assert "| lightgbm_planted_leak |" in controls and "| lightgbm_planted_leak |" not in daily


def test_every_na_cell_says_what_it_had_and_needed(mixed_cadences):
    _, md = mixed_cadences
    section = md.split("## Horizon 20 trading days")[1].split("## Horizon 60")[0]
    kronos = next(r for r in section.splitlines() if r.startswith("| kronos_small | 14 |"))
    # descriptive figures stand on any number of dates (the `dates` column says 14)...
    assert kronos.startswith("| kronos_small | 14 | 0.") or kronos.startswith(
        "| kronos_small | 14 | -0."
    )
    # ...what a gate reads needs the floor: the momentum correlation
    assert kronos.count("n/a (14 of 15 dates)") == 1
    assert "| n/a (14 of 16 dates) |" in kronos  # NW t: 4 x (3 + 1) weekly dates
    assert "n/a (0 of 4 folds with 15 dates)" in kronos  # weekly folds of 1-5 dates
    lgbm = next(r for r in section.splitlines() if r.startswith("| lightgbm | 63 |"))
    assert "| n/a (63 of 80 dates) |" in lgbm
    section90 = md.split("## Horizon 90 trading days")[1].split("## ")[0]
    lgbm90 = next(r for r in section90.splitlines() if r.startswith("| lightgbm | 63 |"))
    assert lgbm90.count("n/a (imputed)") == 3 and "| 1.0000 | n/a (imputed) |" in lgbm90
    bare = [r for r in md.splitlines() if r.startswith("| ") and "| n/a |" in r]
    assert not [r for r in bare if "kronos_small" in r or "| lightgbm |" in r], bare


def test_the_report_states_one_sign_convention_once(mixed_cadences):
    ev, md = mixed_cadences
    assert md.count("Sign convention:") == 1
    assert "gap" not in md.lower()
    assert "| model - LightGBM |" in md
    v = ev.versus_lightgbm.set_index(["model", "horizon"]).loc[("kronos_small", 20)]
    assert v["diff"] == pytest.approx(v["median_rank_ic"] - v["reference_median_rank_ic"])
    ref = ev.reference.set_index("horizon").loc[20]
    assert ref["lightgbm_diff"] == pytest.approx(
        ref["this_run_lightgbm"] - ref["reference_lightgbm"]
    )


def test_the_cumulative_plot_has_a_row_per_cadence_and_one_for_the_controls(mixed_cadences):
    ev, _ = mixed_cadences
    fig = report.cumulative_rank_ic_figure(ev.per_date)
    axes = np.array(fig.axes).reshape(3, len(HORIZONS))
    labels = [{line.get_label() for ax in row for line in ax.get_lines()} for row in axes]
    assert [ax.get_title() for ax in axes[:, 0]] == [
        "Cumulative RankIC, 20d, daily", "Cumulative RankIC, 20d, weekly",
        "Cumulative RankIC, 20d, controls",
    ]  # fmt: skip
    assert {"lightgbm", "random"} <= labels[0] and "kronos_small" not in labels[0]
    assert "kronos_small" in labels[1]
    assert labels[2] >= {"lightgbm_planted_leak", "lightgbm_shuffled_labels"}
    assert "lightgbm_planted_leak" not in labels[0] | labels[1]
    import matplotlib.pyplot as plt  # loaded on the Agg backend by the report's first figure

    plt.close(fig)


def test_twelve_models_get_twelve_distinguishable_styles():
    styles = report.model_styles([f"model_{i:02d}" for i in range(12)])
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 12
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in styles.values()}) == 12


def test_the_stop_rule_waits_for_enough_dates():
    g = GateSettings()
    comp = pd.DataFrame({"model": "kronos_zero_shot", "horizon": [20, 60, 90],
                         "median_rank_ic": [0.005, -0.01, 0.009], "n_dates": 64})  # fmt: skip
    assert gates.stop_rule(comp, g)[0]["decision"] == "stop: no zero-shot signal"
    assert gates.stop_rule(comp.assign(n_dates=14), g)[0]["decision"] == "not evaluated"

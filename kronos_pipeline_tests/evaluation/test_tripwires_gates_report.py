import json

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.evaluation import baselines as b
from kronos_pipeline.evaluation import gates, report, tripwires
from kronos_pipeline.evaluation.folds import make_folds, scoring_dates
from kronos_pipeline.evaluation.pipeline import evaluate_scores
from kronos_pipeline.settings import (
    GateSettings,
    LightGBMSettings,
    TripwireSettings,
    load_settings,
)

FAST_LGBM = LightGBMSettings(num_boost_round=60, min_data_in_leaf=50, early_stopping_rounds=10)
HORIZONS = (20, 60, 90)


def _evaluate(panel, extra_models=(), controls=True, cfg=None, **settings_overrides):
    """Four folds of baselines (with the LightGBM tripwire controls) through the evaluation:
    83 daily dates, enough for the NW t at 20 days (80) but not at 60 or 90 (240, 360)."""
    folds = make_folds(panel.dates, "2017-04", "2017-07", HORIZONS)
    parts = []
    for fold in folds:
        days = scoring_dates(fold, panel.dates)
        matured = panel.labels[panel.labels["available_at"] < fold.test_start]
        plan = (
            b.ControlPlan(shuffled_labels=True, future_labels=panel.labels, seed=3)
            if controls
            else None
        )
        scores, _ = b.baseline_scores_for_fold(
            panel.features, matured, fold, HORIZONS, days, FAST_LGBM, num_threads=1,
            controls=plan,
        )  # fmt: skip
        parts.append(scores)
        for make in extra_models:
            parts.append(make(fold, days, matured))
    scores = pd.concat(parts, ignore_index=True)
    momentum = panel.features[["date", "ticker", "mom_12_1"]]
    settings = load_settings(environ={}, **settings_overrides)
    return evaluate_scores(
        scores, panel.labels, settings, momentum=momentum, market=panel.market,
        pretrained_models=["kronos_leaky"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(panel):
    """Two folds of baselines and controls plus a candidate LightGBM trained with a leaky feature."""
    leaky = panel.features.merge(
        panel.labels.loc[panel.labels["horizon"] == 20, ["date", "ticker", "excess_return"]],
        on=["date", "ticker"],
        how="left",
    ).rename(columns={"excess_return": "planted_leak"})

    def kronos_leaky(fold, days, matured):
        fit = b.train_lightgbm(
            leaky, matured, fold, 20, leaky[leaky["date"].isin(days)], FAST_LGBM, 1
        )
        return fit.scores.assign(model="kronos_leaky")

    return _evaluate(panel, [kronos_leaky])


def test_a_leaky_candidate_trips_the_leak_scan_and_fails_every_gate(run):
    scan = run.tripwires["leak_scan"]
    assert scan["status"] == "fail" and scan["passed"] is False
    assert scan["flagged_models"] == ["kronos_leaky"]
    leaky = run.comparison.set_index(["model", "horizon"]).loc[("kronos_leaky", 20)]
    assert leaky["median_rank_ic"] > 0.9
    for gate in ("gate1", "gate2", "gate3"):
        check = gates.gate_check(run.verdicts, gate)
        assert check.status == "fail"
        assert check.failed["model"].tolist() == ["kronos_leaky"]
        assert check.failed["reason"].str.contains("leak tripwire").all()
    assert run.tripwires["passed"] is False


def test_controls_of_a_sound_pipeline_never_fail_and_pass_where_they_can_be_judged(run):
    cfg = TripwireSettings()
    for name, model in (("shuffled_labels", b.SHUFFLED_MODEL), ("random_scores", b.RANDOM_MODEL)):
        result = run.tripwires[name]
        assert result["status"] in ("pass", "not evaluated"), result["reason"]
        assert result["model"] == model
        by_h = {r["horizon"]: r for r in result["by_horizon"]}
        # 83 daily dates carry the NW t at 20 days (80 needed): judged, and noise
        assert by_h[20]["n_dates"] == 83 and np.isfinite(by_h[20]["nw_t"])
        assert by_h[20]["status"] == "pass"
        for r in by_h.values():
            small = abs(r["median_rank_ic"]) < cfg.max_abs_median_rankic
            if r["status"] == "pass":
                assert small or abs(r["nw_t"]) < cfg.max_abs_t
            else:  # not evaluated only where the median is not small and the t is n/a
                assert not small and np.isnan(r["nw_t"]) and r["n_dates"] < r["nw_min_dates"]
    # the real LightGBM learned the planted signal; its shuffled twin did not
    med = run.comparison.set_index(["model", "horizon"])["median_rank_ic"]
    assert med[("lightgbm", 20)] > 0.2
    assert abs(med[(b.SHUFFLED_MODEL, 20)]) < 0.1
    leak = run.tripwires["planted_leak"]
    assert leak["status"] == "pass", leak["reason"]
    assert all(r["fired"] and r["median_rank_ic"] > 0.5 for r in leak["by_horizon"])
    assert b.PLANTED_LEAK_MODEL not in run.tripwires["leak_scan"]["flagged_models"]
    # controls are never candidates and never judged by the gates
    assert not set(run.verdicts["model"]) & set(b.CONTROL_MODELS)
    cont = run.tripwires["contamination"]
    assert cont["contaminated_models"] == ["kronos_leaky"]
    assert cont["by_model"][0]["n_dates_after_cutoff"] == 0


def test_shuffled_label_retraining_fires_when_training_bypasses_the_permuted_labels(
    panel, monkeypatch
):
    # A pipeline leak: the trainer joins labels from its own copy instead of the labels it is
    # given, so the permutation never reaches the model. (Permuting only the evaluation labels,
    # as the old tripwire did, could not see this: it read ~0 for any score.)
    real_rows = b.lightgbm_training_rows
    monkeypatch.setattr(
        b, "lightgbm_training_rows",
        lambda features, labels, fold, horizon: real_rows(
            features, panel.labels[panel.labels["available_at"] < fold.test_start], fold, horizon),
    )  # fmt: skip
    result = _evaluate(panel).tripwires["shuffled_labels"]
    assert result["status"] == "fail" and result["passed"] is False
    assert "lightgbm_shuffled_labels is not noise" in result["reason"]
    assert "20d median" in result["reason"]  # judged by the NW t where it is a number


def test_random_baseline_tripwire_fires_when_the_random_scores_see_the_label(panel, monkeypatch):
    real_random = b.random_scores

    def peeking(keys, horizons, fold_id, seed):
        out = real_random(keys, horizons, fold_id, seed)
        lab = panel.labels[["date", "ticker", "horizon", "excess_return"]]
        out = out.merge(lab, on=["date", "ticker", "horizon"], how="left")
        out["score"] = out["score"] + 10 * out["excess_return"].fillna(0)
        return out.drop(columns="excess_return")

    monkeypatch.setattr(b, "random_scores", peeking)
    result = _evaluate(panel, controls=False).tripwires["random_scores"]
    assert result["status"] == "fail", result["reason"]
    by_h = {r["horizon"]: r for r in result["by_horizon"]}
    assert by_h[20]["status"] == "fail" and by_h[20]["nw_t"] > 2
    # at 60 and 90 days 83 dates carry no NW t: not evaluated there, never passed
    assert by_h[90]["status"] == "not evaluated" and "83 dates, 360 needed" in by_h[90]["reason"]


def test_planted_leak_tripwire_fires_when_the_leak_scan_is_blind(panel):
    blind = _evaluate(panel, tripwires={"max_plausible_median_rankic": 0.999}).tripwires
    assert blind["planted_leak"]["status"] == "fail"
    assert "missed the planted leak" in blind["planted_leak"]["reason"]


def test_planted_leak_tripwire_fires_when_the_planted_input_never_reaches_the_model(
    panel, monkeypatch
):
    monkeypatch.setattr(
        b, "plant_leak", lambda features, future_labels, horizon, noise, seed: features
    )
    result = _evaluate(panel).tripwires["planted_leak"]
    assert result["status"] == "fail"


def test_tripwires_that_did_not_run_are_not_evaluated_and_never_pass(panel):
    result = _evaluate(panel, controls=False).tripwires
    for name in ("shuffled_labels", "planted_leak", "pit_recomputation"):
        assert result[name]["status"] == "not evaluated" and result[name]["passed"] is None
    assert result["passed"] is False


def test_gate_rules_on_hand_made_comparison():
    g = GateSettings()
    base = {
        "mean_rank_ic": 0.0,
        "ic_ir": 0.0,
        "hit_rate": 0.5,
        "nw_t": 3.0,  # significant everywhere: this test is about the thresholds
        "nw_lag": 4,
        "nw_min_dates": 20,
        "n_churn_dates": 100,
        "hold_imputed_share": 0.0,
        "n_folds_judged": 3,
        "n_regimes_judged": 3,
        "rank_autocorr": 0.9,
        "mean_spread_return": 0.0,
        "mean_net_spread_return": 0.0,
        "mean_ls_turnover": 0.1,
        "break_even_cost_bps": 0.0,
        "n_dates": 100,
        "n_folds": 3,
    }
    rows = []
    for h, med_k, med_l in [(20, 0.03, 0.05), (60, 0.025, 0.10), (90, 0.01, 0.04)]:
        rows.append(
            base
            | {
                "model": "kronos_small",
                "horizon": h,
                "median_rank_ic": med_k,
                "median_momentum_corr": 0.2,
                "churn": 0.2,
                "positive_fold_share": 0.5,
                "min_regime_median_rank_ic": -0.01,
            }
        )
        rows.append(
            base
            | {
                "model": "lightgbm",
                "horizon": h,
                "median_rank_ic": med_l,
                "median_momentum_corr": 0.1,
                "churn": 0.5,
                "positive_fold_share": 0.2,
                "min_regime_median_rank_ic": -0.05,
            }
        )
    v = gates.evaluate_gates(pd.DataFrame(rows), g).set_index(
        ["gate", "model", "horizon"], drop=False
    )
    g1 = v[(v["gate"] == "gate1") & (v["model"] == "kronos_small")].iloc[0]
    assert g1["status"] == "pass", g1["reason"]  # 0.03 and 0.025 >= 0.02 at two horizons
    # gate2 (model - LightGBM >= -0.03): 20d -0.02 ok; 60d -0.075 fails; 90d -0.03 ok
    g2 = v[(v["gate"] == "gate2") & (v["model"] == "kronos_small")].set_index("horizon")["passed"]
    assert g2.to_dict() == {20: True, 60: False, 90: True}
    assert v[(v["gate"] == "gate3") & (v["model"] == "kronos_small")]["passed"].item()
    g3 = v[(v["gate"] == "gate3") & (v["model"] == "lightgbm")].iloc[0]
    assert not g3["passed"] and "churn 0.5000 at 20d" in g3["reason"]
    assert v["candidate"].groupby(v["model"]).all().to_dict() == {
        "kronos_small": True,
        "lightgbm": False,
    }


def test_reference_comparison_uses_frozen_numbers(run):
    ref = run.reference.set_index("horizon")
    assert ref.loc[60, "reference_factor_floor"] == 0.0392
    assert ref.loc[90, "reference_lightgbm"] == 0.1808
    ours = run.comparison.set_index(["model", "horizon"]).loc[("lightgbm", 20), "median_rank_ic"]
    assert ref.loc[20, "this_run_lightgbm"] == ours


def test_report_folder_contents(run, tmp_path):
    paths = report.write_report(
        tmp_path / "latest", comparison=run.comparison, fold_summaries=run.fold_summaries,
        per_date=run.per_date, eval_rows=run.eval_rows, deciles=run.deciles,
        tripwires=run.tripwires, verdicts=run.verdicts, reference=run.reference,
        data_source="vendor", run_info={"mode": "test"},
        sector_features=["sector_rel_mom_1m"],
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == sorted(report.REPORT_FILES)
    md = paths["REPORT_SUMMARY.md"].read_text()
    assert "Survivorship bias" in md and "overstate" in md
    assert "Contamination" in md and "kronos_leaky" in md
    assert "## Limitations" in md and "Sectors are as of download time" in md
    table20 = md.split("## Horizon 20 trading days")[1].split("##")[0]
    assert (
        "| NW t | t non-overlap | churn 5 sessions | hold turnover | hold imputed | net spread |"
        in table20
    )
    lgbm_row = next(line for line in table20.splitlines() if line.startswith("| lightgbm |"))
    assert "| n/a (5 of 6 dates) |" in lgbm_row  # 5 non-overlapping dates cannot carry a t
    table60 = md.split("## Horizon 60 trading days")[1].split("##")[0]
    lgbm60 = next(line for line in table60.splitlines() if line.startswith("| lightgbm |"))
    assert "| n/a (83 of 240 dates) |" in lgbm60  # 83 daily dates cannot carry a lag-59 HAC t
    # at 90 days no book exists 90 sessions later for most dates: imputed, and said so
    table90 = md.split("## Horizon 90 trading days")[1].split("##")[0]
    lgbm90 = next(line for line in table90.splitlines() if line.startswith("| lightgbm |"))
    assert lgbm90.count("n/a (imputed)") == 3  # net spread, positive folds, break-even
    gates_part = md.split("## Gate verdicts of candidate models")[1].split("##")[0]
    assert "| gate2 | kronos_leaky | 20 |" in gates_part and "20.0000" not in gates_part
    for h in (20, 60, 90):
        assert f"## Horizon {h} trading days" in md
    for png in (
        "cumulative_rank_ic.png",
        "rank_ic_by_fold.png",
        "decile_returns.png",
        "turnover.png",
    ):
        assert f"]({png})" in md
        assert paths[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trip = json.loads(paths["leak_tripwires.json"].read_text())
    assert trip["leak_scan"]["flagged_models"] == ["kronos_leaky"]
    folds_csv = pd.read_csv(paths["fold_summaries.csv"])
    # 6 baselines and 2 controls at 3 horizons, plus kronos_leaky at 20d, in each of 4 folds
    assert len(folds_csv) == len(run.fold_summaries) == 4 * (8 * 3 + 1)
    rows = pd.read_parquet(paths["eval_rows.parquet"])
    assert len(rows) == len(run.eval_rows)
    per_date = pd.read_csv(paths["per_date_metrics.csv"])
    np.testing.assert_allclose(per_date["rank_ic"], run.per_date["rank_ic"], rtol=1e-12)
    figures = report.key_figures(run.comparison, run.verdicts)
    assert figures["kronos_leaky/gate1"] == "fail"
    assert figures["lightgbm/20d/median_rank_ic"] == pytest.approx(
        run.comparison.set_index(["model", "horizon"]).loc[("lightgbm", 20), "median_rank_ic"]
    )


def test_pit_recomputation_summary_sees_a_changed_value():
    full = pd.DataFrame(
        {
            "date": pd.to_datetime(["2019-01-02", "2019-01-03", "2019-01-04"]),
            "ticker": "a",
            "x": [1.0, 2.0, 3.0],
        }
    )
    cut = full.iloc[:2].copy()
    ok = tripwires.pit_recomputation_summary(full, cut, pd.Timestamp("2019-01-03"))
    assert ok["passed"] and ok["rows_compared"] == 2
    cut.loc[1, "x"] = 2.5  # a value that changed when future rows were removed: a PIT leak
    bad = tripwires.pit_recomputation_summary(full, cut, pd.Timestamp("2019-01-03"))
    assert not bad["passed"] and bad["max_abs_diff"] == 0.5 and bad["worst_column"] == "x"


def test_gates_never_pass_on_missing_data():
    g = GateSettings()
    row = {
        "model": "kronos_small", "n_dates": 40, "median_rank_ic": 0.2, "nw_t": 3.0, "nw_lag": 3,
        "median_momentum_corr": float("nan"),
        "churn": 0.1, "positive_fold_share": 0.6, "min_regime_median_rank_ic": 0.01,
    }  # fmt: skip
    comp = pd.DataFrame([row | {"horizon": h} for h in HORIZONS])
    v = gates.evaluate_gates(comp, g)
    g1 = v[v["gate"] == "gate1"].iloc[0]
    # a NaN momentum correlation used to count as 0 and pass gate 1
    assert g1["status"] == "not evaluated" and not g1["passed"]
    comp.loc[comp["horizon"] == 90, "positive_fold_share"] = float("nan")
    g3 = gates.evaluate_gates(comp, g)
    g3 = g3[g3["gate"] == "gate3"].iloc[0]
    assert g3["status"] == "not evaluated" and "positive net folds at 90d" in g3["reason"]
    comp["median_rank_ic"] = float("nan")
    g2 = gates.evaluate_gates(comp, g)
    assert (g2.loc[g2["gate"] == "gate2", "status"] == "not evaluated").all()
    # no candidate at all: the gate checks are not evaluated, never passed
    base_only = comp.assign(model="lightgbm")
    check = gates.gate_check(gates.evaluate_gates(base_only, g), "gate1")
    assert check.status == "not evaluated" and "no candidate" in check.description
    # a candidate scored on too few dates is not judged, however good its numbers look
    few = gates.evaluate_gates(comp.assign(median_rank_ic=0.3, median_momentum_corr=0.1,
                                           n_dates=4), g)  # fmt: skip
    assert (few["status"] == "not evaluated").all()
    # one candidate that fails beats one that is missing data
    comp2 = pd.concat([comp.assign(model="kronos_a", median_rank_ic=-0.05,
                                   median_momentum_corr=0.1), comp])  # fmt: skip
    assert gates.gate_check(gates.evaluate_gates(comp2, g), "gate1").status == "fail"

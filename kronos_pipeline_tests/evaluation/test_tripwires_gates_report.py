import json

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.evaluation import baselines as b
from kronos_pipeline.evaluation import gates, report, tripwires
from kronos_pipeline.evaluation.folds import make_folds, scoring_dates
from kronos_pipeline.evaluation.pipeline import evaluate_scores
from kronos_pipeline.settings import GateSettings, LightGBMSettings, load_settings

FAST_LGBM = LightGBMSettings(num_boost_round=60, min_data_in_leaf=50, early_stopping_rounds=10)
HORIZONS = (20, 60, 90)


@pytest.fixture(scope="module")
def run(panel):
    """Two folds of baselines plus a candidate LightGBM trained with a leaky feature."""
    folds = make_folds(panel.dates, "2017-06", "2017-07", HORIZONS)
    leaky = panel.features.merge(
        panel.labels.loc[panel.labels["horizon"] == 20, ["date", "ticker", "excess_return"]],
        on=["date", "ticker"],
        how="left",
    ).rename(columns={"excess_return": "planted_leak"})
    parts = []
    for fold in folds:
        days = scoring_dates(fold, panel.dates)
        scores, _ = b.baseline_scores_for_fold(
            panel.features, panel.labels, fold, HORIZONS, days, FAST_LGBM, num_threads=1
        )
        leak_fit = b.train_lightgbm(
            leaky, panel.labels, fold, 20, leaky[leaky["date"].isin(days)], FAST_LGBM, 1
        )
        parts += [scores, leak_fit.scores.assign(model="kronos_leaky")]
    scores = pd.concat(parts, ignore_index=True)
    momentum = panel.features[["date", "ticker", "mom_12_1"]]
    settings = load_settings(environ={})
    return evaluate_scores(
        scores, panel.labels, settings, momentum=momentum, market=panel.market,
        pretrained_models=["kronos_leaky"],
    )  # fmt: skip


def test_planted_leak_trips_the_tripwire_and_fails_the_gate_check(run):
    scan = run.tripwires["leak_scan"]
    assert scan["passed"] is False
    assert scan["flagged_models"] == ["kronos_leaky"]
    leaky = run.comparison.set_index(["model", "horizon"]).loc[("kronos_leaky", 20)]
    assert leaky["median_rank_ic"] > 0.9
    for gate in ("gate1", "gate2", "gate3"):
        failed = gates.blocking_failures(run.verdicts, gate)
        assert failed["model"].tolist() == ["kronos_leaky"]
        assert failed["reason"].str.contains("leak tripwire").all()
    assert run.tripwires["passed"] is False


def test_negative_and_positive_controls(run):
    tol = GateSettings().tripwire_max_abs_median_rankic
    for name in ("shuffled_labels", "random_scores"):
        result = run.tripwires[name]
        assert result["passed"] is True
        assert all(abs(r["median_rank_ic"]) < tol for r in result["by_model"])
    # the planted-leak control fires at every horizon with RankIC exactly 1
    leak = run.tripwires["planted_leak"]
    assert leak["passed"] is True
    assert [r["median_rank_ic"] for r in leak["by_horizon"]] == pytest.approx([1.0, 1.0, 1.0])
    # contamination: every evaluated date precedes the 2024 cutoff
    cont = run.tripwires["contamination"]
    assert cont["contaminated_models"] == ["kronos_leaky"]
    assert cont["by_model"][0]["n_dates_after_cutoff"] == 0


def test_shuffling_labels_destroys_even_a_perfect_score(run):
    # A score equal to the label has RankIC 1; after shuffling it must read ~0, which proves the
    # permutation really happens inside each date.
    rows = run.eval_rows[run.eval_rows["model"] == "random"].copy()
    rows["score"] = rows["excess_return"]
    result = tripwires.shuffled_labels(rows, GateSettings())
    assert result["passed"] is True


def test_gate_rules_on_hand_made_comparison():
    g = GateSettings()
    base = {
        "mean_rank_ic": 0.0,
        "ic_ir": 0.0,
        "hit_rate": 0.5,
        "nw_t": 0.0,
        "rank_autocorr": 0.9,
        "mean_spread_return": 0.0,
        "mean_net_spread_return": 0.0,
        "mean_ls_turnover": 0.1,
        "break_even_cost_bps": 0.0,
        "n_dates": 10,
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
    assert g1["passed"], g1["reason"]  # 0.03 and 0.025 >= 0.02 at two horizons
    # gate2: 20d gap 0.02 ok; 60d gap 0.075 fails; 90d gap 0.03 ok (<=)
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
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == sorted(report.REPORT_FILES)
    md = paths["REPORT_SUMMARY.md"].read_text()
    assert "Survivorship bias" in md and "overstate" in md
    assert "Contamination" in md and "kronos_leaky" in md
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
    assert len(folds_csv) == len(run.fold_summaries) == 2 * (6 * 3 + 1)
    rows = pd.read_parquet(paths["eval_rows.parquet"])
    assert len(rows) == len(run.eval_rows)
    per_date = pd.read_csv(paths["per_date_metrics.csv"])
    np.testing.assert_allclose(per_date["rank_ic"], run.per_date["rank_ic"], rtol=1e-12)
    figures = report.key_figures(run.comparison, run.verdicts)
    assert figures["kronos_leaky/gate1"] is False
    assert figures["lightgbm/20d/median_rank_ic"] == pytest.approx(
        run.comparison.set_index(["model", "horizon"]).loc[("lightgbm", 20), "median_rank_ic"]
    )


def test_pit_and_adjustment_summaries():
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
    r = pd.DataFrame(
        {
            "date": full["date"],
            "ticker": "a",
            "adj_return": [0.01, 0.02, 0.5],
            "vendor_adj_return": [0.01, 0.02, 0.03],
            "corporate_action": [False, False, True],
        }
    )
    assert tripwires.adjustment_consistency(r)["passed"]
    r.loc[0, "adj_return"] = 0.011
    res = tripwires.adjustment_consistency(r)
    assert not res["passed"] and res["worst"] == {"ticker": "a", "date": "2019-01-02"}

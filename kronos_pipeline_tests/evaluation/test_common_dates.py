"""Cross-model comparisons use the (date, ticker) pairs that every compared model scored."""

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.evaluation import gates
from kronos_pipeline.evaluation import metrics as m
from kronos_pipeline.settings import GateSettings

from .conftest import nyse_dates


def _rows():
    """LightGBM scores every day; the candidate only every 5th day (a weekly model). LightGBM is
    strong on the candidate's days and weak on the others, so mixing date sets moves the
    difference. The candidate has a modest, significant signal of its own."""
    rng = np.random.default_rng(2)
    dates = nyse_dates("2019-01-02", "2019-06-28")
    tickers = [f"T{i:02d}" for i in range(40)]
    parts = []
    for i, d in enumerate(dates):
        label = rng.standard_normal(len(tickers))
        weekly = i % 5 == 0
        strength = 0.9 if weekly else 0.02
        lgbm = strength * label + rng.standard_normal(len(tickers))
        parts.append(pd.DataFrame({"model": "lightgbm", "date": d, "ticker": tickers,
                                   "score": lgbm, "excess_return": label}))  # fmt: skip
        if weekly:
            cand = 0.3 * label + rng.standard_normal(len(tickers))
            parts.append(pd.DataFrame({"model": "kronos_small", "date": d, "ticker": tickers,
                                       "score": cand, "excess_return": label}))  # fmt: skip
    rows = pd.concat(parts, ignore_index=True)
    return rows.assign(horizon=20, fold="2019-01", fwd_return=rows["excess_return"])


def test_the_difference_to_lightgbm_is_taken_on_common_dates():
    rows = _rows()
    per_date = m.per_date_metrics(rows, 10.0)
    own = per_date.groupby("model")["rank_ic"].median()
    versus = m.versus_reference(rows, ["kronos_small", "lightgbm"], "lightgbm").iloc[0]
    weekly_dates = rows.loc[rows["model"] == "kronos_small", "date"].unique()
    lgbm_on_weekly = per_date[
        (per_date["model"] == "lightgbm") & per_date["date"].isin(weekly_dates)
    ]["rank_ic"].median()
    assert versus["n_common_dates"] == len(weekly_dates)
    assert versus["reference_median_rank_ic"] == pytest.approx(lgbm_on_weekly)
    assert versus["median_rank_ic"] == pytest.approx(own["kronos_small"])
    # one sign convention: the model minus LightGBM. The mixed-date difference (LightGBM's
    # median over all its days) hides most of LightGBM's lead
    mixed_diff = own["kronos_small"] - own["lightgbm"]
    assert versus["diff"] == pytest.approx(own["kronos_small"] - lgbm_on_weekly)
    assert versus["diff"] < mixed_diff - 0.2

    comp = m.model_comparison(per_date, m.fold_summaries(per_date))
    g = GateSettings(gate2_min_median_rankic=0.5)  # only the tolerance can pass gate 2 here
    common = gates.evaluate_gates(comp, g, versus_lightgbm=m.versus_reference(
        rows, ["kronos_small", "lightgbm"], "lightgbm"))  # fmt: skip
    mixed = gates.evaluate_gates(comp, g)
    pick = lambda v: v[(v["gate"] == "gate2") & (v["model"] == "kronos_small")].iloc[0]  # noqa: E731
    assert pick(mixed)["status"] == "pass", pick(mixed)["reason"]  # mixed dates hide the lead...
    assert pick(common)["status"] == "fail"  # ...which the common dates show
    assert f"on {len(weekly_dates)} common dates" in pick(common)["reason"]


def test_common_pairs_keep_only_what_every_model_scored():
    rows = _rows()
    common = m.common_pairs(rows, ["kronos_small", "lightgbm"])
    assert common.groupby("model").size().to_dict() == {
        "kronos_small": (rows["model"] == "kronos_small").sum(),
        "lightgbm": (rows["model"] == "kronos_small").sum(),
    }
    table = m.common_comparison(rows, ["kronos_small", "lightgbm"]).set_index("model")
    assert (
        table["n_common_dates"] == rows[rows["model"] == "kronos_small"]["date"].nunique()
    ).all()
    # one name missing from the candidate on one date drops it from LightGBM too
    dropped = rows.drop(rows[(rows["model"] == "kronos_small")].index[:1])
    assert len(m.common_pairs(dropped, ["kronos_small", "lightgbm"])) == len(common) - 2
    assert m.versus_reference(rows.iloc[:0], ["kronos_small"], "lightgbm").empty


def test_the_stop_rule_fires_only_when_zero_shot_is_flat_at_every_horizon():
    g = GateSettings()
    comp = pd.DataFrame({"model": "kronos_zero_shot", "horizon": [20, 60, 90],
                         "median_rank_ic": [0.005, -0.01, 0.009]})  # fmt: skip
    assert gates.stop_rule(comp, g)[0]["decision"] == "stop: no zero-shot signal"
    comp.loc[1, "median_rank_ic"] = 0.012
    assert gates.stop_rule(comp, g)[0]["decision"] == "continue"
    comp.loc[1, "median_rank_ic"] = float("nan")
    assert gates.stop_rule(comp, g)[0]["decision"] == "not evaluated"
    assert gates.stop_rule(comp.assign(model="kronos_small"), g) == []

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.evaluation import baselines as b
from kronos_pipeline.evaluation import metrics as m
from kronos_pipeline.evaluation.folds import make_folds, scoring_dates
from kronos_pipeline.settings import LightGBMSettings

# Small and fast, but every LightGBM code path (validation slice, early stopping) is exercised.
FAST_LGBM = LightGBMSettings(num_boost_round=60, min_data_in_leaf=50, early_stopping_rounds=10)


@pytest.fixture(scope="module")
def fold(panel):
    return make_folds(panel.dates, "2017-10", "2017-10", (20, 60, 90))[0]


@pytest.fixture(scope="module")
def fold_scores(panel, fold):
    days = scoring_dates(fold, panel.dates)
    return b.baseline_scores_for_fold(
        panel.features, panel.labels, fold, (20, 60, 90), days, FAST_LGBM, num_threads=1
    )


def test_factor_floor_signs_and_composite():
    feats = pd.DataFrame(
        {
            "date": pd.Timestamp("2019-01-02"),
            "ticker": ["a", "b", "c"],
            "mom_12_1": [0.3, 0.1, -0.2],
            "mom_1m": [0.05, -0.02, 0.0],
            "vol_60d": [0.2, 0.4, 0.3],
        }
    )
    s = b.factor_scores(feats, (20,), "2019-01").set_index(["model", "ticker"])["score"]
    assert s["factor_momentum_12_1"].tolist() == [0.3, 0.1, -0.2]
    assert s["factor_reversal_1m"].tolist() == [-0.05, 0.02, -0.0]
    assert s["factor_low_vol"].tolist() == [-0.2, -0.4, -0.3]
    # percentile ranks: mom [1, 2/3, 1/3], rev [1/3, 1, 2/3], lowvol [1, 1/3, 2/3]
    np.testing.assert_allclose(s["factor_composite"], [7 / 9, 2 / 3, 5 / 9])


def test_random_scores_are_seeded_per_fold_and_horizon(panel):
    keys = panel.features[panel.features["date"] == panel.dates[-1]]
    a = b.random_scores(keys, (20, 60), "2017-12", seed=1)
    again = b.random_scores(keys.sample(frac=1, random_state=3), (20, 60), "2017-12", seed=1)
    pd.testing.assert_frame_equal(a, again)
    other_fold = b.random_scores(keys, (20, 60), "2017-11", seed=1)
    assert not np.allclose(a["score"], other_fold["score"])
    h20, h60 = (a[a["horizon"] == h]["score"].to_numpy() for h in (20, 60))
    assert not np.allclose(h20, h60)


def test_lightgbm_never_trains_on_a_label_maturing_after_the_cut(panel, fold, fold_scores):
    scores, fits = fold_scores
    assert [f.horizon for f in fits] == [20, 60, 90]
    labels = panel.labels.set_index(["date", "ticker", "horizon"])["available_at"]
    for fit in fits:
        used = fit.train_rows
        # the rows LightGBM actually saw: counts equal the constructed Dataset sizes
        assert len(used[used["role"] == "fit"]) == fit.n_fit_rows > 0
        assert len(used[used["role"] == "valid"]) == fit.n_valid_rows > 0
        # maturity looked up independently from the labels table, not trusted from the fit
        matured = labels.loc[
            [(d, t, fit.horizon) for d, t in zip(used["date"], used["ticker"], strict=True)]
        ]
        assert matured.max() < fold.test_start
        assert fit.max_available_at == matured.max()
        assert used["date"].max() == fold.train_end[fit.horizon]
        # fit labels mature before the validation slice starts (no overlap inside training)
        valid_start = used.loc[used["role"] == "valid", "date"].min()
        assert used.loc[used["role"] == "fit", "available_at"].max() < valid_start
        # the delisted names' early-maturing labels are used up to the cut, nothing after
        mine = scores[(scores["model"] == fit.model) & (scores["horizon"] == fit.horizon)]
        assert set(mine["date"]) == set(scoring_dates(fold, panel.dates))


def test_lightgbm_training_rows_exclude_late_labels_even_inside_train_window(panel, fold):
    labels = panel.labels.copy()
    late = (labels["horizon"] == 20) & (labels["date"] == fold.train_end[20])
    labels.loc[late, "available_at"] = fold.test_start  # matures exactly at the cut: excluded
    rows = b.lightgbm_training_rows(panel.features, labels, fold, 20)
    assert rows["date"].max() < fold.train_end[20]
    assert rows["available_at"].max() < fold.test_start


def test_lightgbm_is_deterministic_and_learns_the_planted_signal(panel, fold, fold_scores):
    scores, fits = fold_scores
    again = b.train_lightgbm(
        panel.features, panel.labels, fold, 20,
        panel.features[panel.features["date"].between(fold.test_start, fold.test_end)],
        FAST_LGBM, num_threads=1,
    )  # fmt: skip
    pd.testing.assert_frame_equal(
        again.scores.sort_values(["date", "ticker"], ignore_index=True),
        scores[(scores["model"] == "lightgbm") & (scores["horizon"] == 20)].reset_index(drop=True),
        check_dtype=False,
    )
    rows = m.eval_rows(scores, panel.labels)
    per_date = m.per_date_metrics(rows, 10.0)
    med = per_date.groupby(["model", "horizon"])["rank_ic"].median()
    # planted correlation 0.3 -> Spearman ~0.287; 60 names per date: se per date ~0.13
    assert med[("lightgbm", 20)] > 0.15
    assert abs(med[("random", 20)]) < 0.15
    assert set(scores["model"]) == set(b.BASELINE_MODELS)


def test_tripwire_controls_do_not_depend_on_the_order_rows_arrive_in(panel):
    # The warehouse returns rows in no fixed order: a rerun must draw the same permutation and
    # the same planted noise.
    from kronos_pipeline.evaluation import baselines as b

    shuffled = panel.labels.sample(frac=1.0, random_state=3)
    key = ["horizon", "date", "ticker"]
    a = b.permute_labels(panel.labels, 7, "f").sort_values(key, ignore_index=True)
    c = b.permute_labels(shuffled, 7, "f").sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a, c)
    feats = panel.features.sample(frac=1.0, random_state=4)
    x = b.plant_leak(panel.features, panel.labels, 20, 0.1, 7).sort_values(["date", "ticker"])
    y = b.plant_leak(feats, panel.labels, 20, 0.1, 7).sort_values(["date", "ticker"])
    np.testing.assert_array_equal(x[b.PLANTED_FEATURE].to_numpy(), y[b.PLANTED_FEATURE].to_numpy())


def test_the_planted_leak_scores_only_rows_whose_future_label_exists(panel, fold):
    """A date scored before its label matured (the newest dates, each night) gets no planted
    score, so the tripwire never judges a control that carried no leak."""
    days = scoring_dates(fold, panel.dates)
    last = days[-1]
    future = panel.labels[pd.to_datetime(panel.labels["date"]) != last]  # not matured yet
    controls = b.ControlPlan(shuffled_labels=False, future_labels=future, noise=0.1, seed=7)
    scores, _ = b.baseline_scores_for_fold(
        panel.features, panel.labels, fold, (20,), days, FAST_LGBM, num_threads=1,
        controls=controls,
    )  # fmt: skip
    planted = scores[scores["model"] == b.PLANTED_LEAK_MODEL]
    scored_days = set(pd.to_datetime(planted["date"]))
    assert last not in scored_days and set(days[:-1]) <= scored_days
    # ... while every other model scores the last date as before
    lightgbm = scores[scores["model"] == b.LIGHTGBM_MODEL]
    assert last in set(pd.to_datetime(lightgbm["date"]))

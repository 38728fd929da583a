"""Heads on Kronos embeddings: they learn a planted relation, never see a label that matures
after the cut, fuse the PIT features, and fall back to LightGBM only when it validates better."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.evaluation import heads as H
from kronos_pipeline.evaluation.baselines import SCORE_COLUMNS
from kronos_pipeline.evaluation.heads import median_rank_ic

HORIZONS = (5, 20)
N_TICKERS, DIM = 40, 8


def planted(relation, seed: int = 0, noise: float = 0.5):
    """Weekly embeddings of 40 tickers over 2015-2016, features with one column ``mom`` and its
    NaNs, and labels ``excess_return = relation(emb, mom, h) + noise``, available h sessions on."""
    rng = np.random.default_rng(seed)
    sessions = trading_days("2015-01-02", "2017-06-30")
    dates = sessions[: 2 * 252 : 5]
    rows = []
    for day in dates:
        emb = rng.standard_normal((N_TICKERS, DIM))
        mom = rng.standard_normal(N_TICKERS)
        for k in range(N_TICKERS):
            rows.append((day, f"T{k:02d}", emb[k], mom[k]))
    frame = pd.DataFrame(rows, columns=["date", "ticker", "embedding", "mom"])
    position = {d: i for i, d in enumerate(sessions)}
    labels = []
    for h in HORIZONS:
        emb = np.stack(frame["embedding"].to_numpy())
        value = relation(emb, frame["mom"].to_numpy(), h) + noise * rng.standard_normal(len(frame))
        labels.append(
            pd.DataFrame(
                {
                    "date": frame["date"],
                    "ticker": frame["ticker"],
                    "horizon": h,
                    "excess_return": value,
                    "available_at": [sessions[position[d] + h] for d in frame["date"]],
                }
            )
        )
    features = frame[["date", "ticker", "mom"]].copy()
    features.loc[features.index % 17 == 0, "mom"] = np.nan
    return frame[["date", "ticker", "embedding"]], pd.concat(labels, ignore_index=True), features


W = np.linspace(-1.0, 1.0, DIM)


def linear(emb, mom, h):
    return emb @ W * (1 if h == 5 else -1)


def test_a_head_learns_a_planted_linear_relation():
    emb, labels, _ = planted(linear)
    dates = np.sort(emb["date"].unique())
    cut = pd.Timestamp(dates[80])
    fitted = H.fit_heads(emb, labels, cut, HORIZONS, num_threads=1)
    assert fitted.models == [H.HEAD_MODEL]
    test = emb[emb["date"] >= cut]
    scores = H.predict_heads(fitted, test)
    assert list(scores.columns) == SCORE_COLUMNS
    assert set(scores["fold"]) == {cut.strftime("%Y-%m")}
    assert len(scores) == len(test) * len(HORIZONS)
    for h in HORIZONS:
        head = fitted.heads[(H.HEAD_MODEL, h)]
        assert head.learner == "ridge"  # a linear relation: LightGBM does not validate better
        # Standardised coefficients point along the planted direction (sign flips with h).
        cos = head.ridge.coef @ W / np.linalg.norm(head.ridge.coef) / np.linalg.norm(W)
        assert cos * (1 if h == 5 else -1) > 0.98
        rows = scores[scores["horizon"] == h].merge(labels[labels["horizon"] == h])
        assert median_rank_ic(rows, rows["score"].to_numpy()) > 0.8
        assert head.max_available_at < cut


def test_heads_never_see_a_label_that_matures_after_the_cut():
    emb, labels, features = planted(linear)
    dates = np.sort(emb["date"].unique())
    cut = pd.Timestamp(dates[80])
    clean = labels[pd.to_datetime(labels["available_at"]) < cut]
    late = labels[pd.to_datetime(labels["available_at"]) >= cut]
    late_before_cut = late[pd.to_datetime(late["date"]) < cut]
    assert len(late_before_cut) > 0  # labels of dates before the cut, maturing after it
    poisoned = pd.concat(
        [clean, late.assign(excess_return=-100.0 * late["excess_return"])], ignore_index=True
    )
    a = H.fit_heads(emb, clean, cut, HORIZONS, features, num_threads=1)
    b = H.fit_heads(emb, poisoned, cut, HORIZONS, features, num_threads=1)
    test = emb[emb["date"] >= cut]
    sa = H.predict_heads(a, test, features)
    sb = H.predict_heads(b, test, features)
    pd.testing.assert_frame_equal(sa, sb)
    for key, head in a.heads.items():
        assert np.array_equal(head.ridge.coef, b.heads[key].ridge.coef)
        assert head.max_available_at < cut
        assert set(b.heads[key].train_rows["date"]) <= set(head.train_rows["date"])
    # The same rows, were they matured before the cut, would change the fit: the purge is
    # what keeps them out.
    leaky = poisoned.assign(
        available_at=np.where(
            poisoned.index >= len(clean), cut - pd.Timedelta(days=1), poisoned["available_at"]
        )
    )
    c = H.fit_heads(emb, leaky, cut, HORIZONS, features, num_threads=1)
    assert not np.array_equal(
        a.heads[(H.HEAD_MODEL, 5)].ridge.coef, c.heads[(H.HEAD_MODEL, 5)].ridge.coef
    )


def test_the_fused_head_uses_the_features_the_embeddings_lack():
    emb, labels, features = planted(lambda e, m, h: 0.3 * (e @ W) + np.nan_to_num(m))
    dates = np.sort(emb["date"].unique())
    cut = pd.Timestamp(dates[80])
    fitted = H.fit_heads(emb, labels, cut, HORIZONS, features, num_threads=1)
    assert fitted.models == [H.HEAD_MODEL, H.FUSED_MODEL]
    with pytest.raises(ValueError, match="pass the same feature table"):
        H.predict_heads(fitted, emb)
    test = emb[emb["date"] >= cut]
    scores = H.predict_heads(fitted, test, features)
    rows = scores.merge(labels, on=["date", "ticker", "horizon"])
    ic = {
        (m, h): median_rank_ic(g, g["score"].to_numpy())
        for (m, h), g in rows.groupby(["model", "horizon"])
    }
    for h in HORIZONS:
        assert ic[(H.FUSED_MODEL, h)] > ic[(H.HEAD_MODEL, h)] + 0.2
        assert fitted.heads[(H.FUSED_MODEL, h)].columns[-1] == "mom"
    assert np.isfinite(scores["score"]).all()  # missing feature values are imputed


def test_lightgbm_is_kept_only_when_it_validates_better():
    # |emb_0| is invisible to a linear model and easy for trees.
    emb, labels, _ = planted(lambda e, m, h: np.abs(e[:, 0]), noise=0.2)
    dates = np.sort(emb["date"].unique())
    fitted = H.fit_heads(emb, labels, pd.Timestamp(dates[80]), HORIZONS, num_threads=1)
    for h in HORIZONS:
        head = fitted.heads[(H.HEAD_MODEL, h)]
        assert head.learner == "lightgbm", head.valid_rank_ic
        assert head.valid_rank_ic["lightgbm"] > head.valid_rank_ic["ridge"] + 0.3
        assert head.summary()["learner"] == "lightgbm"

"""Kronos heads as Dagster assets, end to end on a tiny synthetic warehouse: the heads train at
the cut of their refit period's first fold on labels matured before it, on the embeddings the
scores later read; the period's later fold reuses them; both heads score every forecast of the
fold at every horizon."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl
import pytest

from kronos_pipeline.evaluation import folds, gates
from kronos_pipeline.evaluation.heads import FUSED_MODEL, HEAD_MODEL
from kronos_pipeline_tests.fold_runs import materialize_fold

FULL_RANGE = ("2017-03-01", "2018-06-29")
FOLD, LATER_FOLD = "2018-05", "2018-06"  # one refit period of 2 months
HORIZONS = (5, 10)
ENV = {
    "KRONOS_DATA__SYNTHETIC_START": FULL_RANGE[0],
    "KRONOS_DATA__SYNTHETIC_END": FULL_RANGE[1],
    "KRONOS_DATA__SYNTHETIC_TICKERS": "16",
    # Members from mid-2017: about ten monthly training dates before the fold's cut.
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "60",
    "KRONOS_LABELS__HORIZONS": "[5, 10]",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": FOLD,
    "KRONOS_FOLDS__LAST_TEST_MONTH": LATER_FOLD,
    "KRONOS_KRONOS__REFIT_MONTHS": "2",
    "KRONOS_KRONOS__SAMPLE_COUNT": "2",
    "KRONOS_KRONOS__TOP_K": "0",
    "KRONOS_KRONOS__LOOKBACK": "40",
    "KRONOS_KRONOS__DEVICE": "cpu",
    "KRONOS_KRONOS__TRAIN_MAX_MINUTES": "0.05",
    "KRONOS_KRONOS__TRAIN_EPOCHS": "1",
    "KRONOS_KRONOS__TRAIN_WINDOWS_PER_EPOCH": "64",
    "KRONOS_KRONOS__TRAIN_BATCH_SIZE": "16",
    "KRONOS_KRONOS__TRAIN_HORIZON": "10",
    "KRONOS_LIGHTGBM__MIN_DATA_IN_LEAF": "20",
}


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory: pytest.TempPathFactory):
    from kronos_pipeline.definitions import DATA_ASSETS
    from kronos_pipeline.defs.automation import data_job
    from kronos_pipeline.defs.evaluation import folds_asset, get_fold
    from kronos_pipeline.defs.heads import (
        HEAD_ASSETS,
        embed_windows,
        heads_dir,
        kronos_engine,
        member_windows,
        read_heads,
    )
    from kronos_pipeline.defs.kronos import KRONOS_ASSETS, checkpoint_dir
    from kronos_pipeline.defs.resources import warehouse_resources
    from kronos_pipeline.defs.signals import signals_asset
    from kronos_pipeline.kronos import scoring
    from kronos_pipeline.settings import get_settings
    from kronos_pipeline.warehouse import Warehouse

    folder: Path = tmp_path_factory.mktemp("heads_warehouse")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**ENV, "KRONOS_WAREHOUSE__DATA_DIR": str(folder)}.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            db_path = folder / "lake"
            resources = warehouse_resources(str(db_path))
            instance = dg.DagsterInstance.ephemeral()
            defs = dg.Definitions(assets=DATA_ASSETS, jobs=[data_job], resources=resources)
            data = defs.resolve_job_def("data_job").execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": FULL_RANGE[0],
                    "dagster/asset_partition_range_end": FULL_RANGE[1],
                },
            )
            assert data.success
            assert dg.materialize([folds_asset], resources=resources, instance=instance).success
            kronos = materialize_fold(KRONOS_ASSETS, FOLD, resources=resources, instance=instance)
            assert kronos.success
            result = materialize_fold(HEAD_ASSETS, FOLD, resources=resources, instance=instance)
            db = Warehouse(db_path)
            s = get_settings()
            first_scores = db.read("select * from kronos_head_scores")
            rerun = materialize_fold(HEAD_ASSETS[1:], FOLD, resources=resources, instance=instance)
            first_heads = (heads_dir(s, FOLD) / "heads.pkl").read_bytes()
            later = [
                materialize_fold(assets, LATER_FOLD, resources=resources,
                               instance=instance)
                for assets in (KRONOS_ASSETS, HEAD_ASSETS)
            ]  # fmt: skip
            # The signal of the first fold's month, from every score table present.
            signal_run = materialize_fold(
                [signals_asset], FOLD, resources=resources, instance=instance
            )
            forecasts = db.read("select * exclude (samples) from kronos_forecasts")
            day = forecasts["date"].min()
            # The training path's embeddings, recomputed for a scoring date the forecasts hold.
            checkpoint = scoring.read_manifest(checkpoint_dir(s, FOLD))
            recomputed = embed_windows(
                kronos_engine(checkpoint, s.kronos),
                member_windows(db, [pd.Timestamp(day)], s.kronos),
            )
            fitted, manifest = read_heads(heads_dir(s, FOLD), FOLD)
            out = {
                "result": result,
                "rerun": rerun,
                "later": later,
                "same_file": heads_dir(s, LATER_FOLD) == heads_dir(s, FOLD)
                and (heads_dir(s, LATER_FOLD) / "heads.pkl").read_bytes() == first_heads,
                "later_fold": get_fold(db, LATER_FOLD),
                "later_scores": db.read(
                    "select * from kronos_head_scores where fold = ?", [LATER_FOLD]
                ),
                "fold": get_fold(db, FOLD),
                "fitted": fitted,
                "manifest": manifest,
                "labels": db.read(
                    "select date, ticker, horizon, available_at from labels_forward"
                ).to_pandas(),
                "forecasts": forecasts,
                "scores": db.read("select * from kronos_head_scores where fold = ?", [FOLD]),
                "first_scores": first_scores,
                "signal_run": signal_run,
                "signal": db.read("select * from signals"),
                "sample_count": s.kronos_sampling["sample_count"],
                "forecast_day": day,
                "recomputed": recomputed,
            }
        finally:
            get_settings.cache_clear()
    get_settings.cache_clear()
    return out


def test_the_heads_and_their_scores_materialize_with_every_check_passed(heads_run):
    assert heads_run["result"].success and heads_run["rerun"].success
    checks = {e.check_name: e.passed for e in heads_run["result"].get_asset_check_evaluations()}
    assert checks == {"heads_train_cut": True, "head_scores_valid": True}


def test_the_signal_carries_both_heads_with_the_quantiles_of_their_sampled_paths(heads_run):
    assert heads_run["signal_run"].success
    assert heads_run["sample_count"] == 2  # production sampling, KRONOS_KRONOS__SAMPLE_COUNT
    signal, forecasts = heads_run["signal"], heads_run["forecasts"].filter(pl.col("fold") == FOLD)
    (forecast_model,) = forecasts["model"].unique().to_list()
    derived = (HEAD_MODEL, FUSED_MODEL, forecast_model, f"{forecast_model}_volnorm")
    assert set(signal["model"]) == set(derived)
    keys = ["date", "ticker", "horizon"]
    quantiles = ["pred_return_q10", "pred_return_q50", "pred_return_q90"]
    expected = forecasts.select(*keys, *quantiles).with_columns(pl.col("date").cast(pl.Date))
    for model in derived:
        rows = signal.filter(pl.col("model") == model).with_columns(pl.col("date").cast(pl.Date))
        assert rows.height == expected.height > 0, model  # every forecast series, ranked
        joined = rows.join(expected, on=keys, suffix="_forecast")
        assert joined.height == rows.height, model
        for q in quantiles:  # the quantiles of the very forecast the score came from
            assert (joined[q] == joined[f"{q}_forecast"]).all(), (model, q)
        spread = (rows["pred_return_q90"] - rows["pred_return_q10"]).to_numpy()
        # Two sampled paths per series: the 10-90 % interval is not a single number.
        assert (spread >= 0).all() and (spread > 0).mean() > 0.5, (model, (spread > 0).mean())


def test_every_training_label_of_the_heads_matured_before_the_cut(heads_run):
    fold, fitted, manifest = heads_run["fold"], heads_run["fitted"], heads_run["manifest"]
    assert manifest["cut"] == str(fold.test_start.date())
    assert pd.Timestamp(manifest["max_available_at"]) < fold.test_start
    assert len(manifest["training_dates"]) >= 5
    assert pd.Timestamp(manifest["training_dates"][-1]) <= fold.train_end[min(HORIZONS)]
    assert sorted(fitted.heads) == [(m, h) for m in (HEAD_MODEL, FUSED_MODEL) for h in HORIZONS]
    labels = heads_run["labels"].assign(
        date=lambda f: pd.to_datetime(f["date"]),
        available_at=lambda f: pd.to_datetime(f["available_at"]),
    )
    for (model, horizon), head in fitted.heads.items():
        # Maturities looked up in the labels table, not taken from what the head recorded.
        rows = head.train_rows[["date", "ticker"]].assign(date=lambda f: pd.to_datetime(f["date"]))
        joined = rows.merge(labels[labels["horizon"] == horizon], on=["date", "ticker"])
        assert len(joined) == len(rows) > 0, (model, horizon)
        assert (joined["available_at"] < fold.test_start).all(), (model, horizon)
        assert (joined["date"] < fold.test_start).all()
        record = next(
            h for h in manifest["heads"] if (h["model"], h["horizon"]) == (model, horizon)
        )
        assert pd.Timestamp(record["max_available_at"]) == joined["available_at"].max()


def test_the_later_fold_of_the_period_reuses_the_heads_fitted_at_the_period_cut(heads_run):
    kronos, heads_result = heads_run["later"]
    assert kronos.success and heads_result.success
    (mat,) = heads_result.asset_materializations_for_node("kronos_heads")
    assert mat.metadata["refit"].value is False and mat.metadata["period"].value == FOLD
    assert mat.metadata["cut"].value == str(heads_run["fold"].test_start.date())
    assert heads_run["same_file"]  # not refitted: the very file the first fold wrote
    first_mat = heads_run["result"].asset_materializations_for_node("kronos_heads")[0]
    assert first_mat.metadata["refit"].value is True
    checks = {e.check_name: e.passed for e in heads_result.get_asset_check_evaluations()}
    assert checks == {"heads_train_cut": True, "head_scores_valid": True}
    # The period's heads saw only labels matured before the first fold's test start, which is
    # before the later fold's as well; the later fold's dates are scored with them.
    assert pd.Timestamp(heads_run["manifest"]["max_available_at"]) < heads_run["fold"].test_start
    assert heads_run["fold"].test_start < heads_run["later_fold"].test_start
    later = heads_run["later_scores"]
    assert later.height > 0 and set(later["fold"]) == {LATER_FOLD}
    assert pd.Timestamp(later["date"].min()) >= heads_run["later_fold"].test_start


def test_both_heads_score_every_forecast_series_at_every_horizon(heads_run):
    scores = heads_run["scores"]
    forecast_keys = (
        heads_run["forecasts"].filter(pl.col("fold") == FOLD).select("date", "ticker").unique()
    )
    assert forecast_keys.height > 0
    assert set(scores["fold"]) == {FOLD}
    assert scores.group_by("model", "horizon").len().height == 2 * len(HORIZONS)
    for (model, horizon), group in scores.group_by("model", "horizon"):
        assert model in (HEAD_MODEL, FUSED_MODEL) and horizon in HORIZONS
        keys = group.select("date", "ticker")
        assert keys.height == forecast_keys.height and not keys.is_duplicated().any()
        assert keys.join(forecast_keys, on=["date", "ticker"]).height == forecast_keys.height
    assert np.isfinite(scores["score"].to_numpy()).all()
    # The heads are not constants: their scores vary across the names of a date.
    per_date = scores.group_by("model", "horizon", "date").agg(pl.col("score").std())
    assert (per_date["score"] > 0).all()


def test_rerunning_the_scores_writes_each_row_once(heads_run):
    assert (
        heads_run["scores"]
        .sort("model", "horizon", "date", "ticker")
        .equals(heads_run["first_scores"].sort("model", "horizon", "date", "ticker"))
    )


def test_training_embeddings_are_those_the_forecasts_store(heads_run):
    stored = (
        heads_run["forecasts"]
        .filter((pl.col("date") == heads_run["forecast_day"]) & (pl.col("horizon") == HORIZONS[0]))
        .sort("ticker")
    )
    recomputed = heads_run["recomputed"].sort_values("ticker")
    assert list(recomputed["ticker"]) == stored["ticker"].to_list()
    np.testing.assert_allclose(
        np.stack(recomputed["embedding"].to_numpy()),
        np.array(stored["embedding"].to_list()),
        rtol=1e-4,
        atol=1e-5,
    )


def test_the_heads_are_evaluated_as_candidates():
    from kronos_pipeline.defs.evaluation import SCORE_TABLES
    from kronos_pipeline.defs.heads import SCORE_TABLE

    assert SCORE_TABLE in SCORE_TABLES
    models = [HEAD_MODEL, FUSED_MODEL, "lightgbm", "random", "lightgbm_shuffled_labels"]
    assert gates.candidate_models(models) == [HEAD_MODEL, FUSED_MODEL]


def test_training_dates_are_monthly_and_end_where_the_shortest_label_can_mature():
    from kronos_pipeline.data.calendar import trading_days
    from kronos_pipeline.evaluation.heads import training_dates

    sessions = trading_days("2017-01-03", "2018-05-31")
    fold = folds.make_folds(sessions, "2018-05", "2018-05", HORIZONS)[0]
    days = training_dates(sessions, fold, HORIZONS, history_days=200, stride=21)
    before = sessions[sessions < fold.test_start]
    assert days[-1] == fold.train_end[5] == before[-6]
    assert days[0] >= before[-200]
    positions = [before.get_loc(d) for d in days]
    assert set(np.diff(positions)) == {21}


def test_head_scores_of_another_checkpoint_or_with_gaps_are_refused():
    from kronos_pipeline.defs.heads import validate_head_scores

    scores = pd.DataFrame({
        "model": [HEAD_MODEL] * 2, "horizon": [5, 5], "ticker": ["A", "B"],
        "date": pd.to_datetime(["2018-05-01"] * 2), "score": [0.1, -0.2], "fold": FOLD,
    })  # fmt: skip
    assert validate_head_scores(scores, series=2, n_heads=1, same_checkpoint=True)[0]
    ok, description, _ = validate_head_scores(scores, 2, 1, same_checkpoint=False)
    assert not ok and "materialize kronos_heads" in description
    assert not validate_head_scores(scores, series=3, n_heads=1, same_checkpoint=True)[0]
    gap = scores.assign(score=[0.1, np.nan])
    assert validate_head_scores(gap, 2, 1, True)[2]["non_finite"] == 1
    twice = pd.concat([scores.iloc[:1], scores.iloc[:1]])
    assert validate_head_scores(twice, 2, 1, True)[2]["duplicates"] == 1


def test_stored_heads_are_reused_only_intact_at_the_same_cut_and_checkpoint(tmp_path):
    from kronos_pipeline.defs.heads import HEADS_FILE, MANIFEST, reusable_heads
    from kronos_pipeline.kronos.hub import file_sha256

    checkpoint = {"model": "kronos_walkforward", "period": FOLD, "train_cut": "2018-04-16",
                  "predictor": "p", "predictor_sha256": "abc"}  # fmt: skip
    (tmp_path / HEADS_FILE).write_bytes(b"fitted heads")
    manifest = {"cut": "2018-05-01", "file": HEADS_FILE, "checkpoint": checkpoint,
                "sha256": file_sha256(tmp_path / HEADS_FILE)}  # fmt: skip
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    cut = pd.Timestamp("2018-05-01")
    assert reusable_heads(tmp_path, cut, checkpoint) == manifest
    assert reusable_heads(tmp_path, pd.Timestamp("2018-06-01"), checkpoint) is None
    assert reusable_heads(tmp_path, cut, {**checkpoint, "predictor_sha256": "other"}) is None
    (tmp_path / HEADS_FILE).write_bytes(b"corrupted")
    assert reusable_heads(tmp_path, cut, checkpoint) is None

"""Kronos scores: the path -> score formula, PIT input windows, and the Dagster assets end to end
(train a tiny checkpoint at a fold's purged cut, score every universe member)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.data.pit import prices_pit
from kronos_pipeline.evaluation import baselines
from kronos_pipeline.kronos import Kronos, KronosTokenizer, scoring
from kronos_pipeline.kronos.engine import KronosEngine
from kronos_pipeline_tests.fold_runs import materialize_fold
from kronos_pipeline_tests.kronos.conftest import TINY_KRONOS, TINY_TOKENIZER

AS_OF = dt.date(2018, 6, 29)


def _raw_bars(seed: int = 0, n_tickers: int = 3, split_on: dt.date | None = None) -> pl.DataFrame:
    """Random-walk vendor bars (2018) with an optional 2:1 split of every ticker on ``split_on``."""
    rng = np.random.default_rng(seed)
    dates = trading_days("2018-01-02", "2018-12-31").date
    frames = []
    for i in range(n_tickers):
        close = 40.0 * np.exp(np.cumsum(rng.normal(0, 0.02, len(dates))))
        split = np.ones(len(dates))
        if split_on is not None:
            split[dates >= split_on] = 0.5  # raw prices halve from the split day on
            close = close * split
            split = np.where(dates == split_on, 2.0, 1.0)
        opened = close * np.exp(rng.normal(0, 0.005, len(dates)))
        frames.append(
            pl.DataFrame(
                {
                    "ticker": f"T{i}",
                    "date": pl.Series(dates.tolist(), dtype=pl.Date),
                    "open": opened,
                    "high": np.maximum(opened, close) * 1.01,
                    "low": np.minimum(opened, close) * 0.99,
                    "close": close,
                    "volume": rng.lognormal(13, 0.5, len(dates)),
                    "dividend": 0.0,
                    "split": split,
                    "adjusted_close": close,
                }
            )
        )
    return pl.concat(frames)


def _members(prices: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    return prices.filter(pl.col("date") == day).select("date", "ticker")


class PlantedEngine:
    """Paths whose close at step j of sample s is ``last_close * (1 + 0.01 j + 0.002 s)``."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def forecast(self, windows, timestamps, future_timestamps, pred_len, sample_count, **_):
        self.calls.append(pred_len)
        assert all(len(f) == pred_len for f in future_timestamps)
        last = np.array([w["close"].iloc[-1] for w in windows])
        steps = np.arange(1, pred_len + 1)[None, None, :]
        samples = np.arange(3)[None, :, None]
        close = last[:, None, None] * (1 + 0.01 * steps + 0.002 * samples)
        paths = np.repeat(close[..., None], 6, axis=-1).astype(np.float32)

        class Result:
            pass

        result = Result()
        result.paths = paths
        return result


def test_paths_to_scores_equal_the_formula():
    # Two series, two sample paths, four steps; close is column 3.
    paths = np.zeros((2, 2, 4, 6), np.float32)
    paths[0, :, :, 3] = [[10, 11, 12, 13], [10, 13, 14, 15]]
    paths[1, :, :, 3] = [[50, 40, 45, 60], [50, 50, 55, 40]]
    keys = pd.DataFrame({"date": pd.to_datetime(["2018-06-29"] * 2), "ticker": ["A", "B"]})
    out = scoring.paths_to_scores(
        paths, np.array([10.0, 50.0]), np.array([2.0, 5.0]), keys, (2, 4), "kronos_x", "2018-07"
    )
    got = out.set_index(["model", "horizon", "ticker"])["score"]
    assert got[("kronos_x", 2, "A")] == pytest.approx((11 + 13) / 2 / 10 - 1)
    assert got[("kronos_x", 4, "A")] == pytest.approx((13 + 15) / 2 / 10 - 1)
    assert got[("kronos_x", 2, "B")] == pytest.approx((40 + 50) / 2 / 50 - 1)
    assert got[("kronos_x_volnorm", 4, "B")] == pytest.approx(((60 + 40) / 2 - 50) / 5)
    assert got[("kronos_x_volnorm", 2, "A")] == pytest.approx(((11 + 13) / 2 - 10) / 2)
    assert set(out["fold"]) == {"2018-07"} and len(out) == 2 * 2 * 2


def test_one_decode_of_the_longest_horizon_serves_every_horizon():
    prices = prices_pit(_raw_bars())
    inputs = scoring.build_windows(prices, _members(prices, AS_OF), lookback=30)
    engine = PlantedEngine()
    out = scoring.score_windows(engine, inputs, (2, 5), "kronos_p", "2018-07", sample_count=3)
    assert engine.calls == [5]
    plain = out[out["model"] == "kronos_p"].set_index(["horizon", "ticker"])["score"]
    # mean over samples s = 0, 1, 2 of (1 + 0.01 h + 0.002 s) - 1 = 0.01 h + 0.002
    for (h, _), value in plain.items():
        assert value == pytest.approx(0.01 * h + 0.002, rel=1e-5)
    vol = out[out["model"] == "kronos_p_volnorm"].set_index(["horizon", "ticker"])["score"]
    for (h, ticker), value in vol.items():
        window = inputs.windows[list(inputs.keys["ticker"]).index(ticker)]["close"]
        expected = window.iloc[-1] * (0.01 * h + 0.002) / window.to_numpy().std()
        assert value == pytest.approx(expected, rel=1e-4)


def test_windows_are_the_last_lookback_bars_adjusted_as_of_the_scoring_date():
    split_day = dt.date(2018, 6, 1)
    prices = prices_pit(_raw_bars(split_on=split_day))
    inputs = scoring.build_windows(prices, _members(prices, AS_OF), lookback=60)
    raw = prices.filter((pl.col("ticker") == "T0") & (pl.col("date") <= AS_OF)).tail(60)
    window = inputs.windows[0]
    assert len(window) == 60 and inputs.timestamps[0][-1].date() == AS_OF
    # In the share units of AS_OF (after the split): the last close is the traded close and
    # pre-split closes are halved; amount = close * volume.
    np.testing.assert_allclose(window["close"].iloc[-1], raw["close"][-1], rtol=1e-12)
    pre = raw.filter(pl.col("date") < split_day)
    np.testing.assert_allclose(window["close"].iloc[: pre.height], pre["close"] / 2, rtol=1e-12)
    np.testing.assert_allclose(window["amount"], window["close"] * window["volume"], rtol=1e-12)


def test_scores_as_of_t_do_not_change_when_later_bars_change():
    torch.manual_seed(5)
    engine = KronosEngine(
        KronosTokenizer(**TINY_TOKENIZER).eval(), Kronos(**TINY_KRONOS).eval(), device="cpu"
    )
    prices = prices_pit(_raw_bars(seed=1))
    # Later bars rewritten: other prices, and a 3:1 split after the scoring date.
    later = pl.col("date") > AS_OF
    poisoned_raw = _raw_bars(seed=1).with_columns(
        close=pl.when(later).then(pl.col("close") * 7.0).otherwise(pl.col("close")),
        split=pl.when(pl.col("date") == dt.date(2018, 8, 1)).then(3.0).otherwise(pl.col("split")),
    )
    poisoned = prices_pit(poisoned_raw)
    members = _members(prices, AS_OF)
    args = dict(horizons=(3, 6), model="kronos_t", fold_id="2018-07", top_k=0, sample_count=2)
    clean = scoring.score_windows(engine, scoring.build_windows(prices, members, 40), **args)
    dirty = scoring.score_windows(engine, scoring.build_windows(poisoned, members, 40), **args)
    assert len(clean) == 3 * 2 * 2 and np.isfinite(clean["score"]).all()
    pd.testing.assert_frame_equal(clean, dirty)


def test_score_table_has_the_dtypes_of_baseline_scores():
    frame = pd.DataFrame({"date": pd.to_datetime(["2018-06-29"]), "ticker": ["A"], "score": [0.5]})
    baseline = pl.from_pandas(baselines._long(frame, "momentum", (20,), "2018-07"))
    ours = scoring.to_score_table(
        pd.DataFrame({"model": ["k"], "horizon": [20], "date": [pd.Timestamp("2018-06-29")],
                      "ticker": ["A"], "score": [0.1], "fold": ["2018-07"]})
    )  # fmt: skip
    assert ours.schema == baseline.schema


def test_cpu_micro_batches_hold_fifty_series_of_their_paths_unless_set(monkeypatch):
    """Unset, a CPU micro-batch is 50 series times their sample paths (400 rows at 8 paths,
    the night's top 100 in two); an explicit batch_size wins; on an accelerator the engine
    sizes it from free memory. The size depends on the settings only, never on the date."""
    from kronos_pipeline.defs.kronos import CPU_SERIES_PER_BATCH, engine_batch_size
    from kronos_pipeline.kronos import hub
    from kronos_pipeline.settings import KronosSettings

    cpu = KronosSettings(device="cpu")
    assert CPU_SERIES_PER_BATCH == 50
    assert engine_batch_size(cpu, 8) == 400 and engine_batch_size(cpu, 1) == 50
    assert engine_batch_size(cpu.model_copy(update={"batch_size": 64}), 8) == 64
    monkeypatch.setattr(hub, "resolve_device", lambda device: torch.device("cuda"))
    assert engine_batch_size(KronosSettings(device="auto"), 8) is None
    assert engine_batch_size(KronosSettings(device="auto", batch_size=1024), 8) == 1024


# --------------------------------------------------------------------------------------
# Dagster end to end
# --------------------------------------------------------------------------------------

FULL_RANGE = ("2017-03-01", "2018-06-29")
FOLD, LATER_FOLD = "2018-05", "2018-06"  # one refit period of 2 months
ENV = {
    "KRONOS_DATA__SYNTHETIC_START": FULL_RANGE[0],
    "KRONOS_DATA__SYNTHETIC_END": FULL_RANGE[1],
    "KRONOS_DATA__SYNTHETIC_TICKERS": "16",
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "253",
    "KRONOS_LABELS__HORIZONS": "[5, 10]",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": FOLD,
    "KRONOS_FOLDS__LAST_TEST_MONTH": LATER_FOLD,
    "KRONOS_KRONOS__REFIT_MONTHS": "2",
    "KRONOS_KRONOS__SAMPLE_COUNT": "4",
    "KRONOS_KRONOS__TOP_K": "0",
    "KRONOS_KRONOS__LOOKBACK": "40",
    "KRONOS_KRONOS__DEVICE": "cpu",
    "KRONOS_KRONOS__TRAIN_MAX_MINUTES": "0.05",
    "KRONOS_KRONOS__TRAIN_EPOCHS": "1",
    "KRONOS_KRONOS__TRAIN_WINDOWS_PER_EPOCH": "64",
    "KRONOS_KRONOS__TRAIN_BATCH_SIZE": "16",
    "KRONOS_KRONOS__TRAIN_HORIZON": "10",
}


@pytest.fixture(scope="module")
def kronos_run(tmp_path_factory: pytest.TempPathFactory):
    from kronos_pipeline.definitions import DATA_ASSETS
    from kronos_pipeline.defs.automation import data_job
    from kronos_pipeline.defs.evaluation import folds_asset
    from kronos_pipeline.defs.kronos import KRONOS_ASSETS, checkpoint_dir
    from kronos_pipeline.defs.resources import warehouse_resources
    from kronos_pipeline.settings import get_settings
    from kronos_pipeline.warehouse import Warehouse

    folder: Path = tmp_path_factory.mktemp("kronos_warehouse")
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
            result = materialize_fold(KRONOS_ASSETS, FOLD, resources=resources, instance=instance)
            later = materialize_fold(
                KRONOS_ASSETS, LATER_FOLD, resources=resources, instance=instance
            )
            db = Warehouse(db_path)
            out = {
                "result": result,
                "later": later,
                "scores": db.read("select * from kronos_scores where fold = ?", [FOLD]),
                "forecasts": db.read_table("kronos_forecasts"),
                "members": db.read(
                    "select u.date, u.ticker from universe u where u.in_universe and u.date in "
                    "(select distinct date from kronos_scores where fold = '2018-05')"
                ),
                "folds": db.read("select * from folds"),
                "checkpoint": checkpoint_dir(get_settings(), FOLD),
            }
            # One day again, with Launchpad-style run config: 2 sampled paths instead of 4.
            day = str(pd.Timestamp(out["forecasts"]["date"].min()).date())
            configured = dg.materialize(
                [KRONOS_ASSETS[1]], partition_key=day, resources=resources, instance=instance,
                run_config={"resources": {"settings": {"config": {"sample_count": 2}}}},
            )  # fmt: skip
            out["configured"] = {
                "run": configured,
                "day": day,
                "paths": db.read(
                    "select date, sample_count, len(samples) as paths from kronos_forecasts"
                ),
                "run_config": instance.get_run_by_id(configured.run_id).run_config,
            }
            out["strategies"] = _strategies(out["checkpoint"], folder, resources, instance, mp)
        finally:
            get_settings.cache_clear()
    get_settings.cache_clear()
    return out


def _strategies(trained: Path, folder: Path, resources, instance, mp) -> dict:
    """The other two strategies on the same warehouse, with the scratch checkpoint's folders
    standing in for published weights (the published layout, loaded by the same code path):
    ``published`` scores them zero-shot; ``finetune`` warm-starts 2018-05 from them and
    2018-06 from 2018-05's accepted checkpoint, each judged by the regression guard."""
    from kronos_pipeline.defs.kronos import KRONOS_ASSETS, checkpoint_dir
    from kronos_pipeline.settings import get_settings
    from kronos_pipeline.warehouse import Warehouse

    out = {}
    mp.setenv("KRONOS_KRONOS__PREDICTOR", str(trained / "predictor"))
    mp.setenv("KRONOS_KRONOS__TOKENIZER", str(trained / "tokenizer"))
    mp.setenv("KRONOS_KRONOS__REFIT_MONTHS", "1")
    mp.setenv("KRONOS_KRONOS__VALIDATION_SESSIONS", "40")
    mp.setenv("KRONOS_KRONOS__VALIDATION_STRIDE", "5")
    for name in ("published", "finetune"):
        mp.setenv("KRONOS_KRONOS__STRATEGY", name)
        get_settings.cache_clear()
        results = [
            materialize_fold(KRONOS_ASSETS, f, resources=resources, instance=instance)
            for f in (FOLD, LATER_FOLD)
        ]
        out[name] = {
            "results": results,
            "manifests": [scoring.read_manifest(checkpoint_dir(get_settings(), f))
                          for f in (FOLD, LATER_FOLD)],
            "models": set(Warehouse(folder / "lake").read(
                "select distinct model from kronos_scores")["model"]),
        }  # fmt: skip
    return out


def test_published_weights_by_local_folder_are_scored_zero_shot(kronos_run):
    run = kronos_run["strategies"]["published"]
    assert all(r.success for r in run["results"])
    first = run["manifests"][0]
    assert first["kind"] == "zero_shot" and first["model"] == "kronos_zero_shot"
    assert first["predictor"] == str(kronos_run["checkpoint"] / "predictor")
    assert "kronos_zero_shot" in run["models"]


def test_finetune_warm_starts_each_period_and_records_the_guards_decision(kronos_run):
    run = kronos_run["strategies"]["finetune"]
    assert all(r.success for r in run["results"])
    first, second = run["manifests"]
    assert first["strategy"] == second["strategy"] == "finetune"
    assert first["start"]["from"] != second["start"]["from"]  # published, then the previous
    decision = second["decision"]
    assert set(decision) >= {"accepted", "reason", "new", "previous"}
    assert "RankIC" in decision["reason"]
    assert "kronos_finetune" in run["models"]
    meta = run["results"][1].asset_materializations_for_node("kronos_checkpoint")[0].metadata
    assert "decision" in meta


def test_fold_checkpoint_is_trained_before_the_purged_cut_and_saved_in_published_layout(
    kronos_run,
):
    assert kronos_run["result"].success
    root = kronos_run["checkpoint"]
    for part in ("tokenizer", "predictor"):
        assert (root / part / "config.json").exists()
        assert (root / part / "model.safetensors").exists()
    manifest = scoring.read_manifest(root)
    purged_end = kronos_run["folds"].filter(pl.col("horizon") == 10)["train_end"][0]
    assert pd.Timestamp(manifest["last_bar"]) <= pd.Timestamp(purged_end)
    assert pd.Timestamp(purged_end) < pd.Timestamp("2018-05-01")


def test_every_universe_member_gets_a_score_for_every_horizon(kronos_run):
    scores = kronos_run["scores"]
    assert scores.schema == scoring.SCORE_SCHEMA
    assert set(scores["fold"]) == {FOLD}
    assert set(scores["model"]) == {"kronos_walkforward", "kronos_walkforward_volnorm"}
    members = kronos_run["members"].height
    assert members > 0
    for (model, horizon), group in scores.group_by("model", "horizon"):
        assert horizon in (5, 10)
        assert group.height == members, (model, horizon)
    assert scores.group_by("model", "horizon").len().height == 4
    assert np.isfinite(scores["score"].to_numpy()).all()
    checks = {e.check_name: e.passed for e in kronos_run["result"].get_asset_check_evaluations()}
    assert checks == {
        "train_cut_before_test": True,
        "forecasts_valid": True,
        "member_coverage": True,
        "scores_match_forecasts": True,
    }


def test_forecasts_keep_quantiles_samples_and_embeddings_and_imply_the_scores(kronos_run):
    f = kronos_run["forecasts"].filter(pl.col("fold") == FOLD)
    assert f.height == kronos_run["scores"].height // 2
    assert (f["sample_count"] == 4).all() and (f["samples"].list.len() == 4).all()
    samples = np.array(f["samples"].to_list())
    assert np.allclose(f["pred_return_mean"].to_numpy(), samples.mean(axis=1))
    # The Weibull rule of the forecast metrics (4 samples: q10 is the smallest, q90 the largest).
    assert np.allclose(f["pred_return_q10"].to_numpy(), samples.min(axis=1))
    assert np.allclose(f["pred_return_q90"].to_numpy(), samples.max(axis=1))
    weibull = np.quantile(samples, 0.5, axis=1, method="weibull")
    assert np.allclose(f["pred_return_q50"].to_numpy(), weibull)
    assert (f["pred_return_q10"] <= f["pred_return_q90"]).all()
    assert (samples.std(axis=1) > 0).mean() > 0.5  # sampled paths differ (top_k = 0)
    emb = np.array(f["embedding"].to_list())
    assert emb.ndim == 2 and emb.shape[1] > 8 and np.isfinite(emb).all()
    mean = kronos_run["scores"].filter(pl.col("model") == "kronos_walkforward")
    joined = mean.join(f, on=["date", "ticker", "horizon"])
    assert joined.height == mean.height
    assert np.allclose(joined["score"].to_numpy(), joined["pred_return_mean"].to_numpy())


def test_later_fold_of_a_refit_period_reuses_the_checkpoint_fitted_at_the_period_cut(kronos_run):
    assert kronos_run["later"].success
    mats = {
        m.partition: m.metadata
        for r in (kronos_run["result"], kronos_run["later"])
        for m in r.asset_materializations_for_node("kronos_checkpoint")
    }
    assert mats[FOLD]["refit"].value is True and mats[LATER_FOLD]["refit"].value is False
    assert mats[FOLD]["train_cut"].value == mats[LATER_FOLD]["train_cut"].value
    assert mats[LATER_FOLD]["period"].value == FOLD
    later_check = [
        e
        for e in kronos_run["later"].get_asset_check_evaluations()
        if e.check_name == "train_cut_before_test"
    ][0]
    assert later_check.passed
    # The period's checkpoint was cut before the purged end of both of its folds.
    manifest = scoring.read_manifest(kronos_run["checkpoint"])
    for fold in (FOLD, LATER_FOLD):
        end = kronos_run["folds"].filter((pl.col("fold_id") == fold) & (pl.col("horizon") == 10))
        assert pd.Timestamp(manifest["last_bar"]) <= pd.Timestamp(end["train_end"][0])


def test_validation_fraction_leaves_room_for_two_windows_with_default_history():
    from kronos_pipeline.kronos.scoring import validation_fraction

    # Default settings: 1260 trading days of history, windows of 252 + 30 bars. A 20 % hold-out
    # (252 days) could not hold one 282-bar window; the fraction grows to hold two.
    assert validation_fraction(1260, 282) == pytest.approx(2 * 282 / 1260)
    assert validation_fraction(1260, 282) * 1260 >= 2 * 282
    assert validation_fraction(10_000, 282) == 0.2
    assert validation_fraction(500, 282) == 0.5


def test_run_config_changes_what_a_rerun_of_one_day_stores(kronos_run):
    """The Launchpad's ``settings`` config is the run's configuration: a rerun of one day with
    ``sample_count: 2`` stores 2 paths for that day alone, and the run keeps its config."""
    configured = kronos_run["configured"]
    assert configured["run"].success
    assert configured["run_config"]["resources"]["settings"]["config"] == {"sample_count": 2}
    paths = configured["paths"].with_columns(pl.col("date").cast(pl.Date).cast(pl.String))
    day = paths.filter(pl.col("date") == configured["day"])
    others = paths.filter(pl.col("date") != configured["day"])
    assert day.height and (day["sample_count"] == 2).all() and (day["paths"] == 2).all()
    assert others.height and (others["sample_count"] == 4).all() and (others["paths"] == 4).all()

"""The nightly production loop, end to end through the CLI on a persistent instance: a vendor
folder (real sample, 12 names) receives new days one at a time, one with a planted 4:1 split
and a newly listed ticker, and each night's run ingests the day, fits the fold's models when a
new month starts (and only then), scores it with every model, publishes the signal, and
re-materializes the labels that matured."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from kronos_pipeline.instance import instance_at
from kronos_pipeline.warehouse import Warehouse
from kronos_pipeline_tests.vendor_feed import LIQUID_TICKERS, VendorFeed, session_before

REPO_ROOT = Path(__file__).resolve().parents[2]
END = dt.date(2019, 10, 29)
HORIZONS = (5, 10)
# Nothing sets the mode: the nightly run is production by default (every fold, the configured
# universe, kronos.sample_count sampled paths, the full training budget).
FAST = {
    "KRONOS_LABELS__HORIZONS": "[5, 10]",
    "KRONOS_UNIVERSE__MIN_HISTORY_DAYS": "253",
    "KRONOS_FOLDS__FIRST_TEST_MONTH": "2019-10",
    "KRONOS_LIGHTGBM__NUM_BOOST_ROUND": "30",
    "KRONOS_LIGHTGBM__MIN_DATA_IN_LEAF": "20",
    "KRONOS_LIGHTGBM__NUM_THREADS": "1",
    "KRONOS_KRONOS__LOOKBACK": "40",
    "KRONOS_KRONOS__SAMPLE_COUNT": "4",
    "KRONOS_KRONOS__DEVICE": "cpu",
    "KRONOS_KRONOS__TRAIN_MAX_MINUTES": "0.05",
    "KRONOS_KRONOS__TRAIN_EPOCHS": "1",
    "KRONOS_KRONOS__TRAIN_WINDOWS_PER_EPOCH": "64",
    "KRONOS_KRONOS__TRAIN_BATCH_SIZE": "16",
    "KRONOS_KRONOS__TRAIN_HORIZON": "10",
    "KRONOS_KRONOS__TRAIN_HISTORY_DAYS": "300",
    "KRONOS_TRIPWIRES__PIT_DATES": "2",
}
SPLIT = "AAPL"
NEW = "NEWCO"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "kronos-pipeline"
    proc = subprocess.run(
        [str(cli), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("nightly")
    feed = VendorFeed.create(
        root / "vendor", tickers=list(LIQUID_TICKERS), start=session_before(END, 520), end=END
    )
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")},
        **FAST,
        "DAGSTER_HOME": str(home),
        "KRONOS_WAREHOUSE__DATA_DIR": str(root / "data"),
        "KRONOS_REPORT__OUTPUT_ROOT": str(root / "runs"),
    }
    first = feed.read().bars["date"].min()
    # The history first (days, then the fold of the month so far), as a deployment starts.
    backfill = _cli(env, "backfill", "--dates", f"{first}:{END}", "--folds", "2019-10:2019-10",
                    "--vendor-dir", str(feed.target_dir))  # fmt: skip
    days = feed.sessions_after(END, 3)  # 10-30, 10-31 (split + listing), 11-01 (new month)
    feed.list_new_ticker(NEW, days[1], from_source_ticker="AMZN")
    db = Warehouse(root / "data" / "lake")
    out: dict = {"days": days, "db": db, "root": root, "first": first, "labels": {},
                 "stdouts": [backfill.stdout]}  # fmt: skip
    for i, day in enumerate(days):
        feed.deliver(day, split={SPLIT: 4.0} if i == 1 else None)
        out["labels"][day] = db.read("select date, horizon from labels_forward")
        out[f"stdout_{i}"] = _cli(
            env, "nightly", "--date", str(day), "--vendor-dir", str(feed.target_dir)
        ).stdout
        out["stdouts"].append(out[f"stdout_{i}"])
    out["labels"]["end"] = db.read("select date, horizon from labels_forward")
    instance = instance_at(home)
    try:
        out["runs"] = [
            (r.job_name, r.tags.get("kronos/nightly"), r.status.value)
            for r in instance.get_runs()
            if "kronos/nightly" in r.tags
        ]
        statuses = {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING,
                    dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS}  # fmt: skip
        out["every_run"] = [
            (r.job_name, r.tags.get("kronos/cli"), [
                e.event_log_entry.dagster_event.event_type_value
                for e in instance.get_records_for_run(r.run_id, of_type=statuses).records
            ])
            for r in instance.get_runs()
        ]  # fmt: skip

        def materializations(asset: str):
            records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
            return [r.asset_materialization for r in records]

        out["model_fits"] = [
            (m.partition, m.metadata["refit"].value) for m in materializations("lightgbm_models")
        ]
        out["checkpoint_fits"] = [
            (m.partition, m.metadata["refit"].value) for m in materializations("kronos_checkpoint")
        ]
    finally:
        instance.dispose()
    return out


def test_each_night_publishes_a_signal_from_every_model_over_the_days_universe(loop):
    db: Warehouse = loop["db"]
    for day in loop["days"]:
        path = loop["root"] / "data" / "signals" / f"{day}.parquet"
        signal = pl.read_parquet(path)
        members = set(db.read(
            "select ticker from universe where in_universe and date = ?", [day]
        )["ticker"])  # fmt: skip
        assert members, day
        models = set(signal["model"])
        kronos = {"kronos_walkforward", "kronos_walkforward_volnorm", "kronos_head",
                  "kronos_head_fused"}  # fmt: skip
        assert {"lightgbm", "random", "factor_composite", *kronos} <= models, models
        assert not {"lightgbm_shuffled_labels", "lightgbm_planted_leak"} & models
        for (model, horizon), group in signal.group_by(["model", "horizon"]):
            assert horizon in HORIZONS
            assert set(group["ticker"]) <= members
            if model in ("lightgbm", "random") or model.startswith("kronos"):
                assert set(group["ticker"]) == members, (day, model)
            assert sorted(group["rank"]) == list(range(1, group.height + 1))
        derived = signal.filter(pl.col("model").is_in(list(kronos)))
        assert derived["pred_return_q10"].is_not_null().all()
        assert (derived["pred_return_q10"] <= derived["pred_return_q90"]).all()
        # sample_count = 4 sampled paths (production sampling), not one greedy path
        assert (derived["pred_return_q10"] < derived["pred_return_q90"]).mean() > 0.5
        # the warehouse table holds the same rows
        stored = db.read("select * from signals where date = ?", [day])
        assert stored.height == signal.height


def test_the_split_day_is_scored_in_its_own_share_units_and_the_new_ticker_is_ingested(loop):
    db: Warehouse = loop["db"]
    split_day = loop["days"][1]
    prices = db.read(
        "select date, close, adj_close, split_factor from prices_pit where ticker = ? "
        "order by date desc limit 3", [SPLIT],
    )  # fmt: skip
    # the planted 4:1 split: raw close quartered, split-adjusted series continuous
    on_split = prices.filter(pl.col("date") == split_day)
    before = db.read(
        "select close, adj_close from prices_pit where ticker = ? and date < ? "
        "order by date desc limit 1", [SPLIT, split_day],
    )  # fmt: skip
    ratio = on_split["close"][0] / before["close"][0]
    adj_ratio = on_split["adj_close"][0] / before["adj_close"][0]
    assert 0.2 < ratio < 0.3 and 0.9 < adj_ratio < 1.1
    forecast = db.read(
        "select last_close from kronos_forecasts where ticker = ? and date = ? limit 1",
        [SPLIT, split_day],
    )  # fmt: skip
    assert forecast.height == 1
    assert abs(forecast["last_close"][0] - on_split["close"][0]) < 1e-6 * on_split["close"][0]
    bars = db.read("select min(date) as first from raw_bars where ticker = ?", [NEW])
    assert bars["first"][0] == split_day
    # a newly listed name lacks the history to be a member, so no model ranks it yet
    assert db.read("select count(*) from signals where ticker = ?", [NEW]).item() == 0


def test_models_are_fitted_when_a_new_month_starts_and_only_then(loop):
    # The backfill fitted 2019-10's models; neither October night refits them; the first
    # November night fits 2019-11's (LightGBM refits monthly, Kronos yearly: it reuses the
    # checkpoint of its period, fitted at 2019-10's cut).
    assert sorted(loop["model_fits"]) == [("2019-10", True), ("2019-11", True)]
    assert sorted(loop["checkpoint_fits"]) == [("2019-10", True), ("2019-11", False)]
    for i in (0, 1):
        assert "lightgbm_models" not in loop[f"stdout_{i}"]
    assert "models_job/lightgbm_models" in loop["stdout_2"]


def test_labels_that_matured_tonight_are_written_tonight(loop):
    days = loop["days"]
    db: Warehouse = loop["db"]
    sessions = db.read(
        "select distinct date from raw_bars where date <= ? order by date", [days[-1]]
    )["date"].to_list()
    for i, day in enumerate(days):
        after = loop["labels"][days[i + 1]] if i + 1 < len(days) else loop["labels"]["end"]
        for h in HORIZONS:
            matured = sessions[sessions.index(day) - h]  # its h-day label matures on `day`
            had = loop["labels"][day].filter((pl.col("date") == matured) & (pl.col("horizon") == h))
            has = after.filter((pl.col("date") == matured) & (pl.col("horizon") == h))
            assert had.height == 0 and has.height > 0, (day, h, matured)


def test_every_step_of_every_night_is_recorded_in_the_instance(loop):
    runs = loop["runs"]
    for i, day in enumerate(loop["days"]):
        jobs = sorted(job for job, d, _ in runs if d == str(day))
        fits = ["models_job"] if i == 2 else []  # the first night of a new fold only
        # Labels matured during the backfill, so each night is three runs (four with the fits):
        # the data and folds, the scores and signal, the matured labels and the rollups.
        assert jobs == sorted(
            ["nightly_data_job", *fits, "scoring_job", "nightly_evaluation_job"]
        ), (day, jobs)
    assert all(status == "SUCCESS" for _, _, status in runs)


def test_every_command_ran_its_runs_through_the_queue_of_a_dagster_dev_it_started(loop):
    # No daemon ran for the instance: each command started `dagster dev` and stopped it (the
    # heartbeats the last one left did not pass for a live daemon), and every run it submitted
    # was queued, taken off the queue by that daemon and started by its run launcher.
    for stdout in loop["stdouts"]:
        assert "no dagster-daemon is running for this instance: starting `dagster dev`" in stdout
        assert "stopped dagster dev" in stdout
    assert len(loop["every_run"]) >= 3 * len(loop["days"])
    for job, cli_tag, statuses in loop["every_run"]:
        assert cli_tag == "true", job
        assert statuses == [
            "PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS"
        ], job  # fmt: skip

"""Kronos assets, per fold: a leak-free checkpoint (trained at the fold's purged cut, or the
published weights named in settings) -> scores on the fold's scoring dates, which the
evaluation unions with the baselines. Library work lives in ``kronos_pipeline.kronos``."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from kronos_pipeline.defs.common import blocking_failure
from kronos_pipeline.defs.evaluation import fold_partitions
from kronos_pipeline.defs.resources import WarehouseResource
from kronos_pipeline.evaluation import folds
from kronos_pipeline.kronos import load_predictor, load_tokenizer, scoring
from kronos_pipeline.settings import Settings, get_settings
from kronos_pipeline.warehouse import WAREHOUSE_POOL, Warehouse

GROUP = "kronos"
PRICE_COLUMNS = "ticker, date, adj_open, adj_high, adj_low, adj_close, adj_volume, split_factor"
# Every fold reads the daily history it trains on or scores from.
HISTORY_DEPS = [
    dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in ("prices_pit", "universe")
]
# Sessions read per window, in lookbacks: a ticker missing some sessions (quarantined bars)
# still finds its last ``lookback`` bars.
HISTORY_SLACK = 2
# The first session of the last ``?`` sessions dated <= ``?``: where a history window starts.
HISTORY_START_SQL = (
    "select min(date) from (select distinct date from prices_pit where date <= ? "
    "order by date desc limit ?)"
)


def zero_shot(s: Settings) -> bool:
    """Published weights are used when ``kronos.predictor`` is an existing local directory."""
    return Path(s.kronos.predictor).is_dir()


def checkpoint_dir(s: Settings, fold_id: str) -> Path:
    """``data/checkpoints/<model>_<fold>/``: the fold's manifest (and trained weights)."""
    return s.warehouse.data_dir / "checkpoints" / f"{scoring.model_name(zero_shot(s))}_{fold_id}"


def _fold(db: Warehouse, fold_id: str) -> folds.Fold:
    frame = db.read("select * from folds where fold_id = ?", [fold_id]).to_pandas()
    if frame.empty:
        raise ValueError(f"fold {fold_id} is not in the folds table; materialize folds first")
    return folds.folds_from_frame(frame)[0]


def _history_start(db: Warehouse, day, sessions: int):
    return db.read(HISTORY_START_SQL, [day, sessions]).item()


@dg.asset(
    name="kronos_checkpoint",
    deps=["folds", *HISTORY_DEPS],
    partitions_def=fold_partitions,
    group_name=GROUP,
    pool="model_fitting",  # one model trains at a time (limit 1 in dagster_home/dagster.yaml)
    kinds={"pytorch", "safetensors"},
    description="Tokenizer + predictor for the fold: trained on bars ending at the purged cut "
    "(max horizon + 1 sessions before the test month), or published weights (zero_shot).",
    check_specs=[
        dg.AssetCheckSpec(
            "train_cut_before_test",
            asset="kronos_checkpoint",
            blocking=True,
            description="No training bar is dated after the fold's purged training end",
        )
    ],  # fmt: skip
)
def kronos_checkpoint_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    s, db, fold_id = get_settings(), warehouse.get(), context.partition_key
    k, directory = s.kronos, checkpoint_dir(s, fold_id)
    fold = _fold(db, fold_id)
    cut = fold.train_end[max(s.labels.horizons)].date()
    if zero_shot(s):
        manifest = {
            "kind": "zero_shot", "model": scoring.ZERO_SHOT_MODEL, "predictor": k.predictor,
            "tokenizer": k.tokenizer, "tokenizer_revision": k.tokenizer_revision,
            "pretrain_cutoff": str(k.pretrain_cutoff), "last_bar": str(k.pretrain_cutoff),
        }  # fmt: skip
        scoring.write_manifest(directory, manifest)
    else:
        tickers = db.read(
            "select ticker from universe where in_universe and date = "
            "(select max(date) from universe where in_universe and date <= ?) "
            "order by liquidity_rank, ticker limit ?",
            [cut, k.train_tickers if k.train_tickers is not None else 1_000_000],
        )["ticker"].to_list()
        prices = db.read(
            f"select {PRICE_COLUMNS} from prices_pit where date between ? and ? "
            "and ticker in (select unnest(?))",
            [_history_start(db, cut, k.train_history_days), cut, tickers],
        )
        bars = scoring.pit_bars(prices, cut)
        context.log.info(f"training on {bars.height} bars of {len(tickers)} tickers to {cut}")
        manifest = scoring.train_checkpoint(bars, cut, directory, k, k.lookback)
    yield dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(directory)),
            "train_cut": str(cut),
            "manifest": dg.MetadataValue.json(manifest),
        }
    )
    last_bar = pd.Timestamp(manifest["last_bar"])
    yield dg.AssetCheckResult(
        check_name="train_cut_before_test",
        # Published weights are contaminated by design: the evaluation reports it.
        passed=manifest["kind"] == "zero_shot" or last_bar <= pd.Timestamp(cut),
        description=f"last training bar {last_bar.date()}, purged end {cut}, "
        f"test starts {fold.test_start.date()}",
    )


@dg.asset(
    name="kronos_scores",
    deps=["kronos_checkpoint", "folds", *HISTORY_DEPS],
    partitions_def=fold_partitions,
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "pytorch"},
    description="Kronos scores (and _volnorm variants) for the fold's scoring dates over the "
    "universe members of each date, from PIT windows of the last lookback bars.",
    check_specs=[
        dg.AssetCheckSpec(
            "scores_valid",
            asset="kronos_scores",
            blocking=True,
            description="Every score finite; one row per (model, horizon, date, ticker)",
        ),
        dg.AssetCheckSpec(
            "member_coverage",
            asset="kronos_scores",
            description="Share of universe members of each scoring date that got a score",
        ),
    ],  # fmt: skip
)
def kronos_scores_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    from kronos_pipeline.kronos.engine import KronosEngine

    s, db, fold_id = get_settings(), warehouse.get(), context.partition_key
    k = s.kronos
    fold = _fold(db, fold_id)
    manifest = scoring.read_manifest(checkpoint_dir(s, fold_id))
    sessions = db.read(
        "select distinct date from universe where date between ? and ? order by date",
        [fold.test_start.date(), fold.test_end.date()],
    )["date"]
    days = [d.date() for d in folds.scoring_dates(fold, sessions.to_list(), k.scoring_cadence)]
    members = db.read(
        "select date, ticker from universe where in_universe and date in (select unnest(?))",
        [days],
    )
    prices = db.read(
        f"select {PRICE_COLUMNS} from prices_pit where date between ? and ? "
        "and ticker in (select unnest(?))",
        [
            _history_start(db, days[0], HISTORY_SLACK * k.lookback),
            days[-1],
            members["ticker"].unique().to_list(),
        ],  # fmt: skip
    )
    inputs = scoring.build_windows(prices, members, k.lookback)
    engine = KronosEngine(
        load_tokenizer(manifest["tokenizer"], revision=manifest.get("tokenizer_revision")),
        load_predictor(manifest["predictor"], revision=k.predictor_revision),
        device=k.device, dtype=k.dtype, batch_size=k.batch_size, max_context=k.max_context,
        cuda_graphs=k.cuda_graphs,
    )  # fmt: skip
    scores = scoring.score_windows(
        engine, inputs, s.labels.horizons, manifest["model"], fold_id,
        calendar=s.data.calendar, sample_count=k.sample_count, temperature=k.temperature,
        top_k=k.top_k, top_p=k.top_p, seed=k.seed,
    )  # fmt: skip
    table = scoring.to_score_table(scores)
    dupes = table.select("model", "horizon", "date", "ticker").is_duplicated().sum()
    bad = int((~np.isfinite(table["score"].to_numpy())).sum())
    valid = dg.AssetCheckResult(
        check_name="scores_valid",
        passed=bool(dupes == 0 and bad == 0 and table.height > 0),
        metadata={"rows": table.height, "duplicates": int(dupes), "non_finite": bad},
    )
    if not valid.passed:  # validate, then publish: bad scores are never written
        yield valid
        raise blocking_failure(
            [("scores_valid", f"{table.height} rows, {int(dupes)} duplicates, {bad} non-finite")],
            "kronos_scores",
        )
    db.replace_where("kronos_scores", table, "fold", [fold_id])
    yield dg.MaterializeResult(
        metadata={"rows": table.height, "scoring_dates": len(days), "series": len(inputs),
                  "skipped": len(inputs.skipped), "model": manifest["model"]}
    )  # fmt: skip
    yield valid
    coverage = len(inputs) / members.height if members.height else 0.0
    yield dg.AssetCheckResult(
        check_name="member_coverage",
        passed=coverage >= 0.99,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "coverage": coverage,
            "members": members.height,
            "skipped": dg.MetadataValue.json([f"{d} {t}" for d, t in inputs.skipped[:50]]),
        },
    )


KRONOS_ASSETS = [kronos_checkpoint_asset, kronos_scores_asset]

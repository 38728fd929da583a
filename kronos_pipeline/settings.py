"""Typed settings: the one place every default of the pipeline lives.

Values come from, in increasing priority: the defaults below, then environment variables
prefixed ``KRONOS_`` with ``__`` between nesting levels (``KRONOS_DATA__VENDOR_DIR=/path``),
then keyword overrides passed to :func:`load_settings`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "KRONOS_"


class DataSettings(BaseModel):
    """Where bars come from. With neither ``vendor_dir`` nor ``tidy_path`` set, the seeded
    synthetic market is used."""

    vendor_dir: Path | None = None
    tidy_path: Path | None = None
    constituents_path: Path | None = None  # defaults to <vendor_dir>/constituents.csv
    synthetic_seed: int = 7
    synthetic_tickers: int = 120
    synthetic_start: dt.date = dt.date(2008, 1, 2)
    synthetic_end: dt.date = dt.date(2019, 12, 31)
    calendar: str = "XNYS"
    partitions_start: dt.date = dt.date(1999, 11, 1)

    @property
    def source_kind(self) -> Literal["vendor", "tidy", "synthetic"]:
        if self.vendor_dir is not None:
            return "vendor"
        if self.tidy_path is not None:
            return "tidy"
        return "synthetic"


class WarehouseSettings(BaseModel):
    data_dir: Path = REPO_ROOT / "data"
    duckdb_file: str = "warehouse.duckdb"
    lock_timeout_s: float = 600.0  # how long a writer waits for the single-writer lock

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / self.duckdb_file


class UniverseSettings(BaseModel):
    min_history_days: int = 252  # trading days of bars before a name may enter
    min_price: float = 5.0  # USD, raw close on the date
    min_median_dollar_volume: float = 5e6  # USD, median over liquidity_window_days
    liquidity_window_days: int = 60
    top_n: int | None = None  # keep the N most liquid names per date; None = all eligible
    smoke_top_n: int = 100


class LabelSettings(BaseModel):
    horizons: tuple[int, ...] = (20, 60, 90)  # trading days


class FoldSettings(BaseModel):
    first_test_month: str = "2011-01"
    last_test_month: str = "2019-12"
    window: Literal["expanding", "rolling"] = "expanding"
    rolling_train_days: int = 1260  # trading days, used when window == "rolling"
    scoring_cadence: Literal["daily", "weekly", "monthly"] = "daily"
    smoke_folds: int = 3


class KronosSettings(BaseModel):
    predictor: str = "NeoQuasar/Kronos-small"
    tokenizer: str = "NeoQuasar/Kronos-Tokenizer-base"
    predictor_revision: str = "main"
    tokenizer_revision: str = "main"
    pretrain_cutoff: dt.date = dt.date(2024, 6, 30)  # published weights saw data up to here
    lookback: int = 252  # bars of context per series
    max_context: int = 512
    sample_count: int = 1
    temperature: float = 1.0
    top_k: int = 1
    top_p: float = 1.0
    batch_size: int = 64
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0
    # Scoring (kronos_scores): a 90-step decode per series is costly on CPU, so score weekly.
    scoring_cadence: Literal["daily", "weekly", "monthly"] = "weekly"
    # Walk-forward training (kronos_checkpoint), used unless ``predictor`` is a local directory
    # of published weights. A small budget: compact models, a few minutes per fold on CPU.
    train_max_minutes: float = 3.0  # wall clock per fold, tokenizer and predictor together
    train_tickers: int | None = 50  # most liquid universe members at the training cut
    train_history_days: int = 1260  # trading days of bars before the training cut
    train_horizon: int = 30  # bars after the context in each training window
    train_stride: int = 5  # bars between window starts of one ticker
    train_epochs: int = 3
    train_windows_per_epoch: int = 2048
    train_batch_size: int = 32
    train_device: str = "cpu"


class LightGBMSettings(BaseModel):
    num_boost_round: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 200
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    early_stopping_rounds: int = 30
    validation_fraction: float = 0.2  # last share of training dates, time-ordered
    train_date_stride: int = 5  # train on every k-th date (overlapping labels); 1 = all dates
    num_threads: int = 2
    seed: int = 17


class GateSettings(BaseModel):
    gate1_min_median_rankic: float = 0.02
    gate1_min_horizons: int = 2
    gate1_max_momentum_corr: float = 0.5
    gate2_min_median_rankic: float = 0.05
    gate2_max_gap_to_lightgbm: float = 0.03
    gate3_max_churn: float = 0.30
    gate3_min_positive_fold_share: float = 0.30
    gate3_cost_horizons: tuple[int, ...] = (60, 90)
    gate3_min_regime_median_rankic: float = -0.02
    gate2_strict_min_median_rankic: dict[int, float] = Field(
        default_factory=lambda: {20: 0.08, 60: 0.10, 90: 0.15}
    )  # informational column only


class TripwireSettings(BaseModel):
    """Thresholds of the leak tripwires (SPEC section 7)."""

    # Negative controls (shuffled-label retraining, the random baseline) are "within noise of 0"
    # when |median RankIC| < max_abs_median_rankic or |t| < max_abs_t.
    max_abs_median_rankic: float = 0.01
    max_abs_t: float = 2.0
    # Leak scan: a model whose median RankIC reaches this at any horizon is treated as leaking.
    max_plausible_median_rankic: float = 0.5
    # Planted leak: the future excess return plus Gaussian noise of this many cross-sectional
    # standard deviations is added to LightGBM's inputs; the leak scan must flag the result.
    planted_leak_noise: float = 0.1
    # Controls retrain LightGBM, so they run on at most this many folds, spread evenly over
    # the evaluated folds (every fold when fewer are evaluated); None = every fold.
    shuffled_labels_max_folds: int | None = 12
    planted_leak_max_folds: int | None = 3
    seed: int = 20240611
    # PIT recomputation from raw bars: this many dates spread over the evaluated range.
    pit_dates: int = 4
    pit_atol: float = 1e-12
    # Adjustment consistency: share of ticker-days without a corporate action whose adjusted
    # return matches the vendor's adjusted close within adjustment_rel_tol (relative).
    adjustment_min_share: float = 0.999
    adjustment_rel_tol: float = 1e-6


class FeatureSettings(BaseModel):
    # False drops the sector_rel_* columns from model inputs: sectors are one mapping taken at
    # download time and applied to all history (not point in time), so their effect can be
    # measured by switching them off.
    use_sector_relative: bool = True


class CostSettings(BaseModel):
    cost_bps: float = 10.0  # one way, per unit of turnover


class ReportSettings(BaseModel):
    output_root: Path = REPO_ROOT / "data" / "runs"
    run_name: str = "latest"
    # The reference study's frozen numbers (different data), for the comparison table only.
    reference_factor_floor: dict[int, float] = Field(
        default_factory=lambda: {20: 0.0283, 60: 0.0392, 90: 0.0169}
    )
    reference_lightgbm: dict[int, float] = Field(
        default_factory=lambda: {20: 0.1009, 60: 0.1275, 90: 0.1808}
    )


class AlertSettings(BaseModel):
    webhook_url: str | None = None


class Settings(BaseModel):
    mode: Literal["smoke", "full"] = "smoke"
    data: DataSettings = Field(default_factory=DataSettings)
    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)
    universe: UniverseSettings = Field(default_factory=UniverseSettings)
    labels: LabelSettings = Field(default_factory=LabelSettings)
    folds: FoldSettings = Field(default_factory=FoldSettings)
    kronos: KronosSettings = Field(default_factory=KronosSettings)
    lightgbm: LightGBMSettings = Field(default_factory=LightGBMSettings)
    gates: GateSettings = Field(default_factory=GateSettings)
    tripwires: TripwireSettings = Field(default_factory=TripwireSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @property
    def effective_top_n(self) -> int | None:
        """Top-N by liquidity: the smoke default unless set explicitly."""
        if self.universe.top_n is not None:
            return self.universe.top_n
        return self.universe.smoke_top_n if self.mode == "smoke" else None


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``KRONOS_A__B=v`` variables into ``{"a": {"b": v}}``. JSON values are decoded."""
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, ``KRONOS_*`` environment variables and ``overrides``."""
    env = _env_overrides(dict(os.environ if environ is None else environ))
    return Settings.model_validate(_merge(env, overrides))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return load_settings()

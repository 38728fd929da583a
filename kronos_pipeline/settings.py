"""Typed settings: the one place every default of the pipeline lives.

Values come from, in increasing priority: the defaults below, then environment variables
prefixed ``KRONOS_`` with ``__`` between nesting levels (``KRONOS_DATA__VENDOR_DIR=/path``),
then keyword overrides passed to :func:`load_settings`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "KRONOS_"
# Variables with these prefixes belong to tools around the pipeline (tests), not to settings.
NOT_SETTINGS_PREFIXES = ("KRONOS_TEST_",)


class SettingsError(ValueError):
    """Settings that cannot be loaded: every offending key, where it came from, and why."""


class StrictModel(BaseModel):
    """A settings section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def _positive(value: float | int | None, info) -> float | int | None:
    if value is not None and value <= 0:
        raise ValueError(f"{info.field_name} must be > 0, got {value}")
    return value


def _non_negative(value: float | int | None, info) -> float | int | None:
    if value is not None and value < 0:
        raise ValueError(f"{info.field_name} must be >= 0, got {value}")
    return value


def _month(value: str | None) -> str | None:
    """A test month ``YYYY-MM`` with a real month (01..12)."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.strptime(value, "%Y-%m")
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a month: use YYYY-MM with MM in 01..12") from None
    if parsed.strftime("%Y-%m") != value:
        raise ValueError(f"{value!r} is not a month: use YYYY-MM (zero-padded), e.g. 2015-01")
    return value


class DataSettings(StrictModel):
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

    _positive_counts = field_validator("synthetic_tickers")(_positive)

    @field_validator("vendor_dir", "tidy_path", "constituents_path")
    @classmethod
    def _exists(cls, value: Path | None, info) -> Path | None:
        if value is not None and not Path(value).exists():
            raise ValueError(f"{info.field_name} {value} does not exist")
        return value

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, value: str) -> str:
        import exchange_calendars as xcals

        if value not in xcals.get_calendar_names(include_aliases=True):
            raise ValueError(f"unknown exchange calendar {value!r} (e.g. XNYS, XLON, XTKS)")
        return value

    @model_validator(mode="after")
    def _synthetic_range(self) -> DataSettings:
        if self.synthetic_start >= self.synthetic_end:
            raise ValueError(
                f"synthetic_start {self.synthetic_start} must be before "
                f"synthetic_end {self.synthetic_end}"
            )
        return self

    @property
    def source_kind(self) -> Literal["vendor", "tidy", "synthetic"]:
        if self.vendor_dir is not None:
            return "vendor"
        if self.tidy_path is not None:
            return "tidy"
        return "synthetic"


class WarehouseSettings(StrictModel):
    data_dir: Path = REPO_ROOT / "data"
    # The lake of Parquet partitions: a path or fsspec URL (s3://bucket/lake, gs://...);
    # empty: the folder ``lake`` of data_dir.
    lake_url: str = ""
    # The single DuckDB file of the earlier layout, read only by `migrate-warehouse`.
    duckdb_file: str = "warehouse.duckdb"

    @property
    def lake_root(self) -> str:
        return self.lake_url or str(self.data_dir / "lake")

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / self.duckdb_file


class UniverseSettings(StrictModel):
    min_history_days: int = 252  # trading days of bars before a name may enter
    min_price: float = 5.0  # USD, raw close on the date
    min_median_dollar_volume: float = 5e6  # USD, median over liquidity_window_days
    liquidity_window_days: int = 60
    top_n: int | None = None  # keep the N most liquid names per date; None = all eligible
    smoke_top_n: int = 100

    _positive_values = field_validator(
        "min_history_days", "liquidity_window_days", "top_n", "smoke_top_n"
    )(_positive)
    _non_negative_values = field_validator("min_price", "min_median_dollar_volume")(_non_negative)


class LabelSettings(StrictModel):
    horizons: tuple[int, ...] = (20, 60, 90)  # trading days

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(h <= 0 for h in value) or len(set(value)) != len(value):
            raise ValueError(f"horizons must be distinct positive trading days, got {value}")
        return value


class FoldSettings(StrictModel):
    first_test_month: str = "2011-01"
    # None: every month the data reach, so folds extend as new months of data arrive.
    last_test_month: str | None = None
    window: Literal["expanding", "rolling"] = "expanding"
    rolling_train_days: int = 1260  # trading days, used when window == "rolling"
    scoring_cadence: Literal["daily", "weekly", "monthly"] = "daily"
    smoke_folds: int = 3

    _positive_values = field_validator("rolling_train_days", "smoke_folds")(_positive)
    _months = field_validator("first_test_month", "last_test_month")(_month)

    @model_validator(mode="after")
    def _ordered(self) -> FoldSettings:
        if self.last_test_month is not None and self.first_test_month > self.last_test_month:
            raise ValueError(
                f"first_test_month {self.first_test_month} is after "
                f"last_test_month {self.last_test_month}"
            )
        return self


COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def unpinned_revision(name: str, source: str, revision: str | None, strategy: str) -> str | None:
    """Why ``source`` at ``revision`` is not a pinned checkpoint, or None when it is.

    A local directory needs no revision. Anything else is a hub repo id, and only a full commit
    sha pins its content: branch names ("main") and tags are refs that can be moved to other
    files, and offline a tag cannot be told from a branch, so neither is accepted.
    """
    if Path(source).expanduser().is_dir() or (
        revision is not None and COMMIT_SHA.fullmatch(revision)
    ):
        return None
    got = "no revision" if revision is None else f"revision {revision!r} (not a commit sha)"
    return (
        f"{name} {source!r} is not an existing local directory, so strategy {strategy!r} reads it "
        f"as a hub repo id, and it has {got}: pin the commit, e.g. "
        f"KRONOS_KRONOS__{name.upper()}_REVISION=<40-hex commit sha>, copied from "
        f"https://huggingface.co/{source}/commits/main (or printed by "
        f"`python -c \"import huggingface_hub as h; print(h.model_info('{source}').sha)\"`); "
        "branch and tag names can move, so they are refused"
    )


class KronosSettings(StrictModel):
    # Kronos runs in smoke, full and the nightly run (false or `--without-kronos`: baselines only).
    enabled: bool = True
    # Kronos forecasts the universe members up to this liquidity rank (None: all members).
    top_n: int | None = 100
    predictor: str = "NeoQuasar/Kronos-small"
    tokenizer: str = "NeoQuasar/Kronos-Tokenizer-base"
    # How each refit period gets its checkpoint: the published weights as they are
    # (``published``), compact models trained at the cut (``scratch``), or the previous accepted
    # checkpoint (else the published weights) fine-tuned at the cut (``finetune``).
    strategy: Literal["published", "scratch", "finetune"] = "scratch"
    # Hub commit (40 hex digits) of ``predictor``/``tokenizer``; required when the strategy
    # reads a hub repo id (published, finetune), ignored for local directories.
    predictor_revision: str | None = None
    tokenizer_revision: str | None = None
    pretrain_cutoff: dt.date = dt.date(2024, 6, 30)  # published weights saw data up to here
    lookback: int = 252  # bars of context per series
    max_context: int = 512
    # 8 sampled paths per series (nucleus sampling, the reference model's own defaults): the
    # 10/50/90 % quantiles, coverage and CRPS of the evaluation come from them. With the
    # Weibull quantile rule the 10-90 % interval of 8 draws covers 80 % on average; more paths
    # sharpen it at a proportional CPU cost. sample_count = 1 with top_k = 1 is greedy.
    sample_count: int = 8
    # SMOKE decodes greedily (1 path, top_k 1): 8 paths of ~1,400 series do not fit a CI
    # run on 2 CPU cores; its quantile metrics read "n/a (greedy)". FULL and nightly use 8.
    smoke_sample_count: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    # Rows (series x sample paths) per micro-batch: every micro-batch runs at exactly this many
    # rows (batch invariance). None: on CPU 50 series x their sample paths (400 rows at 8
    # paths), on cuda/mps from free device memory.
    batch_size: int | None = None
    # Capture the decode steps in CUDA graphs: None = on CUDA only (measured on an H200: a
    # scoring date 1.7-3x faster, BENCHMARKS.md); True elsewhere warns and runs eagerly.
    cuda_graphs: bool | None = None
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0
    # Checkpoints: one per refit period of this many months, fitted at the purged cut of the
    # period's first fold and used by all of its folds (1: one per fold).
    refit_months: int = 12
    # Scoring (kronos_scores): a 90-step decode per series is costly on CPU, so score weekly.
    scoring_cadence: Literal["daily", "weekly", "monthly"] = "weekly"
    # Walk-forward training (kronos_checkpoint), used unless ``predictor`` is a local directory
    # of published weights. A small budget: compact models, a few minutes per fold on CPU.
    train_max_minutes: float = 3.0  # wall clock per fold, tokenizer and predictor together
    # SMOKE's budget (FULL and the nightly run use train_max_minutes): a smoke checks the
    # chain end to end on 3 folds, where the 3-minute fit was 44 % of its wall time.
    smoke_train_max_minutes: float = 1.0
    train_tickers: int | None = 50  # most liquid universe members at the training cut
    train_history_days: int = 1260  # trading days of bars before the training cut
    train_horizon: int = 30  # bars after the context in each training window
    train_stride: int = 5  # bars between window starts of one ticker
    train_epochs: int = 3
    train_windows_per_epoch: int = 2048
    train_batch_size: int = 32
    train_device: str = "cpu"
    # Fine-tuning (strategy finetune): the predictor only; the tokenizer stays frozen, since its
    # codes are the predictor's vocabulary. Epochs, windows, batch, stride, horizon, device and
    # the wall-clock budget are the train_* fields above.
    finetune_mode: Literal["lora", "full"] = "lora"
    finetune_lr: float = 1e-4  # AdamW peak learning rate
    # Held-out windows whose loss picks the best epoch (a seeded subset): each pass over them
    # is a forward of the whole predictor, costly for Kronos-small on CPU.
    finetune_val_windows: int = 128
    lora_r: int = 8
    lora_alpha: int = 16  # the adapter update is scaled by lora_alpha / lora_r
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # every attention block's q/v Linear
    # Regression guard: a fine-tuned checkpoint replaces the previous one only if, on the
    # validation block (the last validation_sessions sessions up to the cut), its RankIC of the
    # predicted return gains accept_min_ic_gain and its MAE is not worse. 252 sessions = one
    # year: about one refit period, so neither model trained on the block's outcomes, and long
    # enough for the 90-day horizon to keep 162 forecast dates; forecasts every
    # validation_stride sessions (21: monthly) keep the decode cost at ~12 dates per ticker.
    accept_min_ic_gain: float = 0.01
    validation_sessions: int = 252
    validation_stride: int = 21

    _positive_finetune = field_validator(
        "finetune_lr", "finetune_val_windows", "lora_r", "lora_alpha", "validation_sessions",
        "validation_stride",
    )(_positive)  # fmt: skip
    _positive_values = field_validator(
        "refit_months", "top_n", "lookback", "max_context", "sample_count", "smoke_sample_count", "temperature", "top_p", "batch_size",
        "train_max_minutes", "smoke_train_max_minutes", "train_tickers", "train_history_days", "train_horizon",
        "train_stride", "train_epochs", "train_windows_per_epoch", "train_batch_size",
    )(_positive)  # fmt: skip

    @model_validator(mode="after")
    def _context(self) -> KronosSettings:
        if self.lookback > self.max_context:
            raise ValueError(f"lookback {self.lookback} exceeds max_context {self.max_context}")
        if self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.lora_targets or not all(self.lora_targets):
            raise ValueError(f"lora_targets must name modules, got {self.lora_targets}")
        return self

    @model_validator(mode="after")
    def _pinned_revisions(self) -> KronosSettings:
        if self.strategy == "scratch":
            return self
        problems = [
            problem
            for name in ("predictor", "tokenizer")
            if (problem := unpinned_revision(name, getattr(self, name),
                                             getattr(self, f"{name}_revision"), self.strategy))
        ]  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))
        return self


class LightGBMSettings(StrictModel):
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
    # LightGBM threads; 0: the CPUs of one model_fitting pool slot (the CPUs this process may
    # use divided by the pool's limit), so concurrent fits never oversubscribe the cores.
    num_threads: int = 0
    # CPUs one model_fitting slot gets when `kronos-pipeline instance-setup` sizes the pool on
    # a machine without CUDA: limit = usable CPUs // threads_per_fit (at least 1).
    threads_per_fit: int = 2
    seed: int = 17
    # Months between refits: a model is fitted at the purged cut of the first fold of each
    # period of this many months and used by every fold of the period (1: one fit per fold).
    refit_months: int = 1

    _positive_values = field_validator(
        "refit_months", "num_boost_round", "learning_rate", "num_leaves", "min_data_in_leaf",
        "feature_fraction", "bagging_fraction", "train_date_stride", "threads_per_fit",
    )(_positive)  # fmt: skip
    _non_negative_values = field_validator("num_threads")(_non_negative)


class GateSettings(StrictModel):
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
    # No verdict on noise (SPEC section 6). A figure a gate reads (a median, churn, a share,
    # a volatility regime's or a fold's figure) needs at least min_scoring_dates scoring dates,
    # else the gate is not evaluated and the report prints "n/a (N of 15 dates)". 15 is the
    # fewest sessions of any complete test month (2001-09; 19-23 otherwise), so a fold scored
    # daily always counts and a month of weekly dates (4-5) never does, and a median of 15
    # dates has a standard error of ~1.25 sd / sqrt(15) = 0.32 sd, against 0.56 sd on the
    # 4-5 dates of a weekly SMOKE regime. A "RankIC >= x" leg also needs its NW t to be a
    # number, i.e. 4 x (lag + 1) dates (metrics.min_dates_for_hac: 80 / 240 / 360 daily,
    # 16 / 48 / 72 weekly at 20 / 60 / 90 days), and NW t >= min_nw_t (one-sided).
    min_scoring_dates: int = 15
    min_nw_t: float = 2.0
    # Research plan's stop rule: a zero-shot model below this median RankIC at every horizon.
    stop_min_zero_shot_median_rankic: float = 0.01

    _positive_values = field_validator("min_scoring_dates", "min_nw_t")(_positive)


class TripwireSettings(StrictModel):
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


class FeatureSettings(StrictModel):
    # False drops the sector_rel_* columns from model inputs: sectors are one mapping taken at
    # download time and applied to all history (not point in time), so their effect can be
    # measured by switching them off.
    use_sector_relative: bool = True


class CostSettings(StrictModel):
    cost_bps: float = 10.0  # one way, per unit of turnover

    _non_negative_values = field_validator("cost_bps")(_non_negative)


class ReportSettings(StrictModel):
    output_root: Path = REPO_ROOT / "data" / "runs"
    run_name: str = "latest"
    # The reference study's frozen numbers (different data), for the comparison table only.
    reference_factor_floor: dict[int, float] = Field(
        default_factory=lambda: {20: 0.0283, 60: 0.0392, 90: 0.0169}
    )
    reference_lightgbm: dict[int, float] = Field(
        default_factory=lambda: {20: 0.1009, 60: 0.1275, 90: 0.1808}
    )


class AlertSettings(StrictModel):
    webhook_url: str | None = None
    check_sensor_interval_s: int = 30  # how often failed check evaluations are looked for
    freshness_interval_s: int = 60  # how often freshness failures are looked for

    _positive_values = field_validator("check_sensor_interval_s", "freshness_interval_s")(_positive)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook_url must be an http(s) URL, got {value!r}")
        return value


#: Named presets: settings overrides applied over the environment. Production is the default
#: (``mode`` full: every fold, the configured universe, ``kronos.sample_count`` sampled paths,
#: the full training budget). SMOKE checks the chain end to end on a 2-core CI machine in a
#: few minutes: the last ``folds.smoke_folds`` folds, the top ``universe.smoke_top_n`` names,
#: ``kronos.smoke_sample_count`` greedy path(s), the ``kronos.smoke_train_max_minutes``
#: budget. ``kronos-pipeline smoke`` applies it; a run tagged ``kronos/preset=smoke`` (the
#: Launchpad's tags) runs it too.
PRESETS: dict[str, dict[str, Any]] = {"smoke": {"mode": "smoke"}}


class Settings(StrictModel):
    # "full" is production; "smoke" is what the SMOKE preset sets (see PRESETS).
    mode: Literal["smoke", "full"] = "full"
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
    def kronos_sampling(self) -> dict[str, Any]:
        """The Kronos decode of this mode: ``sample_count``, ``temperature``, ``top_k``,
        ``top_p`` (SMOKE: ``smoke_sample_count`` paths, greedy when 1)."""
        k = self.kronos
        count = k.smoke_sample_count if self.mode == "smoke" else k.sample_count
        greedy = count == 1 and self.mode == "smoke"
        return {"sample_count": count, "temperature": k.temperature,
                "top_k": 1 if greedy else k.top_k, "top_p": 1.0 if greedy else k.top_p}  # fmt: skip

    @property
    def kronos_training(self) -> KronosSettings:
        """The Kronos settings a checkpoint is fitted with in this mode (SMOKE: the wall-clock
        budget ``smoke_train_max_minutes``)."""
        if self.mode != "smoke":
            return self.kronos
        return self.kronos.model_copy(
            update={"train_max_minutes": self.kronos.smoke_train_max_minutes}
        )

    @property
    def effective_top_n(self) -> int | None:
        """Top-N by liquidity: the smoke default unless set explicitly."""
        if self.universe.top_n is not None:
            return self.universe.top_n
        return self.universe.smoke_top_n if self.mode == "smoke" else None


def _decode(raw: str) -> Any:
    """An environment value: JSON containers, strings and null are decoded; everything else
    stays text for pydantic to parse (so ``KRONOS_REPORT__RUN_NAME=2024`` stays a name)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return value if value is None or isinstance(value, dict | list | str) else raw


def _env_sources(environ: dict[str, str]) -> dict[tuple[str, ...], str]:
    """Settings path -> the ``KRONOS_*`` variable it comes from."""
    return {
        tuple(key[len(ENV_PREFIX) :].lower().split("__")): key
        for key in environ
        if key.startswith(ENV_PREFIX) and not key.startswith(NOT_SETTINGS_PREFIXES)
    }


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``KRONOS_A__B=v`` variables into ``{"a": {"b": v}}``; see :func:`_decode`."""
    tree: dict[str, Any] = {}
    for path, key in sorted(_env_sources(environ).items()):
        if not all(path):
            raise SettingsError(f"{key}: empty level in the name (use one __ between levels)")
        node = tree
        for depth, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                clash = ENV_PREFIX + "__".join(path[: depth + 1]).upper()
                raise SettingsError(f"{key}: {clash} is set to a value, not a section")
        if isinstance(node.get(path[-1]), dict):
            raise SettingsError(f"{key}: {path[-1]} is a section; set its fields instead")
        node[path[-1]] = _decode(environ[key])
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the settings section at ``loc`` (the parent of an unknown key)."""
    model: Any = Settings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _explain(exc: ValidationError, sources: dict[tuple[str, ...], str]) -> SettingsError:
    """One line per error, naming the environment variable (or keyword) and the value."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        path = ".".join(loc) or "settings"
        origin = sources.get(loc)
        # A section-level error (a model validator) names the variables under it.
        under = sorted(v for k, v in sources.items() if k[: len(loc)] == loc) if loc else []
        where = origin or (", ".join(under) if under else f"settings {path}")
        if err["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            hint = ""
            if close:
                name = "__".join((*loc[:-1], close[0]))
                hint = f"; did you mean {ENV_PREFIX}{name.upper()} ({'.'.join((*loc[:-1], close[0]))})?"
            lines.append(f"{where}: unknown setting {path}{hint} (known: {', '.join(known)})")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = f"={err['input']!r}" if origin else ""
        lines.append(f"{where}{value}: {path}: {msg}")
    return SettingsError("invalid settings:\n  " + "\n  ".join(lines))


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, ``KRONOS_*`` environment variables and ``overrides``.

    Strict: an unknown key (a misspelled ``KRONOS_`` variable included) or an invalid value
    raises :class:`SettingsError` naming the variable, its value and what is wrong.
    Variables starting with one of ``NOT_SETTINGS_PREFIXES`` are not settings and are skipped.
    """
    environ = dict(os.environ if environ is None else environ)
    sources = _env_sources(environ)
    try:
        return Settings.model_validate(_merge(_env_overrides(environ), overrides))
    except ValidationError as exc:
        raise _explain(exc, sources) from None


def settings_fingerprint(settings: Settings) -> str:
    """A short hash of every setting's value: equal fingerprints, equal configuration."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


_active_preset: str | None = None
_active_overrides: dict[str, Any] = {}


def dotted_overrides(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"kronos.sample_count": "2"}`` as the nested overrides ``{"kronos": {"sample_count":
    "2"}}``; text values are decoded like environment values (:func:`_decode`)."""
    tree: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        parts = key.split(".")
        if not all(parts):
            raise SettingsError(f"override {key!r}: empty level in the name (use section.field)")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _decode(value) if isinstance(value, str) else value
    return tree


def use_run_config(preset: str | None, overrides: dict[str, Any] | None = None) -> None:
    """Apply a run's configuration in this process's :func:`get_settings`: the named preset
    of :data:`PRESETS` (None: production), then ``overrides`` (nested, see
    :func:`dotted_overrides`), both over the environment. Raises :class:`SettingsError` on an
    unknown preset or key (with a suggestion) or an invalid value, leaving the old ones."""
    global _active_preset, _active_overrides
    if preset is not None and preset not in PRESETS:
        raise SettingsError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    if overrides:  # validate them first (the environment alone is get_settings()' to judge)
        load_settings(**_merge(PRESETS.get(preset or "", {}), overrides))
    _active_preset, _active_overrides = preset, dict(overrides or {})
    get_settings.cache_clear()


def use_preset(name: str | None) -> None:
    """Apply the named preset of :data:`PRESETS` over the environment in this process's
    :func:`get_settings` (``None``: the environment alone, i.e. production by default)."""
    use_run_config(name, {})


def active_preset() -> str | None:
    """The preset applied in this process, if any."""
    return _active_preset


def active_run_config() -> tuple[str | None, dict[str, Any]]:
    """The preset and overrides applied in this process (:func:`use_run_config`)."""
    return _active_preset, dict(_active_overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment, then the active preset and
    the active run's overrides (:func:`use_run_config`)."""
    preset = PRESETS[_active_preset] if _active_preset else {}
    return load_settings(**_merge(preset, _active_overrides))

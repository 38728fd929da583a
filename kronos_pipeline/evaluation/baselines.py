"""Baseline scores (SPEC section 4): the factor floor, LightGBM per fold, and a random control.

Every function returns scores in the long format every model shares:
``model, horizon, date, ticker, score, fold`` (higher score = expected to outperform).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import polars as pl

from kronos_pipeline.evaluation.folds import Fold
from kronos_pipeline.settings import LightGBMSettings

if TYPE_CHECKING:
    import lightgbm as lgb

SCORE_COLUMNS = ["model", "horizon", "date", "ticker", "score", "fold"]

#: factor model name -> (feature column, sign). Reversal and low volatility score the negative.
FACTORS: dict[str, tuple[str, float]] = {
    "factor_momentum_12_1": ("mom_12_1", 1.0),
    "factor_reversal_1m": ("mom_1m", -1.0),
    "factor_low_vol": ("vol_60d", -1.0),
}
COMPOSITE_MODEL = "factor_composite"
LIGHTGBM_MODEL = "lightgbm"
RANDOM_MODEL = "random"
BASELINE_MODELS = (*FACTORS, COMPOSITE_MODEL, LIGHTGBM_MODEL, RANDOM_MODEL)
#: Tripwire controls (SPEC section 7), scored like models but never candidates.
SHUFFLED_MODEL = "lightgbm_shuffled_labels"
PLANTED_LEAK_MODEL = "lightgbm_planted_leak"
CONTROL_MODELS = (SHUFFLED_MODEL, PLANTED_LEAK_MODEL)
#: The planted-leak control's extra input: the future excess return plus noise.
PLANTED_FEATURE = "planted_future_label"
SECTOR_RELATIVE_PREFIX = "sector_rel_"

# Columns that are never model inputs even if they sit in the features table.
NON_FEATURE_COLUMNS = {
    "date", "ticker", "horizon", "fwd_return", "excess_return", "available_at", "in_universe",
    "liquidity_rank", "fold",
}  # fmt: skip


def _long(frame: pd.DataFrame, model: str, horizons: Sequence[int], fold_id: str) -> pd.DataFrame:
    """Repeat ``date, ticker, score`` for each horizon with the model and fold columns."""
    parts = []
    for h in horizons:
        p = frame[["date", "ticker", "score"]].copy()
        p["model"] = model
        p["horizon"] = int(h)
        p["fold"] = fold_id
        parts.append(p)
    if not parts:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[SCORE_COLUMNS]


def factor_scores(features: pd.DataFrame, horizons: Sequence[int], fold_id: str) -> pd.DataFrame:
    """The factor floor on the given feature rows (already restricted to the scoring dates).

    - ``factor_momentum_12_1``: ``mom_12_1`` (12-1 month return, fraction);
    - ``factor_reversal_1m``: ``-mom_1m`` (minus the 21-trading-day return);
    - ``factor_low_vol``: ``-vol_60d`` (minus annualised 60-day volatility);
    - ``factor_composite``: equal-weight mean of the three components' per-date percentile ranks
      (``rank / n`` in (0, 1]) over the components a name has.

    The same score is used for every horizon. Rows with a missing input get no score.
    """
    feats = features.copy()
    feats["date"] = pd.to_datetime(feats["date"])
    parts = []
    pct = []
    for model, (column, sign) in FACTORS.items():
        if column not in feats.columns:
            raise KeyError(
                f"factor_scores: feature column {column!r} missing (needed by {model}); "
                "materialize the features asset with the factor-floor inputs."
            )
        f = feats[["date", "ticker"]].copy()
        f["score"] = sign * feats[column].astype(float)
        pct.append(f.groupby("date")["score"].rank(pct=True, method="average"))
        parts.append(_long(f.dropna(subset=["score"]), model, horizons, fold_id))
    comp = feats[["date", "ticker"]].copy()
    comp["score"] = pd.concat(pct, axis=1).mean(axis=1, skipna=True)
    parts.append(_long(comp.dropna(subset=["score"]), COMPOSITE_MODEL, horizons, fold_id))
    return pd.concat(parts, ignore_index=True)


SCORE_SCHEMA = {
    "model": pl.String, "horizon": pl.Int64, "date": pl.Datetime("us"), "ticker": pl.String,
    "score": pl.Float64, "fold": pl.String,
}  # fmt: skip


def score_table(scores: pd.DataFrame) -> pl.DataFrame:
    """Long scores as the warehouse stores them (fixed dtypes, also when empty)."""
    if scores.empty:
        return pl.DataFrame(schema=SCORE_SCHEMA)
    frame = scores[SCORE_COLUMNS].assign(date=pd.to_datetime(scores["date"]))
    return pl.from_pandas(frame).cast(SCORE_SCHEMA)


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from the given parts that is identical across processes and runs."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def random_scores(
    keys: pd.DataFrame, horizons: Sequence[int], fold_id: str, seed: int
) -> pd.DataFrame:
    """Negative control: i.i.d. standard normal scores for the ``date, ticker`` rows of ``keys``.

    Seeded by ``(seed, fold_id, horizon, date)`` so a date's scores depend neither on which
    other folds nor on which other dates were scored (re-scoring one date gives the same
    numbers). Rows are sorted by ticker within a date before drawing.
    """
    base = keys[["date", "ticker"]].drop_duplicates().copy()
    base["date"] = pd.to_datetime(base["date"])
    base = base.sort_values(["date", "ticker"], ignore_index=True)
    parts = []
    for h in horizons:
        p = base.copy()
        p["score"] = np.nan
        for day, idx in p.groupby("date").groups.items():
            rng = np.random.default_rng(stable_seed(seed, fold_id, h, pd.Timestamp(day).date()))
            p.loc[idx, "score"] = rng.standard_normal(len(idx))
        parts.append(_long(p, RANDOM_MODEL, [h], fold_id))
    if not parts:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat(parts, ignore_index=True)


@dataclass
class LightGBMFit:
    """One fitted LightGBM model (fold x horizon) and what it was trained on.

    Attributes:
        scores: long scores for the fold's scoring dates.
        train_rows: ``date, ticker, available_at, role`` of every row the booster saw
            (``role`` = ``"fit"`` or ``"valid"``).
        max_available_at: latest label maturity among ``train_rows``; always before the cut.
        n_fit_rows, n_valid_rows: row counts of the LightGBM datasets actually constructed.
        best_iteration: boosting round chosen by early stopping.
        feature_names: model inputs, in order.
    """

    fold_id: str
    horizon: int
    scores: pd.DataFrame
    train_rows: pd.DataFrame
    max_available_at: pd.Timestamp
    n_fit_rows: int
    n_valid_rows: int
    best_iteration: int
    feature_names: list[str] = field(default_factory=list)
    model: str = LIGHTGBM_MODEL
    booster: lgb.Booster | None = field(default=None, repr=False)

    def summary(self) -> dict[str, object]:
        """JSON-friendly summary for asset metadata."""
        return {
            "fold": self.fold_id,
            "horizon": self.horizon,
            "n_fit_rows": self.n_fit_rows,
            "n_valid_rows": self.n_valid_rows,
            "best_iteration": self.best_iteration,
            "max_available_at": str(self.max_available_at.date()),
        }


def feature_columns(features: pd.DataFrame, use_sector_relative: bool = True) -> list[str]:
    """Numeric model inputs of a features table (identifiers and label columns excluded;
    ``sector_rel_*`` too unless ``use_sector_relative``)."""
    return [
        c
        for c in features.columns
        if c not in NON_FEATURE_COLUMNS
        and (use_sector_relative or not c.startswith(SECTOR_RELATIVE_PREFIX))
        and (pd.api.types.is_numeric_dtype(features[c]) or pd.api.types.is_bool_dtype(features[c]))
    ]


def permute_labels(labels: pd.DataFrame, seed: int, fold_id: str) -> pd.DataFrame:
    """The shuffled-label control's training labels: per horizon, ``excess_return`` permuted
    across all (date, ticker) rows given (the pipeline gives the fold's training pool: universe
    rows of its training window), seeded by ``(seed, fold_id, horizon)``. Everything else
    (dates, tickers, ``available_at``) is kept, so the purge is unchanged."""
    # Sorted first: the warehouse returns rows in no fixed order, and the draw must not depend on it.
    out = labels.sort_values(["horizon", "date", "ticker"], ignore_index=True)
    for h, idx in out.groupby("horizon").groups.items():
        rng = np.random.default_rng(stable_seed(seed, "shuffled_labels", fold_id, h))
        out.loc[idx, "excess_return"] = rng.permutation(out.loc[idx, "excess_return"].to_numpy())
    return out


def plant_leak(
    features: pd.DataFrame, future_labels: pd.DataFrame, horizon: int, noise: float, seed: int
) -> pd.DataFrame:
    """The planted-leak control's inputs: ``features`` plus :data:`PLANTED_FEATURE`, the row's
    ``horizon`` excess return (from ``future_labels``, test month included) plus Gaussian noise
    of ``noise`` cross-sectional standard deviations of that date. NaN where no label exists."""
    lab = future_labels.loc[
        future_labels["horizon"] == horizon, ["date", "ticker", "excess_return"]
    ]
    lab = lab.assign(date=pd.to_datetime(lab["date"]))
    out = features.assign(date=pd.to_datetime(features["date"])).merge(
        lab, on=["date", "ticker"], how="left"
    )
    # Sorted first, drawn per date: the noise of a row depends neither on the order rows
    # arrived in nor on which other dates are in the frame (training or one scored date).
    out = out.sort_values(["date", "ticker"], ignore_index=True)
    sd = out.groupby("date")["excess_return"].transform("std")
    draws = np.empty(len(out))
    for day, idx in out.groupby("date").indices.items():
        rng = np.random.default_rng(
            stable_seed(seed, "planted_leak", horizon, pd.Timestamp(day).date())
        )
        draws[idx] = rng.standard_normal(len(idx))
    out[PLANTED_FEATURE] = out["excess_return"] + noise * sd * draws
    return out.drop(columns="excess_return")


def lightgbm_training_rows(
    features: pd.DataFrame, labels: pd.DataFrame, fold: Fold, horizon: int
) -> pd.DataFrame:
    """Feature rows joined to their ``horizon`` label, restricted to what is knowable at the cut.

    A row is kept when ``fold.train_start <= date <= fold.train_end[horizon]`` and its label
    matured strictly before the cut (``available_at < fold.test_start``); both hold by
    construction of the purge, and the second also covers labels of delisted names.
    """
    lab = labels.loc[
        labels["horizon"] == horizon, ["date", "ticker", "excess_return", "available_at"]
    ]
    lab = lab.assign(
        date=pd.to_datetime(lab["date"]), available_at=pd.to_datetime(lab["available_at"])
    )
    feats = features.assign(date=pd.to_datetime(features["date"]))
    feats = feats[(feats["date"] >= fold.train_start) & (feats["date"] <= fold.train_end[horizon])]
    rows = feats.merge(lab, on=["date", "ticker"], how="inner")
    rows = rows[(rows["available_at"] < fold.test_start) & rows["excess_return"].notna()]
    return rows.sort_values(["date", "ticker"], ignore_index=True)


def _rank_target(rows: pd.DataFrame) -> np.ndarray:
    """Training target: per-date percentile rank of ``excess_return`` minus 0.5 (in (-0.5, 0.5]).

    A rank target matches the RankIC objective and is robust to return outliers.
    """
    return (rows.groupby("date")["excess_return"].rank(pct=True, method="average") - 0.5).to_numpy()


def train_lightgbm(
    features: pd.DataFrame,
    labels: pd.DataFrame,
    fold: Fold,
    horizon: int,
    score_features: pd.DataFrame,
    settings: LightGBMSettings,
    num_threads: int = 0,
    model: str = LIGHTGBM_MODEL,
    use_sector_relative: bool = True,
) -> LightGBMFit:
    """Train LightGBM for one fold and horizon, and score ``score_features``.

    Training rows come from :func:`lightgbm_training_rows` (label matured before the cut). The last
    ``settings.validation_fraction`` of the training dates form the early-stopping validation slice;
    fit rows additionally need ``available_at`` before the first validation date, so no fit label
    overlaps a validation label. Seeded and deterministic (``settings.seed``).

    Args:
        features: PIT feature rows (``date, ticker`` and numeric columns), any dates.
        labels: ``labels_forward`` rows.
        fold: the fold; ``fold.train_end[horizon]`` must exist.
        horizon: label horizon, trading days.
        score_features: feature rows of the scoring dates (in the test month).
        settings: ``LightGBMSettings``.
        num_threads: LightGBM threads (0 = its default).
        model: name of the scores (a tripwire control trains under its own name).
        use_sector_relative: keep the ``sector_rel_*`` inputs.

    Raises:
        ValueError: fewer than two training dates are available.
    """
    cols = feature_columns(features, use_sector_relative)
    rows = lightgbm_training_rows(features, labels, fold, horizon)
    dates = np.sort(rows["date"].unique())
    if len(dates) < 2:
        raise ValueError(
            f"train_lightgbm: fold {fold.fold_id} horizon {horizon} has {len(dates)} training "
            f"date(s) with matured labels before {fold.test_start.date()}; start the fold range "
            "later or load more history."
        )
    if settings.train_date_stride > 1:
        # Labels of neighbouring days overlap almost entirely (h >= 20 trading days), so every
        # k-th date, counted back from the newest, keeps nearly all the information.
        dates = np.sort(dates[::-1][:: settings.train_date_stride])
        rows = rows[rows["date"].isin(dates)]
    n_valid_dates = max(1, int(round(len(dates) * settings.validation_fraction)))
    valid_start = pd.Timestamp(dates[len(dates) - n_valid_dates])
    valid = rows[rows["date"] >= valid_start]
    fit = rows[(rows["date"] < valid_start) & (rows["available_at"] < valid_start)]
    if fit.empty:
        fit, valid = rows, rows.iloc[0:0]
    params = {
        "objective": "regression",
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "feature_fraction": settings.feature_fraction,
        "bagging_fraction": settings.bagging_fraction,
        "bagging_freq": settings.bagging_freq,
        "seed": settings.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": num_threads,
        "verbosity": -1,
    }
    import lightgbm as lgb  # imported on use: the code location loads faster

    fit_set = lgb.Dataset(
        fit[cols].to_numpy(dtype=float), label=_rank_target(fit), feature_name=cols,
        free_raw_data=False,
    )  # fmt: skip
    valid_sets, callbacks = [], []
    if not valid.empty:
        valid_set = fit_set.create_valid(
            valid[cols].to_numpy(dtype=float), label=_rank_target(valid)
        )
        valid_sets = [valid_set]
        callbacks = [lgb.early_stopping(settings.early_stopping_rounds, verbose=False)]
    booster = lgb.train(
        params, fit_set, num_boost_round=settings.num_boost_round, valid_sets=valid_sets,
        callbacks=callbacks,
    )  # fmt: skip
    n_fit_rows = fit_set.num_data()
    n_valid_rows = valid_sets[0].num_data() if valid_sets else 0
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()

    # The fitted model as it is stored: exactly ``best`` rounds, so a reloaded model predicts
    # what this one does.
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    scored = predict_lightgbm(booster, cols, score_features, fold)
    used = pd.concat([fit.assign(role="fit"), valid.assign(role="valid")], ignore_index=True)[
        ["date", "ticker", "available_at", "role"]
    ]
    return LightGBMFit(
        fold_id=fold.fold_id,
        horizon=int(horizon),
        scores=_long(scored, model, [horizon], fold.fold_id),
        train_rows=used,
        max_available_at=pd.Timestamp(used["available_at"].max()),
        n_fit_rows=int(n_fit_rows),
        n_valid_rows=int(n_valid_rows),
        best_iteration=int(best),
        feature_names=cols,
        model=model,
        booster=booster,
    )


def predict_lightgbm(
    booster: lgb.Booster, columns: Sequence[str], features: pd.DataFrame, fold: Fold
) -> pd.DataFrame:
    """``date, ticker, score`` of a fitted model on the feature rows of ``fold``'s test month
    (rows outside it are never scored)."""
    sf = features.assign(date=pd.to_datetime(features["date"]))
    sf = sf[(sf["date"] >= fold.test_start) & (sf["date"] <= fold.test_end)]
    scored = sf[["date", "ticker"]].copy()
    values = sf[list(columns)].to_numpy(dtype=float)
    scored["score"] = booster.predict(values) if len(sf) else np.array([], dtype=float)
    return scored


def fit_fold_models(
    features: pd.DataFrame,
    labels: pd.DataFrame,
    fold: Fold,
    horizons: Sequence[int],
    lightgbm_settings: LightGBMSettings,
    include_lightgbm: bool = True,
    num_threads: int = 0,
    use_sector_relative: bool = True,
    controls: ControlPlan | None = None,
) -> list[LightGBMFit]:
    """What one fold fits (a fold-level model): LightGBM per horizon and the tripwire controls
    ``controls`` asks for, each trained on labels matured before ``fold``'s cut.

    ``features`` must cover the training history; ``labels`` hold only labels matured before
    the cut (the planted leak reads ``controls.future_labels`` on purpose)."""
    feats = features.assign(date=pd.to_datetime(features["date"]))
    fits: list[LightGBMFit] = []

    def fit(feats_: pd.DataFrame, labels_: pd.DataFrame, h: int, model: str) -> None:
        fits.append(train_lightgbm(
            feats_, labels_, fold, int(h), feats_.iloc[0:0], lightgbm_settings, num_threads, model,
            use_sector_relative,
        ))  # fmt: skip

    if include_lightgbm:
        for h in horizons:
            fit(feats, labels, h, LIGHTGBM_MODEL)
    if controls is not None and controls.shuffled_labels:
        shuffled = permute_labels(labels, controls.seed, fold.fold_id)
        for h in horizons:
            fit(feats, shuffled, h, SHUFFLED_MODEL)
    if controls is not None and controls.future_labels is not None:
        for h in horizons:
            leaky = plant_leak(feats, controls.future_labels, h, controls.noise, controls.seed)
            fit(leaky, labels, h, PLANTED_LEAK_MODEL)
    return fits


def score_dates(
    features: pd.DataFrame,
    fold: Fold,
    horizons: Sequence[int],
    scoring_dates: pd.DatetimeIndex,
    models: Sequence[LightGBMFit],
    seed: int,
    controls: ControlPlan | None = None,
) -> pd.DataFrame:
    """Every baseline's scores on ``scoring_dates`` of ``fold`` (a date-level step): factor
    floor, random, and the fitted ``models`` (LightGBM and controls, e.g. read back from their
    stored files). A date's scores depend on that date's features and the models alone."""
    feats = features.assign(date=pd.to_datetime(features["date"]))
    on_dates = feats[feats["date"].isin(pd.DatetimeIndex(scoring_dates))]
    parts = [
        factor_scores(on_dates, horizons, fold.fold_id),
        random_scores(on_dates, horizons, fold.fold_id, seed),
    ]
    for fitted in models:
        rows = on_dates
        if fitted.model == PLANTED_LEAK_MODEL:
            if controls is None or controls.future_labels is None:
                raise ValueError(f"{PLANTED_LEAK_MODEL} needs the planted labels to score")
            rows = plant_leak(
                on_dates, controls.future_labels, fitted.horizon, controls.noise, controls.seed
            )
            # The leak is planted only where the future label exists at scoring time: a date
            # scored before its label matured (the newest ones, each night) gets no planted
            # score, so the tripwire never judges a control that carried no leak.
            if PLANTED_FEATURE in rows:
                rows = rows[rows[PLANTED_FEATURE].notna()]
        assert fitted.booster is not None, f"{fitted.model} h{fitted.horizon} has no booster"
        scored = predict_lightgbm(fitted.booster, fitted.feature_names, rows, fold)
        parts.append(_long(scored, fitted.model, [fitted.horizon], fold.fold_id))
    scores = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    return scores.sort_values(["model", "horizon", "date", "ticker"], ignore_index=True)


def baseline_scores_for_fold(
    features: pd.DataFrame,
    labels: pd.DataFrame,
    fold: Fold,
    horizons: Sequence[int],
    scoring_dates: pd.DatetimeIndex,
    lightgbm_settings: LightGBMSettings,
    include_lightgbm: bool = True,
    num_threads: int = 0,
    use_sector_relative: bool = True,
    controls: ControlPlan | None = None,
) -> tuple[pd.DataFrame, list[LightGBMFit]]:
    """All baselines for one fold, fitted then scored: :func:`fit_fold_models` followed by
    :func:`score_dates` (what the fold-level and date-level assets do in two steps).

    ``features`` must cover the training history and the scoring dates; ``labels`` hold only
    labels matured before the cut. The random control is seeded with ``lightgbm_settings.seed``.
    Returns the long scores and the LightGBM fits (with the rows each one trained on).
    """
    fits = fit_fold_models(
        features, labels, fold, horizons, lightgbm_settings, include_lightgbm, num_threads,
        use_sector_relative, controls,
    )  # fmt: skip
    scores = score_dates(
        features, fold, horizons, scoring_dates, fits, lightgbm_settings.seed, controls
    )
    return scores, fits


@dataclass
class ControlPlan:
    """Which LightGBM tripwire controls one fold trains (SPEC section 7).

    Attributes:
        shuffled_labels: retrain on the fold's training labels permuted across (date, ticker).
        future_labels: labels of every date the planted leak needs, the test month included
            (None: no planted-leak control on this fold).
        noise: planted-leak noise, in cross-sectional standard deviations.
        seed: seed of the permutation and the noise.
    """

    shuffled_labels: bool = False
    future_labels: pd.DataFrame | None = None
    noise: float = 0.1
    seed: int = 0

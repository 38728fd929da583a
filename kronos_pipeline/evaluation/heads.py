"""Heads on Kronos embeddings: per-horizon regressions from the predictor's embedding of a
series (optionally fused with the PIT features) to its excess return.

Plain Python, no Dagster. Training rows follow the LightGBM baseline's purge exactly
(:func:`kronos_pipeline.evaluation.baselines.lightgbm_training_rows`): a row trains only if
it is dated before the cut and its label matured strictly before the cut
(``available_at < cut_date``). The target is the baseline's too: the per-date percentile rank
of the excess return minus 0.5.

Per horizon two learners are fitted on a time-ordered split (the last
``validation_fraction`` of the training dates validate; fit rows also need their label
matured before the first validation date):

* ridge regression, closed form on standardised inputs; its penalty is picked from
  :data:`RIDGE_PENALTIES` by validation median RankIC, then it is refitted on every training
  row;
* LightGBM with early stopping on the validation dates (settings of the baseline).

LightGBM is kept only if its validation median RankIC is higher than the ridge's.
Models: ``kronos_head`` (embeddings only) and, when features are given, also
``kronos_head_fused`` (embeddings concatenated with the feature columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation.baselines import (
    SCORE_COLUMNS,
    _rank_target,
    feature_columns,
    lightgbm_training_rows,
)
from kronos_pipeline.evaluation.folds import Fold
from kronos_pipeline.evaluation.metrics import rank_ic
from kronos_pipeline.settings import LightGBMSettings

if TYPE_CHECKING:
    import lightgbm as lgb

HEAD_MODEL = "kronos_head"
FUSED_MODEL = "kronos_head_fused"
EMBEDDING_PREFIX = "emb_"
#: Ridge penalties tried, per unit of standardised input variance: the fit solves
#: ``(X'X / n + penalty * I) w = X'y / n``.
RIDGE_PENALTIES: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _pandas(frame: Any) -> pd.DataFrame:
    return frame if isinstance(frame, pd.DataFrame) else frame.to_pandas()


def embedding_frame(embeddings: Any) -> pd.DataFrame:
    """``date, ticker, emb_0 .. emb_{d-1}`` from ``date, ticker, embedding`` rows (the
    embedding a list or array of floats, all of one length); one row per (date, ticker)
    (forecast tables repeat a series' embedding on each horizon's row)."""
    frame = _pandas(embeddings)
    frame = frame.assign(date=pd.to_datetime(frame["date"])).drop_duplicates(
        ["date", "ticker"], ignore_index=True
    )
    vectors = [np.asarray(v, dtype=np.float64) for v in frame["embedding"]]
    widths = {v.shape for v in vectors}
    if len(widths) > 1:
        raise ValueError(f"embeddings have different shapes {sorted(widths)}")
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0))
    columns = [f"{EMBEDDING_PREFIX}{i}" for i in range(matrix.shape[1])]
    return pd.concat(
        [frame[["date", "ticker"]], pd.DataFrame(matrix, columns=columns, index=frame.index)],
        axis=1,
    )


def _inputs(embeddings: Any, features: Any | None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Model inputs per (date, ticker): embedding columns, then (left-joined) feature columns."""
    emb = embedding_frame(embeddings)
    emb_cols = [c for c in emb.columns if c.startswith(EMBEDDING_PREFIX)]
    if features is None:
        return emb, emb_cols, []
    feats = _pandas(features)
    feat_cols = [c for c in feature_columns(feats) if not c.startswith(EMBEDDING_PREFIX)]
    feats = feats.assign(date=pd.to_datetime(feats["date"]))[["date", "ticker", *feat_cols]]
    return emb.merge(feats, on=["date", "ticker"], how="left"), emb_cols, feat_cols


# --------------------------------------------------------------------------------------
# Learners
# --------------------------------------------------------------------------------------


@dataclass
class RidgeHead:
    """``score = ((x - mean) / scale) @ coef + intercept``; missing inputs count as the mean."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    penalty: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _standardise(x, self.mean, self.scale) @ self.coef + self.intercept


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - mean) / scale
    return np.where(np.isfinite(z), z, 0.0)


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> RidgeHead:
    """Closed-form ridge: ``w = (Z'Z / n + penalty * I)^-1 Z'(y - mean(y)) / n`` on inputs
    ``Z`` standardised with the training mean and standard deviation (constant columns get
    scale 1); the intercept is ``mean(y)``."""
    x = np.asarray(x, np.float64)
    mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)
    scale = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    z = _standardise(x, mean, scale)
    n = max(len(z), 1)
    intercept = float(np.mean(y)) if len(y) else 0.0
    gram = z.T @ z / n + penalty * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, z.T @ (np.asarray(y, np.float64) - intercept) / n)
    return RidgeHead(mean, scale, coef, intercept, float(penalty))


def median_rank_ic(rows: pd.DataFrame, score: np.ndarray) -> float:
    """Median over dates of the Spearman correlation between ``score`` and ``excess_return``
    of ``rows`` (NaN when no date has 3 names with distinct scores)."""
    frame = rows[["date", "excess_return"]].assign(score=score)
    ics = [
        rank_ic(g["score"].to_numpy(), g["excess_return"].to_numpy())
        for _, g in frame.groupby("date")
    ]
    ics = [ic for ic in ics if np.isfinite(ic)]
    return float(np.median(ics)) if ics else float("nan")


@dataclass
class HeadFit:
    """One head (model x horizon): the kept learner and what it trained on.

    Attributes:
        learner: ``"ridge"`` or ``"lightgbm"``.
        columns: input columns, in order.
        valid_rank_ic: validation median RankIC of each learner (the choice).
        train_rows: ``date, ticker, available_at`` of every row a learner saw.
        max_available_at: latest label maturity among them; always before the cut.
    """

    model: str
    horizon: int
    learner: str
    columns: list[str]
    ridge: RidgeHead
    booster: lgb.Booster | None
    best_iteration: int
    valid_rank_ic: dict[str, float]
    n_fit_rows: int
    n_valid_rows: int
    train_rows: pd.DataFrame = field(repr=False)
    max_available_at: pd.Timestamp | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.learner == "lightgbm" and self.booster is not None:
            return self.booster.predict(x, num_iteration=self.best_iteration)
        return self.ridge.predict(x)

    def summary(self) -> dict[str, object]:
        """JSON-ready summary for asset metadata."""
        return {
            "model": self.model,
            "horizon": self.horizon,
            "learner": self.learner,
            "ridge_penalty": self.ridge.penalty,
            "valid_rank_ic": self.valid_rank_ic,
            "n_fit_rows": self.n_fit_rows,
            "n_valid_rows": self.n_valid_rows,
            "inputs": len(self.columns),
            "max_available_at": None
            if self.max_available_at is None
            else str(self.max_available_at.date()),
        }


@dataclass
class FittedHeads:
    """Every head fitted at one cut: ``heads[(model, horizon)]``."""

    cut_date: pd.Timestamp
    heads: dict[tuple[str, int], HeadFit]

    @property
    def models(self) -> list[str]:
        return sorted({model for model, _ in self.heads})

    def summary(self) -> list[dict[str, object]]:
        return [self.heads[k].summary() for k in sorted(self.heads)]


def _cut_fold(cut: pd.Timestamp, first_date: pd.Timestamp, horizons: Sequence[int]) -> Fold:
    """A fold whose purge is exactly "dated and matured before ``cut``", for
    :func:`lightgbm_training_rows` (which also bounds dates by ``train_end``)."""
    before = cut - pd.Timedelta(days=1)
    return Fold(
        fold_id=cut.strftime("%Y-%m"),
        test_start=cut,
        test_end=cut,
        train_start=first_date,
        train_end={int(h): before for h in horizons},
    )


def _fit_head(
    model: str,
    horizon: int,
    rows: pd.DataFrame,
    columns: list[str],
    settings: LightGBMSettings,
    validation_fraction: float,
    num_threads: int,
) -> HeadFit:
    dates = np.sort(rows["date"].unique())
    if len(dates) < 2:
        raise ValueError(
            f"fit_heads: {model} horizon {horizon} has {len(dates)} training date(s) with "
            "embeddings and labels matured before the cut; score earlier dates with Kronos "
            "(embeddings) or move the cut later."
        )
    n_valid = max(1, int(round(len(dates) * validation_fraction)))
    valid_start = pd.Timestamp(dates[len(dates) - n_valid])
    valid = rows[rows["date"] >= valid_start]
    fit = rows[(rows["date"] < valid_start) & (rows["available_at"] < valid_start)]
    if fit.empty:
        raise ValueError(
            f"fit_heads: {model} horizon {horizon}: no training row's label matures before the "
            f"validation dates start ({valid_start.date()}); more history is needed."
        )
    x_fit, y_fit = fit[columns].to_numpy(np.float64), _rank_target(fit)
    x_valid = valid[columns].to_numpy(np.float64)

    ridge_ic = {
        p: median_rank_ic(valid, fit_ridge(x_fit, y_fit, p).predict(x_valid))
        for p in RIDGE_PENALTIES
    }
    finite = {p: ic for p, ic in ridge_ic.items() if np.isfinite(ic)}
    penalty = max(finite, key=lambda p: (finite[p], p)) if finite else RIDGE_PENALTIES[-1]

    params = {
        "objective": "regression", "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves, "min_data_in_leaf": settings.min_data_in_leaf,
        "feature_fraction": settings.feature_fraction,
        "bagging_fraction": settings.bagging_fraction, "bagging_freq": settings.bagging_freq,
        "seed": settings.seed, "deterministic": True, "force_col_wise": True,
        "num_threads": num_threads, "verbosity": -1,
    }  # fmt: skip
    import lightgbm as lgb  # imported on use: the code location loads faster

    fit_set = lgb.Dataset(x_fit, label=y_fit, feature_name=columns, free_raw_data=False)
    valid_set = fit_set.create_valid(x_valid, label=_rank_target(valid))
    booster = lgb.train(
        params, fit_set, num_boost_round=settings.num_boost_round, valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
    )  # fmt: skip
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    lgb_ic = median_rank_ic(valid, booster.predict(x_valid, num_iteration=best))
    valid_ic = {"ridge": ridge_ic[penalty], "lightgbm": lgb_ic}
    use_lgb = bool(
        np.isfinite(lgb_ic) and (not np.isfinite(valid_ic["ridge"]) or lgb_ic > valid_ic["ridge"])
    )

    used = pd.concat([fit, valid], ignore_index=True) if use_lgb else rows
    ridge = fit_ridge(rows[columns].to_numpy(np.float64), _rank_target(rows), penalty)
    return HeadFit(
        model=model,
        horizon=int(horizon),
        learner="lightgbm" if use_lgb else "ridge",
        columns=list(columns),
        ridge=ridge,
        booster=booster if use_lgb else None,
        best_iteration=int(best),
        valid_rank_ic=valid_ic,
        n_fit_rows=len(fit) if use_lgb else len(rows),
        n_valid_rows=len(valid),
        train_rows=used[["date", "ticker", "available_at"]].reset_index(drop=True),
        max_available_at=pd.Timestamp(used["available_at"].max()),
    )


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def fit_heads(
    embeddings: Any,
    labels: Any,
    cut_date: Any,
    horizons: Sequence[int],
    features: Any | None = None,
    *,
    lightgbm: LightGBMSettings | None = None,
    validation_fraction: float | None = None,
    num_threads: int = 0,
) -> FittedHeads:
    """Fit the heads of every horizon at ``cut_date``.

    Args:
        embeddings: ``date, ticker, embedding`` (list/array of floats per row), e.g. the
            ``embedding`` column of Kronos forecasts; rows of any dates (only those before the
            cut with a matured label train).
        labels: ``labels_forward`` rows ``date, ticker, horizon, excess_return, available_at``.
        cut_date: the fold's cut (first test day): a training label must have
            ``available_at < cut_date``.
        horizons: label horizons, trading days.
        features: PIT feature rows ``date, ticker, <numeric columns>``; given, the fused heads
            (``kronos_head_fused``) are fitted too.
        lightgbm: LightGBM settings (default ``LightGBMSettings()``, the baseline's).
        validation_fraction: share of the last training dates that validates (default the
            LightGBM settings' ``validation_fraction``, 0.2).
        num_threads: LightGBM threads (0: its default).

    Raises:
        ValueError: a head has fewer than two training dates.
    """
    settings = lightgbm or LightGBMSettings()
    fraction = settings.validation_fraction if validation_fraction is None else validation_fraction
    cut = pd.Timestamp(cut_date).normalize()
    inputs, emb_cols, feat_cols = _inputs(embeddings, features)
    labels = _pandas(labels)
    variants = [(HEAD_MODEL, emb_cols)]
    if features is not None:
        variants.append((FUSED_MODEL, emb_cols + feat_cols))
    first = inputs["date"].min() if len(inputs) else cut
    fold = _cut_fold(cut, first, horizons)
    heads: dict[tuple[str, int], HeadFit] = {}
    for h in horizons:
        rows = lightgbm_training_rows(inputs, labels, fold, int(h))
        for model, columns in variants:
            heads[(model, int(h))] = _fit_head(
                model, int(h), rows, columns, settings, fraction, num_threads
            )
    return FittedHeads(cut_date=cut, heads=heads)


def predict_heads(
    fitted: FittedHeads,
    embeddings: Any,
    features: Any | None = None,
    fold_id: str | None = None,
) -> pd.DataFrame:
    """Scores of every fitted head on the ``embeddings`` rows (one per date and ticker), in the
    long layout ``model, horizon, date, ticker, score, fold``. ``features`` is required when
    fused heads were fitted; ``fold_id`` defaults to the cut's month (``YYYY-MM``)."""
    if FUSED_MODEL in fitted.models and features is None:
        raise ValueError("fused heads were fitted: pass the same feature table to predict_heads")
    inputs, _, _ = _inputs(embeddings, features)
    fold = fold_id if fold_id is not None else fitted.cut_date.strftime("%Y-%m")
    parts = []
    for (model, h), head in sorted(fitted.heads.items()):
        missing = [c for c in head.columns if c not in inputs.columns]
        if missing:
            raise ValueError(f"{model} horizon {h}: inputs lack the columns {missing[:5]}")
        part = inputs[["date", "ticker"]].copy()
        part["score"] = head.predict(inputs[head.columns].to_numpy(np.float64))
        part["model"], part["horizon"], part["fold"] = model, int(h), fold
        parts.append(part[SCORE_COLUMNS])
    if not parts:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["model", "horizon", "date", "ticker"], ignore_index=True)


#: Sessions between sampled training dates (21: monthly), counted back from the last date
#: whose shortest-horizon label can mature before the cut; a one-step decode per series
#: keeps ~60 dates x top_n series per fold cheap next to the forecasts' decodes.
HEADS_DATE_STRIDE = 21


def training_dates(
    sessions: Sequence[Any],
    fold: Fold,
    horizons: Sequence[int],
    history_days: int,
    stride: int = HEADS_DATE_STRIDE,
) -> list[pd.Timestamp]:
    """Every ``stride``-th session (trading days) among the last ``history_days`` sessions
    before the cut and not before ``fold.train_start``, counted back from the last one whose
    shortest-horizon label can mature before the cut (``fold.train_end[min(horizons)]``);
    later dates have no label usable at the cut."""
    days = pd.DatetimeIndex(pd.to_datetime(list(sessions))).normalize().unique().sort_values()
    before = days[days < fold.test_start][-history_days:]
    usable = before[(before >= fold.train_start) & (before <= fold.train_end[min(horizons)])]
    return list(usable[::-1][::stride][::-1])

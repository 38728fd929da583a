"""What makes a table of Kronos forecasts, or the scores derived from them, wrong: the
in-memory checks ``kronos_forecasts`` and ``kronos_scores`` run before anything is written.
Plain polars in, ``passed`` / ``description`` / ``metadata`` out."""

import numpy as np
import polars as pl

FORECAST_KEYS = ["model", "horizon", "date", "ticker"]


def forecast_problems(table: pl.DataFrame, sample_count: int) -> dict:
    """``passed``, ``description`` and ``metadata`` of ``forecasts_valid``: one row per
    (model, horizon, date, ticker); mean, quantiles, every sample path and the embedding
    finite; q10 <= q50 <= q90; exactly ``sample_count`` paths per row."""
    dupes = table.height - table.select(FORECAST_KEYS).unique().height  # rows beyond the first
    values = table.select(
        "pred_return_mean", "pred_return_q10", "pred_return_q50", "pred_return_q90"
    ).to_numpy()
    non_finite = (~np.isfinite(values)).any(axis=1) if table.height else np.zeros(0, bool)
    for column in ("samples", "embedding"):  # lists: a row is bad if any element is
        bad_list = table.select(
            pl.col(column).list.eval(~pl.element().is_finite()).list.any().fill_null(True)
        ).to_series()
        non_finite = non_finite | bad_list.to_numpy()
    disorder = table.filter(
        (pl.col("pred_return_q10") > pl.col("pred_return_q50"))
        | (pl.col("pred_return_q50") > pl.col("pred_return_q90"))
    ).height
    paths = table.filter(pl.col("samples").list.len() != sample_count).height
    bad = int(non_finite.sum())
    return {
        "passed": dupes == bad == disorder == paths == 0,
        "description": f"{table.height} rows, {dupes} duplicate keys, {bad} with a non-finite "
        f"value, {disorder} with quantiles out of order, {paths} without {sample_count} paths",
        "metadata": {"rows": table.height, "duplicates": dupes, "non_finite": bad,
                     "quantiles_out_of_order": disorder, "paths_missing": paths},
    }  # fmt: skip


def score_problems(forecasts: pl.DataFrame, scores: pl.DataFrame) -> dict:
    """``passed``, ``description`` and ``metadata`` of ``scores_match_forecasts``: exactly
    the two scores (mean, volnorm) of every forecast row's key, each once and finite."""
    bad = int((~np.isfinite(scores["score"].to_numpy())).sum()) if scores.height else 0
    dupes = scores.height - scores.select(FORECAST_KEYS).unique().height
    per_key = scores.group_by("horizon", "date", "ticker").len() if scores.height else None
    keys = forecasts.select("horizon", "date", "ticker").unique()
    matched = (
        0
        if per_key is None
        else keys.join(per_key.filter(pl.col("len") == 2), on=["horizon", "date", "ticker"]).height
    )
    ok = scores.height == 2 * forecasts.height and bad == dupes == 0 and matched == keys.height
    return {
        "passed": ok,
        "description": f"{scores.height} scores for {forecasts.height} forecasts (2 each "
        f"expected), {keys.height - matched} forecast keys without both, {dupes} duplicates, "
        f"{bad} non-finite",
        "metadata": {"forecasts": forecasts.height, "scores": scores.height, "non_finite": bad,
                     "duplicates": dupes, "keys_without_both": keys.height - matched},
    }  # fmt: skip

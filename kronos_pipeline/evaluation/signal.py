"""The day's signal as a table: every non-control model's ranked universe per date and
horizon, with the forecast quantiles of every Kronos-derived model, and what makes a signal
wrong against the universe it ranks. Reads the warehouse; knows nothing of Dagster."""

import polars as pl

from kronos_pipeline.evaluation.baselines import CONTROL_MODELS
from kronos_pipeline.warehouse import Warehouse

#: Every table of long scores (model, horizon, date, ticker, score, fold): the baselines',
#: Kronos' own scores, and its heads'. The evaluation unions them; the signal ranks them all.
SCORE_TABLES = ("baseline_scores", "kronos_scores", "kronos_head_scores")
#: The score tables of Kronos-derived models: their signal rows carry the forecast quantiles.
KRONOS_SCORE_TABLES = ("kronos_scores", "kronos_head_scores")
SIGNAL_COLUMNS = [
    "date", "model", "horizon", "rank", "ticker", "score", "pct_rank",
    "pred_return_q10", "pred_return_q50", "pred_return_q90",
]  # fmt: skip


QUANTILE_COLUMNS = ["pred_return_q10", "pred_return_q50", "pred_return_q90"]


def signal_frame(db: Warehouse, start, end) -> pl.DataFrame:
    """Every non-control model's scores of ``start..end`` (baselines, Kronos and its volnorm
    variant, the Kronos heads), ranked per (date, model, horizon) (rank 1 = the highest score,
    ties broken by ticker). Every Kronos-derived model's row carries the 10/50/90 % quantiles
    of the h-day return over the sampled paths of its (date, ticker, horizon), from the fold's
    ``kronos_forecasts``, the forecast its score was derived from; other models' are null."""
    parts = []
    for table in SCORE_TABLES:
        if table in db.tables():
            parts.append(db.read(
                f"select date, model, horizon, ticker, score, fold, "
                f"{table in KRONOS_SCORE_TABLES} as kronos_derived from {table} "
                "where date between ? and ? and model not in (select unnest(?))",
                [start, end, list(CONTROL_MODELS)],
            ))  # fmt: skip
    if not parts:
        return pl.DataFrame()
    scores = pl.concat(parts).with_columns(pl.col("date").cast(pl.Date))
    ranked = scores.sort("date", "model", "horizon", "score", "ticker",
                         descending=[False, False, False, True, False]).with_columns(
        pl.int_range(1, pl.len() + 1).over("date", "model", "horizon").alias("rank"),
        (pl.col("score").rank("average").over("date", "model", "horizon")
         / pl.len().over("date", "model", "horizon")).alias("pct_rank"),
    )  # fmt: skip
    keys = ["fold", "date", "horizon", "ticker"]
    if "kronos_forecasts" in db.tables():
        # One forecast model per fold (its checkpoint's), so the fold pins the forecast.
        q = db.read(
            f"select {', '.join(keys + QUANTILE_COLUMNS)} from kronos_forecasts "
            "where date between ? and ?", [start, end],
        ).with_columns(pl.col("date").cast(pl.Date), pl.lit(True).alias("kronos_derived"))  # fmt: skip
    else:
        q = pl.DataFrame(schema={"fold": pl.String, "date": pl.Date, "horizon": pl.Int64,
                                 "ticker": pl.String, **dict.fromkeys(QUANTILE_COLUMNS, pl.Float64),
                                 "kronos_derived": pl.Boolean})  # fmt: skip
    out = ranked.join(
        q.cast({"horizon": ranked.schema["horizon"]}), on=[*keys, "kronos_derived"], how="left"
    )
    return out.select(SIGNAL_COLUMNS).sort("date", "model", "horizon", "rank")


def kronos_models(db: Warehouse, start, end) -> set[str]:
    """The Kronos-derived models scored in ``start..end`` (their rows need quantiles)."""
    models: set[str] = set()
    for table in KRONOS_SCORE_TABLES:
        if table in db.tables():
            models |= set(db.read(f"select distinct model from {table} where date between ? "
                                  "and ?", [start, end])["model"])  # fmt: skip
    return models


def signal_problems(
    signal: pl.DataFrame, members: pl.DataFrame, kronos_derived: set[str] | frozenset = frozenset()
) -> list[str]:
    """What is wrong with a signal against the universe members of its dates: a member a
    model did not rank, a ticker that is not a member, ranks that are not 1..n, a row of a
    Kronos-derived model (``kronos_derived``) without finite, ordered quantiles."""
    problems = []
    for (day, model, horizon), group in signal.group_by(["date", "model", "horizon"]):
        if model in kronos_derived:
            q10, q50, q90 = (group[c] for c in QUANTILE_COLUMNS)
            finite = q10.is_finite() & q50.is_finite() & q90.is_finite()
            bad = group.height - int((finite.fill_null(False) & (q10 <= q50) & (q50 <= q90))
                                     .fill_null(False).sum())  # fmt: skip
            if bad:
                problems.append(f"{day} {model} h{horizon}: {bad} rows without their forecast "
                                "quantiles (q10 <= q50 <= q90)")  # fmt: skip
        names = set(members.filter(pl.col("date") == day)["ticker"])
        got = set(group["ticker"])
        if got - names:
            problems.append(f"{day} {model} h{horizon}: not members {sorted(got - names)[:5]}")
        if sorted(group["rank"]) != list(range(1, group.height + 1)):
            problems.append(f"{day} {model} h{horizon}: ranks are not 1..{group.height}")
        # LightGBM and random score every member; factors skip missing inputs and Kronos
        # short histories (its member_coverage check warns about those).
        if model in ("lightgbm", "random") and names - got:
            problems.append(f"{day} {model} h{horizon}: unranked members {sorted(names - got)[:5]}")
    return problems


def no_signal_reason(db, start, end) -> str | None:
    """Why ``start..end`` has no signal when it should: universe members but no score; None
    when the window holds no member (a holiday). A one-day run scores its day whatever the
    cadence, so a session of one must have scores; in a longer window, days off the scoring
    cadence have none by design."""
    members = db.read(
        "select count(*) from universe where in_universe and date between ? and ?", [start, end]
    ).item()
    if members == 0:
        return None
    return (
        f"no scores between {start} and {end}, which hold {members} universe rows: "
        "materialize the score assets of these days first"
    )

"""Data-layer tripwires computed from the warehouse tables: the PIT recomputation of the whole
chain from raw bars, and agreement of our adjusted returns with the vendor's adjusted close."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from kronos_pipeline.data.pit import adjustment_agreement, prices_pit
from kronos_pipeline.data.side_tables import sector_segments
from kronos_pipeline.evaluation.baselines import COMPOSITE_MODEL, FACTORS, factor_scores
from kronos_pipeline.evaluation.tripwires import FAIL, PASS, pit_recomputation_summary, verdict
from kronos_pipeline.features.build import features
from kronos_pipeline.features.labels import labels_forward
from kronos_pipeline.features.universe import universe, universe_prices
from kronos_pipeline.settings import Settings, TripwireSettings

FACTOR_MODELS = (*FACTORS, COMPOSITE_MODEL)
#: Mismatched (date, ticker) examples kept in the tripwire's metadata.
EXAMPLES = 5


@dataclass
class StoredAsOf:
    """What the warehouse says as of the sampled dates (pandas frames).

    ``features`` and ``universe``: rows of the sampled dates; ``labels``: rows with
    ``available_at`` on or before the latest sampled date; ``scores``: factor-floor scores of
    the sampled dates (``model, horizon, date, ticker, score``), empty if none was scored.
    """

    features: pd.DataFrame
    universe: pd.DataFrame
    labels: pd.DataFrame
    scores: pd.DataFrame


def label_window_start(t: pd.Timestamp, horizons: Sequence[int]) -> pd.Timestamp:
    """First label date compared as of ``t``: two spans of the longest horizon back (in
    weekdays, a few more than sessions), which holds every label that matured recently."""
    return pd.Timestamp(t) - pd.tseries.offsets.BDay(2 * max(horizons) + 10)


def sample_dates(
    feature_dates: Sequence, scoring_dates: Sequence, count: int, skip: int = 252
) -> list[pd.Timestamp]:
    """``count`` dates spread evenly over the feature dates up to the last scoring date (the
    first ``skip`` sessions, before any name has enough history, left out), plus the first and
    last scoring dates, so the check covers history and the evaluated months alike."""
    scored = pd.DatetimeIndex(pd.to_datetime(np.asarray(scoring_dates))).sort_values()
    dates = pd.DatetimeIndex(pd.to_datetime(np.asarray(feature_dates))).unique().sort_values()
    if len(scored):
        dates = dates[dates <= scored[-1]]
    pool = dates[skip:] if len(dates) > skip else dates
    picks = set()
    if len(pool) and count > 0:
        picks |= {
            pool[i] for i in np.unique(np.linspace(0, len(pool) - 1, count).round().astype(int))
        }
    if len(scored):
        picks |= {scored[0], scored[-1]}
    return sorted(picks)


def _examples(full: pd.DataFrame, cut: pd.DataFrame, keys: list[str]) -> list[dict[str, str]]:
    """A few keys whose rows differ (or exist on one side only)."""
    values = [c for c in full.columns if c not in keys and c in cut.columns]
    m = full.merge(cut, on=keys, how="outer", suffixes=("_full", "_cut"), indicator=True)
    bad = m["_merge"] != "both"
    for c in values:
        if not pd.api.types.is_numeric_dtype(full[c]):
            continue
        x, y = m[f"{c}_full"].to_numpy(float), m[f"{c}_cut"].to_numpy(float)
        bad |= ~((x == y) | (np.isnan(x) & np.isnan(y)))
    out = m.loc[bad, keys].head(EXAMPLES)
    return [{k: str(pd.Timestamp(v).date()) if k == "date" else str(v) for k, v in r.items()}
            for r in out.to_dict("records")]  # fmt: skip


def _compare(name: str, full: pd.DataFrame, cut: pd.DataFrame, keys: list[str], as_of, atol):
    summary = pit_recomputation_summary(full, cut, as_of, keys, atol)
    if not summary["passed"]:
        summary["examples"] = _examples(full, cut, keys)
    return {"table": name, **summary}


def pit_chain_tripwire(
    raw_bars: pl.DataFrame,
    sector_history: pl.DataFrame | None,
    stored: StoredAsOf,
    dates: Sequence,
    settings: Settings,
) -> dict[str, Any]:
    """PIT law for the whole chain (SPEC section 7): for each sampled date t, rebuild prices,
    universe, features, labels and the factor-floor scores from the raw bars dated <= t (side
    tables included: the sectors are those ``sector_history`` says were valid on t, or a plain
    ticker -> sector map) and compare them with what the warehouse holds as of t.

    Compared as of t: features and universe membership on t; every label with ``available_at
    <= t`` dated within the longest horizon's two spans before t (availability by key, values to
    ``atol``); the factor-floor scores on t where t was scored. Fails on any difference, naming
    the worst table and column and a few (date, ticker) examples.
    """
    cfg: TripwireSettings = settings.tripwires
    u = settings.universe
    horizons = tuple(settings.labels.horizons)
    checks: list[dict[str, Any]] = []
    # Sorted once: each date's cut keeps the order, so prices_pit need not sort it again.
    raw_bars = raw_bars.sort("ticker", "date")
    for t in dates:
        t = pd.Timestamp(t)
        day = t.date()
        prices = prices_pit(raw_bars.filter(pl.col("date") <= day))
        window_start = label_window_start(t, horizons)
        # The universe from window_start on (the labels' members), its exact rolling medians
        # over the bars from a few months before it (all of them when a gap needs more), and
        # the features of t over its year's span (features.build): as the data steps read.
        bars = prices.select("ticker", "date", "close", "dollar_volume", "bar_index")
        liquidity = universe_prices(
            lambda since, bars=bars: bars if since is None else bars.filter(pl.col("date") >= since),
            window_start.date(), u.liquidity_window_days,
        )  # fmt: skip
        members = universe(
            liquidity, u.min_history_days, u.min_price, u.min_median_dollar_volume,
            u.liquidity_window_days, settings.effective_top_n, start=window_start.date(),
        )  # fmt: skip
        sectors = sector_segments(sector_history, day, day)[0][2]
        feats = features(prices, sectors, day, day).to_pandas()
        # A label dated d reads the bars from d to d+h alone (and the universe on d), so the
        # labels from window_start on come out the same from the bars from window_start on.
        since = pl.col("date") >= window_start.date()
        labels = labels_forward(
            prices.select("ticker", "date", "tri").filter(since), members.filter(since), horizons
        )
        labels = labels.filter(pl.col("available_at") <= day).to_pandas()
        stored_labels = stored.labels[
            (pd.to_datetime(stored.labels["available_at"]) <= t)
            & (pd.to_datetime(stored.labels["date"]) >= window_start)
        ]
        labels = labels[pd.to_datetime(labels["date"]) >= window_start]
        lab_keys = ["date", "ticker", "horizon"]
        lab_cols = [*lab_keys, "fwd_return", "excess_return"]
        checks.append(_compare("labels_forward", _dated(stored_labels[lab_cols]),
                               _dated(labels[lab_cols]), lab_keys, t, cfg.pit_atol))  # fmt: skip
        on_day = members.filter(pl.col("date") == day).to_pandas()
        uni_cols = [c for c in stored.universe.columns if c in on_day.columns]
        checks.append(_compare("universe", _on(stored.universe, t)[uni_cols], on_day[uni_cols],
                               ["date", "ticker"], t, cfg.pit_atol))  # fmt: skip
        feat_cols = [c for c in stored.features.columns if c in feats.columns and c != "sector"]
        checks.append(_compare("features", _on(stored.features, t)[feat_cols], feats[feat_cols],
                               ["date", "ticker"], t, cfg.pit_atol))  # fmt: skip
        scored = _on(stored.scores, t)
        if len(scored):
            keys = scored[["date", "ticker"]].drop_duplicates()
            recomputed = factor_scores(
                _dated(feats).merge(_dated(keys), on=["date", "ticker"]),
                sorted(scored["horizon"].unique()), "pit",
            )  # fmt: skip
            score_keys = ["model", "horizon", "date", "ticker"]
            checks.append(_compare("baseline_scores", _dated(scored[[*score_keys, "score"]]),
                                   _dated(recomputed[[*score_keys, "score"]]), score_keys, t,
                                   cfg.pit_atol))  # fmt: skip
    failed = [c for c in checks if not c["passed"]]
    numbers = {
        "dates": [str(pd.Timestamp(t).date()) for t in dates],
        "tables_compared": sorted({c["table"] for c in checks}),
        "rows_compared": int(sum(c["rows_compared"] for c in checks)),
        "side_tables": "sector_history" if sector_history is not None else "none",
        "checks": checks,
    }
    if not checks:
        return verdict("not evaluated", "no date to recompute", **numbers)
    if failed:
        worst = max(failed, key=lambda c: (c["rows_missing_on_one_side"], c["max_abs_diff"]))
        return verdict(
            FAIL,
            f"{len(failed)} of {len(checks)} table-dates change when rows after t are removed; "
            f"worst: {worst['table']} as of {worst['as_of']}, column {worst['worst_column']}, "
            f"{worst['values_mismatched']} values differ, {worst['rows_missing_on_one_side']} "
            "rows on one side only",
            worst_table=worst["table"],
            worst_column=worst["worst_column"],
            examples=worst.get("examples", []),
            **numbers,
        )
    return verdict(
        PASS,
        f"{len(checks)} table-dates over {len(dates)} dates unchanged when rows after t are removed",
        **numbers,
    )


def _dated(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(date=pd.to_datetime(frame["date"]))


def _on(frame: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    if frame.empty:
        return frame
    return _dated(frame[pd.to_datetime(frame["date"]) == t])


def adjustment_tripwire(prices: pl.DataFrame, cfg: TripwireSettings) -> dict[str, Any]:
    """Share of ticker-days without a corporate action whose total return matches the vendor's
    adjusted-close return within ``cfg.adjustment_rel_tol`` relative; passes at
    ``>= cfg.adjustment_min_share``; not evaluated when the source has no adjusted close."""
    agreement = adjustment_agreement(prices, cfg.adjustment_rel_tol)
    numbers = {
        **agreement,
        "tolerance_rel": cfg.adjustment_rel_tol,
        "min_share": cfg.adjustment_min_share,
    }
    if agreement["checked"] == 0:
        return verdict("not evaluated", "no vendor adjusted_close in this source", **numbers)
    ok = agreement["share"] >= cfg.adjustment_min_share
    return verdict(
        PASS if ok else FAIL,
        f"{agreement['share']:.4%} of {agreement['checked']} ticker-days agree "
        f"(>= {cfg.adjustment_min_share:.1%} needed)",
        **numbers,
    )

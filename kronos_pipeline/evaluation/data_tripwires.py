"""Data-layer tripwires computed from the warehouse tables: PIT recomputation of features and
agreement of our adjusted returns with the vendor's adjusted close."""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl

from kronos_pipeline.data.pit import adjustment_agreement
from kronos_pipeline.evaluation.tripwires import pit_recomputation_summary
from kronos_pipeline.features.build import features

# Vendor files carry a few rounding defects; below this share of agreeing days the tripwire fires.
ADJUSTMENT_MIN_SHARE = 0.999
ADJUSTMENT_REL_TOL = 1e-6


def pit_features_tripwire(
    prices: pl.DataFrame, sectors: pl.DataFrame | None, stored: pl.DataFrame, as_of: object
) -> dict[str, Any]:
    """Recompute features from ``prices`` rows dated <= ``as_of`` only and compare them with the
    ``stored`` feature rows of ``as_of`` (exact up to 1e-12). ``prices`` may extend past as_of."""
    day = pl.lit(as_of).cast(pl.Date)
    recomputed = features(prices.filter(pl.col("date") <= day), sectors).filter(
        pl.col("date") == day
    )
    stored_day = stored.filter(pl.col("date") == day)
    summary = pit_recomputation_summary(
        stored_day.drop("sector").to_pandas(),
        recomputed.drop("sector").to_pandas(),
        pd.Timestamp(as_of),
    )
    return {**summary, "as_of": str(pd.Timestamp(as_of).date()), "rows": stored_day.height}


def adjustment_tripwire(prices: pl.DataFrame) -> dict[str, Any]:
    """Share of ticker-days without a corporate action whose total return matches the vendor's
    adjusted-close return within 1e-6 relative; passes at >= 99.9 %."""
    agreement = adjustment_agreement(prices, ADJUSTMENT_REL_TOL)
    checked = agreement["checked"]
    return {
        **agreement,
        "tolerance_rel": ADJUSTMENT_REL_TOL,
        "min_share": ADJUSTMENT_MIN_SHARE,
        "passed": bool(checked == 0 or agreement["share"] >= ADJUSTMENT_MIN_SHARE),
        "note": "no vendor adjusted_close in this source" if checked == 0 else "",
    }

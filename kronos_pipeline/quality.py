"""Data-quality suites run with great-expectations 1.x, called directly (no Dagster here).

A suite is a list of GX expectations; :func:`validate` runs it on a frame and returns a
:class:`QualityReport` whose rows say which expectation failed, on which column, and how many
rows broke it. The Dagster asset checks turn these reports into check results and metadata.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import polars as pl

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
from great_expectations import expectations as gxe  # noqa: E402

logging.getLogger("great_expectations").setLevel(logging.WARNING)

_CONTEXT = None


def _context() -> gx.data_context.AbstractDataContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = gx.get_context(mode="ephemeral")
        try:
            _CONTEXT.variables.progress_bars = {"globally": False}
        except Exception:  # noqa: BLE001 - progress bars are cosmetic only
            pass
    return _CONTEXT


@dataclass(frozen=True)
class QualityReport:
    """Outcome of one suite on one frame."""

    suite: str
    rows: int
    results: list[dict] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(r["success"] for r in self.results)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        if self.success:
            return f"{self.suite}: {len(self.results)} expectations passed on {self.rows} rows"
        parts = [
            f"{r['expectation']}({r['column']}): {r['unexpected_count']} of {r['element_count']} rows"
            for r in self.failures
        ]
        return f"{self.suite}: {len(self.failures)} failed: " + "; ".join(parts)


def validate(
    frame: pl.DataFrame | pd.DataFrame, suite_name: str, expectations: Sequence
) -> QualityReport:
    """Run ``expectations`` (GX expectation objects) on ``frame``."""
    df = frame.to_pandas() if isinstance(frame, pl.DataFrame) else frame
    context = _context()
    name = f"{suite_name}_{id(df)}"
    source = context.data_sources.add_or_update_pandas(name)
    batch = (
        source.add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name=name, expectations=list(expectations))
    outcome = batch.validate(suite)
    context.data_sources.delete(name)
    results = []
    for r in outcome.results:
        cfg = r.expectation_config
        kwargs = cfg.kwargs
        results.append(
            {
                "expectation": cfg.type,
                "column": kwargs.get("column")
                or ",".join(kwargs.get("column_list", []) or [])
                or ">=".join(str(kwargs.get(k)) for k in ("column_A", "column_B") if kwargs.get(k)),
                "success": bool(r.success),
                "unexpected_count": int(r.result.get("unexpected_count") or 0),
                "element_count": int(r.result.get("element_count") or len(df)),
                "observed_value": r.result.get("observed_value"),
            }
        )
    return QualityReport(suite=suite_name, rows=len(df), results=results)


def _not_null(columns: Sequence[str]) -> list:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]


def _schema(columns: Sequence[str]) -> list:
    return [gxe.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=True)]


def bars_suite(columns: Sequence[str]) -> list:
    """Raw bars: schema, non-null keys and prices, positive prices, sane ranges, unique keys."""
    return [
        *_schema(columns),
        *_not_null(["ticker", "date", "open", "high", "low", "close", "volume", "split"]),
        *[
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
            for c in ("open", "high", "low", "close", "split")
        ],
        gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="dividend", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="low", or_equal=True),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["ticker", "date"]),
    ]


def prices_suite(columns: Sequence[str]) -> list:
    """PIT prices: schema, unique keys, positive split factor, bounded daily total return."""
    return [
        *_schema(columns),
        *_not_null(["ticker", "date", "adj_close", "split_factor", "tri", "bar_index"]),
        gxe.ExpectColumnValuesToBeBetween(column="split_factor", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="tri", min_value=0, strict_min=True),
        # A daily total return below -100% is impossible; above +300% is a data error in S&P names.
        gxe.ExpectColumnValuesToBeBetween(
            column="total_return", min_value=-1.0, max_value=3.0, mostly=1.0
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["ticker", "date"]),
    ]


def features_suite(columns: Sequence[str], feature_columns: Sequence[str]) -> list:
    """Features: schema, unique keys, bounded ranges for the bounded features."""
    return [
        *_schema(columns),
        *_not_null(["date", "ticker", "sector"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["date", "ticker"]),
        gxe.ExpectColumnValuesToBeBetween(column="rsi_14d", min_value=0, max_value=100),
        gxe.ExpectColumnValuesToBeBetween(column="close_location_1d", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="zero_volume_share_60d", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="dist_52w_high", min_value=-1, max_value=0),
        *[
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0)
            for c in feature_columns
            if c.startswith("vol_")
        ],
    ]

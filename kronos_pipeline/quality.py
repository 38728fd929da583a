"""Data-quality suites run with great-expectations 1.x, called directly (no Dagster here).

Every check compares a frame against an expectation that the frame did not produce: the
*declared* :class:`TableSchema` of its table (column names in order, types, nullability, key)
and an expected row count supplied by the caller (the trading calendar x the tickers alive for
raw bars, the upstream table's keys for derived tables). A suite is a list of GX expectations;
:func:`validate` runs it on a frame, adds the declared-type comparison (done on the polars
schema, since pandas conversion loses nullable integer types), and returns a
:class:`QualityReport` whose rows say which expectation failed, on which column, and how many
rows broke it. The Dagster asset checks turn these reports into check results and metadata.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import pandas as pd
import polars as pl

if TYPE_CHECKING:
    import great_expectations as gx

_CONTEXT = None


@functools.cache
def _gx() -> ModuleType:
    """great_expectations, imported on the first validation: it takes seconds to import, and
    every run worker and step process imports this module while few of them validate."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations
    import great_expectations.expectations  # noqa: F401 - ``_gxe()``

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return great_expectations


def _gxe() -> ModuleType:
    """great_expectations' expectation classes."""
    return _gx().expectations


@dataclass(frozen=True)
class Column:
    """One declared column: name, polars type, and whether nulls are allowed."""

    name: str
    dtype: pl.DataType
    nullable: bool = False
    description: str = ""


@dataclass(frozen=True)
class TableSchema:
    """The declared schema of a warehouse table: ordered columns and the unique key."""

    table: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def polars(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if not c.nullable]

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars)

    def differences(self, schema: dict[str, object]) -> list[str]:
        """How ``schema`` (name -> type) differs from the declared one; [] when it matches."""
        declared = {c.name: str(c.dtype) for c in self.columns}
        actual = {name: str(dtype) for name, dtype in schema.items()}
        out = [f"missing column {n!r}" for n in declared if n not in actual]
        out += [f"unexpected column {n!r}" for n in actual if n not in declared]
        out += [
            f"column {n!r} is {actual[n]}, declared {t}"
            for n, t in declared.items()
            if n in actual and actual[n] != t
        ]
        if not out and list(actual) != list(declared):
            out.append(f"columns out of the declared order: {list(actual)}")
        return out


def _cols(spec: str, dtype: pl.DataType, nullable: bool = False) -> list[Column]:
    return [Column(n, dtype, nullable) for n in spec.split()]


F, S, D, I, B = pl.Float64, pl.String, pl.Date, pl.Int64, pl.Boolean  # noqa: E741

RAW_BARS = TableSchema(
    "raw_bars",
    (
        Column("ticker", S),
        Column("date", D),
        *_cols("open high low close", F),
        Column("adjusted_close", F, nullable=True),  # tidy sources carry none
        *_cols("volume dividend split", F),
        Column("source_file", S),
        Column("line", I),
    ),
    key=("ticker", "date"),
)
BARS_QUARANTINE = TableSchema(
    "bars_quarantine",
    (
        Column("source_file", S),
        Column("line", I, nullable=True),  # an empty file has no line
        Column("ticker", S),
        Column("date", D, nullable=True),  # file-level rejects are undated
        Column("raw", S),
        Column("reason", S),
    ),
    key=("source_file", "line"),
)
PRICES_PIT = TableSchema(
    "prices_pit",
    (
        Column("ticker", S),
        Column("date", D),
        *_cols("open high low close volume dividend split split_factor", F),
        *_cols("adj_open adj_high adj_low adj_close adj_volume dollar_volume", F),
        Column("total_return", F, nullable=True),  # null on a ticker's first bar
        Column("tri", F),
        Column("vendor_return", F, nullable=True),
        Column("corporate_action", B),
        Column("bar_index", I),
    ),
    key=("ticker", "date"),
)
UNIVERSE = TableSchema(
    "universe",
    (
        Column("date", D),
        Column("ticker", S),
        Column("history_days", I),
        Column("close", F),
        Column("median_dollar_volume", F, nullable=True),
        Column("eligible", B),
        Column("liquidity_rank", I, nullable=True),
        Column("in_universe", B),
    ),
    key=("date", "ticker"),
)
FEATURE_COLUMNS = tuple(
    """ret_1d mom_1w mom_1m mom_3m mom_6m mom_12m mom_12_1 mom_6_1 mom_3_1 vol_20d vol_60d
    vol_120d vol_252d downside_vol_60d upside_vol_60d vol_ratio_20_60 skew_60d kurt_60d
    max_ret_1m min_ret_1m beta_60d beta_252d corr_mkt_60d resid_vol_60d idio_mom_1m
    mkt_rel_mom_12_1 volume_z_60d dollar_volume_z_60d log_dollar_volume_1m volume_trend_1m_6m
    amihud_1m zero_volume_share_60d range_1d range_1m atr_14d gap_1d gap_abs_1m
    intraday_ret_1d close_location_1d stoch_1m rsi_14d ma_dist_20d ma_dist_50d ma_dist_200d
    ma_cross_50_200 dist_52w_high dist_52w_low dividend_yield_12m log_price
    sector_rel_mom_12_1 sector_rel_mom_1m sector_rel_vol_60d""".split()
)
# Features computed from a single bar are never null; windowed ones are null during warm-up.
# Computed from the day's own bar, so never null; close_location_1d is, by definition, on a
# day whose high equals its low (910 such bars in the real sample).
_SAME_DAY_FEATURES = ("range_1d", "intraday_ret_1d", "log_price")
FEATURES = TableSchema(
    "features",
    (
        Column("date", D),
        Column("ticker", S),
        Column("sector", S),
        *[Column(n, F, nullable=n not in _SAME_DAY_FEATURES) for n in FEATURE_COLUMNS],
    ),
    key=("date", "ticker"),
)
LABELS_FORWARD = TableSchema(
    "labels_forward",
    (
        Column("date", D),
        Column("ticker", S),
        Column("horizon", pl.Int32),
        Column("fwd_return", F),
        Column("excess_return", F, nullable=True),
        Column("available_at", D),
        Column("end_date", D),
        Column("in_universe", B),
    ),
    key=("date", "ticker", "horizon"),
)
# Point-in-time side tables (see kronos_pipeline.data.side_tables).
TICKER_HISTORY = TableSchema(
    "ticker_history",
    (
        Column("ticker", S),
        Column("first_date", D),  # first bar: the ticker is known, and alive, from this date
        Column("delisted_on", D, nullable=True),  # last session when a delisting is declared
        Column("source_file", S),
    ),
    key=("ticker",),
)
SECTOR_HISTORY = TableSchema(
    "sector_history",
    (
        Column("ticker", S),
        Column("sector", S),
        Column("valid_from", D),
        Column("valid_to", D, nullable=True),  # null: still valid
        Column("source", S),
    ),
    key=("ticker", "valid_from"),
)
SCHEMAS = {
    s.table: s
    for s in (
        RAW_BARS,
        BARS_QUARANTINE,
        PRICES_PIT,
        UNIVERSE,
        FEATURES,
        LABELS_FORWARD,
        TICKER_HISTORY,
        SECTOR_HISTORY,
    )
}


def _context() -> gx.data_context.AbstractDataContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = _gx().get_context(mode="ephemeral")
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
        return bool(self.results) and all(r["success"] for r in self.results)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        if self.success:
            return f"{self.suite}: {len(self.results)} expectations passed on {self.rows} rows"
        parts = [
            f"{r['expectation']}({r['column']}): "
            + (
                f"{r['unexpected_count']} of {r['element_count']} rows"
                if r["unexpected_count"]
                else f"observed {r['observed_value']}"
            )
            for r in self.failures
        ]
        return f"{self.suite}: {len(self.failures)} failed: " + "; ".join(parts)


def _declared_types(frame: pl.DataFrame | pd.DataFrame, schema: TableSchema) -> dict:
    actual = (
        dict(frame.schema)
        if isinstance(frame, pl.DataFrame)
        else {c: str(t) for c, t in frame.dtypes.items()}
    )
    diffs = schema.differences(actual) if isinstance(frame, pl.DataFrame) else []
    return {
        "expectation": "declared_schema",
        "column": ",".join(schema.names),
        "success": not diffs,
        "unexpected_count": 0,
        "element_count": len(frame),
        "observed_value": "; ".join(diffs) or "matches",
    }


#: Expectation arguments that name the columns an expectation reads.
_COLUMN_ARGS = ("column", "column_list", "column_A", "column_B")


def _columns_read(expectation) -> tuple[str, ...] | None:
    """The columns a column or multicolumn expectation reads; None for a table expectation
    (column names, row count), which needs the whole frame."""
    if type(expectation).__name__.startswith("ExpectTable"):
        return None
    kwargs = expectation.configuration.kwargs
    cols: list[str] = []
    for arg in _COLUMN_ARGS:
        value = kwargs.get(arg)
        if isinstance(value, str):
            cols.append(value)
        elif value:
            cols.extend(value)
    return tuple(dict.fromkeys(cols)) or None


def _config_key(config) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return f"{config.type}:{sorted(kwargs.items(), key=lambda kv: kv[0])!r}"


#: Frames of at most this many cells (rows x columns) are validated in one suite run; larger
#: ones per group of the columns an expectation reads (:func:`validate`). Measured on the
#: feature table: one run is faster up to about 60,000 rows of its 55 columns.
WHOLE_FRAME_CELLS = 2_000_000


@functools.cache
def _batch_definition(name: str):
    """The whole-dataframe batch definition of suite ``name``, made once per process: each
    data source or asset GX adds (or deletes) re-serializes the context's whole project
    config, which cost about 3 s over the ~90 suite runs of one day's data run."""
    source = _context().data_sources.add_or_update_pandas(name)
    return source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)


def _run_suite(df: pd.DataFrame, name: str, expectations: list) -> list:
    batch = _batch_definition(name).get_batch(batch_parameters={"dataframe": df})
    outcome = batch.validate(_gx().ExpectationSuite(name=name, expectations=expectations))
    return list(outcome.results)


def validate(
    frame: pl.DataFrame | pd.DataFrame,
    suite_name: str,
    expectations: Sequence,
    schema: TableSchema | None = None,
) -> QualityReport:
    """Run ``expectations`` (GX expectation objects) on ``frame``; with ``schema``, also compare
    the frame's column names, order and types with the declared ones.

    On a large frame (over :data:`WHOLE_FRAME_CELLS` cells) each column expectation runs on a
    frame of only the columns it reads: GX's pandas engine copies its whole input for every
    filtered domain (e.g. the non-null rows of one column), which over the 55 feature columns
    of the history cost seconds per expectation. A smaller frame (a night's day) is validated
    in one suite run: each extra run costs a batch of its own, about 15 ms, and 40 ms more
    the first time in a process. The rows are the same, so the results are too; table
    expectations see the whole frame. Results keep the suite's order."""
    is_polars = isinstance(frame, pl.DataFrame)
    rows = frame.height if is_polars else len(frame)
    groups: dict[tuple[str, ...] | None, list[int]] = {}
    whole = rows * len(frame.columns) <= WHOLE_FRAME_CELLS
    for i, e in enumerate(expectations):
        cols = None if whole else _columns_read(e)
        if cols is not None and not set(cols) <= set(frame.columns):
            cols = None  # a missing column: the whole frame, so GX names it
        groups.setdefault(cols, []).append(i)
    found: dict[int, object] = {}
    for n, (cols, members) in enumerate(groups.items()):
        if cols is None:
            df = frame.to_pandas() if is_polars else frame
        else:
            df = frame.select(cols).to_pandas() if is_polars else frame[list(cols)]
        outcome = _run_suite(df, f"{suite_name}_{n}", [expectations[i] for i in members])
        # GX orders results its own way: match them to the suite by type and arguments.
        waiting: dict[str, list[int]] = {}
        for i in members:
            waiting.setdefault(_config_key(expectations[i].configuration), []).append(i)
        for r in outcome:
            found[waiting[_config_key(r.expectation_config)].pop(0)] = r
    results = [_declared_types(frame, schema)] if schema is not None else []
    for i in range(len(expectations)):
        r = found[i]
        cfg = r.expectation_config
        kwargs = cfg.kwargs
        results.append(
            {
                "expectation": cfg.type,
                "column": kwargs.get("column")
                or ",".join(kwargs.get("column_list", []) or [])
                or ">=".join(str(kwargs.get(k)) for k in ("column_A", "column_B") if kwargs.get(k))
                or "table",
                "success": bool(r.success),
                "unexpected_count": int(r.result.get("unexpected_count") or 0),
                "element_count": int(r.result.get("element_count") or rows),
                "observed_value": _jsonable(r.result.get("observed_value")),
            }
        )
    return QualityReport(suite=suite_name, rows=rows, results=results)


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def schema_suite(schema: TableSchema, expected_rows: int | None = None) -> list:
    """The declared schema: exact ordered columns, non-null where declared, a unique key, and,
    when the caller knows it, the expected row count."""
    gxe = _gxe()
    out = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=schema.names),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in schema.required],
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(schema.key))
        if len(schema.key) > 1
        else gxe.ExpectColumnValuesToBeUnique(column=schema.key[0]),
    ]
    if expected_rows is not None:
        out.append(gxe.ExpectTableRowCountToEqual(value=int(expected_rows)))
    return out


def bars_suite(expected_rows: int | None = None) -> list:
    """Raw bars: declared schema, positive prices, sane ranges, unique keys, row count."""
    gxe = _gxe()
    return [
        *schema_suite(RAW_BARS, expected_rows),
        *[
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
            for c in ("open", "high", "low", "close", "split")
        ],
        gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="dividend", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="low", or_equal=True),
    ]


def quarantine_suite() -> list:
    """Quarantine rows: declared schema, every row has a reason."""
    return schema_suite(BARS_QUARANTINE)


def prices_suite(expected_rows: int | None = None) -> list:
    """PIT prices: declared schema, one row per raw bar, positive split factor, bounded return."""
    gxe = _gxe()
    return [
        *schema_suite(PRICES_PIT, expected_rows),
        gxe.ExpectColumnValuesToBeBetween(column="split_factor", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="tri", min_value=0, strict_min=True),
        # A daily total return below -100% is impossible; above +300% is a data error in S&P names.
        gxe.ExpectColumnValuesToBeBetween(
            column="total_return", min_value=-1.0, max_value=3.0, mostly=1.0
        ),
    ]


def universe_suite(expected_rows: int | None = None) -> list:
    """Universe: declared schema, one row per PIT price row, ranks from 1."""
    gxe = _gxe()
    return [
        *schema_suite(UNIVERSE, expected_rows),
        gxe.ExpectColumnValuesToBeBetween(column="liquidity_rank", min_value=1),
    ]


def features_suite(expected_rows: int | None = None) -> list:
    """Features: declared schema (every declared feature), unique keys, bounded ranges."""
    gxe = _gxe()
    return [
        *schema_suite(FEATURES, expected_rows),
        gxe.ExpectColumnValuesToBeBetween(column="rsi_14d", min_value=0, max_value=100),
        gxe.ExpectColumnValuesToBeBetween(column="close_location_1d", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="zero_volume_share_60d", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="dist_52w_high", min_value=-1, max_value=0),
        *[
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0)
            for c in FEATURE_COLUMNS
            if c.startswith("vol_")
        ],
    ]


def labels_suite() -> list:
    """Labels: declared schema and keys (completeness is the label_availability check)."""
    return schema_suite(LABELS_FORWARD)

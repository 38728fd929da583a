"""Partitions: calendar months, for the data, for what is predicted per date, and for folds.

* ``month_partitions`` (``YYYY-MM`` from ``data.partitions_start``): the data assets and the
  date-level score assets. A run covers a range of months (single-run backfills) and, inside
  it, the trading days of those months up to the newest session that is due (its 22:30 New
  York close has passed), or the explicit window of the run's ``kronos/dates`` tag
  (``A:B``, e.g. the nightly run's one day).
* ``fold_partitions`` (``YYYY-MM`` from ``folds.first_test_month``): one walk-forward fold per
  test month; a new fold appears as each month starts, so folds extend past the configured
  last month without an edit.
* ``refit_partitions(months)``: fold-level models are fitted once per refit period of
  ``months`` months (a divisor of 12), starting at the first test month; the date-level
  assets read the period's model through a ``TimeWindowPartitionMapping`` (shown in the graph).

Why months (README, design notes): per-trading-day partitions with 273 holiday exclusions
made Dagster's bookkeeping the bottleneck (each planned event serialised the exclusions).
Months carry no exclusions, align with the monthly folds, and number ~330 over the sample.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.settings import get_settings

PARTITION_FMT = "%Y-%m"
DATES_TAG = "kronos/dates"  # "A:B": the run's explicit window of trading days inside its months
NEW_YORK = ZoneInfo("America/New_York")
SESSION_DUE = dt.time(22, 30)  # a session's vendor file is due at 22:30 New York


def _month_start(month: str) -> str:
    return pd.Period(month, "M").start_time.strftime(PARTITION_FMT)


def _monthly(start_month: str) -> dg.TimeWindowPartitionsDefinition:
    # end_offset=1: the current month's partition exists once the month has started.
    return dg.MonthlyPartitionsDefinition(
        start_date=_month_start(start_month), fmt=PARTITION_FMT, end_offset=1
    )


month_partitions = _monthly(get_settings().data.partitions_start.strftime(PARTITION_FMT))
fold_partitions = _monthly(get_settings().folds.first_test_month)


def refit_cron(first_month: str, months: int) -> str:
    """Cron of refit periods of ``months`` months that start at ``first_month``."""
    if 12 % months:
        raise ValueError(f"refit_months must divide 12 (1, 2, 3, 4, 6 or 12), got {months}")
    first = pd.Period(first_month, "M").month
    starts = sorted({(first - 1 + k * months) % 12 + 1 for k in range(12 // months)})
    return f"0 0 1 {','.join(str(m) for m in starts)} *"


def refit_partitions(months: int) -> dg.TimeWindowPartitionsDefinition:
    """Refit periods keyed by their first month (``YYYY-MM``), from the first test month."""
    first = get_settings().folds.first_test_month
    if months == 1:
        return fold_partitions
    return dg.TimeWindowPartitionsDefinition(
        start=_month_start(first), fmt=PARTITION_FMT, cron_schedule=refit_cron(first, months),
        end_offset=1,
    )  # fmt: skip


def refit_period(month: str, first_month: str, months: int) -> str:
    """The refit period (its first month) that test month ``month`` belongs to."""
    m, first = pd.Period(month, "M"), pd.Period(first_month, "M")
    offset = (m - first).n
    if offset < 0:
        raise ValueError(f"month {month} is before the first test month {first_month}")
    return str(first + (offset // months) * months)


def period_months(period: str, months: int) -> list[str]:
    """The test months of the refit period starting at ``period``."""
    return [str(pd.Period(period, "M") + k) for k in range(months)]


def month_key(day: dt.date) -> str:
    return day.strftime(PARTITION_FMT)


def due_session(now: dt.datetime | None = None, calendar: str = "XNYS") -> dt.date:
    """The newest trading session whose vendor file is due at ``now`` (22:30 New York)."""
    local = (now or dt.datetime.now(NEW_YORK)).astimezone(NEW_YORK)
    day = local.date() if local.time() >= SESSION_DUE else local.date() - dt.timedelta(days=1)
    return trading_days(day - dt.timedelta(days=10), day, calendar)[-1].date()


def parse_dates_tag(value: str) -> tuple[dt.date, dt.date]:
    first, _, last = value.partition(":")
    return dt.date.fromisoformat(first), dt.date.fromisoformat(last or first)


def months_window(first_key: str, last_key: str) -> tuple[dt.date, dt.date]:
    return (
        pd.Period(first_key, "M").start_time.date(),
        pd.Period(last_key, "M").end_time.date(),
    )


def run_window(
    first_key: str, last_key: str, tags: dict[str, str], calendar: str = "XNYS"
) -> tuple[dt.date, dt.date]:
    """First and last day (inclusive) a run over months ``first_key..last_key`` covers: the
    months, cut to the run's ``kronos/dates`` window if it has one, else to the newest due
    session. Raises ``dg.Failure`` when nothing of the months is left."""
    start, end = months_window(first_key, last_key)
    if DATES_TAG in tags:
        lo, hi = parse_dates_tag(tags[DATES_TAG])
        start, end = max(start, lo), min(end, hi)
    else:
        end = min(end, due_session(calendar=calendar))
    if start > end:
        raise dg.Failure(
            description=f"months {first_key}..{last_key} hold no trading day to run "
            f"({tags.get(DATES_TAG, 'no session due yet')})",
            allow_retries=False,
        )
    return start, end


def partition_window(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """First and last day (inclusive) of the partitions this run materializes."""
    keys = context.partition_key_range
    return run_window(keys.start, keys.end, context.run.tags, get_settings().data.calendar)

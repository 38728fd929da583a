"""Partitions: one per weekday for everything dated, one per test month for what is fitted.

* ``day_partitions`` (``YYYY-MM-DD`` from ``data.partitions_start``): the data assets
  (``raw_bars`` ... ``labels_forward``). One partition per weekday, no holiday list: an
  exchange holiday is a partition that materializes as "no session", which its checks accept.
  A day's window opens at 22:30 New York, when the vendor's end-of-day file is due, and
  ``end_offset=1`` makes the partition exist from that moment: the newest partition is the
  newest session that is due, so neither the UI nor a backfill can ask for a day too early.
* ``score_day_partitions``: the same weekdays from the first test month: what is predicted
  per date (``baseline_scores``, ``kronos_forecasts``, ``kronos_scores``,
  ``kronos_head_scores``, ``signals``). Before the first fold there is no model to score with.
* ``fold_partitions`` (``YYYY-MM`` from ``folds.first_test_month``, New York time): one
  walk-forward fold per test month, for what is fitted (``lightgbm_models``,
  ``kronos_checkpoint``, ``kronos_heads``); a new fold appears as each month starts.

The mappings between them (shown in the asset graph) are all ``TimeWindowPartitionMapping``s:

* ``FOLD_OF_DAY`` (date-level asset -> its fold's model): ``end_offset=-1`` collapses a day's
  window to its opening instant (22:30 on the day itself), which lies inside exactly one
  month. Without it a Friday's window, which runs to Monday 22:30, would also reach into the
  next month when that month starts on a weekend.
* ``HISTORY_BEFORE_FOLD`` (model -> the daily history it trains on): every day before the
  fold's test month (``end_offset=-1`` month), back to the first partition.
* ``history_days(n)`` (date-level asset -> the last ``n`` weekdays of history it reads).
* ``LABEL_HORIZON`` (a day's labels -> the prices of the sessions up to its longest horizon).

Every other mapping looks backward in time: nothing fitted or scored for a date depends on a
later partition. Labels are the future by definition; nothing fitted reads one before it
matured (the folds purge them). A run's window is its partition range (``partition_window``).
"""

from __future__ import annotations

import datetime as dt
import warnings
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.runs import DAY_FMT  # the weekday keys
from kronos_pipeline.runs import MONTH_FMT as PARTITION_FMT  # folds and refit periods
from kronos_pipeline.settings import get_settings

NEW_YORK_TZ = "America/New_York"
NEW_YORK = ZoneInfo(NEW_YORK_TZ)
SESSION_DUE = dt.time(22, 30)  # a session's vendor file is due at 22:30 New York
WEEKDAY_CRON = f"{SESSION_DUE.minute} {SESSION_DUE.hour} * * 1-5"
# Months back a model's history mapping reaches: more than any sample (it stops at the first
# partition), so an expanding window is declared whole.
ALL_HISTORY_MONTHS = 600


def _weekdays(start: dt.date) -> dg.TimeWindowPartitionsDefinition:
    return dg.TimeWindowPartitionsDefinition(
        start=start.strftime(DAY_FMT), cron_schedule=WEEKDAY_CRON, fmt=DAY_FMT,
        timezone=NEW_YORK_TZ, end_offset=1,
    )  # fmt: skip


def _month_start(month: str) -> str:
    return pd.Period(month, "M").start_time.strftime(PARTITION_FMT)


def _monthly(start_month: str) -> dg.TimeWindowPartitionsDefinition:
    # end_offset=1: the current month's partition exists once the month has started.
    return dg.MonthlyPartitionsDefinition(
        start_date=_month_start(start_month), fmt=PARTITION_FMT, end_offset=1,
        timezone=NEW_YORK_TZ,
    )  # fmt: skip


day_partitions = _weekdays(get_settings().data.partitions_start)
score_day_partitions = _weekdays(
    pd.Period(get_settings().folds.first_test_month, "M").start_time.date()
)
fold_partitions = _monthly(get_settings().folds.first_test_month)

FOLD_OF_DAY = dg.TimeWindowPartitionMapping(end_offset=-1)
HISTORY_BEFORE_FOLD = dg.TimeWindowPartitionMapping(start_offset=-ALL_HISTORY_MONTHS, end_offset=-1)


#: Weekday partitions a day's labels reach forward: the longest horizon in sessions, plus
#: room for the exchange holidays inside it (at most 10 in any 95 weekdays).
LABEL_REACH = max(get_settings().labels.horizons) + 10
#: The one forward mapping of the graph: a day's labels -> the prices of the sessions after it.
with warnings.catch_warnings():  # allow_nonexistent_upstream_partitions is marked beta
    warnings.simplefilter("ignore", dg.BetaWarning)
    LABEL_HORIZON = dg.TimeWindowPartitionMapping(
        start_offset=0, end_offset=LABEL_REACH, allow_nonexistent_upstream_partitions=True
    )
#: Calendar days back whose labels can still mature (the reach, in calendar days).
LABEL_LOOKBACK = dt.timedelta(days=LABEL_REACH * 7 // 5 + 3)


def history_days(weekdays: int) -> dg.TimeWindowPartitionMapping:
    """A date-level asset reads the last ``weekdays`` weekday partitions of history and its own."""
    return dg.TimeWindowPartitionMapping(start_offset=-weekdays)


def refit_cron(first_month: str, months: int) -> str:
    """Cron of refit periods of ``months`` months that start at ``first_month``."""
    if 12 % months:
        raise ValueError(f"refit_months must divide 12 (1, 2, 3, 4, 6 or 12), got {months}")
    first = pd.Period(first_month, "M").month
    starts = sorted({(first - 1 + k * months) % 12 + 1 for k in range(12 // months)})
    return f"0 0 1 {','.join(str(m) for m in starts)} *"


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
    """The fold (test month) partition of ``day``."""
    return day.strftime(PARTITION_FMT)


def day_key(day: dt.date) -> str:
    """The weekday partition of ``day``."""
    return day.strftime(DAY_FMT)


def due_session(now: dt.datetime | None = None, calendar: str = "XNYS") -> dt.date:
    """The newest trading session whose vendor file is due at ``now`` (22:30 New York)."""
    local = (now or dt.datetime.now(NEW_YORK)).astimezone(NEW_YORK)
    day = local.date() if local.time() >= SESSION_DUE else local.date() - dt.timedelta(days=1)
    return trading_days(day - dt.timedelta(days=10), day, calendar)[-1].date()


def partition_window(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """First and last day (inclusive) of the weekday partitions this run materializes."""
    keys = context.partition_key_range
    return dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)


def weekdays_of(fold_id: str) -> tuple[str, str]:
    """First and last weekday partition key of test month ``fold_id``."""
    days = pd.bdate_range(*fold_window(fold_id))
    return day_key(days[0].date()), day_key(days[-1].date())


def fold_window(fold_id: str) -> tuple[dt.date, dt.date]:
    """First and last calendar day of test month ``fold_id``."""
    month = pd.Period(fold_id, "M")
    return month.start_time.date(), month.end_time.date()

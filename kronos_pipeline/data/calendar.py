"""Trading days from a real exchange calendar (NYSE by default), never from weekdays."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import exchange_calendars as xcals
import pandas as pd

DEFAULT_CALENDAR = "XNYS"


@lru_cache(maxsize=8)
def _calendar(name: str, start: str, end: str) -> xcals.ExchangeCalendar:
    return xcals.get_calendar(name, start=start, end=end)


def trading_days(
    start: dt.date | str | pd.Timestamp,
    end: dt.date | str | pd.Timestamp,
    calendar: str = DEFAULT_CALENDAR,
) -> pd.DatetimeIndex:
    """Sessions of ``calendar`` between ``start`` and ``end`` inclusive, as naive midnight dates."""
    start_ts, end_ts = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    if end_ts < start_ts:
        return pd.DatetimeIndex([])
    # exchange-calendars wants bounds inside its own range; build a calendar wide enough once.
    cal = _calendar(
        calendar, "1990-01-02", str(max(end_ts, pd.Timestamp.today()).year + 1) + "-12-30"
    )
    sessions = cal.sessions_in_range(start_ts, end_ts)
    return pd.DatetimeIndex(sessions.tz_localize(None) if sessions.tz else sessions).rename("date")


def is_trading_day(day: dt.date | str | pd.Timestamp, calendar: str = DEFAULT_CALENDAR) -> bool:
    """True when ``day`` is a session of ``calendar``."""
    ts = pd.Timestamp(day).normalize()
    return len(trading_days(ts, ts, calendar)) == 1


def shift_trading_days(
    day: dt.date | str | pd.Timestamp, n: int, calendar: str = DEFAULT_CALENDAR
) -> pd.Timestamp:
    """The session ``n`` trading days after ``day`` (before, for negative ``n``).

    ``day`` itself must be a session; ``n`` counts trading days, not calendar days.
    """
    ts = pd.Timestamp(day).normalize()
    span = pd.Timedelta(days=abs(n) * 2 + 10)
    days = trading_days(ts - span, ts + span, calendar)
    pos = days.get_indexer([ts])[0]
    if pos < 0:
        raise ValueError(f"{ts.date()} is not a {calendar} trading day")
    return days[pos + n]

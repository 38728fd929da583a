"""Partitions: one per NYSE trading day; each run may cover a range (single-run backfills)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pandas as pd

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.settings import get_settings

PARTITION_FMT = "%Y-%m-%d"
# Weekday partitions at midnight, minus the exchange's weekday holidays = its sessions.
WEEKDAY_CRON = "0 0 * * 1-5"


def _weekday_holidays(start: dt.date, calendar: str) -> list[dt.datetime]:
    horizon = pd.Timestamp.today().normalize() + pd.DateOffset(years=2)
    weekdays = pd.bdate_range(start, horizon)
    sessions = trading_days(start, horizon, calendar)
    return [d.to_pydatetime() for d in weekdays.difference(sessions)]


def _trading_day_partitions() -> dg.TimeWindowPartitionsDefinition:
    data = get_settings().data
    return dg.TimeWindowPartitionsDefinition(
        start=data.partitions_start.strftime(PARTITION_FMT),
        fmt=PARTITION_FMT,
        cron_schedule=WEEKDAY_CRON,
        exclusions=_weekday_holidays(data.partitions_start, data.calendar),
        end_offset=1,  # the current day's partition exists once the day has started
    )


trading_day_partitions = _trading_day_partitions()


def partition_window(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """First and last trading day (inclusive) of the partitions this run materializes."""
    keys = context.partition_key_range
    return (
        dt.datetime.strptime(keys.start, PARTITION_FMT).date(),
        dt.datetime.strptime(keys.end, PARTITION_FMT).date(),
    )

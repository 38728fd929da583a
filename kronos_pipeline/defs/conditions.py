"""Declarative automation: when each asset runs by itself, as Dagster's automation conditions.

The night of a session D, with nothing but the daemon running:

1. ``vendor_files`` (an observable source): ``observe_vendor_folder`` looks at the folder every
   minute and records an observation (no run) only when its fingerprint changed, so a
   delivered file is a new data version.
2. ``raw_bars`` and its side tables (:data:`SESSION_BARS`): the newest weekday partition runs
   when its window opens at 22:30 New York (the file is due); a partition of the last week
   still missing (a late file, a run that failed) runs when the vendor folder changes. A day
   already loaded is not rerun by a folder change (a restated file: rerun it by hand).
3. Everything per day after it (:data:`DAILY`, :data:`SCORES`) is eager over the last week: a
   day runs when its inputs updated, never while one is missing or running; a day's scores
   and signal are not rerun as its labels mature.
4. ``labels_forward`` (:data:`MATURING_LABELS`): a day's labels are rerun while they can still
   mature, whenever the prices of a session of their horizon updated.
5. ``folds`` (:data:`ON_UPDATE`) after any day's features or labels.
6. A fold's models (:data:`MISSING_MODEL`): the newest fold's, once, when it lacks them and the
   folds changed (the first session of a month): never refitted by later sessions.
7. The evaluation (:data:`NIGHTLY_EVALUATION`): once per night, after every input updated
   since 22:30.

A failed run is not retried in a loop: each condition fires again only on a new reason (a
new file, a new session, an upstream update).
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from kronos_pipeline.data.sources import source_fingerprint
from kronos_pipeline.defs.partitions import NEW_YORK_TZ, WEEKDAY_CRON
from kronos_pipeline.deployment import AUTOMATION_SENSOR
from kronos_pipeline.settings import get_settings

#: The tag an observation's data version is stored under (Dagster's).
DATA_VERSION_TAG = "dagster/data_version"

AC = dg.AutomationCondition
#: Seconds between looks at the vendor folder (its fingerprint is a few hundred ``stat`` calls).
OBSERVE_INTERVAL_S = 60
#: How far back a late session is still picked up by itself (older ones: a backfill).
LATE_SESSION_LOOKBACK = dt.timedelta(days=7)

_LATEST = AC.in_latest_time_window()
_RECENT = AC.in_latest_time_window(LATE_SESSION_LOOKBACK)
_DUE = AC.cron_tick_passed(WEEKDAY_CRON, NEW_YORK_TZ)

SESSION_BARS = (
    _RECENT
    & ((_LATEST & _DUE) | (AC.missing() & AC.any_deps_updated())).since_last_handled()
    & ~AC.in_progress()
).with_label("the session's bars: due at 22:30 New York; a missing one when the folder changes")


def _eager_days(updated: dg.AutomationCondition) -> dg.AutomationCondition:
    return (
        _RECENT
        & (AC.newly_missing() | updated).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    )


DAILY = _eager_days(AC.any_deps_updated()).with_label("eager over the last week of sessions")
#: A day's scores and signal: as DAILY, but its labels maturing on later nights do not score it
#: again (a published signal stays as published; only the planted-leak control reads them).
SCORES = _eager_days(
    AC.any_deps_updated().ignore(dg.AssetSelection.assets("labels_forward"))
).with_label("eager over the last week of sessions; not again as its labels mature")


def maturing_labels(lookback: dt.timedelta) -> dg.AutomationCondition:
    """Labels of the days whose horizon can still mature (``lookback``), rerun when a price
    session inside their horizon updated. Prices beyond the newest session do not exist yet,
    so they are not waited for."""
    return (
        AC.in_latest_time_window(lookback)
        & (AC.newly_missing() | AC.any_deps_updated()).since_last_handled()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("labels that can still mature: after the prices of their horizon update")


ON_UPDATE = (
    AC.any_deps_updated().since_last_handled() & ~AC.any_deps_in_progress() & ~AC.in_progress()
).with_label("after any input updated")

MISSING_MODEL = (
    _LATEST
    & AC.missing()
    & AC.any_deps_updated().since_last_handled()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("the newest fold's model, once, when its folds exist")

NIGHTLY_EVALUATION = AC.on_cron(WEEKDAY_CRON, NEW_YORK_TZ).with_label(
    "once a night, after every input updated since 22:30 New York"
)


#: ``raw_bars``' freshness: each session's bars land between its 22:30 due time and 01:30
#: New York (a holiday lands as "no session"); the freshness daemon judges it, the UI shows
#: it, and ``alert_on_stale_data`` posts a failure.
SESSION_FRESHNESS = dg.FreshnessPolicy.cron(
    deadline_cron="30 1 * * 2-6", lower_bound_delta=dt.timedelta(hours=3), timezone=NEW_YORK_TZ
)


@dg.sensor(
    name="observe_vendor_folder",
    minimum_interval_seconds=OBSERVE_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def observe_vendor_folder(context: dg.SensorEvaluationContext):
    """Record an observation of ``vendor_files`` whose data version is the folder's
    fingerprint, when it differs from the last one recorded (the cursor): a runless event, so
    watching the folder costs no run, and a new version is what the session's bars wait for."""
    fingerprint = source_fingerprint(get_settings().data)
    if context.cursor == fingerprint:
        return dg.SkipReason(f"vendor folder unchanged ({fingerprint})")
    context.update_cursor(fingerprint)
    return dg.SensorResult(
        asset_events=[dg.AssetObservation("vendor_files", tags={DATA_VERSION_TAG: fingerprint})]
    )


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates every condition above, running with the daemon."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(include_sources=True),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Runs the pipeline by itself: each asset's automation condition "
        "(kronos_pipeline/defs/conditions.py).",
    )

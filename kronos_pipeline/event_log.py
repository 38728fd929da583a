"""SQLite event-log storage that writes a ranged step's materializations in one batch.

Dagster hands a step's per-partition materializations to ``store_event_batch`` in batches of
``DAGSTER_EVENT_BATCH_SIZE`` (:data:`kronos_pipeline.instance.BOOKKEEPING_ENV`). Postgres
stores such a batch with one insert; Dagster's SQLite storage falls back to one event at a
time, each opening two connections (the run's shard and the cross-run index). A twelve-year
data run records 8 assets x 3,130 weekday partitions, about 25,000 events: minutes of pure
bookkeeping one by one.

:class:`BatchedSqliteEventLogStorage` is Dagster's own ``SqliteEventLogStorage`` with a
``store_event_batch`` that does what the Postgres storage does: the batch's rows in one insert
into the run's shard and one into the index, the asset-event tags of all of them, and the
asset's summary row from the last event. Anything else (other event kinds, mixed runs) goes
to Dagster's own path. The history stays where Dagster keeps it
(``$DAGSTER_HOME/history/runs``), so switching an instance to it loses nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagster._config import Field, StringSource
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData

BATCHED_EVENTS = frozenset({DagsterEventType.ASSET_MATERIALIZATION})


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` under ``<dagster_home>/history/runs`` with batched writes."""

    def __init__(self, dagster_home: str, inst_data: ConfigurableClassData | None = None):
        self.dagster_home = dagster_home
        super().__init__(os.path.join(dagster_home, "history", "runs"), inst_data=inst_data)

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {"dagster_home": Field(StringSource, is_required=True)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, dagster_home=config_value["dagster_home"])

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        kinds = {e.dagster_event_type for e in events}
        if not events or not kinds <= BATCHED_EVENTS or len({e.run_id for e in events}) != 1:
            super().store_event_batch(events)
            return
        statement = self.prepare_insert_event_batch(events)
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(statement)
        with self.index_transaction() as conn:
            rows = conn.execute(statement.returning(SqlEventLogStorageTable.c.id)).fetchall()
            ids = [int(row[0]) for row in rows]
            if len(ids) != len(events):
                raise RuntimeError(f"stored {len(ids)} of a batch of {len(events)} events")
            self._store_asset_event_tags(conn, list(events), ids)
            # Like Postgres' batch: the asset's summary row from the newest event only.
            self._store_asset_event(conn, events[-1], ids[-1])

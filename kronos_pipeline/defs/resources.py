"""Resources: the DuckDB warehouse, configured from settings."""

from __future__ import annotations

import dagster as dg

from kronos_pipeline.settings import get_settings
from kronos_pipeline.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file; every connection goes through its single-writer lock."""

    path: str
    lock_timeout_s: float

    def get(self) -> Warehouse:
        return Warehouse(self.path, self.lock_timeout_s)


def default_resources() -> dict[str, object]:
    settings = get_settings()
    return {
        "warehouse": WarehouseResource(
            path=str(settings.warehouse.duckdb_path),
            lock_timeout_s=settings.warehouse.lock_timeout_s,
        )
    }

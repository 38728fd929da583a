"""Resources: the DuckDB warehouse and the run's settings, both configured from settings.

Every run records the configuration it ran with: the first step that initializes either
resource tags the run with the settings fingerprint (``kronos/settings_fingerprint``) and
logs the full settings JSON once, so two runs with the same fingerprint ran the same settings.
"""

from __future__ import annotations

import dagster as dg

from kronos_pipeline.settings import Settings, get_settings, settings_fingerprint
from kronos_pipeline.warehouse import Warehouse

SETTINGS_FINGERPRINT_TAG = "kronos/settings_fingerprint"


def record_settings(context: dg.InitResourceContext, settings: Settings) -> None:
    """Tag the run with the settings fingerprint and log the settings JSON (once per run)."""
    instance, run_id = context.instance, context.run_id
    if instance is None or run_id is None:  # built outside a run (tests, scripts)
        return
    fingerprint = settings_fingerprint(settings)
    run = instance.get_run_by_id(run_id)
    if run is not None and run.tags.get(SETTINGS_FINGERPRINT_TAG) == fingerprint:
        return
    instance.add_run_tags(run_id, {SETTINGS_FINGERPRINT_TAG: fingerprint})
    context.log.info(f"settings {fingerprint}: {settings.model_dump_json()}")


class SettingsResource(dg.ConfigurableResource):
    """The settings a run uses, as one JSON document (every field, environment applied).

    Assets that take this resource read ``settings.get()`` instead of ``get_settings()``;
    the resource's config is then the run's configuration, visible on the resources page.
    """

    settings_json: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SettingsResource:
        return cls(settings_json=settings.model_dump_json())

    def get(self) -> Settings:
        return Settings.model_validate_json(self.settings_json)

    @property
    def fingerprint(self) -> str:
        return settings_fingerprint(self.get())

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        record_settings(context, self.get())


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file; every connection goes through its single-writer lock."""

    path: str
    lock_timeout_s: float

    def get(self) -> Warehouse:
        return Warehouse(self.path, self.lock_timeout_s)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every asset takes the warehouse, while the assets still read get_settings():
        # the run process's own settings are what the run used.
        record_settings(context, get_settings())


def default_resources() -> dict[str, object]:
    settings = get_settings()
    return {
        "warehouse": WarehouseResource(
            path=str(settings.warehouse.duckdb_path),
            lock_timeout_s=settings.warehouse.lock_timeout_s,
        ),
        "settings": SettingsResource.from_settings(settings),
    }

"""Resources: the DuckDB warehouse and the run's settings, both configured from settings.

Every run records the configuration it ran with: the first step that initializes either
resource tags the run with the settings fingerprint (``kronos/settings_fingerprint``) and
logs the full settings JSON once, so two runs with the same fingerprint ran the same settings.

Settings are production by default. A run tagged ``kronos/preset=<name>`` (a preset of
``settings.PRESETS``, e.g. ``smoke``; the Launchpad's "Edit tags") runs that preset: the
warehouse resource, which every asset step initializes, applies it to the step's process
before the asset reads its settings, and restores the previous preset when the step ends.
"""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from kronos_pipeline.settings import (
    PRESETS,
    Settings,
    SettingsError,
    active_preset,
    get_settings,
    settings_fingerprint,
    use_preset,
)
from kronos_pipeline.warehouse import Warehouse

SETTINGS_FINGERPRINT_TAG = "kronos/settings_fingerprint"
PRESET_TAG = "kronos/preset"


def run_preset(context: dg.InitResourceContext) -> str | None:
    """The preset a run's ``kronos/preset`` tag names (None: production settings)."""
    run = context.dagster_run
    name = (run.tags.get(PRESET_TAG) if run is not None else None) or None
    if name is not None and name not in PRESETS:
        raise SettingsError(
            f"run tag {PRESET_TAG}={name!r} names no preset; known presets: {', '.join(PRESETS)}"
        )
    return name


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
    _previous_preset: str | None = PrivateAttr(default=None)

    def get(self) -> Warehouse:
        return Warehouse(self.path, self.lock_timeout_s)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every asset takes the warehouse, while the assets still read get_settings():
        # the run's preset is applied here, and the process's settings are what the run used.
        self._previous_preset = active_preset()
        preset = run_preset(context)
        if preset is not None and preset != self._previous_preset:
            use_preset(preset)
        record_settings(context, get_settings())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if active_preset() != self._previous_preset:
            use_preset(self._previous_preset)


def default_resources() -> dict[str, object]:
    settings = get_settings()
    return {
        "warehouse": WarehouseResource(
            path=str(settings.warehouse.duckdb_path),
            lock_timeout_s=settings.warehouse.lock_timeout_s,
        ),
        "settings": SettingsResource.from_settings(settings),
    }

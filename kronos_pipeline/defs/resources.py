"""Resources: the run's configuration and the warehouse lake.

``settings`` (:class:`SettingsResource`) is the run's configuration in Dagster: the per-run
choices (SMOKE or production, the Kronos device, dtype, batch size and sampling, the
strategy) as typed fields, and ``overrides`` for any other setting by its dotted name. It is
configured at launch, so the Launchpad shows it with its defaults, the run stores it, and a
re-execution reuses it. With nothing set a run is production. Each step applies it over the
code location's environment before the asset reads its settings (the warehouse depends on
it, and every asset takes the warehouse), and restores the previous configuration after.

Every run records what it ran with: the run is tagged with the fingerprint of the resolved
settings (``kronos/settings_fingerprint``) and the step logs the settings JSON once, so two
runs with the same fingerprint ran the same settings.

A run tagged ``kronos/preset=<name>`` (a preset of ``settings.PRESETS``) runs that preset when
its config leaves ``preset`` at production: what ``kronos-pipeline smoke`` sets, besides the
config, so that the runs list shows which runs were SMOKE.
"""

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from kronos_pipeline.settings import (
    PRESETS,
    Settings,
    SettingsError,
    _merge,
    active_run_config,
    dotted_overrides,
    get_settings,
    load_settings,
    settings_fingerprint,
    use_run_config,
)
from kronos_pipeline.warehouse import Warehouse

SETTINGS_FINGERPRINT_TAG = "kronos/settings_fingerprint"
PRESET_TAG = "kronos/preset"
PRODUCTION = "production"
#: The typed per-run choices of :class:`SettingsResource` and the settings they set.
RUN_CHOICES = {
    "device": "kronos.device",
    "dtype": "kronos.dtype",
    "batch_size": "kronos.batch_size",
    "sample_count": "kronos.sample_count",
    "top_p": "kronos.top_p",
    "temperature": "kronos.temperature",
    "strategy": "kronos.strategy",
}


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
    """The run's configuration: a preset, the per-run choices, and overrides by dotted name,
    applied over the code location's environment. Unset fields leave the environment's value
    (production defaults when nothing is set)."""

    preset: str = Field(
        default=PRODUCTION,
        description=f"'{PRODUCTION}' (every fold, 8 sampled paths, the full training budget) "
        f"or a preset of settings.PRESETS: {', '.join(PRESETS)}",
    )
    device: str | None = Field(default=None, description="kronos.device: auto, cpu, cuda, mps")
    dtype: str | None = Field(default=None, description="kronos.dtype: float32 or bfloat16")
    batch_size: int | None = Field(default=None, description="kronos.batch_size (rows)")
    sample_count: int | None = Field(default=None, description="kronos.sample_count (paths)")
    top_p: float | None = Field(default=None, description="kronos.top_p (nucleus)")
    temperature: float | None = Field(default=None, description="kronos.temperature")
    strategy: str | None = Field(
        default=None, description="kronos.strategy: scratch, finetune or published"
    )
    overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Any other setting by dotted name, e.g. {'lightgbm.num_boost_round': "
        "'300'} (values as in KRONOS_* variables: JSON or text)",
    )
    _previous: tuple[str | None, dict[str, Any]] = PrivateAttr(default=(None, {}))

    def preset_name(self, context: dg.InitResourceContext | None = None) -> str | None:
        """The preset to apply: the config's, else the run's ``kronos/preset`` tag."""
        if self.preset != PRODUCTION:
            if self.preset not in PRESETS:
                raise SettingsError(
                    f"settings.preset {self.preset!r}: known presets: {PRODUCTION}, "
                    + ", ".join(PRESETS)
                )
            return self.preset
        return run_preset(context) if context is not None else None

    def override_tree(self) -> dict[str, Any]:
        """The typed choices and ``overrides`` as nested settings overrides."""
        flat: dict[str, Any] = dict(self.overrides)
        for field, path in RUN_CHOICES.items():
            if getattr(self, field) is not None:
                flat[path] = getattr(self, field)
        return dotted_overrides(flat)

    def get(self) -> Settings:
        """The settings this configuration resolves to (environment, preset, overrides)."""
        preset = self.preset_name()
        return load_settings(**_merge(PRESETS.get(preset or "", {}), self.override_tree()))

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._previous = active_run_config()
        use_run_config(self.preset_name(context), self.override_tree())
        record_settings(context, get_settings())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        use_run_config(*self._previous)


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse lake at ``path`` (a folder or fsspec URL); no lock, writers of different
    partitions run in parallel. It depends on the run's ``settings``, so that every asset step
    (each takes the warehouse) runs with the run's configuration applied. ``legacy_duckdb``:
    a DuckDB file of the earlier layout, refused while it is not migrated."""

    path: str
    legacy_duckdb: str | None = None
    settings: dg.ResourceDependency[SettingsResource]

    def get(self) -> Warehouse:
        return Warehouse(self.path, self.legacy_duckdb)


def warehouse_resources(path: str, legacy_duckdb: str | None = None) -> dict[str, object]:
    """``warehouse`` at ``path`` and the ``settings`` it depends on, configured at launch."""
    settings = SettingsResource.configure_at_launch()
    return {
        "settings": settings,
        "warehouse": WarehouseResource(path=path, legacy_duckdb=legacy_duckdb, settings=settings),
    }


def default_resources() -> dict[str, object]:
    warehouse = get_settings().warehouse
    return warehouse_resources(warehouse.lake_root, str(warehouse.duckdb_path))

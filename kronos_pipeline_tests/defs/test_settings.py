"""Settings are strict: an unknown key, a misspelled ``KRONOS_`` variable or an invalid value
fails at load with a message naming the variable, the value and what is wrong; the code
location refuses to load with that message; every run records the settings it used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from kronos_pipeline.defs.resources import (
    PRESET_TAG,
    SETTINGS_FINGERPRINT_TAG,
    SettingsResource,
    WarehouseResource,
    warehouse_resources,
)
from kronos_pipeline.settings import (
    PRESETS,
    Settings,
    SettingsError,
    StrictModel,
    active_preset,
    active_run_config,
    get_settings,
    load_settings,
    settings_fingerprint,
    use_preset,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _error(environ: dict[str, str], **overrides) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(environ=environ, **overrides)
    return str(info.value)


def test_every_settings_section_forbids_unknown_keys():
    sections = [Settings] + [
        f.annotation for f in Settings.model_fields.values() if isinstance(f.annotation, type)
    ]
    models = [m for m in sections if issubclass(m, StrictModel)]
    assert len(models) == 1 + sum(
        isinstance(f.annotation, type) and issubclass(f.annotation, StrictModel)
        for f in Settings.model_fields.values()
    )
    assert all(m.model_config.get("extra") == "forbid" for m in models)
    assert len(models) >= 14


def test_a_misspelled_variable_is_named_with_the_right_spelling():
    message = _error({"KRONOS_DATA__VENDORDIR": "/data"})
    assert "KRONOS_DATA__VENDORDIR: unknown setting data.vendordir" in message
    assert "did you mean KRONOS_DATA__VENDOR_DIR" in message


def test_an_unknown_section_and_an_unknown_keyword_fail():
    assert "KRONOS_FOLDZ__SMOKE_FOLDS: unknown setting foldz" in _error(
        {"KRONOS_FOLDZ__SMOKE_FOLDS": "2"}
    )
    assert "unknown setting universe.top_m" in _error({}, universe={"top_m": 5})


def test_month_13_fails_at_load_naming_variable_and_value():
    message = _error({"KRONOS_FOLDS__FIRST_TEST_MONTH": "2015-13"})
    assert "KRONOS_FOLDS__FIRST_TEST_MONTH='2015-13'" in message
    assert "MM in 01..12" in message


@pytest.mark.parametrize("month", ["2015-1", "15-01", "2015/01", "january"])
def test_malformed_months_fail(month):
    assert "is not a month" in _error({"KRONOS_FOLDS__LAST_TEST_MONTH": month})


def test_a_first_month_after_the_last_fails():
    message = _error(
        {"KRONOS_FOLDS__FIRST_TEST_MONTH": "2019-06", "KRONOS_FOLDS__LAST_TEST_MONTH": "2019-05"}
    )
    assert "first_test_month 2019-06 is after last_test_month 2019-05" in message
    assert "KRONOS_FOLDS__FIRST_TEST_MONTH" in message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KRONOS_UNIVERSE__TOP_N", "0", "top_n must be > 0"),
        ("KRONOS_COSTS__COST_BPS", "-5", "cost_bps must be >= 0"),
        ("KRONOS_LABELS__HORIZONS", "[20, 20]", "horizons must be distinct positive"),
        ("KRONOS_ALERTS__WEBHOOK_URL", "127.0.0.1:9000/hook", "must be an http(s) URL"),
        ("KRONOS_DATA__CALENDAR", "NYSEE", "unknown exchange calendar 'NYSEE'"),
        ("KRONOS_DATA__VENDOR_DIR", "/no/such/folder", "vendor_dir /no/such/folder does not exist"),
        ("KRONOS_DATA__SYNTHETIC_END", "2001-01-01", "must be before synthetic_end 2001-01-01"),
        ("KRONOS_KRONOS__LOOKBACK", "600", "lookback 600 exceeds max_context 512"),
        ("KRONOS_MODE", "fast", "mode: Input should be 'smoke' or 'full'"),
        ("KRONOS_UNIVERSE__MIN_PRICE", "cheap", "valid number"),
    ],
)
def test_invalid_values_fail_naming_the_variable(variable, value, expected):
    message = _error({variable: value})
    assert variable in message
    assert expected in message


def test_every_error_is_reported_at_once():
    message = _error({"KRONOS_DATA__VENDORDIR": "/x", "KRONOS_COSTS__COST_BPS": "-1"})
    assert "KRONOS_DATA__VENDORDIR" in message and "KRONOS_COSTS__COST_BPS" in message


def test_valid_values_parse_and_numeric_text_stays_text():
    s = load_settings(
        environ={
            "KRONOS_REPORT__RUN_NAME": "2024",
            "KRONOS_UNIVERSE__TOP_N": "null",
            "KRONOS_LABELS__HORIZONS": "[20, 60]",
            "KRONOS_COSTS__COST_BPS": "5",
            "KRONOS_FEATURES__USE_SECTOR_RELATIVE": "false",
            "KRONOS_TEST_CHROMIUM": "/usr/bin/chromium",  # a test tool's variable, not a setting
        }
    )
    assert s.report.run_name == "2024"
    assert s.universe.top_n is None
    assert s.labels.horizons == (20, 60)
    assert s.costs.cost_bps == 5.0
    assert s.features.use_sector_relative is False


def test_fingerprint_changes_with_any_value_and_only_then():
    base = load_settings(environ={})
    assert settings_fingerprint(base) == settings_fingerprint(load_settings(environ={}))
    changed = load_settings(environ={"KRONOS_COSTS__COST_BPS": "11"})
    assert settings_fingerprint(changed) != settings_fingerprint(base)


def test_the_code_location_refuses_to_load_with_the_message(tmp_path):
    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "KRONOS_FOLDS__FIRST_TEST_MONTH": "2015-13"}
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "kronos_pipeline.definitions"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "KRONOS_FOLDS__FIRST_TEST_MONTH='2015-13'" in out, out[-3000:]


def test_the_cli_exits_with_the_message_and_no_traceback(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "KRONOS_DATA__VENDORDIR": "/x"}
    proc = subprocess.run(
        [sys.executable, "-m", "kronos_pipeline.cli", "report"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "did you mean KRONOS_DATA__VENDOR_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_records_its_settings_fingerprint_as_a_tag(tmp_path):
    settings = get_settings()
    resource = SettingsResource()

    @dg.asset
    def reads_settings(settings: SettingsResource) -> None:
        assert settings.get() == get_settings()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([reads_settings], resources={"settings": resource}, instance=instance)
    assert result.success
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags[SETTINGS_FINGERPRINT_TAG] == settings_fingerprint(settings)
    logged = [
        e.message for e in instance.all_logs(result.run_id) if "settings " in (e.message or "")
    ]
    assert logged and json.loads(logged[0].split(": ", 1)[1]) == json.loads(
        settings.model_dump_json()
    )


def test_with_nothing_set_settings_are_production():
    s = load_settings(environ={})
    assert s.mode == "full"
    assert s.kronos_sampling == {"sample_count": 8, "temperature": 1.0, "top_k": 0, "top_p": 0.9}
    assert s.kronos_training.train_max_minutes == s.kronos.train_max_minutes == 3.0
    assert s.effective_top_n is None  # the configured universe (universe.top_n), not SMOKE's


def test_the_process_settings_are_production_until_the_smoke_preset_is_applied(monkeypatch):
    monkeypatch.delenv("KRONOS_MODE", raising=False)
    use_preset(None)
    try:
        assert get_settings().mode == "full" and get_settings().kronos_sampling["sample_count"] == 8
        use_preset("smoke")
        assert (
            get_settings().mode == "smoke" and get_settings().kronos_sampling["sample_count"] == 1
        )
        with pytest.raises(SettingsError, match="unknown preset 'fast'; known presets: smoke"):
            use_preset("fast")
    finally:
        use_preset(None)
    assert get_settings().mode == "full"


def test_smoke_decodes_greedily_and_fits_kronos_within_its_own_budget():
    smoke = load_settings(
        environ={"KRONOS_KRONOS__SMOKE_TRAIN_MAX_MINUTES": "0.5"}, **PRESETS["smoke"]
    )
    full = load_settings(environ={})
    assert smoke.mode == "smoke" and smoke.kronos_training.train_max_minutes == 0.5
    assert smoke.kronos.train_max_minutes == 3.0  # the setting itself is untouched
    assert smoke.kronos_sampling["sample_count"] == 1 and smoke.kronos_sampling["top_k"] == 1
    assert smoke.effective_top_n == 100
    assert full.kronos_training.train_max_minutes == full.kronos.train_max_minutes == 3.0
    assert full.kronos_sampling["sample_count"] == 8
    error = _error({"KRONOS_KRONOS__SMOKE_TRAIN_MAX_MINUTES": "0"})
    assert "KRONOS_KRONOS__SMOKE_TRAIN_MAX_MINUTES='0'" in error and "must be > 0" in error


def test_a_run_tagged_with_the_smoke_preset_runs_it_and_the_next_run_is_production(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("KRONOS_MODE", raising=False)
    use_preset(None)
    seen = []

    @dg.asset
    def reads_settings(warehouse: WarehouseResource) -> None:
        s = get_settings()
        seen.append(
            (s.mode, s.kronos_sampling["sample_count"], s.kronos_training.train_max_minutes)
        )

    resources = warehouse_resources(str(tmp_path / "lake"))
    instance = dg.DagsterInstance.ephemeral()
    smoke = dg.materialize(
        [reads_settings], resources=resources, instance=instance, tags={PRESET_TAG: "smoke"}
    )
    production = dg.materialize([reads_settings], resources=resources, instance=instance)
    assert seen == [("smoke", 1, 1.0), ("full", 8, 3.0)]
    assert active_preset() is None
    fingerprints = [
        instance.get_run_by_id(r.run_id).tags[SETTINGS_FINGERPRINT_TAG] for r in (smoke, production)
    ]
    assert fingerprints == [
        settings_fingerprint(load_settings(**PRESETS["smoke"])),
        settings_fingerprint(load_settings()),
    ]
    bad = dg.materialize(
        [reads_settings], resources=resources, instance=instance, tags={PRESET_TAG: "fast"},
        raise_on_error=False,
    )  # fmt: skip
    assert not bad.success and seen == [("smoke", 1, 1.0), ("full", 8, 3.0)]


def _launchpad_run(tmp_path, config: dict | None, seen: list, **kwargs):
    """A run of one asset through the code location's resources, with Launchpad-style run
    config for ``settings`` (what the UI stores with the run and reuses on re-execution)."""

    @dg.asset
    def reads_settings(warehouse: WarehouseResource) -> None:
        s = get_settings()
        seen.append((s.mode, s.kronos_sampling["sample_count"], s.lightgbm.num_boost_round))

    defs = dg.Definitions(
        assets=[reads_settings], resources=warehouse_resources(str(tmp_path / "lake"))
    )
    job = defs.get_implicit_global_asset_job_def()
    run_config = {"resources": {"settings": {"config": config}}} if config is not None else None
    return job.execute_in_process(run_config=run_config, raise_on_error=False, **kwargs)


def test_run_config_sets_the_runs_settings_and_the_next_run_is_production(tmp_path, monkeypatch):
    monkeypatch.delenv("KRONOS_MODE", raising=False)
    use_preset(None)
    seen: list = []
    instance = dg.DagsterInstance.ephemeral()
    configured = _launchpad_run(
        tmp_path, {"sample_count": 2, "overrides": {"lightgbm.num_boost_round": "30"}}, seen,
        instance=instance,
    )  # fmt: skip
    default = _launchpad_run(tmp_path, None, seen, instance=instance)
    smoke = _launchpad_run(tmp_path, {"preset": "smoke"}, seen, instance=instance)
    assert configured.success and default.success and smoke.success
    base = load_settings().lightgbm.num_boost_round
    assert seen == [("full", 2, 30), ("full", 8, base), ("smoke", 1, base)]
    assert active_run_config() == (None, {})
    # The run stores its configuration, and its tag fingerprints what it resolved to.
    stored = instance.get_run_by_id(configured.run_id)
    assert stored.run_config["resources"]["settings"]["config"]["sample_count"] == 2
    expected = load_settings(kronos={"sample_count": 2}, lightgbm={"num_boost_round": 30})
    assert stored.tags[SETTINGS_FINGERPRINT_TAG] == settings_fingerprint(expected)


def test_run_config_refuses_a_misspelled_setting_with_a_suggestion(tmp_path):
    seen: list = []
    bad = _launchpad_run(tmp_path, {"overrides": {"lightgbm.num_boost_rounds": "30"}}, seen)
    assert not bad.success and not seen
    errors = " ".join(
        str(e.event_specific_data) for e in bad.all_events if e.is_failure or e.is_run_failure
    )
    assert "unknown setting lightgbm.num_boost_rounds" in errors
    assert "num_boost_round" in errors
    wrong = _launchpad_run(tmp_path, {"preset": "fast"}, seen)
    assert not wrong.success and not seen

"""Fitted LightGBM models on disk, one folder per refit period (no Dagster).

``<root>/<period>/<model>_h<h>.txt`` holds a booster as LightGBM's text model (exactly the
rounds early stopping chose), and ``manifest.json`` what each was fitted on: cut, rows,
features, latest label maturity and the file's sha256. Every file is written to a temporary
name and renamed; the manifest last, so a folder without one is never read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kronos_pipeline.evaluation.baselines import LightGBMFit
from kronos_pipeline.files import atomic_write_bytes, file_sha256

if TYPE_CHECKING:
    import lightgbm as lgb

MANIFEST = "manifest.json"


@dataclass
class StoredModel:
    """A fitted model read back: what :func:`baselines.score_dates` needs, and its record."""

    model: str
    horizon: int
    booster: lgb.Booster
    feature_names: list[str]
    record: dict[str, Any]

    @property
    def max_available_at(self) -> pd.Timestamp:
        return pd.Timestamp(self.record["max_available_at"])


def model_key(model: str, horizon: int) -> str:
    return f"{model}_h{int(horizon)}"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_models(
    directory: Path, fits: Iterable[LightGBMFit], header: dict[str, Any]
) -> dict[str, Any]:
    """Add (or replace) ``fits`` in the period folder; returns the new manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory) or {"models": {}}
    manifest.update(header)
    for fit in fits:
        assert fit.booster is not None, f"{fit.model} h{fit.horizon} has no booster to store"
        key = model_key(fit.model, fit.horizon)
        path = directory / f"{key}.txt"
        atomic_write_bytes(path, fit.booster.model_to_string().encode())
        manifest["models"][key] = {
            **fit.summary(),
            "model": fit.model,
            "file": path.name,
            "sha256": file_sha256(path),
            "features": fit.feature_names,
        }
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def load_models(directory: Path, keys: Iterable[str] | None = None) -> list[StoredModel]:
    """The period's models (all, or ``keys``), each verified against its recorded sha256."""
    import lightgbm as lgb  # imported on use: the code location loads faster

    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(
            f"no fitted models in {directory} ({MANIFEST} missing): materialize lightgbm_models "
            "for this fold first"
        )
    wanted = list(manifest["models"]) if keys is None else list(keys)
    out = []
    for key in wanted:
        if key not in manifest["models"]:
            raise KeyError(f"{directory}: no fitted model {key} (has {sorted(manifest['models'])})")
        record = manifest["models"][key]
        path = directory / record["file"]
        if file_sha256(path) != record["sha256"]:
            raise ValueError(f"{path} does not match the sha256 recorded in {MANIFEST}")
        out.append(
            StoredModel(
                model=record["model"],
                horizon=int(record["horizon"]),
                booster=lgb.Booster(model_str=path.read_text()),
                feature_names=list(record["features"]),
                record=record,
            )
        )
    return out

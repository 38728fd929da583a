"""Our own Kronos: tokenizer, predictor, checkpoint loading and a KV-cached engine.

Pure library (no Dagster). See :mod:`kronos_pipeline.kronos.engine` for the forecasting API.

The package's names are resolved on first use (PEP 562): importing a torch-free submodule
(``scoring``, ``forecast_checks``) does not import torch, so the code location, which every run
worker and step process imports, pays for torch only in the steps that run a model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "KronosCheckpointError": "hub",
    "load_predictor": "hub",
    "load_tokenizer": "hub",
    "save_checkpoint": "hub",
    "Kronos": "predictor",
    "KronosConfig": "predictor",
    "KronosTokenizer": "tokenizer",
    "KronosTokenizerConfig": "tokenizer",
}

__all__ = [
    "Kronos",
    "KronosCheckpointError",
    "KronosConfig",
    "KronosTokenizer",
    "KronosTokenizerConfig",
    "load_predictor",
    "load_tokenizer",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from kronos_pipeline.kronos.hub import (
        KronosCheckpointError,
        load_predictor,
        load_tokenizer,
        save_checkpoint,
    )
    from kronos_pipeline.kronos.predictor import Kronos, KronosConfig
    from kronos_pipeline.kronos.tokenizer import KronosTokenizer, KronosTokenizerConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

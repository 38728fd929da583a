"""Our own Kronos: tokenizer, predictor, checkpoint loading and a KV-cached engine.

Pure library (no Dagster). See :mod:`kronos_pipeline.kronos.engine` for the forecasting API.
"""

from kronos_pipeline.kronos.hub import (
    KronosCheckpointError,
    load_predictor,
    load_tokenizer,
    save_checkpoint,
)
from kronos_pipeline.kronos.predictor import Kronos, KronosConfig
from kronos_pipeline.kronos.tokenizer import KronosTokenizer, KronosTokenizerConfig

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

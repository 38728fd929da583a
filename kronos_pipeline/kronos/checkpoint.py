"""``from_pretrained`` / ``save_pretrained`` for the model classes, delegating to :mod:`.hub`.

A mixin rather than methods in :mod:`.hub` itself, because hub imports the model classes.
"""

from __future__ import annotations

from typing import Any


class PretrainedMixin:
    """Adds checkpoint loading and saving; subclasses name their hub loader in ``_HUB_LOADER``."""

    _HUB_LOADER: str

    @classmethod
    def from_pretrained(
        cls, source: str, revision: str | None = None, device: str | None = None
    ) -> Any:
        """Load from a checkpoint directory or hub repo id (see :mod:`.hub`)."""
        from kronos_pipeline.kronos import hub

        return getattr(hub, cls._HUB_LOADER)(source, revision=revision, device=device)

    def save_pretrained(self, directory: str, extra_metadata: dict[str, str] | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
        from kronos_pipeline.kronos.hub import save_checkpoint

        save_checkpoint(self, directory, extra_metadata=extra_metadata)

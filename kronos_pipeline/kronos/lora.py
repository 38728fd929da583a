"""LoRA adapters for Kronos modules through ``peft``.

Adapters go on the attention projections (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` of
the self-attention blocks and of the dependency layer's cross-attention) by default. The wrapped
backbone is frozen; only the adapter matrices (plus any ``modules_to_save``) train. Adapters are
saved and loaded on their own (``adapter_config.json`` + ``adapter_model.safetensors``) and can be
merged into the base weights, which gives back a plain module with the checkpoint's parameter
names.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel

DEFAULT_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    modules_to_save: Sequence[str] = (),
    copy_model: bool = True,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; every base weight is frozen.

    Args:
        model: a Kronos tokenizer or predictor module.
        rank: LoRA rank ``r`` (>= 1).
        alpha: LoRA scaling numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout probability on the adapter input.
        target_modules: names (suffixes) of the ``nn.Linear`` modules that receive adapters.
        modules_to_save: names of extra modules trained in full and stored with the adapter
            (for example ``("head",)``); empty keeps the whole backbone frozen.
        copy_model: wrap a deep copy (True) so ``model`` itself is left untouched.

    Returns:
        The ``peft.PeftModel``; calling it runs the base model's ``forward`` with adapters, and
        the base model's other methods (``decode_s1`` ...) are reachable as attributes.
    """
    if rank < 1:
        raise ValueError("LoRA rank must be >= 1")
    base = copy.deepcopy(model) if copy_model else model
    from peft import LoraConfig, get_peft_model  # imported on use: ~1 s at every start-up

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) or None,
        bias="none",
    )
    return get_peft_model(base, config)


def save_adapter(model: PeftModel, directory: str | Path) -> Path:
    """Write only the adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

    Returns:
        The directory written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def load_adapter(
    base_model: nn.Module,
    directory: str | Path,
    merge: bool = False,
    trainable: bool = False,
    copy_model: bool = True,
) -> nn.Module:
    """Attach a saved adapter to ``base_model``.

    Args:
        base_model: a module of the same architecture the adapter was trained on.
        directory: a folder written by :func:`save_adapter`.
        merge: fold the adapter into the base weights and return a plain module.
        trainable: leave the adapter weights trainable (to continue training).
        copy_model: work on a deep copy so ``base_model`` is left untouched.

    Returns:
        A ``PeftModel`` (``merge=False``) or the merged plain module (``merge=True``).
    """
    base = copy.deepcopy(base_model) if copy_model else base_model
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
    if merge:
        return merge_adapter(peft_model, copy_model=False)
    return peft_model


def merge_adapter(model: PeftModel, copy_model: bool = True) -> nn.Module:
    """Fold the adapter into the base weights; returns the plain base module.

    The result has exactly the base model's parameter names, so it saves as an ordinary
    checkpoint. With ``copy_model`` the given ``PeftModel`` keeps its adapters.
    """
    source = copy.deepcopy(model) if copy_model else model
    merged = source.merge_and_unload()
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged


def _is_peft(model: nn.Module) -> bool:
    # A PeftModel exists only once peft was imported (by wrap_lora or load_adapter).
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base-model weights of a module, with or without LoRA wrapping, under the plain
    checkpoint names (adapter tensors left out). Tensors are detached clones."""
    if _is_peft(model):
        inner = model.get_base_model()
        out: dict[str, torch.Tensor] = {}
        for name, tensor in inner.state_dict().items():
            if "lora_" in name or ".modules_to_save." in name:
                continue
            out[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = (
                tensor.detach().clone()
            )
        return out
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft-wrapped module."""
    return _is_peft(model)

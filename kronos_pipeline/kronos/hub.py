"""Load and save Kronos checkpoints in the published layout.

A checkpoint is a directory holding ``config.json`` (the constructor fields) and
``model.safetensors`` (the ``state_dict``), exactly as the NeoQuasar repositories on the
Hugging Face hub ship them. ``source`` is either such a directory or a hub repo id
(``"NeoQuasar/Kronos-small"``); repo ids are fetched through ``huggingface_hub``, so its
cache, ``HF_HOME``/``HF_HUB_CACHE`` and offline mode (``HF_HUB_OFFLINE=1``) apply. Pin
``revision`` (a commit hash) for reproducible runs.

Every failure (weights not available offline, missing files, unreadable or corrupt
safetensors, keys or shapes that do not fit the config) raises one
:class:`KronosCheckpointError` with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from kronos_pipeline.files import atomic_write_bytes, file_sha256  # noqa: F401 - also this module's names
from kronos_pipeline.kronos.predictor import Kronos, KronosConfig
from kronos_pipeline.kronos.tokenizer import KronosTokenizer, KronosTokenizerConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: sha256 of every file of a checkpoint we wrote; written last, verified on load.
MANIFEST_NAME = "checkpoint_manifest.json"

# Buffers that are recomputed from the config and may be absent from a checkpoint.
_DERIVED_BUFFER_SUFFIXES = ("rotary.inv_freq", "bsq.basis", "bsq.group_basis")

M = TypeVar("M", bound=nn.Module)


class KronosCheckpointError(RuntimeError):
    """A checkpoint could not be found, read or matched to the model architecture."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: first available of cuda, mps, cpu; else ``torch.device(device)``."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def resolve_checkpoint_dir(source: str | Path, revision: str | None = None) -> Path:
    """Local directory holding ``config.json`` and ``model.safetensors`` for ``source``.

    A local directory is returned as is; a hub repo id is downloaded (or found in the
    cache) at ``revision`` (default ``"main"``; pin a commit sha for reproducible runs).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise KronosCheckpointError(
                    f"Checkpoint directory {path} has no {name}; a Kronos checkpoint directory "
                    f"must contain {CONFIG_NAME} and {WEIGHTS_NAME}."
                )
        return path
    source = str(source)
    if isinstance(source, Path) or _looks_like_path(source):
        raise KronosCheckpointError(f"Checkpoint directory {source} does not exist.")
    return _download(source, revision)


_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub reads boolean variables


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now.

    Same precedence as ``huggingface_hub``: ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
    ``HF_HOME/hub``, ``XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``. Read at
    each call, not once at import as ``huggingface_hub.constants`` does, so a process (or a
    test) that sets the variables after importing still gets the cache it named.
    """
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is on, read at each call."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) or (value or "").upper() in _TRUE_VALUES


def _download(repo_id: str, revision: str | None) -> Path:
    """Snapshot folder of ``repo_id`` at ``revision`` holding both checkpoint files.

    ``hf_hub_download`` finds a commit-sha revision under ``snapshots/<sha>/`` of the cache and
    a branch or tag through ``refs/<name>``; offline it never touches the network.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError

    rev = revision or "main"
    cache, offline = hub_cache_dir(), hub_offline()
    try:
        config_path = hf_hub_download(
            repo_id, CONFIG_NAME, revision=rev, cache_dir=cache, local_files_only=offline
        )
        weights_path = hf_hub_download(
            repo_id, WEIGHTS_NAME, revision=rev, cache_dir=cache, local_files_only=offline
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1)"
            if offline
            else f"the hub could not be reached or refused the request ({type(exc).__name__})"
        )
        raise KronosCheckpointError(
            f"Could not get the weights of hub repo '{repo_id}' at revision '{rev}': they are "
            f"not in the local Hugging Face cache ({cache}) and {why}. "
            f"Either download them once while online "
            f"(e.g. `huggingface-cli download {repo_id} --revision {rev}`), or pass a local "
            f"directory containing {CONFIG_NAME} and {WEIGHTS_NAME} instead of the repo id."
        ) from exc
    if Path(config_path).parent != Path(weights_path).parent:  # never two snapshots mixed
        raise KronosCheckpointError(
            f"Hub repo '{repo_id}' at revision '{rev}' resolved {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"to different snapshots ({Path(config_path).parent}, {Path(weights_path).parent}): "
            "the revision moved between the two downloads; pin a commit sha."
        )
    return Path(config_path).parent


def _read_config(directory: Path, config_cls: type) -> dict[str, Any]:
    try:
        raw = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KronosCheckpointError(f"Cannot read {directory / CONFIG_NAME}: {exc}") from exc
    if not isinstance(raw, dict):
        raise KronosCheckpointError(f"{directory / CONFIG_NAME} is not a JSON object.")
    required = [f.name for f in dataclasses.fields(config_cls) if not f.name.endswith("dropout_p")]
    missing = [name for name in required if name not in raw]
    if missing:
        raise KronosCheckpointError(
            f"{directory / CONFIG_NAME} lacks the fields {missing}; is this a "
            f"{config_cls.__name__.removesuffix('Config')} checkpoint?"
        )
    return raw


def write_manifest(directory: Path) -> Path:
    """Record the sha256 of every file of the checkpoint (the manifest itself excepted)."""
    files = {
        p.relative_to(directory).as_posix(): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    path = directory / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps({"sha256": files}, indent=2) + "\n").encode())
    return path


def verify_manifest(directory: Path) -> None:
    """Raise :class:`KronosCheckpointError` when a file differs from the manifest's hash.

    Directories without a manifest (published checkpoints) are not checked here.
    """
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())["sha256"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise KronosCheckpointError(f"Cannot read the checkpoint manifest {path}: {exc}") from exc
    for name, expected in recorded.items():
        file = directory / name
        actual = file_sha256(file) if file.is_file() else "missing"
        if actual != expected:
            raise KronosCheckpointError(
                f"{file} does not match the sha256 recorded in {path} (recorded "
                f"{expected[:12]}..., found {actual[:12]}...): the checkpoint is corrupt or was "
                "changed after it was written. Retrain it (materialize kronos_checkpoint for "
                "the fold again) or restore the directory from a good copy."
            )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise KronosCheckpointError(
            f"{path} is not a readable safetensors file (corrupt or truncated download?): {exc}. "
            f"Delete it and fetch the checkpoint again."
        ) from exc


def _load_into(model: M, weights: dict[str, torch.Tensor], where: Path) -> M:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith(_DERIVED_BUFFER_SUFFIXES)]
    unexpected = [k for k in weights if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            parts.append(
                f"{len(wrong_shape)} tensors with the wrong shape (e.g. {wrong_shape[:3]})"
            )
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        raise KronosCheckpointError(
            f"The weights in {where} do not fit the {type(model).__name__} described by its "
            f"{CONFIG_NAME}: " + "; ".join(parts) + ". Is config.json from the same checkpoint?"
        )
    model.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=False)
    return model


def _load(
    cls: type[M], config_cls: type, source: str | Path, revision: str | None, device: Any
) -> M:
    directory = resolve_checkpoint_dir(source, revision)
    verify_manifest(directory)
    config = _read_config(directory, config_cls)
    try:
        model = cls(**config)
    except (TypeError, ValueError) as exc:
        raise KronosCheckpointError(f"Invalid {directory / CONFIG_NAME}: {exc}") from exc
    weights = _read_weights(directory / WEIGHTS_NAME)
    model = _load_into(model, weights, directory / WEIGHTS_NAME)
    return model.to(resolve_device(device)).eval()


def load_tokenizer(
    source: str | Path, revision: str | None = None, device: str | torch.device | None = None
) -> KronosTokenizer:
    """Load a :class:`KronosTokenizer` (eval mode) from a checkpoint directory or hub repo id.

    ``revision``: hub branch, tag or commit (ignored for directories). ``device``: ``None``
    for cpu, ``"auto"`` for cuda > mps > cpu, or any torch device string.
    """
    return _load(KronosTokenizer, KronosTokenizerConfig, source, revision, device or "cpu")


def load_predictor(
    source: str | Path, revision: str | None = None, device: str | torch.device | None = None
) -> Kronos:
    """Load a :class:`Kronos` predictor (eval mode) from a checkpoint directory or hub repo id.

    ``revision``: hub branch, tag or commit (ignored for directories). ``device``: ``None``
    for cpu, ``"auto"`` for cuda > mps > cpu, or any torch device string.
    """
    return _load(Kronos, KronosConfig, source, revision, device or "cpu")


def save_checkpoint(
    model: KronosTokenizer | Kronos,
    directory: str | Path,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors`` into ``directory``.

    The layout is the published one, so :func:`load_tokenizer`/:func:`load_predictor` (and
    the reference ``from_pretrained``) read it back. ``extra_metadata`` (str -> str) goes
    into the safetensors header. Tensors are saved as they are (dtype and values).
    Every file is written to a temporary name and renamed into place, and
    ``checkpoint_manifest.json`` (sha256 of each file) is written last; loading verifies it,
    so a checkpoint cut by a crash or corrupted later fails with a clear error instead of
    loading. Returns the directory.
    """
    from safetensors.torch import save

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(model.config)
    atomic_write_bytes(
        out / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    )
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    if extra_metadata:
        metadata.update({str(k): str(v) for k, v in extra_metadata.items()})
    atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata=metadata))
    write_manifest(out)
    return out

"""Kronos training and fine-tuning on point-in-time windows (library code, no Dagster).

Two models are trained, each on windows cut by :mod:`kronos_pipeline.kronos.windows`:

* the **tokenizer** (BSQ autoencoder) minimises ``(mse(z_pre, x) + mse(z, x) + bsq_loss) / 2``:
  the reconstruction error from the coarse (s1) bits and from all bits, plus the binary
  spherical quantizer's commitment and entropy terms (weights ``beta``, ``gamma0``, ``gamma``,
  ``zeta`` of the tokenizer config). Its validation metric is ``mse(z, x)``, the
  reconstruction error from the full code, in squared normalised units;
* the **predictor** minimises the next-token cross-entropy ``(CE(s1) + CE(s2)) / 2`` (nats per
  token), where the s2 logits come through the dependency layer conditioned on the true next s1
  token (teacher forcing). Tokens come from a frozen tokenizer. Validation uses the same loss.

Modes: ``"scratch"`` (a new model from a named config), ``"full"`` (every weight of a loaded
checkpoint trains) and ``"lora"`` (peft adapters on the attention projections, backbone frozen).
Fine-tuning runs are guarded: the result is kept only if its best validation loss is not worse
than the starting checkpoint's on the same validation windows; otherwise the start is returned
and the reason is written into the metadata.

Runs are seeded and deterministic (``torch.manual_seed`` inside a forked RNG, a seeded numpy
``Generator`` for window order, deterministic torch algorithms); early stopping on validation
loss with patience; progress (loss, tokens/s, ETA) goes to the ``logging`` logger of this module.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kronos_pipeline.kronos import hub
from kronos_pipeline.kronos import lora as lora_mod
from kronos_pipeline.kronos.predictor import Kronos
from kronos_pipeline.kronos.tokenizer import KronosTokenizer
from kronos_pipeline.kronos.windows import (
    DEFAULT_CLIP,
    WindowSet,
    cut_windows,
    epoch_order,
    fixed_subset,
)

logger = logging.getLogger(__name__)

Mode = Literal["scratch", "full", "lora"]
Kind = Literal["tokenizer", "predictor"]

METADATA_FILENAME = "training_metadata.json"

#: Compact tokenizer (~86 k parameters): one encoder and one decoder block of width 64 (the
#: published architecture builds ``n_*_layers - 1`` blocks); 8 + 8 bits per bar. Sized with the
#: compact predictor so that both train on 100 tickers x 10 years of daily bars within 10
#: minutes on 2 CPU cores (see BENCHMARKS.md, "Kronos training").
COMPACT_TOKENIZER_CONFIG: dict[str, Any] = {
    "d_in": 6,
    "d_model": 64,
    "n_heads": 4,
    "ff_dim": 128,
    "n_enc_layers": 2,
    "n_dec_layers": 2,
    "ffn_dropout_p": 0.0,
    "attn_dropout_p": 0.0,
    "resid_dropout_p": 0.0,
    "s1_bits": 8,
    "s2_bits": 8,
    "beta": 0.05,
    "gamma0": 1.0,
    "gamma": 1.1,
    "zeta": 0.05,
    "group_size": 4,
}

#: Compact predictor (~0.45 M parameters): 3 blocks of width 96; vocabularies of 256 + 256.
COMPACT_PREDICTOR_CONFIG: dict[str, Any] = {
    "s1_bits": 8,
    "s2_bits": 8,
    "n_layers": 3,
    "d_model": 96,
    "n_heads": 4,
    "ff_dim": 192,
    "ffn_dropout_p": 0.0,
    "attn_dropout_p": 0.0,
    "resid_dropout_p": 0.0,
    "token_dropout_p": 0.0,
    "learn_te": True,
}


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (tokenizer or predictor).

    Attributes:
        mode: ``"scratch"``, ``"full"`` (fine-tune every weight) or ``"lora"``.
        lookback: context bars per window (normalisation statistics come from these).
        horizon: bars after the context per window; the LM loss covers every position.
        val_fraction: share of the distinct dates before the cut held out for validation.
        stride: bars between consecutive window starts of a ticker.
        epochs: maximum number of epochs (an epoch = ``windows_per_epoch`` sampled windows).
        windows_per_epoch: training windows drawn (without replacement) per epoch; None = all.
        max_val_windows: fixed seeded subset of validation windows evaluated (None = all).
        batch_size: windows per optimiser step.
        eval_batch_size: windows per validation forward pass.
        lr: peak learning rate of AdamW (linear warm-up, then cosine decay to 10 %).
        warmup_fraction: share of the planned steps used for linear warm-up.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW moment coefficients.
        grad_clip: maximum global gradient L2 norm (None: no clipping).
        patience: epochs without a validation improvement before stopping.
        min_delta: smallest decrease of validation loss that counts as an improvement.
        seed: seeds torch (init, dropout) and numpy (window order, validation subset).
        max_minutes: wall-clock budget of the run in minutes (None: unbounded). Training
            stops once elapsed time plus one validation pass (timed on the first) reaches it,
            then validates once more, so the run ends close to the budget.
        clip: normalised values are clipped to ``[-clip, clip]`` (as at inference).
        lora_rank / lora_alpha / lora_dropout / lora_target_modules: LoRA settings
            (``mode="lora"``).
        lora_modules_to_save: extra modules trained in full with LoRA (default: none, the
            backbone stays frozen).
        log_every: optimiser steps between progress lines.
        deterministic: turn on ``torch.use_deterministic_algorithms`` for the run.
        num_threads: torch intra-op threads for the run (None: leave as set); results are
            bit-reproducible for a given thread count.
        device: ``"cpu"`` (default), ``"auto"`` (cuda > mps > cpu) or a torch device string.
            Only cpu is tested here; on cuda, determinism is best effort (``warn_only``).
    """

    mode: Mode = "scratch"
    lookback: int = 252
    horizon: int = 90
    val_fraction: float = 0.2
    stride: int = 1
    epochs: int = 10
    windows_per_epoch: int | None = 4096
    max_val_windows: int | None = 1024
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-3
    warmup_fraction: float = 0.03
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 2.0
    patience: int = 3
    min_delta: float = 0.0
    seed: int = 0
    max_minutes: float | None = None
    clip: float = DEFAULT_CLIP
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = lora_mod.DEFAULT_TARGET_MODULES
    lora_modules_to_save: tuple[str, ...] = ()
    log_every: int = 50
    deterministic: bool = True
    num_threads: int | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the fields."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


@dataclass
class TrainResult:
    """Outcome of a training run.

    Attributes:
        model: the kept model, in eval mode (a ``peft.PeftModel`` for an accepted LoRA run;
            the unchanged start when the regression guard rejected the run).
        kind: ``"tokenizer"`` or ``"predictor"``.
        model_config: the model's ``config.json`` fields.
        history: one entry per validation: ``step``, ``epoch``, ``train_loss`` (mean over the
            epoch, None at step 0), ``val_loss``, ``elapsed_s``.
        best_val_loss: lowest validation loss reached by training (step > 0).
        start_val_loss: validation loss of the starting model (step 0).
        accepted: False when the regression guard kept the starting checkpoint.
        metadata: JSON-ready record of the run (data window, tickers, seed, losses, code).
    """

    model: nn.Module
    kind: Kind
    model_config: dict[str, Any]
    history: list[dict[str, Any]]
    best_val_loss: float
    start_val_loss: float
    accepted: bool
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Model classes and configs
# --------------------------------------------------------------------------------------


def build_tokenizer(config: dict[str, Any]) -> nn.Module:
    """A new tokenizer from ``config.json`` fields (weights from the current torch RNG)."""
    return KronosTokenizer(**config)


def build_predictor(config: dict[str, Any]) -> nn.Module:
    """A new predictor from ``config.json`` fields (weights from the current torch RNG)."""
    return Kronos(**config)


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``config.json`` fields of a tokenizer or predictor (also through LoRA wrapping)."""
    if lora_mod.is_lora(model):
        model = model.get_base_model()
    cfg = getattr(model, "config", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return dict(cfg)
    raise ValueError(f"cannot read the config of {type(model).__name__}")


def _load_source(kind: Kind, source: str | Path) -> nn.Module:
    """Load a checkpoint (directory or hub id) with the engine's loader, on cpu."""
    if kind == "tokenizer":
        return hub.load_tokenizer(str(source), device="cpu")
    return hub.load_predictor(str(source), device="cpu")


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def tokenizer_losses(
    tokenizer: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of the tokenizer on normalised windows ``x`` [B, T, d_in].

    Returns ``(loss, parts)`` with ``loss = (mse_pre + mse_full + bsq) / 2`` and ``parts`` the
    floats ``mse_pre``, ``mse_full``, ``bsq`` (squared normalised units; bsq is unitless).
    """
    (z_pre, z), bsq_loss, _, _ = tokenizer(x)
    mse_pre = F.mse_loss(z_pre, x)
    mse_full = F.mse_loss(z, x)
    loss = (mse_pre + mse_full + bsq_loss) / 2
    return loss, {
        "mse_pre": float(mse_pre.detach()),
        "mse_full": float(mse_full.detach()),
        "bsq": float(bsq_loss.detach()),
    }


def tokenizer_val_metric(tokenizer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Validation metric of the tokenizer: ``mse(decode(encode(x)), x)`` from all bits."""
    (_, z), _, _, _ = tokenizer(x)
    return F.mse_loss(z, x)


def predictor_losses(
    predictor: nn.Module, tokenizer: nn.Module, x: torch.Tensor, stamp: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss of the predictor on normalised windows ``x`` [B, T, d_in].

    The frozen ``tokenizer`` turns ``x`` into (s1, s2) ids [B, T]; positions ``0..T-2`` (with
    their calendar ``stamp`` [B, T, 5]) predict the tokens at ``1..T-1``; the s2 head sees the
    true next s1 token through the dependency layer.

    Returns ``(loss, parts)``: ``loss = (CE_s1 + CE_s2) / 2`` in nats per token and the floats
    ``ce_s1``, ``ce_s2``.
    """
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x, half=True)
    s1_logits, s2_logits = predictor(
        s1[:, :-1],
        s2[:, :-1],
        stamp=stamp[:, :-1],
        padding_mask=None,
        use_teacher_forcing=True,
        s1_targets=s1[:, 1:],
    )
    ce_s1 = F.cross_entropy(s1_logits.reshape(-1, s1_logits.shape[-1]), s1[:, 1:].reshape(-1))
    ce_s2 = F.cross_entropy(s2_logits.reshape(-1, s2_logits.shape[-1]), s2[:, 1:].reshape(-1))
    loss = (ce_s1 + ce_s2) / 2
    return loss, {"ce_s1": float(ce_s1.detach()), "ce_s2": float(ce_s2.detach())}


# --------------------------------------------------------------------------------------
# Run plumbing
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(cfg: TrainConfig) -> Iterator[None]:
    """Seed torch (and set threads) for the block; the caller's RNG state, determinism flag
    and thread count are restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            on_cpu = hub.resolve_device(cfg.device).type == "cpu"
            torch.use_deterministic_algorithms(True, warn_only=not on_cpu)
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
            torch.set_num_threads(previous_threads)


def code_version() -> dict[str, Any]:
    """Package version and git commit of the code that trained (``unknown`` when absent)."""
    out: dict[str, Any] = {"package": "unknown", "git_commit": "unknown", "git_dirty": None}
    try:
        from importlib.metadata import version

        out["package"] = version("kronos-pipeline")
    except Exception:  # noqa: BLE001 - metadata is best effort
        pass
    root = Path(__file__).resolve().parents[2]
    try:
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "kronos_pipeline/kronos"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def _lr_lambda(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _windows_for(data: object, cfg: TrainConfig, train_cut: dt.date | str | None) -> WindowSet:
    if isinstance(data, WindowSet):
        if train_cut is not None and str(data.train_cut) != str(
            dt.date.fromisoformat(str(train_cut)[:10])
        ):
            raise ValueError(f"train_cut {train_cut} differs from the windows' {data.train_cut}")
        if data.lookback != cfg.lookback or data.horizon != cfg.horizon:
            raise ValueError("WindowSet lookback/horizon differ from the TrainConfig")
        return data
    if train_cut is None:
        raise ValueError("train_cut is required when bars are given")
    return cut_windows(data, train_cut, cfg.lookback, cfg.horizon, cfg.val_fraction, cfg.stride)


def _tensor(array: np.ndarray, cfg: TrainConfig) -> torch.Tensor:
    """A batch array as a tensor on the run's device."""
    return torch.from_numpy(array).to(hub.resolve_device(cfg.device))


def _evaluate(
    metric: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    model: nn.Module,
    windows: WindowSet,
    starts: np.ndarray,
    cfg: TrainConfig,
) -> float:
    """Mean of ``metric`` over the windows ``starts`` (each batch weighted by its size)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(starts), cfg.eval_batch_size):
            chunk = starts[lo : lo + cfg.eval_batch_size]
            x, stamp = windows.batch(chunk, cfg.clip)
            value = metric(model, _tensor(x, cfg), _tensor(stamp, cfg))
            total += float(value) * len(chunk)
            count += len(chunk)
    model.train(was_training)
    return total / max(count, 1)


def _prepare_model(
    kind: Kind,
    cfg: TrainConfig,
    init: nn.Module | str | Path | None,
    config: dict[str, Any] | None,
) -> tuple[nn.Module, nn.Module | None, str]:
    """(model to train, untouched start or None, description of the start)."""
    if cfg.mode == "scratch":
        if init is not None:
            raise ValueError("mode 'scratch' takes no init; use mode 'full' or 'lora'")
        default = COMPACT_TOKENIZER_CONFIG if kind == "tokenizer" else COMPACT_PREDICTOR_CONFIG
        cfg_dict = dict(config if config is not None else default)
        model = build_tokenizer(cfg_dict) if kind == "tokenizer" else build_predictor(cfg_dict)
        return model.to(hub.resolve_device(cfg.device)), None, "scratch"
    if init is None:
        raise ValueError(f"mode {cfg.mode!r} needs init (a module or checkpoint source)")
    if isinstance(init, str | Path):
        start = _load_source(kind, init)
        source = str(init)
    else:
        start = init
        source = f"module:{type(init).__name__}"
    start = copy.deepcopy(start).to(hub.resolve_device(cfg.device), torch.float32)
    start.eval()
    for param in start.parameters():
        param.requires_grad_(False)
    if cfg.mode == "full":
        model = copy.deepcopy(start)
        trainable_names = _fresh_trainable(kind, model)
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable_names)
    elif cfg.mode == "lora":
        model = lora_mod.apply_lora(
            start,
            rank=cfg.lora_rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            modules_to_save=cfg.lora_modules_to_save,
            copy_model=True,
        )
    else:
        raise ValueError(f"unknown mode {cfg.mode!r}")
    return model, start, source


def _fresh_trainable(kind: Kind, model: nn.Module) -> set[str]:
    """Names of the parameters a freshly built model of the same config trains (fixed
    sinusoidal time embeddings never do)."""
    build = build_tokenizer if kind == "tokenizer" else build_predictor
    return {name for name, p in build(model_config(model)).named_parameters() if p.requires_grad}


def _fit(
    kind: Kind,
    model: nn.Module,
    start: nn.Module | None,
    source: str,
    windows: WindowSet,
    cfg: TrainConfig,
    train_loss: Callable[
        [nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]
    ],
    val_metric: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    val_metric_name: str,
    extra_metadata: dict[str, Any],
) -> TrainResult:
    """The shared loop: seeded epochs, validation, early stopping, time budget, guard."""
    if len(windows.train_starts) == 0:
        raise ValueError("no training windows before the validation period")
    if len(windows.val_starts) == 0:
        raise ValueError(
            "no validation windows: the validation period is shorter than one window "
            f"({windows.window_length} bars); raise val_fraction or shorten the window"
        )
    rng = np.random.default_rng(cfg.seed)
    val_starts = fixed_subset(windows.val_starts, rng, cfg.max_val_windows)
    n_epoch = len(windows.train_starts)
    if cfg.windows_per_epoch is not None:
        n_epoch = min(n_epoch, cfg.windows_per_epoch)
    steps_per_epoch = max(1, math.ceil(n_epoch / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, cfg.warmup_fraction)
    )
    budget_s = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
    version = code_version()  # taken before training, so edits made meanwhile do not count
    t0 = time.perf_counter()

    start_val = _evaluate(val_metric, model, windows, val_starts, cfg)
    # The validation after a budget stop must fit in the budget too: reserve its duration.
    eval_s = time.perf_counter() - t0
    history: list[dict[str, Any]] = [
        {"step": 0, "epoch": 0, "train_loss": None, "val_loss": start_val, "elapsed_s": 0.0}
    ]
    logger.info(
        "%s %s: %d train / %d val windows (%d evaluated), %d steps planned, start val %s %.5f",
        kind,
        cfg.mode,
        len(windows.train_starts),
        len(windows.val_starts),
        len(val_starts),
        total_steps,
        val_metric_name,
        start_val,
    )
    best_val = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_step = 0
    stale = 0
    step = 0
    tokens = 0
    stopped_by = "epochs"
    train_t = 0.0
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        order = epoch_order(windows.train_starts, rng, n_epoch)
        epoch_loss, epoch_n = 0.0, 0
        for b in range(steps_per_epoch):
            chunk = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(chunk) == 0:
                break
            t_step = time.perf_counter()
            x, stamp = windows.batch(chunk, cfg.clip)
            loss, parts = train_loss(model, _tensor(x, cfg), _tensor(stamp, cfg))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            train_t += time.perf_counter() - t_step
            step += 1
            tokens += x.shape[0] * x.shape[1]
            epoch_loss += float(loss.detach()) * len(chunk)
            epoch_n += len(chunk)
            elapsed = time.perf_counter() - t0
            if cfg.log_every and step % cfg.log_every == 0:
                rate = tokens / max(train_t, 1e-9)
                eta = (total_steps - step) * train_t / step
                if budget_s is not None:
                    eta = min(eta, max(0.0, budget_s - elapsed))
                logger.info(
                    "%s epoch %d/%d step %d/%d loss %.4f (%s) lr %.2e %.0f tokens/s ETA %s",
                    kind,
                    epoch,
                    cfg.epochs,
                    step,
                    total_steps,
                    float(loss.detach()),
                    " ".join(f"{k} {v:.4f}" for k, v in parts.items()),
                    optimizer.param_groups[0]["lr"],
                    rate,
                    _format_eta(eta),
                )
            if budget_s is not None and elapsed + eval_s >= budget_s:
                stopped_by = "time_budget"
                break
        val = _evaluate(val_metric, model, windows, val_starts, cfg)
        elapsed = time.perf_counter() - t0
        history.append(
            {
                "step": step,
                "epoch": epoch,
                "train_loss": epoch_loss / max(epoch_n, 1),
                "val_loss": val,
                "elapsed_s": round(elapsed, 3),
            }
        )
        logger.info(
            "%s epoch %d/%d done: train loss %.5f val %s %.5f (best %.5f) %.0f tokens/s elapsed %s",
            kind,
            epoch,
            cfg.epochs,
            history[-1]["train_loss"],
            val_metric_name,
            val,
            min(val, best_val),
            tokens / max(train_t, 1e-9),
            _format_eta(elapsed),
        )
        if val < best_val - cfg.min_delta or (best_state is None and val < best_val):
            best_val, best_step = val, step
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
        if stopped_by == "time_budget":
            break
        if stale >= cfg.patience:
            stopped_by = "early_stopping"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    elapsed = time.perf_counter() - t0

    accepted, reason = True, None
    kept = model
    if start is not None and not best_val <= start_val:
        accepted = False
        reason = (
            f"validation {val_metric_name} after fine-tuning {best_val:.6f} is worse than the "
            f"starting checkpoint's {start_val:.6f}; kept the starting checkpoint"
        )
        logger.warning("%s regression guard: %s", kind, reason)
        kept = start
    kept.eval()
    cfg_dict = model_config(kept)
    metadata: dict[str, Any] = {
        "kind": kind,
        "mode": cfg.mode,
        "init": source,
        "accepted": accepted,
        "guard_reason": reason,
        "model_config": cfg_dict,
        "train_config": cfg.to_dict(),
        "seed": cfg.seed,
        "data": windows.summary(),
        "tickers": list(windows.tickers),
        "val_metric": val_metric_name,
        "losses": {
            "start_val_loss": start_val,
            "best_val_loss": best_val,
            "best_step": best_step,
            "final_train_loss": history[-1]["train_loss"],
            "history": history,
        },
        "steps": step,
        "stopped_by": stopped_by,
        "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round(tokens / max(train_t, 1e-9), 1),
        "code_version": version,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(hub.resolve_device(cfg.device)),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra_metadata,
    }
    if cfg.mode == "lora":
        metadata["lora"] = {
            "rank": cfg.lora_rank,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "target_modules": list(cfg.lora_target_modules),
            "modules_to_save": list(cfg.lora_modules_to_save),
        }
    return TrainResult(
        model=kept,
        kind=kind,
        model_config=cfg_dict,
        history=history,
        best_val_loss=best_val,
        start_val_loss=start_val,
        accepted=accepted,
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def train_tokenizer(
    data: object,
    cfg: TrainConfig,
    *,
    train_cut: dt.date | str | None = None,
    init: nn.Module | str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a Kronos tokenizer on PIT windows.

    Args:
        data: long bars (pandas/polars: ``ticker, date, open, high, low, close, volume
            [, amount]``, split-adjusted) or a prepared :class:`WindowSet`.
        cfg: run settings; ``cfg.mode`` picks scratch / full / LoRA.
        train_cut: last date any window may touch (required with bars).
        init: starting tokenizer (module, checkpoint directory or hub id) for ``full``/``lora``.
        config: ``config.json`` fields for ``scratch`` (default
            :data:`COMPACT_TOKENIZER_CONFIG`).

    Returns:
        A :class:`TrainResult`; ``best_val_loss`` is the full-code reconstruction MSE
        (squared normalised units).
    """
    windows = _windows_for(data, cfg, train_cut)
    with _seeded(cfg):
        model, start, source = _prepare_model("tokenizer", cfg, init, config)
        return _fit(
            "tokenizer",
            model,
            start,
            source,
            windows,
            cfg,
            lambda m, x, _s: tokenizer_losses(m, x),
            lambda m, x, _s: tokenizer_val_metric(m, x),
            "mse_full_reconstruction",
            {},
        )


def train_predictor(
    data: object,
    tokenizer: nn.Module | str | Path,
    cfg: TrainConfig,
    *,
    train_cut: dt.date | str | None = None,
    init: nn.Module | str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a Kronos predictor on PIT windows tokenised by a frozen ``tokenizer``.

    Args:
        data: long bars or a prepared :class:`WindowSet` (see :func:`train_tokenizer`).
        tokenizer: the tokenizer module (or checkpoint source); never modified.
        cfg: run settings; ``cfg.mode`` picks scratch / full / LoRA.
        train_cut: last date any window may touch (required with bars).
        init: starting predictor for ``full``/``lora``.
        config: ``config.json`` fields for ``scratch`` (default
            :data:`COMPACT_PREDICTOR_CONFIG`); its ``s1_bits``/``s2_bits`` must match the
            tokenizer's.

    Returns:
        A :class:`TrainResult`; ``best_val_loss`` is ``(CE_s1 + CE_s2) / 2`` in nats per token.
    """
    windows = _windows_for(data, cfg, train_cut)
    if isinstance(tokenizer, str | Path):
        tok_source = str(tokenizer)
        tok = _load_source("tokenizer", tokenizer)
    else:
        tok_source = f"module:{type(tokenizer).__name__}"
        tok = tokenizer
    if lora_mod.is_lora(tok):
        tok = lora_mod.merge_adapter(tok)
    tok = copy.deepcopy(tok).to(hub.resolve_device(cfg.device), torch.float32).eval()
    for param in tok.parameters():
        param.requires_grad_(False)
    tok_cfg = model_config(tok)
    with _seeded(cfg):
        model, start, source = _prepare_model("predictor", cfg, init, config)
        pred_cfg = model_config(model)
        if (pred_cfg["s1_bits"], pred_cfg["s2_bits"]) != (tok_cfg["s1_bits"], tok_cfg["s2_bits"]):
            raise ValueError(
                f"predictor bits {pred_cfg['s1_bits']}+{pred_cfg['s2_bits']} differ from the "
                f"tokenizer's {tok_cfg['s1_bits']}+{tok_cfg['s2_bits']}"
            )
        return _fit(
            "predictor",
            model,
            start,
            source,
            windows,
            cfg,
            lambda m, x, s: predictor_losses(m, tok, x, s),
            lambda m, x, s: predictor_losses(m, tok, x, s)[0],
            "ce_mean_s1_s2",
            {"tokenizer": {"source": tok_source, "config": tok_cfg}},
        )


def fine_tune(
    data: object,
    init: nn.Module | str | Path,
    cfg: TrainConfig,
    *,
    kind: Kind = "predictor",
    tokenizer: nn.Module | str | Path | None = None,
    train_cut: dt.date | str | None = None,
) -> TrainResult:
    """Fine-tune a loaded checkpoint (``cfg.mode`` ``"full"`` or ``"lora"``), guarded.

    Args:
        data: long bars or a :class:`WindowSet`.
        init: the starting model or checkpoint source.
        cfg: run settings; ``cfg.mode`` must not be ``"scratch"``.
        kind: which model ``init`` is.
        tokenizer: the frozen tokenizer (required for ``kind="predictor"``).
        train_cut: last date any window may touch (required with bars).
    """
    if cfg.mode == "scratch":
        raise ValueError("fine_tune needs cfg.mode 'full' or 'lora'")
    if kind == "tokenizer":
        return train_tokenizer(data, cfg, train_cut=train_cut, init=init)
    if tokenizer is None:
        raise ValueError("fine-tuning a predictor needs its tokenizer")
    return train_predictor(data, tokenizer, cfg, train_cut=train_cut, init=init)


def plain_model(model: nn.Module) -> nn.Module:
    """The model with any LoRA adapter merged in (a copy); plain modules are returned as is."""
    return lora_mod.merge_adapter(model) if lora_mod.is_lora(model) else model


def _save_checkpoint(model: nn.Module, directory: Path, metadata: dict[str, Any]) -> None:
    """Write ``config.json`` + ``model.safetensors`` through the engine's hub module."""
    header = {
        "trained_by": "kronos_pipeline.kronos.train",
        "kind": str(metadata.get("kind")),
        "train_cut": str(metadata.get("data", {}).get("train_cut")),
        "git_commit": str(metadata.get("code_version", {}).get("git_commit")),
    }
    hub.save_checkpoint(model, directory, extra_metadata=header)


def write_trained_checkpoint(
    result: TrainResult, directory: str | Path, save_adapter: bool = True
) -> Path:
    """Write a trained model in the published layout plus its training metadata.

    Files: ``config.json`` + ``model.safetensors`` (LoRA merged into the weights, so the
    engine's loader reads it like any checkpoint) and ``training_metadata.json``; for an
    accepted LoRA run with ``save_adapter`` also ``adapter/`` (the adapter on its own).

    Returns:
        The checkpoint directory.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if lora_mod.is_lora(result.model) and save_adapter:
        lora_mod.save_adapter(result.model, out / "adapter")
    _save_checkpoint(plain_model(result.model), out, result.metadata)
    hub.atomic_write_bytes(
        out / METADATA_FILENAME, json.dumps(result.metadata, indent=2, default=str).encode()
    )
    hub.write_manifest(out)  # last: covers the metadata and adapter files too
    return out


def read_training_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``training_metadata.json`` of a checkpoint written by
    :func:`write_trained_checkpoint`."""
    return json.loads((Path(directory) / METADATA_FILENAME).read_text())


@dataclass
class KronosTrainingOutput:
    """Tokenizer and predictor results of :func:`train_kronos`."""

    tokenizer: TrainResult
    predictor: TrainResult

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``<directory>/tokenizer`` and ``<directory>/predictor`` checkpoints."""
        root = Path(directory)
        return (
            write_trained_checkpoint(self.tokenizer, root / "tokenizer"),
            write_trained_checkpoint(self.predictor, root / "predictor"),
        )


def train_kronos(
    bars: object,
    train_cut: dt.date | str,
    tokenizer_cfg: TrainConfig,
    predictor_cfg: TrainConfig,
    *,
    tokenizer_init: nn.Module | str | Path | None = None,
    predictor_init: nn.Module | str | Path | None = None,
    tokenizer_config: dict[str, Any] | None = None,
    predictor_config: dict[str, Any] | None = None,
) -> KronosTrainingOutput:
    """Train (or fine-tune) the tokenizer, then the predictor on the kept tokenizer.

    Both stages use the same windows when their lookback/horizon/val_fraction/stride agree.
    """
    tok_windows = _windows_for(bars, tokenizer_cfg, train_cut)
    same = all(
        getattr(tokenizer_cfg, k) == getattr(predictor_cfg, k)
        for k in ("lookback", "horizon", "val_fraction", "stride")
    )
    pred_windows = tok_windows if same else _windows_for(bars, predictor_cfg, train_cut)
    tok = train_tokenizer(tok_windows, tokenizer_cfg, init=tokenizer_init, config=tokenizer_config)
    pred = train_predictor(
        pred_windows, tok.model, predictor_cfg, init=predictor_init, config=predictor_config
    )
    return KronosTrainingOutput(tokenizer=tok, predictor=pred)

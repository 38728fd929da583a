"""CPU fast paths for the engine's private, frozen copies of the Kronos models.

:func:`prepare_for_inference` changes the classes of a model's layers in place (their
parameters and ``state_dict`` keys stay as they are) so that on CPU, in float32 or
bfloat16, they run through oneDNN directly:

* every ``nn.Linear`` uses a weight packed once into oneDNN's blocked layout. PyTorch's
  own CPU linear goes through MKL's sgemm, which on CPUs it does not recognise (AMD here)
  takes its AVX2 path: oneDNN's AVX-512 kernels are about twice as fast in float32, and
  packing saves the per-call reorder (10-50 % more on decode-sized batches);
* self-attention projects queries, keys and values with one concatenated weight;
* the SwiGLU feed-forward fuses ``silu`` into the first projection and the gating product
  into the second (oneDNN post-ops), saving two passes over its widest activation.

The arithmetic stays in the model's dtype; the results differ from the unfused modules by
rounding only (parity tests against the reference hold them to 1e-4), and a row's result
does not depend on the other rows of its batch. On other devices, other dtypes, or where
the oneDNN operators are missing, every layer falls back to its ordinary forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kronos_pipeline.kronos.layers import FeedForward, MultiHeadAttentionWithRoPE

_FAST_DTYPES = (torch.float32, torch.bfloat16)


def _onednn_ops():
    """(linear, binary linear, weight packing) oneDNN operators, or ``None`` if unusable."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        linear = torch.ops.mkldnn._linear_pointwise
        binary = torch.ops.mkldnn._linear_pointwise.binary
        pack = torch.ops.mkldnn._reorder_linear_weight
        x, w = torch.ones(2, 3), torch.full((4, 3), 0.5)
        expected = F.linear(x, w)
        if not torch.equal(linear(x, pack(w, 2), None, "none", [], ""), expected):
            return None
        if not torch.equal(binary(x, expected, w, None, "mul"), expected * expected):
            return None
    except (AttributeError, RuntimeError):
        return None
    return linear, binary, pack


_OPS = _onednn_ops()


def _fast(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _OPS is not None
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in _FAST_DTYPES
    )


class InferenceLinear(nn.Linear):
    """``nn.Linear`` (same parameters) whose CPU forward uses a packed oneDNN weight."""

    _packed: torch.Tensor | None = None

    def pack(self, rows_hint: int = 64) -> None:
        """Pack the current weight for oneDNN (again after the weight changes)."""
        self._packed = None
        if _fast(self.weight, self.weight):
            self._packed = _OPS[2](self.weight.detach(), rows_hint)

    def _weight(self) -> torch.Tensor:
        return self.weight if self._packed is None else self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` for ``x`` [..., in_features]."""
        if _fast(x, self.weight):
            return _OPS[0](x, self._weight(), self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(self(x))`` in one pass."""
        if _fast(x, self.weight):
            return _OPS[0](x, self._weight(), self.bias, "swish", [], "")
        return F.silu(self(x))

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``self(x) * other`` in one pass (``other`` shaped like the output)."""
        if _fast(x, self.weight) and other.dtype == x.dtype and other.is_contiguous():
            return _OPS[1](x, other, self._weight(), self.bias, "mul")
        return self(x) * other


class InferenceFeedForward(FeedForward):
    """SwiGLU with ``silu`` and the gate fused into the two input projections."""

    w1: InferenceLinear
    w3: InferenceLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` [..., D] to [..., D] (inference: no dropout)."""
        return self.w2(self.w3.times(x, self.w1.silu(x)))


class InferenceSelfAttention(MultiHeadAttentionWithRoPE):
    """Self-attention whose q, k and v come from one concatenated projection."""

    qkv: InferenceLinear

    def fuse(self, rows_hint: int) -> None:
        """Build ``qkv`` from the current q/k/v weights."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight.detach() for p in projections])
        bias = torch.cat([p.bias.detach() for p in projections])
        qkv = InferenceLinear(weight.shape[1], weight.shape[0], device=weight.device)
        qkv.to(weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(weight)
            qkv.bias.copy_(bias)
        qkv.requires_grad_(False)
        qkv.pack(rows_hint)
        # Not a registered submodule: the state_dict keeps the published keys.
        object.__setattr__(self, "qkv", qkv)

    def _project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).split(self.d_model, dim=-1)
        return self._heads(q), self._heads(k), self._heads(v)


def prepare_for_inference(module: nn.Module, rows_hint: int = 64) -> nn.Module:
    """Switch ``module``'s layers to the fast classes above, in place, and pack weights.

    For frozen inference copies only: packed and fused weights are snapshots, so a module
    whose weights change afterwards must be prepared again. ``rows_hint`` is the typical
    number of rows per call, a hint for the packed layout (any row count works).
    """
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = InferenceLinear
        elif type(sub) is FeedForward:
            sub.__class__ = InferenceFeedForward
        elif type(sub) is MultiHeadAttentionWithRoPE:
            sub.__class__ = InferenceSelfAttention
    for sub in module.modules():
        if isinstance(sub, InferenceLinear):
            sub.pack(rows_hint)
    for sub in module.modules():
        if isinstance(sub, InferenceSelfAttention):
            sub.fuse(rows_hint)
    return module

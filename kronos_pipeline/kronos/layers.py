"""Building blocks shared by the Kronos tokenizer and predictor.

Every module here keeps the parameter and buffer names of the published checkpoints, so a
``state_dict`` saved by the original implementation loads into these modules unchanged.

Shapes use ``B`` for batch, ``T`` for sequence length, ``D`` for model width, ``H`` for heads
and ``Dh`` for the width of one head.

The self-attention module supports an optional key/value cache (:class:`KVCache`): tokens
are appended to the cache and a query block attends to everything cached so far. RoPE
positions are absolute positions inside the cache, which is what the uncached forward pass
computes for the same tokens, unless the caller passes its own (cos, sin) tables.

For padded batches (the generation engine left-pads series of different lengths to one
length) the attention layers accept ``attn_bias``: an additive mask (0 or ``-inf``)
broadcastable to [B, H, T_q, T_k] that replaces the causal flag, so the caller decides what
each query sees. The generation engine's decode steps use
:func:`shared_prefix_attention` instead: a series' sample paths share one copy of its
context's keys and values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------
# Normalisation and feed-forward
# --------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square layer norm; statistics in float32, result in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [..., D] over its last axis and scale by ``weight``."""
        xf = x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU feed-forward: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, d_model: int, ff_dim: int, ffn_dropout_p: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.ffn_dropout = nn.Dropout(ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` [..., D] to [..., D]."""
        gated = F.silu(self.w1(x)) * self.w3(x)
        return self.ffn_dropout(self.w2(gated))


# --------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Swap the two halves of the last axis, negating the second: (a, b) -> (-b, a)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, Dh] by angle tables ``cos``/``sin`` broadcastable to it:
    ``x * cos + rotate_half(x) * sin``.

    Over several positions it is computed half by half, ``(x1 c1 - x2 s1, x2 c2 + x1 s2)``,
    the same products and sums (``a + (-b)`` is ``a - b`` exactly), so the same bits, without
    materialising ``rotate_half(x)``: 5x faster for a prefill block on CPU. A single position
    (a decode step) keeps the two-product form, which is faster at that size."""
    if x.shape[-2] == 1:
        return (x * cos) + (rotate_half(x) * sin)
    x1, x2 = x.chunk(2, dim=-1)
    c1, c2 = cos.chunk(2, dim=-1)
    s1, s2 = sin.chunk(2, dim=-1)
    return torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE angle tables for one head width (base 10000, halves layout).

    ``inv_freq`` is kept as a buffer because the published checkpoints contain it; the
    tables themselves are always computed in float32 from the closed-form frequencies, so
    casting the module to bf16 does not degrade the positions.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("inv_freq", self._inv_freq(dim))

    @staticmethod
    def _inv_freq(dim: int) -> torch.Tensor:
        return 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))

    def tables(
        self, start: int, length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin), each [1, 1, length, Dh], for positions start..start+length-1."""
        inv_freq = self._inv_freq(self.dim).to(device)
        positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos()[None, None].to(dtype)
        sin = angles.sin()[None, None].to(dtype)
        return cos, sin


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------


def single_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(Dh) + bias) v`` for one query per row: ``q`` [B, H, 1, Dh]
    over ``k``/``v`` [B, H, T, Dh]; ``bias`` (0 or ``-inf``) broadcastable to
    [B, H, 1, T], ``None`` for no mask; returns [B, H, 1, Dh].

    On CPU this is two batched matrix-vector products (``K q`` then ``p V``): decoding is
    bound by reading the cache, and these read it 10-25 % faster than the CPU
    flash-attention kernel, which is built for long query blocks (BENCHMARKS.md).
    Elsewhere it is ``scaled_dot_product_attention``.
    """
    if bias is not None:
        bias = bias.to(k.dtype)
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(k, q.transpose(-1, -2) * q.shape[-1] ** -0.5).transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def shared_prefix_attention(
    q: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    prefix_bias: torch.Tensor,
    own_k: torch.Tensor | None = None,
    own_v: torch.Tensor | None = None,
    own_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new query for each of the ``S`` sample paths of ``N`` series, attending to the
    series' context (one copy, shared by its paths) and to the path's own generated tokens.

    ``q`` [N, H, S, Dh]; ``prefix_k``/``prefix_v`` [N, H, L, Dh] with ``prefix_bias``
    [N, 1, 1, L] (additive 0 / ``-inf``: left padding); ``own_k``/``own_v`` [N, H, S, W, Dh]
    (``None``: no generated token yet) with ``own_bias`` broadcastable to [N, H, S, W]
    (``-inf`` on slots not written yet). Returns [N, H, S, Dh]:

        softmax([q K_prefix^T, q K_own^T] / sqrt(Dh) + bias) [V_prefix; V_own]

    one softmax over all L + W keys of a query (in float32), so the result is what one
    concatenated cache gives, up to rounding. The prefix is read once per series: its S
    queries form one small matrix product, not S matrix-vector products over S copies.
    """
    qs = q * q.shape[-1] ** -0.5
    scores = torch.matmul(qs, prefix_k.transpose(-1, -2)) + prefix_bias
    if own_k is None:
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(prefix_v.dtype)
        return torch.matmul(weights, prefix_v)
    own = torch.matmul(qs.unsqueeze(-2), own_k.transpose(-1, -2)).squeeze(-2) + own_bias
    weights = torch.softmax(torch.cat((scores, own), dim=-1), dim=-1, dtype=torch.float32)
    weights = weights.to(prefix_v.dtype)
    split = prefix_k.shape[2]
    out = torch.matmul(weights[..., :split], prefix_v)
    return out + torch.matmul(weights[..., split:].unsqueeze(-2), own_v).squeeze(-2)


class KVCache:
    """Preallocated keys and values of one attention layer.

    ``k`` and ``v`` are [B, H, capacity, Dh]; ``length`` is the number of filled positions.
    The cache dtype may be wider than the model's (e.g. float32 under a bf16 model, which
    is faster for single-query attention on CPU); attention then runs in the cache dtype.
    """

    def __init__(
        self,
        batch: int,
        n_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch, n_heads, capacity, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @classmethod
    def wrap(cls, k: torch.Tensor, v: torch.Tensor, length: int) -> KVCache:
        """A cache over existing ``k``/``v`` buffers [B, H, capacity, Dh] (views allowed)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.length = k, v, length
        return cache

    @property
    def capacity(self) -> int:
        """Number of positions the cache can hold."""
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` [B, H, t, Dh] after the filled part; return all [B, H, T, Dh]."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.capacity:
            raise ValueError(f"KV cache overflow: {stop} positions > capacity {self.capacity}")
        self.k[:, :, start:stop] = k
        self.v[:, :, start:stop] = v
        self.length = stop
        return self.k[:, :, :stop], self.v[:, :, :stop]


def _padding_attn_mask(
    key_padding_mask: torch.Tensor | None, n_heads: int, q_len: int
) -> torch.Tensor | None:
    """Expand a [B, T_k] key mask to SDPA's [B, H, T_q, T_k] (passed through as given)."""
    if key_padding_mask is None:
        return None
    return key_padding_mask[:, None, None, :].expand(-1, n_heads, q_len, -1)


class _RotaryAttentionBase(nn.Module):
    """Projections (checkpoint keys q_proj/k_proj/v_proj/out_proj), rotary table and head
    reshaping shared by the self- and cross-attention layers."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attn_dropout_p: float = 0.0,
        resid_dropout_p: float = 0.0,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)


class MultiHeadAttentionWithRoPE(_RotaryAttentionBase):
    """Causal multi-head self-attention with rotary positions and an optional KV cache."""

    def _project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, H, T, Dh] of ``x`` [B, T, D]."""
        return (
            self._heads(self.q_proj(x)),
            self._heads(self.k_proj(x)),
            self._heads(self.v_proj(x)),
        )

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` [B, T, D] causally; returns [B, T, D].

        Without ``cache`` the positions are 0..T-1 (the reference behaviour). With a cache
        the new tokens take positions ``cache.length``.. and attend to every cached token;
        ``rope`` may pass precomputed (cos, sin) tables for exactly those positions
        ([1, 1, T, Dh], or [B, 1, T, Dh] for per-row positions). ``attn_bias``: additive
        mask over the keys attended (all cached ones with a cache), used instead of the
        causal flag; see the module docstring.
        """
        b, t, _ = x.shape
        q, k, v = self._project_qkv(x)
        start = 0 if cache is None else cache.length
        if rope is None:
            rope = self.rotary.tables(start, t, x.device, q.dtype)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout_p = self.attn_dropout_p if self.training else 0.0
        if attn_bias is not None and key_padding_mask is not None:
            raise ValueError("pass either attn_bias or key_padding_mask, not both")
        if cache is None:
            if attn_bias is not None:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_bias.to(q.dtype), dropout_p=dropout_p
                )
            else:
                attn_mask = _padding_attn_mask(key_padding_mask, self.n_heads, t)
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=True
                )
        else:
            if key_padding_mask is not None:
                raise ValueError("key_padding_mask is not supported together with a KV cache")
            if start > 0 and t > 1:
                raise ValueError("a KV cache accepts a multi-token block only when empty")
            k, v = cache.append(k, v)
            if t == 1:
                out = single_query_attention(q.to(k.dtype), k, v, attn_bias).to(x.dtype)
            elif attn_bias is not None:
                out = F.scaled_dot_product_attention(
                    q.to(k.dtype), k, v, attn_mask=attn_bias.to(k.dtype), dropout_p=dropout_p
                ).to(x.dtype)
            else:
                out = F.scaled_dot_product_attention(
                    q.to(k.dtype), k, v, dropout_p=dropout_p, is_causal=True
                ).to(x.dtype)
        out = out.transpose(1, 2).reshape(b, t, self.d_model)
        return self.resid_dropout(self.out_proj(out))


class MultiHeadCrossAttentionWithRoPE(_RotaryAttentionBase):
    """Cross-attention of the s2 dependency layer (query: s1 embeddings, keys: context).

    Reproduces the reference exactly: the rotary tables are built for the *query* length
    and applied to queries and keys alike (so a single query means no rotation at all), and
    the attention is causal only in training mode.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attn_dropout_p: float = 0.0,
        resid_dropout: float = 0.0,
    ) -> None:
        super().__init__(d_model, n_heads, attn_dropout_p, resid_dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``query`` [B, Tq, D] over ``key``/``value`` [B, Tk, D]; returns [B, Tq, D]."""
        b, tq, _ = query.shape
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        cos, sin = self.rotary.tables(0, tq, query.device, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attn_mask = _padding_attn_mask(key_padding_mask, self.n_heads, tq)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
            is_causal=self.training,
        )
        out = out.transpose(1, 2).reshape(b, tq, self.d_model)
        return self.resid_dropout(self.out_proj(out))

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, T, Dh] of ``context`` [B, T, D], for cached decoding."""
        return self._heads(self.k_proj(context)), self._heads(self.v_proj(context))

    def attend_single(
        self,
        query: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One query per row, ``query`` [B, 1, D], over projected ``k``/``v``; eval mode.
        ``bias``: additive key mask as in :func:`single_query_attention`.

        With a single query the reference's rotary tables have one row (angle 0), which is
        the identity, so no rotation is applied here.
        """
        b = query.shape[0]
        q = self._heads(self.q_proj(query))
        out = single_query_attention(q.to(k.dtype), k, v, bias).to(query.dtype)
        return self.out_proj(out.transpose(1, 2).reshape(b, 1, self.d_model))


class DependencyAwareLayer(nn.Module):
    """s2 conditioning: ``norm(context + cross_attn(s1 embedding -> context))``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        attn_dropout_p: float = 0.0,
        resid_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cross_attn = MultiHeadCrossAttentionWithRoPE(
            d_model, n_heads, attn_dropout_p, resid_dropout
        )
        self.norm = RMSNorm(d_model)

    def forward(
        self,
        hidden_states: torch.Tensor,
        sibling_embed: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` [B, T, D], ``sibling_embed`` [B, Tq, D]; returns [B, T, D]."""
        attn_out = self.cross_attn(
            query=sibling_embed,
            key=hidden_states,
            value=hidden_states,
            key_padding_mask=key_padding_mask,
        )
        return self.norm(hidden_states + attn_out)


# --------------------------------------------------------------------------------------
# Transformer block
# --------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1 x)`` then ``x + ffn(norm2 x)``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ff_dim: int = 1024,
        ffn_dropout_p: float = 0.0,
        attn_dropout_p: float = 0.0,
        resid_dropout_p: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = MultiHeadAttentionWithRoPE(
            d_model, n_heads, attn_dropout_p, resid_dropout_p
        )
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, ffn_dropout_p)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map ``x`` [B, T, D] to [B, T, D]; see :class:`MultiHeadAttentionWithRoPE`."""
        x = x + self.self_attn(
            self.norm1(x),
            key_padding_mask=key_padding_mask,
            cache=cache,
            rope=rope,
            attn_bias=attn_bias,
        )
        x = x + self.ffn(self.norm2(x))
        return x


# --------------------------------------------------------------------------------------
# Embeddings and heads of the predictor
# --------------------------------------------------------------------------------------


class HierarchicalEmbedding(nn.Module):
    """Embed an (s1, s2) token pair: ``fusion_proj([emb_s1 * sqrt(D), emb_s2 * sqrt(D)])``."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int = 256) -> None:
        super().__init__()
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        self.d_model = d_model
        self.emb_s1 = nn.Embedding(2**s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2**s2_bits, d_model)
        self.fusion_proj = nn.Linear(d_model * 2, d_model)
        nn.init.normal_(self.emb_s1.weight, mean=0.0, std=d_model**-0.5)
        nn.init.normal_(self.emb_s2.weight, mean=0.0, std=d_model**-0.5)

    def split_token(
        self, token_ids: torch.Tensor, s2_bits: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Split composite ids into (s1 = high bits, s2 = low ``s2_bits`` bits)."""
        t = token_ids.long()
        return t >> s2_bits, t & ((1 << s2_bits) - 1)

    def forward(self, token_ids: torch.Tensor | tuple | list) -> torch.Tensor:
        """``token_ids``: (s1 [B, T], s2 [B, T]) or composite ids [B, T]; returns [B, T, D]."""
        if isinstance(token_ids, (tuple, list)):
            s1_ids, s2_ids = token_ids
        else:
            s1_ids, s2_ids = self.split_token(token_ids, self.s2_bits)
        scale = math.sqrt(self.d_model)
        s1_emb = self.emb_s1(s1_ids) * scale
        s2_emb = self.emb_s2(s2_ids) * scale
        return self.fusion_proj(torch.cat([s1_emb, s2_emb], dim=-1))


class DualHead(nn.Module):
    """Output projections: ``proj_s1`` for s1 logits, ``proj_s2`` for s2 logits."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int) -> None:
        super().__init__()
        self.vocab_s1 = 2**s1_bits
        self.vocab_s2 = 2**s2_bits
        self.proj_s1 = nn.Linear(d_model, self.vocab_s1)
        self.proj_s2 = nn.Linear(d_model, self.vocab_s2)

    def compute_loss(
        self,
        s1_logits: torch.Tensor,
        s2_logits: torch.Tensor,
        s1_targets: torch.Tensor,
        s2_targets: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-entropy (nats) of both heads: returns (mean of the two, ce_s1, ce_s2).

        ``padding_mask`` [B, T] marks padded positions with non-zero; they are excluded.
        """
        if padding_mask is not None:
            keep = padding_mask == 0
            ce_s1 = F.cross_entropy(s1_logits[keep], s1_targets[keep])
            ce_s2 = F.cross_entropy(s2_logits[keep], s2_targets[keep])
        else:
            ce_s1 = F.cross_entropy(s1_logits.reshape(-1, self.vocab_s1), s1_targets.reshape(-1))
            ce_s2 = F.cross_entropy(s2_logits.reshape(-1, self.vocab_s2), s2_targets.reshape(-1))
        return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """s1 logits [..., 2**s1_bits] from hidden states [..., D]."""
        return self.proj_s1(x)

    def cond_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """s2 logits [..., 2**s2_bits] from dependency-layer outputs [..., D]."""
        return self.proj_s2(x2)


class FixedEmbedding(nn.Module):
    """Frozen sinusoidal table of ``c_in`` rows (stored under ``emb.weight``)."""

    def __init__(self, c_in: int, d_model: int) -> None:
        super().__init__()
        table = torch.zeros(c_in, d_model)
        position = torch.arange(0, c_in).float().unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)
        self.emb = nn.Embedding(c_in, d_model)
        self.emb.weight = nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Look up rows ``x`` (integer tensor); the result carries no gradient."""
        return self.emb(x).detach()


class TemporalEmbedding(nn.Module):
    """Sum of minute, hour, weekday, day-of-month and month embeddings.

    The stamp tensor is [B, T, 5] with columns (minute, hour, weekday, day, month) as
    built by :func:`kronos_pipeline.kronos.preprocessing.time_features`.
    """

    def __init__(self, d_model: int, learn_pe: bool) -> None:
        super().__init__()
        make = nn.Embedding if learn_pe else FixedEmbedding
        self.minute_embed = make(60, d_model)
        self.hour_embed = make(24, d_model)
        self.weekday_embed = make(7, d_model)
        self.day_embed = make(32, d_model)
        self.month_embed = make(13, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map stamps [B, T, 5] to embeddings [B, T, D]."""
        x = x.long()
        minute = self.minute_embed(x[:, :, 0])
        hour = self.hour_embed(x[:, :, 1])
        weekday = self.weekday_embed(x[:, :, 2])
        day = self.day_embed(x[:, :, 3])
        month = self.month_embed(x[:, :, 4])
        # Summation order as in the reference, so float results agree bit for bit.
        return hour + weekday + day + month + minute

"""Kronos predictor: a decoder-only transformer over hierarchical (s1, s2) tokens.

Per position the (s1, s2) pair is embedded (plus calendar embeddings), run through
``n_layers`` causal blocks and a final RMSNorm. The s1 head reads that hidden state; the s2
head reads a dependency layer that cross-attends from the embedding of the chosen s1 token
to the hidden states of the whole window.

Two ways to run it:

* the module-level passes :meth:`Kronos.forward`, :meth:`Kronos.decode_s1` and
  :meth:`Kronos.decode_s2` behave as the reference implementation (training and tests);
* the cached passes :meth:`Kronos.new_cache`, :meth:`Kronos.extend` and
  :meth:`Kronos.s2_logits_cached` let the generation engine feed one token per step.

Parameter names equal the keys of the published checkpoints (Kronos-mini/small/base);
constructor arguments equal the fields of their ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kronos_pipeline.kronos.checkpoint import PretrainedMixin
from kronos_pipeline.kronos.layers import (
    DependencyAwareLayer,
    DualHead,
    FixedEmbedding,
    HierarchicalEmbedding,
    KVCache,
    RMSNorm,
    TemporalEmbedding,
    TransformerBlock,
)


@dataclass(frozen=True)
class KronosConfig:
    """Fields of a predictor ``config.json`` (names as published)."""

    s1_bits: int = 10
    s2_bits: int = 10
    n_layers: int = 8
    d_model: int = 512
    n_heads: int = 8
    ff_dim: int = 1024
    ffn_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    token_dropout_p: float = 0.0
    learn_te: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> KronosConfig:
        """Build from a config mapping, ignoring keys that are not model fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class KronosCache:
    """Decoding state of one micro-batch.

    ``layers`` holds one self-attention :class:`KVCache` per block; ``dep_k``/``dep_v`` are
    the dependency layer's keys/values of every position seen so far [B, 4, T, D/4].
    """

    layers: list[KVCache]
    dep_k: torch.Tensor
    dep_v: torch.Tensor
    length: int = 0

    def reset(self) -> None:
        """Forget every position (keeps the allocated memory)."""
        self.set_length(0)

    def repeat_rows(self, repeats: int) -> KronosCache:
        """A new cache with every row repeated ``repeats`` times (row-major, as
        ``repeat_interleave``), e.g. to fan one prefilled context out to sample paths."""
        return KronosCache(
            layers=[
                KVCache.wrap(
                    layer.k.repeat_interleave(repeats, dim=0),
                    layer.v.repeat_interleave(repeats, dim=0),
                    layer.length,
                )
                for layer in self.layers
            ],
            dep_k=self.dep_k.repeat_interleave(repeats, dim=0),
            dep_v=self.dep_v.repeat_interleave(repeats, dim=0),
            length=self.length,
        )

    def rows(self, start: int, stop: int) -> KronosCache:
        """Rows ``start..stop-1`` as a cache sharing this one's memory: what is written
        through it lands here (for filling a large batch in smaller row blocks). Lengths
        are copied, not shared: call :meth:`set_length` on this cache afterwards."""
        return KronosCache(
            layers=[
                KVCache.wrap(layer.k[start:stop], layer.v[start:stop], layer.length)
                for layer in self.layers
            ],
            dep_k=self.dep_k[start:stop],
            dep_v=self.dep_v[start:stop],
            length=self.length,
        )

    def set_length(self, length: int) -> None:
        """Mark the first ``length`` positions of every row as filled."""
        self.length = length
        for layer in self.layers:
            layer.length = length


class Kronos(PretrainedMixin, nn.Module):
    """The Kronos autoregressive predictor. Construct with ``Kronos(**config)``."""

    _HUB_LOADER = "load_predictor"

    def __init__(self, **config: Any) -> None:
        super().__init__()
        cfg = KronosConfig.from_dict(config)
        self.config = cfg
        self.s1_bits = cfg.s1_bits
        self.s2_bits = cfg.s2_bits
        self.d_model = cfg.d_model
        self.n_layers = cfg.n_layers
        self.s1_vocab_size = 2**cfg.s1_bits

        self.token_drop = nn.Dropout(cfg.token_dropout_p)
        self.embedding = HierarchicalEmbedding(cfg.s1_bits, cfg.s2_bits, cfg.d_model)
        self.time_emb = TemporalEmbedding(cfg.d_model, cfg.learn_te)
        self.transformer = nn.ModuleList(
            [
                TransformerBlock(
                    cfg.d_model,
                    cfg.n_heads,
                    cfg.ff_dim,
                    cfg.ffn_dropout_p,
                    cfg.attn_dropout_p,
                    cfg.resid_dropout_p,
                )
                for _ in range(cfg.n_layers)
            ]
        )
        self.norm = RMSNorm(cfg.d_model)
        # The published model uses 4 heads here whatever n_heads is.
        self.dep_layer = DependencyAwareLayer(cfg.d_model)
        self.head = DualHead(cfg.s1_bits, cfg.s2_bits, cfg.d_model)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, FixedEmbedding):
            return
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
            nn.init.normal_(module.weight, mean=0.0, std=self.d_model**-0.5)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    # -- reference-compatible passes ---------------------------------------------------

    def _embed(
        self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.embedding([s1_ids, s2_ids])
        if stamp is not None:
            x = x + self.time_emb(stamp)
        return self.token_drop(x)

    def decode_s1(
        self,
        s1_ids: torch.Tensor,
        s2_ids: torch.Tensor,
        stamp: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the window: returns (s1 logits [B, T, V1], context [B, T, D] after the norm)."""
        x = self._embed(s1_ids, s2_ids, stamp)
        for layer in self.transformer:
            x = layer(x, key_padding_mask=padding_mask)
        x = self.norm(x)
        return self.head(x), x

    def decode_s2(
        self,
        context: torch.Tensor,
        s1_ids: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """s2 logits [B, T, V2] given the context of ``decode_s1`` and s1 ids [B, Tq]."""
        sibling = self.embedding.emb_s1(s1_ids)
        x2 = self.dep_layer(context, sibling, key_padding_mask=padding_mask)
        return self.head.cond_forward(x2)

    def forward(
        self,
        s1_ids: torch.Tensor,
        s2_ids: torch.Tensor,
        stamp: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        use_teacher_forcing: bool = False,
        s1_targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for the next token at every position: (s1 [B, T, V1], s2 [B, T, V2]).

        The s2 head is conditioned on ``s1_targets`` when ``use_teacher_forcing``, otherwise
        on s1 ids sampled from the s1 logits (``torch.multinomial``, global RNG).
        """
        s1_logits, context = self.decode_s1(s1_ids, s2_ids, stamp, padding_mask)
        if use_teacher_forcing:
            sibling_ids = s1_targets
        else:
            probs = F.softmax(s1_logits.detach(), dim=-1)
            sibling_ids = torch.multinomial(probs.view(-1, self.s1_vocab_size), 1).view(
                s1_ids.shape
            )
        return s1_logits, self.decode_s2(context, sibling_ids, padding_mask)

    # -- cached decoding (inference only) -----------------------------------------------

    def new_cache(
        self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype
    ) -> KronosCache:
        """Empty decoding state for ``batch`` rows and up to ``capacity`` positions."""
        layers = []
        for block in self.transformer:
            attn = block.self_attn
            layers.append(KVCache(batch, attn.n_heads, attn.head_dim, capacity, device, dtype))
        cross = self.dep_layer.cross_attn
        shape = (batch, cross.n_heads, capacity, cross.head_dim)
        return KronosCache(
            layers=layers,
            dep_k=torch.empty(shape, device=device, dtype=dtype),
            dep_v=torch.empty(shape, device=device, dtype=dtype),
        )

    def extend(
        self,
        cache: KronosCache,
        s1_ids: torch.Tensor,
        s2_ids: torch.Tensor,
        stamp: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Append tokens [B, t] with stamps [B, t, 5]; returns their context [B, t, D].

        A multi-token block is accepted only on an empty cache (prefill). ``rope`` may give
        the (cos, sin) tables [1, 1, t, Dh] of the new positions (shared by all layers).
        """
        x = self.embedding([s1_ids, s2_ids]) + self.time_emb(stamp)
        for i, block in enumerate(self.transformer):
            x = block(x, cache=cache.layers[i], rope=rope)
        x = self.norm(x)
        k, v = self.dep_layer.cross_attn.project_kv(x)
        start, stop = cache.length, cache.length + x.shape[1]
        cache.dep_k[:, :, start:stop] = k
        cache.dep_v[:, :, start:stop] = v
        cache.length = stop
        return x

    def s1_logits(self, context_last: torch.Tensor) -> torch.Tensor:
        """s1 logits [B, V1] from the last context vector [B, D]."""
        return self.head(context_last)

    def s2_logits_cached(
        self, cache: KronosCache, context_last: torch.Tensor, s1_ids: torch.Tensor
    ) -> torch.Tensor:
        """s2 logits [B, V2] for the newest position given its chosen s1 ids [B]."""
        n = cache.length
        sibling = self.embedding.emb_s1(s1_ids)[:, None, :]
        attn = self.dep_layer.cross_attn.attend_single(
            sibling, cache.dep_k[:, :, :n], cache.dep_v[:, :, :n]
        ).to(context_last.dtype)
        x2 = self.dep_layer.norm(context_last[:, None, :] + attn)
        return self.head.cond_forward(x2[:, 0])

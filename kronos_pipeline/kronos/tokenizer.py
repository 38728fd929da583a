"""Kronos tokenizer: a transformer autoencoder with binary spherical quantization (BSQ).

A window of normalised bars x [B, T, d_in] is embedded, passed through ``n_enc_layers - 1``
causal transformer blocks, projected to ``s1_bits + s2_bits`` dimensions, L2-normalised and
quantized to signs (scaled by ``1/sqrt(codebook_dim)``). The first ``s1_bits`` signs form the
coarse token s1, the remaining ``s2_bits`` the fine token s2; bit ``i`` carries weight ``2**i``.
Decoding maps the bits back through ``post_quant_embed``, ``n_dec_layers - 1`` blocks and the
output ``head``.

Parameter names equal the keys of the published checkpoints (Kronos-Tokenizer-base,
Kronos-Tokenizer-2k); constructor arguments equal the fields of their ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kronos_pipeline.kronos.checkpoint import PretrainedMixin
from kronos_pipeline.kronos.layers import TransformerBlock


@dataclass(frozen=True)
class KronosTokenizerConfig:
    """Fields of a tokenizer ``config.json`` (names as published)."""

    d_in: int = 6
    d_model: int = 256
    n_heads: int = 4
    ff_dim: int = 512
    n_enc_layers: int = 4
    n_dec_layers: int = 4
    ffn_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    s1_bits: int = 10
    s2_bits: int = 10
    beta: float = 0.05
    gamma0: float = 1.0
    gamma: float = 1.1
    zeta: float = 0.05
    group_size: int = 4

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> KronosTokenizerConfig:
        """Build from a config mapping, ignoring keys that are not model fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# --------------------------------------------------------------------------------------
# Binary spherical quantization
# --------------------------------------------------------------------------------------


def _binary_entropy_terms(p: torch.Tensor) -> torch.Tensor:
    """-(p log(p + 1e-8)) summed over a trailing (p, 1 - p) axis."""
    probs = torch.stack([p, 1 - p], dim=-1)
    return -(probs * torch.log(probs + 1e-8)).sum(dim=-1)


class BinarySphericalQuantizer(nn.Module):
    """Sign quantizer on the unit sphere with the BSQ commitment and entropy losses.

    Only the configuration the Kronos checkpoints use is implemented: L2-normalised codes,
    soft entropy with the analytical per-sample term, inverse temperature 1. The codebook
    entropy term is, as in the reference, the sum over bits of the binary entropy of the
    batch-averaged bit probability.
    """

    def __init__(
        self, embed_dim: int, beta: float, gamma0: float, gamma: float, zeta: float, group_size: int
    ) -> None:
        super().__init__()
        if embed_dim % group_size != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by group_size {group_size}")
        self.embed_dim = embed_dim
        self.beta = beta
        self.gamma0 = gamma0
        self.gamma = gamma
        self.zeta = zeta
        self.group_size = group_size
        self.register_buffer("basis", 2 ** torch.arange(embed_dim - 1, -1, -1))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size - 1, -1, -1))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Signs of ``z`` (+1 where z > 0, else -1) with a straight-through gradient."""
        one = torch.ones((), dtype=z.dtype, device=z.device)
        signs = torch.where(z > 0, one, -one)
        return z + (signs - z).detach()

    def entropy_penalty(self, z: torch.Tensor) -> torch.Tensor:
        """``gamma0 * per-sample entropy - gamma * codebook entropy`` (nats) of ``z``."""
        p = torch.sigmoid(-4 * z / (self.embed_dim**0.5))
        per_sample = _binary_entropy_terms(p).sum(dim=-1).mean()
        avg_p = torch.stack([p, 1 - p], dim=-1).reshape(-1, self.embed_dim, 2).mean(dim=0)
        codebook = -(avg_p * torch.log(avg_p + 1e-8)).sum(dim=-1).sum()
        return self.gamma0 * per_sample - self.gamma * codebook

    def forward(
        self, z: torch.Tensor, collect_metrics: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize unit vectors ``z`` [..., embed_dim]; returns (codes, loss).

        Codes are ±1/sqrt(embed_dim). The loss is ``beta * commitment + zeta * entropy
        penalty`` when ``collect_metrics``, else a zero scalar.
        """
        zq = self.quantize(z) * (1.0 / self.embed_dim**0.5)
        if not collect_metrics:
            return zq, zq.new_zeros(())
        commit = self.beta * torch.mean(((zq.detach() - z) ** 2).sum(dim=-1))
        return zq, commit + self.zeta * self.entropy_penalty(z)


class BSQuantizer(nn.Module):
    """Normalise, quantize and turn the sign bits into token ids (bit i has weight 2**i)."""

    def __init__(
        self,
        s1_bits: int,
        s2_bits: int,
        beta: float,
        gamma0: float,
        gamma: float,
        zeta: float,
        group_size: int,
    ) -> None:
        super().__init__()
        self.codebook_dim = s1_bits + s2_bits
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        self.bsq = BinarySphericalQuantizer(
            self.codebook_dim, beta, gamma0, gamma, zeta, group_size
        )

    @staticmethod
    def bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
        """Integer ids [...] from a sign tensor [..., n] (non-negative counts as bit 1)."""
        weights = 2 ** torch.arange(bits.shape[-1], dtype=torch.long, device=bits.device)
        return ((bits >= 0).long() * weights).sum(-1)

    def forward(
        self, z: torch.Tensor, half: bool = False, collect_metrics: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """Quantize ``z`` [B, T, codebook_dim]; returns (loss, codes, ids).

        ``ids`` is [s1 ids, s2 ids] when ``half`` else the composite ids [B, T].
        """
        z = F.normalize(z, dim=-1)
        quantized, loss = self.bsq(z, collect_metrics=collect_metrics)
        if half:
            ids: torch.Tensor | list[torch.Tensor] = [
                self.bits_to_indices(quantized[:, :, : self.s1_bits]),
                self.bits_to_indices(quantized[:, :, self.s1_bits :]),
            ]
        else:
            ids = self.bits_to_indices(quantized)
        return loss, quantized, ids


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


class KronosTokenizer(PretrainedMixin, nn.Module):
    """BSQ autoencoder turning normalised OHLCV(A) bars into (s1, s2) token pairs.

    Construct with the fields of ``config.json``: ``KronosTokenizer(**config)``.
    """

    _HUB_LOADER = "load_tokenizer"

    def __init__(self, **config: Any) -> None:
        super().__init__()
        cfg = KronosTokenizerConfig.from_dict(config)
        self.config = cfg
        self.d_in = cfg.d_in
        self.d_model = cfg.d_model
        self.s1_bits = cfg.s1_bits
        self.s2_bits = cfg.s2_bits
        self.codebook_dim = cfg.s1_bits + cfg.s2_bits

        def block() -> TransformerBlock:
            return TransformerBlock(
                cfg.d_model,
                cfg.n_heads,
                cfg.ff_dim,
                cfg.ffn_dropout_p,
                cfg.attn_dropout_p,
                cfg.resid_dropout_p,
            )

        self.embed = nn.Linear(cfg.d_in, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.d_in)
        # The published architecture uses one block fewer than the configured layer counts.
        self.encoder = nn.ModuleList([block() for _ in range(cfg.n_enc_layers - 1)])
        self.decoder = nn.ModuleList([block() for _ in range(cfg.n_dec_layers - 1)])
        self.quant_embed = nn.Linear(cfg.d_model, self.codebook_dim)
        self.post_quant_embed_pre = nn.Linear(cfg.s1_bits, cfg.d_model)
        self.post_quant_embed = nn.Linear(self.codebook_dim, cfg.d_model)
        self.tokenizer = BSQuantizer(
            cfg.s1_bits, cfg.s2_bits, cfg.beta, cfg.gamma0, cfg.gamma, cfg.zeta, cfg.group_size
        )

    # -- pieces ------------------------------------------------------------------------

    def _encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        for layer in self.encoder:
            z = layer(z)
        return self.quant_embed(z)

    def _decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.decoder:
            z = layer(z)
        return self.head(z)

    # -- public API (same meaning as the reference) ------------------------------------

    def forward(
        self, x: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode ``x`` [B, T, d_in].

        Returns ``((z_pre, z), bsq_loss, quantized, z_indices)``: reconstructions [B, T, d_in]
        from the s1 bits only and from all bits, the quantizer loss (scalar), the codes
        [B, T, codebook_dim] and the composite token ids [B, T].
        """
        latent = self._encode_latent(x)
        bsq_loss, quantized, z_indices = self.tokenizer(latent)
        z_pre = self._decode_latent(self.post_quant_embed_pre(quantized[:, :, : self.s1_bits]))
        z = self._decode_latent(self.post_quant_embed(quantized))
        return (z_pre, z), bsq_loss, quantized, z_indices

    def indices_to_bits(self, x: torch.Tensor | tuple | list, half: bool = False) -> torch.Tensor:
        """Codes [..., codebook_dim] (±1/sqrt(codebook_dim)) from token ids.

        ``x`` is composite ids, or ``(s1 ids, s2 ids)`` when ``half`` (both halves are read
        with ``codebook_dim // 2`` bits, as in the reference).
        """
        if half:
            s1_ids, s2_ids = x[0], x[1]
            mask = 2 ** torch.arange(self.codebook_dim // 2, device=s1_ids.device, dtype=torch.long)
            bits = torch.cat(
                [(s1_ids.unsqueeze(-1) & mask) != 0, (s2_ids.unsqueeze(-1) & mask) != 0], dim=-1
            )
        else:
            mask = 2 ** torch.arange(self.codebook_dim, device=x.device, dtype=torch.long)
            bits = (x.unsqueeze(-1) & mask) != 0
        codes = bits.float() * 2 - 1
        return codes * (1.0 / self.codebook_dim**0.5)

    def encode(self, x: torch.Tensor, half: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Token ids of ``x`` [B, T, d_in]: ``[s1 [B, T], s2 [B, T]]`` if ``half`` else [B, T]."""
        _, _, ids = self.tokenizer(self._encode_latent(x), half=half, collect_metrics=False)
        return ids

    def decode(self, x: torch.Tensor | tuple | list, half: bool = False) -> torch.Tensor:
        """Reconstruct normalised bars [B, T, d_in] from token ids (see ``indices_to_bits``)."""
        codes = self.indices_to_bits(x, half).to(self.post_quant_embed.weight.dtype)
        return self._decode_latent(self.post_quant_embed(codes))

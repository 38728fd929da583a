"""Batched, KV-cached Kronos generation.

Public API (what the pipeline calls)::

    from kronos_pipeline.kronos import load_predictor, load_tokenizer
    from kronos_pipeline.kronos.engine import KronosEngine

    engine = KronosEngine(
        load_tokenizer("NeoQuasar/Kronos-Tokenizer-base", revision=...),
        load_predictor("NeoQuasar/Kronos-small", revision=...),
        device="auto",        # cuda > mps > cpu
        dtype="float32",      # or "bfloat16" / "float16" for the predictor
        batch_size=64,        # rows (series x sample paths) per micro-batch
        max_context=512,
    )
    result = engine.forecast(
        windows,              # list[DataFrame]: open, high, low, close[, volume[, amount]]
        timestamps,           # list[DatetimeIndex], one per window (same length as it)
        future_timestamps,    # list[DatetimeIndex], pred_len each
        pred_len=90,
        temperature=1.0, top_k=1, top_p=1.0,  # top_k=1 is greedy
        sample_count=1,
        seed=0,               # or seeds=[...] (one per series)
        return_embeddings=False,
    )
    result.paths              # float32 [n_series, sample_count, pred_len, 6], input units
    result.mean()             # [n_series, pred_len, 6]
    result.quantile(0.1)      # [n_series, pred_len, 6]
    result.frames()           # list of DataFrames indexed by future timestamps
    result.embeddings         # float32 [n_series, d_model] or None

What it computes is the reference ``KronosPredictor.predict_batch`` (same preprocessing,
context window, sampling rules and decoding), but

* the context is run once (prefill) and each generated token is fed alone through a
  key/value cache; the s2 token uses cached keys/values of the dependency layer;
* while the sequence is longer than ``max_context`` the reference slides its window and
  re-encodes it each step (positions restart at the window start), so the engine does the
  same for those steps (exact, not cached);
* every sample path is kept (``paths``) instead of being averaged;
* sampling draws from per-row generators seeded from (series seed, path index), so a
  series' result does not depend on the micro-batch size or on the other series;
* series are grouped by context length and cut into micro-batches of ``batch_size`` rows;
  on out-of-memory a micro-batch is halved and retried.

Sampling rules (as the reference): logits / temperature; if ``top_k > 0`` keep the
``top_k`` largest (``top_p`` is then ignored); else if ``top_p < 1`` nucleus filtering;
then draw. ``top_k == 1`` takes the arg-max without randomness.

``embeddings`` are the predictor's final hidden states (after its last norm) averaged over
the context window, one vector per series, for later fusion with other features.
"""

from __future__ import annotations

import copy
import gc
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from kronos_pipeline.kronos.hub import resolve_device
from kronos_pipeline.kronos.inference import prepare_for_inference
from kronos_pipeline.kronos.predictor import Kronos
from kronos_pipeline.kronos.preprocessing import (
    FEATURE_COLUMNS,
    prepare_window,
    time_features,
)
from kronos_pipeline.kronos.tokenizer import KronosTokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits [B, V] to ``-inf`` outside the top-k set, or else the nucleus.

    ``top_k > 0`` keeps every logit >= the k-th largest and ignores ``top_p``; otherwise
    ``top_p < 1`` keeps the smallest set of most likely tokens whose probability reaches
    ``top_p`` (always at least one). Returns a new tensor.
    """
    if top_k > 0:
        k = min(max(top_k, 1), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = torch.zeros_like(cum, dtype=torch.bool)
        drop_sorted[..., 1:] = (cum > top_p)[..., :-1]
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    uniforms: torch.Tensor | None,
) -> torch.Tensor:
    """Token ids [B] from logits [B, V].

    ``top_k == 1`` is the arg-max. Otherwise the filtered softmax is sampled by inverse
    CDF with ``uniforms`` [B] in [0, 1) (one per row, so rows are independent).
    """
    if top_k == 1:
        return torch.argmax(logits, dim=-1)
    if uniforms is None:
        raise ValueError("sampling needs uniforms")
    scaled = filter_logits(logits.float() / temperature, top_k, top_p)
    cdf = torch.softmax(scaled, dim=-1).double().cumsum(dim=-1)
    threshold = uniforms.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:]
    ids = torch.searchsorted(cdf, threshold, right=True)[:, 0]
    return ids.clamp_max(logits.shape[-1] - 1)


def row_seed(series_seed: int, path: int) -> int:
    """64-bit generator seed of sample path ``path`` of a series seeded ``series_seed``."""
    state = np.random.SeedSequence([int(series_seed) & 0xFFFFFFFFFFFFFFFF, path]).generate_state(
        2, dtype=np.uint32
    )
    return int(state[0]) << 32 | int(state[1])


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------


@dataclass
class ForecastResult:
    """Forecasts of ``n`` series.

    ``paths``: float32 [n, sample_count, pred_len, 6] in the input units, columns
    :data:`FEATURE_COLUMNS`; ``embeddings``: float32 [n, d_model] or ``None``;
    ``tokens``: the generated (s1, s2) ids, int64 [n, sample_count, pred_len, 2], or ``None``.
    """

    paths: np.ndarray
    future_timestamps: list[pd.DatetimeIndex]
    embeddings: np.ndarray | None = None
    tokens: np.ndarray | None = None
    columns: tuple[str, ...] = FEATURE_COLUMNS

    def mean(self) -> np.ndarray:
        """Mean over sample paths, [n, pred_len, 6]."""
        return self.paths.mean(axis=1)

    def quantile(self, q: float | Sequence[float]) -> np.ndarray:
        """Quantile(s) over sample paths: [n, pred_len, 6] (or [len(q), n, pred_len, 6])."""
        return np.quantile(self.paths, q, axis=1).astype(np.float32)

    def frames(self, stat: str = "mean") -> list[pd.DataFrame]:
        """One DataFrame per series (index: future timestamps) of ``"mean"`` or ``"median"``."""
        values = self.mean() if stat == "mean" else np.median(self.paths, axis=1)
        return [
            pd.DataFrame(values[i], columns=list(self.columns), index=self.future_timestamps[i])
            for i in range(values.shape[0])
        ]


# --------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class KronosEngine:
    """Micro-batched, KV-cached forecasting with a Kronos tokenizer and predictor.

    ``device``: ``"auto"`` (cuda > mps > cpu) or a torch device string. ``dtype``: the
    predictor's compute dtype (``"float32"``, ``"bfloat16"``, ``"float16"``);
    ``tokenizer_dtype`` likewise for the tokenizer (float32 by default, so the tokens of
    the context do not depend on ``dtype``). ``batch_size``: rows (series x sample paths)
    per micro-batch. ``max_context``: longest window the predictor sees (512 for
    Kronos-small/base, 2048 for Kronos-mini). ``clip``: normalised values are clipped to
    ``[-clip, clip]``. ``fast_linear``: on CPU run the layers through oneDNN with packed
    and fused weights (see :mod:`kronos_pipeline.kronos.inference`). ``block_tokens``: the tokenizer and the prefill run over at
    most this many rows x positions at a time (default 4096 on CPU, unlimited elsewhere).
    The models are copied, not modified.
    """

    def __init__(
        self,
        tokenizer: KronosTokenizer,
        predictor: Kronos,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 64,
        max_context: int = 512,
        clip: float = 5.0,
        tokenizer_dtype: str = "float32",
        fast_linear: bool = True,
        block_tokens: int | None = None,
    ) -> None:
        if dtype not in _DTYPES or tokenizer_dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        if batch_size < 1 or max_context < 1:
            raise ValueError("batch_size and max_context must be positive")
        self.device = resolve_device(device)
        self.dtype = _DTYPES[dtype]
        self.tokenizer_dtype = _DTYPES[tokenizer_dtype]
        self.batch_size = batch_size
        self.max_context = max_context
        self.clip = clip
        if block_tokens is None:
            block_tokens = 4096 if self.device.type == "cpu" else 1 << 20
        if block_tokens < 1:
            raise ValueError("block_tokens must be positive")
        self.block_tokens = block_tokens
        self.tokenizer = copy.deepcopy(tokenizer).to(self.device, self.tokenizer_dtype).eval()
        self.predictor = copy.deepcopy(predictor).to(self.device, self.dtype).eval()
        for p in [*self.tokenizer.parameters(), *self.predictor.parameters()]:
            p.requires_grad_(False)
        if fast_linear:
            prepare_for_inference(self.tokenizer, rows_hint=batch_size)
            prepare_for_inference(self.predictor, rows_hint=batch_size)
        # On CPU, single-query attention is much faster in float32 than in bf16/fp16, so
        # the KV cache stays float32 there; on accelerators it uses the model dtype.
        self.cache_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        rotary = self.predictor.transformer[0].self_attn.rotary
        self._rope = rotary.tables(0, max_context, self.device, self.dtype)

    # -- public ------------------------------------------------------------------------

    def forecast(
        self,
        windows: Sequence[pd.DataFrame],
        timestamps: Sequence[pd.DatetimeIndex | pd.Series],
        future_timestamps: Sequence[pd.DatetimeIndex | pd.Series],
        pred_len: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.9,
        sample_count: int = 1,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        return_embeddings: bool = False,
        return_tokens: bool = False,
    ) -> ForecastResult:
        """Forecast ``pred_len`` bars after each window; see the module docstring.

        ``seeds`` gives one seed per series (a series' paths then depend only on its own
        seed); without it series ``i`` uses seed ``seed + i``. Greedy decoding
        (``top_k=1``) uses no randomness.
        """
        n = len(windows)
        if not (len(timestamps) == len(future_timestamps) == n):
            raise ValueError("windows, timestamps and future_timestamps must have equal lengths")
        if pred_len < 1 or pred_len > self.max_context:
            raise ValueError(f"pred_len must be in 1..max_context ({self.max_context})")
        if sample_count < 1:
            raise ValueError("sample_count must be >= 1")
        if seeds is None:
            seeds = [seed + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError("seeds must have one entry per series")
        xs, stamps, futures, norms = [], [], [], []
        for i in range(n):
            x, st, norm = prepare_window(windows[i], timestamps[i], self.clip, f"window {i}")
            fut = time_features(future_timestamps[i])
            if fut.shape[0] != pred_len:
                raise ValueError(f"future_timestamps[{i}] has {fut.shape[0]} rows, not {pred_len}")
            xs.append(x)
            stamps.append(st)
            futures.append(fut)
            norms.append(norm)
        normalized, embeddings, tokens = self.generate_normalized(
            xs, stamps, futures, pred_len, temperature, top_k, top_p, sample_count, seeds
        )
        paths = np.stack([norms[i].inverse(normalized[i]) for i in range(n)]) if n else None
        if paths is None:
            paths = np.zeros((0, sample_count, pred_len, len(FEATURE_COLUMNS)), np.float32)
        return ForecastResult(
            paths=paths,
            future_timestamps=[pd.DatetimeIndex(t) for t in future_timestamps],
            embeddings=embeddings if return_embeddings else None,
            tokens=tokens if return_tokens else None,
        )

    def generate_normalized(
        self,
        xs: Sequence[np.ndarray],
        stamps: Sequence[np.ndarray],
        future_stamps: Sequence[np.ndarray],
        pred_len: int,
        temperature: float,
        top_k: int,
        top_p: float,
        sample_count: int,
        seeds: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generate from already normalised inputs.

        ``xs[i]`` float32 [T_i, 6], ``stamps[i]`` [T_i, 5], ``future_stamps[i]``
        [pred_len, 5]. Returns normalised paths float32 [n, sample_count, pred_len, 6],
        embeddings float32 [n, d_model] and generated ids int64 [n, sample_count, pred_len, 2].
        """
        n = len(xs)
        d_in = self.tokenizer.d_in
        out = np.zeros((n, sample_count, pred_len, d_in), dtype=np.float32)
        emb = np.zeros((n, self.predictor.d_model), dtype=np.float32)
        toks = np.zeros((n, sample_count, pred_len, 2), dtype=np.int64)
        by_length: dict[int, list[int]] = {}
        for i, x in enumerate(xs):
            by_length.setdefault(x.shape[0], []).append(i)
        series_per_batch = max(1, self.batch_size // sample_count)
        pending = [
            group[j : j + series_per_batch]
            for _, group in sorted(by_length.items())
            for j in range(0, len(group), series_per_batch)
        ]
        while pending:
            chunk = pending.pop(0)
            try:
                with torch.inference_mode():
                    paths, pooled, ids = self._run_chunk(
                        np.stack([xs[i] for i in chunk]),
                        np.stack([stamps[i] for i in chunk]),
                        np.stack([future_stamps[i] for i in chunk]),
                        pred_len,
                        temperature,
                        top_k,
                        top_p,
                        sample_count,
                        [seeds[i] for i in chunk],
                    )
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM
                if not _is_oom(exc) or len(chunk) == 1:
                    raise
                self._free()
                # Halve this micro-batch and every later one, then retry.
                series_per_batch = math.ceil(len(chunk) / 2)
                warnings.warn(
                    f"Kronos engine: out of memory with {len(chunk) * sample_count} rows; "
                    f"retrying with {series_per_batch * sample_count}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                pending = [
                    part[j : j + series_per_batch]
                    for part in [chunk, *pending]
                    for j in range(0, len(part), series_per_batch)
                ]
                continue
            out[chunk] = paths
            emb[chunk] = pooled
            toks[chunk] = ids
            self._free()
        return out, emb, toks

    # -- internals ---------------------------------------------------------------------

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def _in_row_blocks(self, fn, n_rows: int, length: int) -> tuple[torch.Tensor, ...]:
        """``fn(lo, hi)`` over row blocks of at most ``block_tokens // length`` rows,
        outputs concatenated along rows. Long sequences are run in such blocks because
        their activations then stay small (on CPU: in cache and in already mapped heap
        memory, which makes a 64-row prefill about 1.7x faster than one block of 64);
        rows are independent, so the result is the same for any block size."""
        step = max(1, self.block_tokens // max(length, 1))
        parts = [fn(lo, min(n_rows, lo + step)) for lo in range(0, n_rows, step)]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    def _uniforms(self, seeds: Sequence[int], sample_count: int, pred_len: int) -> torch.Tensor:
        """Per-row uniforms [rows, pred_len, 2] (s1, s2 draws), rows ordered series-major."""
        rows = []
        for s in seeds:
            for path in range(sample_count):
                gen = torch.Generator().manual_seed(row_seed(s, path))
                rows.append(torch.rand(pred_len, 2, generator=gen, dtype=torch.float64))
        return torch.stack(rows)

    def _run_chunk(
        self,
        x: np.ndarray,
        x_stamp: np.ndarray,
        y_stamp: np.ndarray,
        pred_len: int,
        temperature: float,
        top_k: int,
        top_p: float,
        sample_count: int,
        seeds: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generate for series of equal length: paths [b, S, P, 6], pooled [b, D], ids."""
        dev, model = self.device, self.predictor
        b, t_ctx, _ = x.shape
        rows = b * sample_count
        total = t_ctx + pred_len
        max_ctx = self.max_context

        x_t = torch.from_numpy(x).to(dev, self.tokenizer_dtype)
        s1_ctx, s2_ctx = self._in_row_blocks(
            lambda lo, hi: tuple(self.tokenizer.encode(x_t[lo:hi], half=True)), b, t_ctx
        )
        stamp = torch.from_numpy(np.concatenate([x_stamp, y_stamp], axis=1)).to(dev)
        stamp = stamp.repeat_interleave(sample_count, dim=0)
        s1 = torch.zeros(rows, total, dtype=torch.long, device=dev)
        s2 = torch.zeros(rows, total, dtype=torch.long, device=dev)
        s1[:, :t_ctx] = s1_ctx.repeat_interleave(sample_count, dim=0)
        s2[:, :t_ctx] = s2_ctx.repeat_interleave(sample_count, dim=0)
        uniforms = None if top_k == 1 else self._uniforms(seeds, sample_count, pred_len)
        cos, sin = self._rope

        def run_window(
            cache, start: int, stop: int, unique: bool = False
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """Prefill tokens start..stop-1 into an empty cache, in row blocks; returns the
            last position's context [rows, D] and the context averaged over positions."""
            step = sample_count if unique else 1
            ids1, ids2, stamps = s1[::step, start:stop], s2[::step, start:stop], stamp[::step]
            rope = (cos[:, :, : stop - start], sin[:, :, : stop - start])

            def block(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
                context = model.extend(
                    cache.rows(lo, hi),
                    ids1[lo:hi],
                    ids2[lo:hi],
                    stamps[lo:hi, start:stop],
                    rope=rope,
                )
                return context[:, -1].clone(), context.float().mean(dim=1)

            last, pooled = self._in_row_blocks(block, ids1.shape[0], stop - start)
            cache.set_length(stop - start)
            return last, pooled

        # Prefill the context once per series, then copy its cache to every sample path.
        start = max(0, t_ctx - max_ctx)
        capacity = min(total, max_ctx)
        cache = model.new_cache(b, capacity, dev, self.cache_dtype)
        last, pooled = run_window(cache, start, t_ctx, unique=True)
        pooled = pooled.cpu().numpy()
        if sample_count > 1:
            cache = cache.repeat_rows(sample_count)
            last = last.repeat_interleave(sample_count, dim=0)

        for i in range(pred_len):
            cur = t_ctx + i  # tokens available as input at this step
            if i > 0:
                if cur <= max_ctx:
                    pos = cur - 1
                    last = model.extend(
                        cache,
                        s1[:, pos : pos + 1],
                        s2[:, pos : pos + 1],
                        stamp[:, pos : pos + 1],
                        rope=(cos[:, :, pos : pos + 1], sin[:, :, pos : pos + 1]),
                    )[:, -1]
                else:
                    cache.reset()
                    last, _ = run_window(cache, cur - max_ctx, cur)
            logits1 = model.s1_logits(last).float()
            u1 = None if uniforms is None else uniforms[:, i, 0]
            tok1 = sample_tokens(logits1, temperature, top_k, top_p, u1)
            logits2 = model.s2_logits_cached(cache, last, tok1).float()
            u2 = None if uniforms is None else uniforms[:, i, 1]
            tok2 = sample_tokens(logits2, temperature, top_k, top_p, u2)
            s1[:, cur] = tok1
            s2[:, cur] = tok2
        del cache

        dec_start = max(0, total - max_ctx)
        (decoded,) = self._in_row_blocks(
            lambda lo, hi: (
                self.tokenizer.decode((s1[lo:hi, dec_start:], s2[lo:hi, dec_start:]), half=True)[
                    :, -pred_len:
                ],
            ),
            rows,
            total - dec_start,
        )
        paths = decoded.float().cpu().numpy()
        ids = torch.stack([s1[:, t_ctx:], s2[:, t_ctx:]], dim=-1).cpu().numpy()
        return (
            paths.reshape(b, sample_count, pred_len, -1),
            pooled,
            ids.reshape(b, sample_count, pred_len, 2),
        )

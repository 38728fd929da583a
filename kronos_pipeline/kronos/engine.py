"""Batched, KV-cached Kronos generation.

Public API (what the pipeline calls)::

    from kronos_pipeline.kronos import load_predictor, load_tokenizer
    from kronos_pipeline.kronos.engine import KronosEngine

    engine = KronosEngine(
        load_tokenizer("NeoQuasar/Kronos-Tokenizer-base", revision=...),
        load_predictor("NeoQuasar/Kronos-small", revision=...),
        device="auto",        # cuda > mps > cpu
        dtype="float32",      # or "bfloat16" / "float16" for the predictor
        batch_size=None,      # rows per micro-batch; None: 64 on CPU, from free memory
        max_context=512,      # on accelerators
        cuda_graphs=None,     # None: capture the decode steps in CUDA graphs on CUDA
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

* the context is run once per series (prefill) and each generated token is fed alone
  through a key/value cache; the s2 token uses cached keys/values of the dependency layer;
* shared prefix: a series' sample paths share one copy of its context's keys and values.
  A decode step attends each path's new query to that copy (read once per series: its S
  queries form one small matrix product) and to the path's own generated tokens, with one
  softmax over both (:func:`~kronos_pipeline.kronos.layers.shared_prefix_attention`). The
  own part is read up to the step rounded up to ``own_bucket`` slots, never the whole
  buffer, and nothing is copied per step but the new token's keys and values;
* the decode loop never waits for the host: tokens stay on the device, positions and the
  slot written are device tensors advanced in place, and results are copied back once per
  micro-batch (a test runs the loop under a guard that fails on any host read);
* while the sequence is longer than ``max_context`` the reference slides its window and
  re-encodes it each step (positions restart at the window start), so the engine does the
  same for those steps (exact, not cached);
* the tokenizer's decoder (causal) turns only the generated tokens back into bars: the
  context is decoded once per series and each path's generated positions attend to it and
  to themselves, instead of re-decoding the whole window for every path;
* every sample path is kept (``paths``) instead of being averaged;
* sampling draws from per-row generators seeded from (series seed, path index);
* batch invariance by construction: every kernel call of a micro-batch has the same
  shapes whatever series it holds. A micro-batch always has ``batch_size`` rows (series x
  sample paths; missing series are inert zero rows) and contexts are left-padded to their
  length rounded up to ``length_bucket`` bars; row blocks of the tokenizer and prefill are
  all equal. Pads are masked out of attention (a pad slot attends to itself only, so it
  stays finite) and rotary positions count from each row's first real bar, so a padded
  series computes what the reference computes on it alone, up to rounding. A series'
  forecast then depends only on its own inputs and the engine's settings (device, dtypes,
  ``batch_size``, ``length_bucket``, ``block_tokens``, ``max_context``), not on the other
  series nor on how many are forecast at once. This needs deterministic kernels that
  treat the rows of one call alike, which the engine checks at start-up
  (:attr:`KronosEngine.row_invariant`, with a warning if not); it does not need a BLAS
  whose results are the same at different row counts;
* series whose context plus forecast exceed ``max_context`` (the window slides) are
  grouped by exact length instead; on out-of-memory the row count is halved and the call
  starts over (warned);
* with ``cuda_graphs`` (the default on CUDA) each step shape (one per own-cache width) is
  captured once in a CUDA graph, sampling and the s2 pass included, and replayed for every
  later step, micro-batch and ``forecast`` call of the same shape: a scoring date pays no
  capture after the first. The captured and the eager step are the same code;
* parity with the reference is judged on teacher-forced logits
  (:meth:`KronosEngine.teacher_forced_logits`): a free greedy path can part from the
  reference's at a float near-tie, and what follows then says nothing about correctness.

Sampling rules (as the reference): logits / temperature; if ``top_k > 0`` keep the
``top_k`` largest (``top_p`` is then ignored); else if ``top_p < 1`` nucleus filtering
(tokens tied with the nucleus' last one are kept with it, see :func:`filter_logits`);
then draw. ``top_k == 1`` takes the arg-max without randomness.

``embeddings`` are the predictor's final hidden states (after its last norm) averaged over
the context window, one vector per series, for later fusion with other features.
"""

from __future__ import annotations

import copy
import gc
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kronos_pipeline.kronos.hub import resolve_device
from kronos_pipeline.kronos.inference import prepare_for_inference
from kronos_pipeline.kronos.layers import (
    KVCache,
    apply_rope,
    shared_prefix_attention,
)
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
    ``top_p`` (always at least one): in descending order, a token is kept while the
    probability before it is at most ``top_p``, and the kept tokens are those at or above
    the last kept logit, so tokens tied with it are all kept (the order a sort gives equal
    logits does not matter). Returns a new tensor.
    """
    if top_k > 0:
        k = min(max(top_k, 1), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits = _sorted_descending(logits)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # cum never decreases, so the kept positions are a prefix of the sorted order.
        kept = 1 + (cum[..., :-1] <= top_p).sum(dim=-1, keepdim=True)
        threshold = sorted_logits.gather(-1, kept - 1)
        return logits.masked_fill(logits < threshold, float("-inf"))
    return logits


def _sorted_descending(x: torch.Tensor) -> torch.Tensor:
    """The values of float32 ``x`` [B, V] (no NaN) sorted descending along the last axis,
    bit for bit, without indices. Sorted as order-preserving int32 keys (the sign bit
    flips the others of a negative float): a third faster than a float sort on CPU."""
    if x.dtype != torch.float32:
        return torch.sort(x, descending=True, dim=-1).values
    bits = x.view(torch.int32)
    keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    keys = torch.sort(keys, descending=True, dim=-1).values
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(torch.float32)


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


def _rope_one(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """:func:`~kronos_pipeline.kronos.layers.apply_rope` of one position in four operator
    calls: ``rotate_half(x) * sin`` is ``(-x2 s1, x1 s2)``, which is ``roll(x) * (-s1, s2)``
    (a sign moves between the factors of a product exactly), so the same bits."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


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
        from kronos_pipeline.evaluation.forecast_metrics import QUANTILE_METHOD

        return np.quantile(self.paths, q, axis=1, method=QUANTILE_METHOD).astype(np.float32)

    def frames(self, stat: str = "mean") -> list[pd.DataFrame]:
        """One DataFrame per series (index: future timestamps) of ``"mean"`` or ``"median"``."""
        values = self.mean() if stat == "mean" else np.median(self.paths, axis=1)
        return [
            pd.DataFrame(values[i], columns=list(self.columns), index=self.future_timestamps[i])
            for i in range(values.shape[0])
        ]


# --------------------------------------------------------------------------------------
# Device rules and memory
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRules:
    """What the engine does differently on one device type.

    ``float64``: the device has float64 kernels (MPS has none, so the float64 inverse-CDF
    of sampling, and the per-row uniforms, stay on the host there: the one op that falls
    back). ``float32_cache``: keep the K/V cache in float32 whatever the model dtype (CPU,
    where single-query attention is faster in float32). ``block_tokens``: default budget
    of rows x positions per tokenizer/prefill call.
    """

    device_type: str
    float64: bool
    float32_cache: bool
    block_tokens: int


def device_rules(device_type: str) -> DeviceRules:
    """The :class:`DeviceRules` of ``"cpu"``, ``"mps"`` or another accelerator type."""
    if device_type == "cpu":
        return DeviceRules("cpu", float64=True, float32_cache=True, block_tokens=4096)
    if device_type == "mps":
        return DeviceRules("mps", float64=False, float32_cache=False, block_tokens=1 << 20)
    return DeviceRules(device_type, float64=True, float32_cache=False, block_tokens=1 << 20)


def bytes_per_row(
    predictor: Kronos, tokenizer: KronosTokenizer, itemsize: int, max_context: int
) -> int:
    """Upper estimate of the device memory (bytes) one micro-batch row needs: its K/V
    caches (every block plus the dependency layer) at ``max_context`` positions, and the
    largest prefill activations (the SwiGLU's, the q/k/v block, the attention mask)."""
    d, ff = predictor.d_model, predictor.transformer[0].ffn.w1.out_features
    kv = (predictor.n_layers + 1) * 2 * max_context * d * itemsize
    prefill = max_context * (3 * ff + 8 * d) * itemsize + max_context * max_context * itemsize
    tok_d = tokenizer.d_model
    tok = max_context * 12 * tok_d * 4
    logits = 8 * (2**predictor.s1_bits + 2**predictor.s2_bits) * 4
    return kv + prefill + tok + logits


def batch_size_for_memory(
    free_bytes: int, row_bytes: int, fraction: float = 0.5, lo: int = 16, hi: int = 4096
) -> int:
    """Rows per micro-batch that fit ``fraction`` of ``free_bytes`` at ``row_bytes`` each:
    the largest power of two in [lo, hi] (a power of two, so that a small change in free
    memory does not change the kernels' shapes, and so a forecast's bits)."""
    rows = max(1, int(free_bytes * fraction) // max(row_bytes, 1))
    return max(lo, min(hi, 1 << (rows.bit_length() - 1)))


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on an accelerator, or ``None`` where unknown (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        limit = getattr(torch.mps, "recommended_max_memory", None)
        used = getattr(torch.mps, "driver_allocated_memory", None)
        if limit is not None and used is not None:
            return int(limit() - used())
    return None


# --------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch as run: ``length`` buffer positions before the first generated
    token (left-padded), ``series`` real series, ``rows`` rows in every kernel call
    (always the engine's fixed count), ``padded``: mixed lengths allowed (else one exact
    length, which may slide past ``max_context``)."""

    length: int
    series: int
    rows: int
    padded: bool


@dataclass
class _SharedDecode:
    """Decoding state of one micro-batch of ``N`` series x ``S`` sample paths (rows are
    series-major: row ``j * S + p``) whose context of ``L`` slots is shared by its paths.

    ``prefix``: the context's keys/values, one copy per series (prefilled once);
    ``own_k``/``own_v`` (per block) and ``own_dep_k``/``own_dep_v``: each path's generated
    positions [N, H, S, G, Dh]; ``tokens``: generated ids [rows, P, 2]; ``fed``: the slot of
    the generated token fed at the next step and ``next``: the index of the token it
    produces (device tensors [1], so that a step has no host-side state); ``u_next``: the
    same index where the uniforms live (the host on MPS). ``forced``: teacher forcing, the
    ids to choose instead of sampling [rows, P, 2], with the logits recorded in
    ``logits`` ([rows, P, V1], [rows, P, V2]).
    """

    prefix: object
    own_k: list[torch.Tensor]
    own_v: list[torch.Tensor]
    own_dep_k: torch.Tensor
    own_dep_v: torch.Tensor
    prefix_bias: torch.Tensor
    slots: torch.Tensor
    open_bias: torch.Tensor
    base: torch.Tensor
    future_te: torch.Tensor
    tokens: torch.Tensor
    fed: torch.Tensor
    next: torch.Tensor
    u_next: torch.Tensor
    uniforms: torch.Tensor | None
    sample_count: int
    forced: torch.Tensor | None = None
    logits: tuple[torch.Tensor, torch.Tensor] | None = None


class KronosEngine:
    """Micro-batched, KV-cached forecasting with a Kronos tokenizer and predictor.

    ``device``: ``"auto"`` (cuda > mps > cpu) or a torch device string. ``dtype``: the
    predictor's compute dtype (``"float32"``, ``"bfloat16"``, ``"float16"``);
    ``tokenizer_dtype`` likewise for the tokenizer (``None``: the predictor's ``dtype``,
    so ``bfloat16`` runs in bf16 all the way; ``"float32"`` keeps the context's tokens
    independent of ``dtype``). ``batch_size``: rows (series x sample paths) in every kernel
    call; ``None``: 64 on CPU, on accelerators the power of two that fits half the free
    device memory at the bytes a row was measured to cost (:meth:`_measured_row_bytes` on
    CUDA; an estimate on MPS), read once here.
    ``max_context``: longest window the predictor sees (512 for Kronos-small/base, 2048
    for Kronos-mini). ``clip``: normalised values are clipped to ``[-clip, clip]``.
    ``length_bucket``: contexts are left-padded up to a multiple of this many bars, and
    series in one bucket share micro-batches. ``fast_linear``: on CPU run the layers
    through oneDNN with packed and fused weights (see :mod:`kronos_pipeline.kronos.inference`).
    ``block_tokens``: the tokenizer and the prefill run over at most this many rows x
    positions at a time (default 4096 on CPU, unlimited elsewhere). ``cuda_graphs``:
    capture the decode steps in CUDA graphs (``None``: on CUDA only; ``True`` elsewhere
    warns and runs the same steps eagerly). ``own_bucket``: a path's generated positions
    are read in multiples of this many slots.
    The models are copied, not modified.

    At start-up the engine checks that its device's kernels give a row the same bits
    wherever it sits in a fixed-shape batch (:attr:`row_invariant`) and warns if not.
    """

    def __init__(
        self,
        tokenizer: KronosTokenizer,
        predictor: Kronos,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int | None = None,
        max_context: int = 512,
        clip: float = 5.0,
        tokenizer_dtype: str | None = None,
        fast_linear: bool = True,
        block_tokens: int | None = None,
        length_bucket: int = 64,
        cuda_graphs: bool | None = None,
        own_bucket: int = 16,
    ) -> None:
        if tokenizer_dtype is None:
            tokenizer_dtype = dtype
        if dtype not in _DTYPES or tokenizer_dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        if (
            (batch_size is not None and batch_size < 1)
            or max_context < 1
            or length_bucket < 1
            or own_bucket < 1
        ):
            raise ValueError(
                "batch_size, max_context, length_bucket and own_bucket must be positive"
            )
        self.device = resolve_device(device)
        self.rules = device_rules(self.device.type)
        self.dtype = _DTYPES[dtype]
        self.tokenizer_dtype = _DTYPES[tokenizer_dtype]
        self.max_context = max_context
        self.clip = clip
        self.length_bucket = length_bucket
        self.own_bucket = own_bucket
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_batches: list[MicroBatch] = []
        self._graph_states: dict[tuple, _SharedDecode] = {}
        self._graphs: dict[tuple, object] = {}
        self.last_logits: list[tuple[np.ndarray, np.ndarray]] = []
        if block_tokens is None:
            block_tokens = self.rules.block_tokens
        if block_tokens < 1:
            raise ValueError("block_tokens must be positive")
        self.block_tokens = block_tokens
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        self.cuda_graphs = cuda_graphs
        if cuda_graphs and self.device.type != "cuda":
            warnings.warn(
                f"Kronos engine: CUDA graphs need a CUDA device; on {self.device} the static "
                "decode step runs eagerly (same results, no capture)",
                RuntimeWarning,
                stacklevel=2,
            )
        self.tokenizer = copy.deepcopy(tokenizer).to(self.device, self.tokenizer_dtype).eval()
        self.predictor = copy.deepcopy(predictor).to(self.device, self.dtype).eval()
        for p in [*self.tokenizer.parameters(), *self.predictor.parameters()]:
            p.requires_grad_(False)
        if fast_linear:
            rows_hint = batch_size or 64
            prepare_for_inference(self.tokenizer, rows_hint=rows_hint)
            prepare_for_inference(self.predictor, rows_hint=rows_hint)
        # On CPU, single-query attention is much faster in float32 than in bf16/fp16, so
        # the KV cache stays float32 there; on accelerators it uses the model dtype.
        self.cache_dtype = torch.float32 if self.rules.float32_cache else self.dtype
        #: Bytes one row costs (measured on CUDA, estimated elsewhere), when ``batch_size``
        #: was chosen from free memory; ``row_bytes_measured`` says which.
        self.row_bytes: int | None = None
        self.row_bytes_measured = False
        if batch_size is None:
            free = free_device_memory(self.device)
            if free is None:
                batch_size = 64
            else:
                row = self._measured_row_bytes()
                self.row_bytes_measured = row is not None
                if row is None:
                    itemsize = torch.empty((), dtype=self.dtype).element_size()
                    row = bytes_per_row(self.predictor, self.tokenizer, itemsize, max_context)
                self.row_bytes = row
                batch_size = batch_size_for_memory(free, row)
        self.batch_size = batch_size
        self.row_invariant = self._probe_row_invariance()
        if not self.row_invariant:
            warnings.warn(
                f"Kronos engine: on {self.device} ({self.dtype}) a row's result changed with "
                "its position inside a fixed-shape batch; forecasts on this device may "
                "depend on the other series of their micro-batch",
                RuntimeWarning,
                stacklevel=2,
            )

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

    def plan(self, lengths: Sequence[int], pred_len: int, sample_count: int) -> list[list[int]]:
        """Micro-batches (lists of series indices) for contexts of ``lengths`` bars.

        A series whose context and forecast fit in ``max_context`` goes to the bucket of
        its length rounded up to ``length_bucket`` (mixed lengths, left-padded); one that
        does not (the predictor's window slides) is grouped with series of exactly its
        length. Each group is cut into micro-batches of ``batch_size // sample_count``
        series; which micro-batch a series lands in never changes what it computes.
        """
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, t in enumerate(lengths):
            groups.setdefault(self._group_key(t, pred_len), []).append(i)
        per_batch = self._series_rows(sample_count)
        return [
            group[j : j + per_batch]
            for _, group in sorted(groups.items())
            for j in range(0, len(group), per_batch)
        ]

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

        On out-of-memory the fixed row count is halved and the whole call starts over, so
        that every series of one call runs at the same shapes.
        """
        while True:
            try:
                return self._generate(
                    xs, stamps, future_stamps, pred_len, temperature, top_k, top_p,
                    sample_count, seeds,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM
                if not _is_oom(exc) or self.batch_size == 1:
                    raise
                self._free()
                old, self.batch_size = self.batch_size, max(1, self.batch_size // 2)
                warnings.warn(
                    f"Kronos engine: out of memory with {old} rows per micro-batch; starting "
                    f"over with {self.batch_size} (forecasts now run at that row count)",
                    RuntimeWarning,
                    stacklevel=2,
                )

    # -- internals: planning -----------------------------------------------------------

    def _series_rows(self, sample_count: int) -> int:
        """Series per micro-batch (every one is padded to this many)."""
        return max(1, self.batch_size // sample_count)

    def _group_key(self, length: int, pred_len: int) -> tuple[bool, int]:
        """(slides, buffer length): see :meth:`plan`."""
        if length + pred_len <= self.max_context:
            return (False, _round_up(length, self.length_bucket))
        return (True, length)

    def _generate(
        self, xs, stamps, future_stamps, pred_len, temperature, top_k, top_p, sample_count,
        seeds, forced=None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        n = len(xs)
        d_in = self.tokenizer.d_in
        out = np.zeros((n, sample_count, pred_len, d_in), dtype=np.float32)
        emb = np.zeros((n, self.predictor.d_model), dtype=np.float32)
        toks = np.zeros((n, sample_count, pred_len, 2), dtype=np.int64)
        self.last_batches, self.last_logits = [], []
        logits = None
        if forced is not None:
            logits = (
                np.zeros((n, pred_len, 2**self.predictor.s1_bits), np.float32),
                np.zeros((n, pred_len, 2**self.predictor.s2_bits), np.float32),
            )
        for chunk in self.plan([x.shape[0] for x in xs], pred_len, sample_count):
            slides, length = self._group_key(xs[chunk[0]].shape[0], pred_len)
            with torch.inference_mode():
                paths, pooled, ids = self._run_chunk(
                    [xs[i] for i in chunk],
                    [stamps[i] for i in chunk],
                    [future_stamps[i] for i in chunk],
                    length,
                    pred_len,
                    temperature,
                    top_k,
                    top_p,
                    sample_count,
                    [seeds[i] for i in chunk],
                    forced=None if forced is None else forced[chunk],
                )
            out[chunk] = paths
            emb[chunk] = pooled
            toks[chunk] = ids
            if logits is not None:
                l1, l2 = self.last_logits.pop()
                logits[0][chunk], logits[1][chunk] = l1[: len(chunk)], l2[: len(chunk)]
            self.last_batches.append(
                MicroBatch(length, len(chunk), self._series_rows(sample_count) * sample_count,
                           not slides)
            )  # fmt: skip
            self._free()
        if logits is not None:
            self.last_logits = [logits]
        return out, emb, toks

    def embed(
        self,
        windows: Sequence[pd.DataFrame],
        timestamps: Sequence[pd.DatetimeIndex | pd.Series],
    ) -> np.ndarray:
        """The predictor's embedding of each window's context, float32 [n, d_model]: bit
        for bit the ``embeddings`` of ``forecast(..., pred_len=1, sample_count=1,
        return_embeddings=True)`` (the same micro-batches, tokenizer pass and prefill),
        without choosing a token or running the tokenizer's decoder, which a caller that
        wants only embeddings (``kronos_heads``) does not need."""
        n = len(windows)
        if len(timestamps) != n:
            raise ValueError("windows and timestamps must have equal lengths")
        xs, stamps = [], []
        for i in range(n):
            x, st, _ = prepare_window(windows[i], timestamps[i], self.clip, f"window {i}")
            xs.append(x)
            stamps.append(st)
        out = np.zeros((n, self.predictor.d_model), dtype=np.float32)
        for chunk in self.plan([x.shape[0] for x in xs], 1, 1):
            _, length = self._group_key(xs[chunk[0]].shape[0], 1)
            with torch.inference_mode():
                out[chunk] = self._embed_chunk([xs[i] for i in chunk],
                                               [stamps[i] for i in chunk], length)  # fmt: skip
            self._free()
        return out

    def _embed_chunk(self, xs, x_stamps, length: int) -> np.ndarray:
        """Pooled context [b, D] of one micro-batch, as :meth:`_run_chunk` computes it for a
        one-step forecast (same padding, row blocks, cache capacity and rotary table)."""
        dev, model = self.device, self.predictor
        b, n_series = len(xs), self._series_rows(1)
        pads, s1, s2, stamp = self._encode_context(xs, x_stamps, None, n_series, length)
        total = length + 1
        if total > self.max_context:  # as _decode_sliding: the last max_context bars
            start = length - self.max_context
            cache = model.new_cache(n_series, self.max_context, dev, self.cache_dtype)
        else:  # as _decode_shared: a prefix cache of exactly the context
            start = 0
            cache = model.new_cache(n_series, length, dev, self.cache_dtype)
        w = slice(max(0, start), length)
        _, pooled = self._prefill(
            cache, s1[:, w], s2[:, w], stamp[:, w], pads, total, dependency=False
        )
        return pooled[:b].cpu().numpy()

    def teacher_forced_logits(
        self,
        windows: Sequence[pd.DataFrame],
        timestamps: Sequence[pd.DatetimeIndex | pd.Series],
        future_timestamps: Sequence[pd.DatetimeIndex | pd.Series],
        tokens: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The engine's own decode with its choices forced to ``tokens`` (int [n, P, 2],
        e.g. the reference's path): the s1 and s2 logits it computes at every step,
        float32 [n, P, 2**s1_bits] and [n, P, 2**s2_bits]. Step ``i``'s s1 logits follow
        the forced tokens 0..i-1; its s2 logits also follow the forced s1 token ``i``. This
        runs the same decode as :meth:`forecast` (prefill, shared-prefix steps), so it is
        how parity with the reference is judged: a free greedy path may part at a float
        near-tie, forced logits may not. Only for contexts that do not slide."""
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(windows)
        if tokens.ndim != 3 or tokens.shape[0] != n or tokens.shape[2] != 2 or tokens.shape[1] < 1:
            raise ValueError(
                f"tokens must be [n_windows={n}, steps, 2] (s1, s2) ids, got {tokens.shape}"
            )
        pred_len = tokens.shape[1]
        for which, bits in enumerate((self.predictor.s1_bits, self.predictor.s2_bits)):
            bad = np.argwhere((tokens[..., which] < 0) | (tokens[..., which] >= 2**bits))
            if len(bad):
                i, step = bad[0]
                raise ValueError(
                    f"tokens[{i}, {step}]: s{which + 1} id {tokens[i, step, which]} is outside "
                    f"0..{2**bits - 1} (the predictor's {bits}-bit vocabulary)"
                )
        xs, stamps, futures = [], [], []
        for i in range(n):
            x, st, _ = prepare_window(windows[i], timestamps[i], self.clip, f"window {i}")
            if x.shape[0] + pred_len > self.max_context:
                raise ValueError(
                    f"window {i}: teacher forcing needs context + steps <= max_context"
                )
            xs.append(x)
            stamps.append(st)
            futures.append(time_features(future_timestamps[i]))
        self._generate(
            xs, stamps, futures, pred_len, 1.0, 1, 1.0, 1, list(range(n)),
            forced=tokens[:, None],
        )  # fmt: skip
        return self.last_logits[0]

    def _free(self) -> None:
        """Hand a finished micro-batch's memory back to an accelerator's allocator. On CPU
        reference counting already freed it: a full ``gc.collect`` there walks the whole
        heap (the pipeline's frames included) and cost 15 % of a one-step embedding pass."""
        if self.device.type == "cpu":
            return
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def _measured_row_bytes(self, rows: int = 16, steps: int = 96) -> int | None:
        """Device bytes one micro-batch row costs, measured (CUDA only, else ``None``): the
        allocator's peak over a sampled forecast of ``rows`` rows (2 series x 8 paths) at
        the largest shape that does not slide (context ``max_context - steps`` bars,
        ``steps`` steps), divided by the rows, plus a quarter for what the probe's shape
        does not show (allocator rounding, other sampling settings). Everything the
        probe allocates is freed before the real row count is chosen."""
        length = (self.max_context - steps) // self.length_bucket * self.length_bucket
        if self.device.type != "cuda" or length < 1:
            return None
        paths = 8
        xs = [np.zeros((length, self.tokenizer.d_in), np.float32)] * (rows // paths)
        stamps = [np.zeros((length, 5), np.float32)] * len(xs)
        futures = [np.zeros((steps, 5), np.float32)] * len(xs)
        saved, graphs = getattr(self, "batch_size", None), self.cuda_graphs
        self.batch_size, self.cuda_graphs = rows, False
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with torch.inference_mode():
                self._run_chunk(xs, stamps, futures, length, steps, 1.0, 0, 0.9, paths,
                                list(range(len(xs))))  # fmt: skip
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - base
        finally:
            self.batch_size, self.cuda_graphs = saved, graphs
            self._free()
        return int(peak * 1.25) // rows + 1

    def _probe_row_invariance(self) -> bool:
        """Does a row keep its bits at another position of a fixed-shape batch? One
        predictor block at the decode shape (rows x 1) and at a short prefill shape."""
        block = self.predictor.transformer[0]
        gen = torch.Generator().manual_seed(0)
        d = self.predictor.d_model
        rows = max(2, self.batch_size)
        prefill_rows = max(2, min(rows, self.block_tokens // 32))
        with torch.inference_mode():
            for shape in ((rows, 1, d), (prefill_rows, 32, d)):
                x = torch.randn(shape, generator=gen).to(self.device, self.dtype)
                ref = block(x)
                moved = block(x.roll(1, dims=0)).roll(-1, dims=0)
                if not torch.equal(ref, moved):
                    return False
        return True

    # -- internals: fixed-shape pieces -------------------------------------------------

    def _row_blocks(self, n_rows: int, length: int) -> list[tuple[int, int, int]]:
        """Equal row blocks (lo, hi, keep_from) covering ``n_rows`` rows: every block has
        the same number of rows (the last one overlaps its predecessor instead of being
        smaller), so a row's block shape never depends on how many rows there are around
        it; ``keep_from`` is the first row of the block whose result is kept."""
        step = min(n_rows, max(1, self.block_tokens // max(length, 1)))
        starts = list(range(0, n_rows - step + 1, step))
        if starts[-1] + step < n_rows:
            starts.append(n_rows - step)
        return [
            (lo, lo + step, 0 if k == 0 else starts[k - 1] + step - lo)
            for k, lo in enumerate(starts)
        ]

    def _in_row_blocks(self, fn, n_rows: int, length: int) -> tuple[torch.Tensor, ...]:
        """``fn(lo, hi)`` over :meth:`_row_blocks`, outputs concatenated along rows. Long
        sequences are run in such blocks because their activations then stay small (on
        CPU: in cache and in already mapped heap memory, which makes a 64-row prefill
        about 1.7x faster than one block of 64). Where blocks overlap, the later block's
        rows are kept (a block that fills a cache overwrites the earlier rows too)."""
        blocks = self._row_blocks(n_rows, length)
        parts = []
        for k, (lo, hi, _) in enumerate(blocks):
            out = fn(lo, hi)
            if k + 1 < len(blocks):
                stop = blocks[k + 1][0] - lo
                out = tuple(o[:stop] for o in out)
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    def _rope_table(
        self, rotary, span: int, dtype: torch.dtype, signed: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """(cos, sin) [2 * span, Dh] for positions -span..span-1 (cached per shape).
        ``signed``: the first half of ``sin`` negated, as :func:`_rope_one` takes it."""
        key = (id(rotary), span, dtype, signed)
        if key not in self._tables:
            if signed:
                cos, sin = self._rope_table(rotary, span, dtype)
                half = sin.shape[-1] // 2
                sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
                self._tables[key] = (cos, sin)
            else:
                cos, sin = rotary.tables(-span, 2 * span, self.device, dtype)
                self._tables[key] = (cos[0, 0], sin[0, 0])
        return self._tables[key]

    def _rope(self, rotary, positions: torch.Tensor, span: int, dtype: torch.dtype):
        """Per-row (cos, sin) [B, 1, T, Dh] for integer ``positions`` [B, T] in
        ``-span..span-1``; gathered from one table so that equal positions get equal bits."""
        cos, sin = self._rope_table(rotary, span, dtype)
        index = positions + span
        return cos[index][:, None], sin[index][:, None]

    @staticmethod
    def _causal_bias(pads: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [B, 1, T, T] of left-padded rows: a real query sees the real keys
        up to itself; a pad query sees itself only (so pads stay finite and inert)."""
        idx = torch.arange(length, device=pads.device)
        real_key = idx[None, :] >= pads[:, None]
        causal = idx[:, None] >= idx[None, :]
        allowed = causal[None] & (
            real_key[:, None, :] | torch.eye(length, dtype=torch.bool, device=pads.device)[None]
        )
        bias = torch.zeros(allowed.shape, dtype=dtype, device=pads.device)
        return bias.masked_fill_(~allowed, float("-inf"))[:, None]

    @staticmethod
    def _key_bias(pads: torch.Tensor, capacity: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive key mask [B, 1, 1, capacity]: ``-inf`` on each row's left padding."""
        idx = torch.arange(capacity, device=pads.device)
        bias = torch.zeros((pads.shape[0], 1, 1, capacity), dtype=dtype, device=pads.device)
        return bias.masked_fill_((idx[None, :] < pads[:, None])[:, None, None], float("-inf"))

    def _positions(self, pads: torch.Tensor, length: int) -> torch.Tensor:
        """RoPE positions [B, T] of buffer slots 0..T-1: counted from each row's first bar."""
        return torch.arange(length, device=pads.device)[None, :] - pads[:, None]

    def _blocks_pass(self, blocks, z, pads, dtype, span):
        rotary = blocks[0].self_attn.rotary if len(blocks) else None
        if rotary is None:
            return z
        t = z.shape[1]
        rope = self._rope(rotary, self._positions(pads, t), span, dtype)
        bias = self._causal_bias(pads, t, dtype)
        for layer in blocks:
            z = layer(z, rope=rope, attn_bias=bias)
        return z

    def _encode(self, x: torch.Tensor, pads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizer ids (s1, s2) [B, T] of left-padded bars ``x`` [B, T, d_in]."""
        tok = self.tokenizer
        z = self._blocks_pass(tok.encoder, tok.embed(x), pads, x.dtype, x.shape[1])
        _, _, ids = tok.tokenizer(tok.quant_embed(z), half=True, collect_metrics=False)
        return ids[0], ids[1]

    def _decode(self, s1: torch.Tensor, s2: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
        """Tokenizer reconstruction [B, T, d_in] of left-padded ids [B, T]."""
        tok = self.tokenizer
        codes = tok.indices_to_bits((s1, s2), half=True).to(self.tokenizer_dtype)
        z = tok.post_quant_embed(codes)
        z = self._blocks_pass(tok.decoder, z, pads, self.tokenizer_dtype, s1.shape[1])
        return tok.head(z)

    def _decode_generated(self, s1_ctx, s2_ctx, generated, pads, S: int) -> torch.Tensor:
        """Tokenizer reconstruction [rows, P, d_in] of the generated ids [rows, P, 2] of
        every path, after the context ids [n, L] of its series (left-padded by ``pads``).

        The tokenizer's decoder is causal, so a generated position depends on the context
        and on its own path's earlier tokens only: the context runs through the decoder
        once per series (keys and values of each block; the last block's projections
        only), and only each path's P generated positions are queries, over the context's
        keys and their own (causal), instead of decoding the whole window again for every
        path. The attention kernel sees the same keys in the same order as in a
        whole-window decode, so the result is that decode's up to rounding (bit for bit
        on the CPUs measured). Runs in row blocks of series."""
        n_series, length = s1_ctx.shape
        P = generated.shape[1]
        gen = generated.view(n_series, S, P, 2)

        def block(lo: int, hi: int) -> tuple[torch.Tensor]:
            return (self._decode_series(s1_ctx[lo:hi], s2_ctx[lo:hi], gen[lo:hi], pads[lo:hi]),)

        (out,) = self._in_row_blocks(block, n_series, length + S * P)
        return out.reshape(n_series * S, P, -1)

    def _decode_series(self, s1, s2, gen, pads) -> torch.Tensor:
        """:meth:`_decode_generated` for ``n`` series: ids [n, L] (twice), generated ids
        [n, S, P, 2], pads [n]; returns [n, S, P, d_in]."""
        tok, dt, dev = self.tokenizer, self.tokenizer_dtype, self.device
        n, length = s1.shape
        S, P = gen.shape[1], gen.shape[2]
        own = tok.post_quant_embed(
            tok.indices_to_bits((gen[..., 0], gen[..., 1]), half=True).to(dt)
        ).view(n * S, P, -1)
        if len(tok.decoder):
            ctx = tok.post_quant_embed(tok.indices_to_bits((s1, s2), half=True).to(dt))
            rotary = tok.decoder[0].self_attn.rotary
            span = length + P
            rope_ctx = self._rope(rotary, self._positions(pads, length), span, dt)
            ctx_bias = self._causal_bias(pads, length, dt)
            steps = torch.arange(P, device=dev)
            cos, sin = self._rope(rotary, (length - pads)[:, None] + steps, span, dt)
            cos, sin = cos[:, None], sin[:, None]  # [n, 1, 1, P, Dh]: every path, head
            causal = torch.ones(P, P, dtype=torch.bool, device=dev).triu(1)
            own_bias = torch.zeros(P, P, dtype=dt, device=dev).masked_fill(causal, float("-inf"))
            mask = torch.cat(  # [n * S, 1, P, L + P]: the context's pads, causal own block
                (self._key_bias(pads, length, dt).expand(n, 1, P, length),
                 own_bias.expand(n, 1, P, P)), dim=3,
            ).repeat_interleave(S, dim=0)  # fmt: skip
        for i, blk in enumerate(tok.decoder):
            attn = blk.self_attn
            h, dh = attn.n_heads, attn.head_dim
            if i + 1 < len(tok.decoder):
                cache = KVCache(n, h, dh, length, dev, dt)
                ctx = blk(ctx, cache=cache, rope=rope_ctx, attn_bias=ctx_bias)
                prefix_k, prefix_v = cache.k, cache.v
            else:  # the last block's context output is not needed, only its keys/values
                _, prefix_k, prefix_v = attn._project_qkv(blk.norm1(ctx))
                prefix_k = apply_rope(prefix_k, *rope_ctx)
            q, k, v = attn._project_qkv(blk.norm1(own))  # [n * S, H, P, Dh]
            q = apply_rope(q.view(n, S, h, P, dh), cos, sin).view(n * S, h, P, dh)
            k = apply_rope(k.view(n, S, h, P, dh), cos, sin)
            keys = torch.cat((prefix_k[:, None].expand(n, S, h, length, dh), k), dim=3)
            values = torch.cat(
                (prefix_v[:, None].expand(n, S, h, length, dh), v.view(n, S, h, P, dh)), dim=3
            )
            out = F.scaled_dot_product_attention(
                q, keys.view(n * S, h, length + P, dh), values.view(n * S, h, length + P, dh),
                attn_mask=mask,
            )  # fmt: skip
            out = out.transpose(1, 2).reshape(n * S, P, h * dh)
            own = own + attn.out_proj(out)
            own = own + blk.ffn(blk.norm2(own))
        return tok.head(own).view(n, S, P, -1)

    def _extend(
        self, cache, ids1, ids2, stamp, rope, bias, index=None, dependency: bool = True
    ) -> torch.Tensor:
        """Predictor pass of tokens [B, t] into ``cache`` (masked, per-row positions);
        returns their context [B, t, D]. ``index``: static cache, write at that slot.
        ``dependency=False``: leave the dependency layer's keys/values unwritten (a caller
        that only pools the context never reads them)."""
        model = self.predictor
        x = model.embedding([ids1, ids2]) + model.time_emb(stamp)
        for layer_cache, block in zip(cache.layers, model.transformer, strict=True):
            x = block(x, cache=layer_cache, rope=rope, attn_bias=bias)
        x = model.norm(x)
        if not dependency:
            cache.length += x.shape[1]
            return x
        k, v = model.dep_layer.cross_attn.project_kv(x)
        if index is not None:
            cache.dep_k.index_copy_(2, index, k.to(cache.dep_k.dtype))
            cache.dep_v.index_copy_(2, index, v.to(cache.dep_v.dtype))
            return x
        start, stop = cache.length, cache.length + x.shape[1]
        cache.dep_k[:, :, start:stop] = k
        cache.dep_v[:, :, start:stop] = v
        cache.length = stop
        return x

    def _sample(self, logits: torch.Tensor, temperature, top_k, top_p, uniforms):
        """Token ids [B] on the device; the float64 inverse-CDF runs on the host where
        the device has no float64 (MPS): the one op that falls back."""
        if top_k == 1 or self.rules.float64:
            return sample_tokens(logits, temperature, top_k, top_p, uniforms)
        return self._host_sample(logits, temperature, top_k, top_p, uniforms)

    @staticmethod
    def _host_sample(logits: torch.Tensor, temperature, top_k, top_p, uniforms):
        """:func:`sample_tokens` on the host, result moved back to ``logits``' device."""
        host = sample_tokens(logits.cpu(), temperature, top_k, top_p, uniforms.cpu())
        return host.to(logits.device)

    def _next_tokens(self, dep_k, dep_v, bias, last, sampling, u1, u2):
        """(s1, s2) ids [B] of the next position from its context ``last`` [B, D]."""
        model = self.predictor
        tok1 = self._sample(model.s1_logits(last).float(), *sampling, u1)
        sibling = model.embedding.emb_s1(tok1)[:, None, :]
        attn = model.dep_layer.cross_attn.attend_single(sibling, dep_k, dep_v, bias)
        x2 = model.dep_layer.norm(last[:, None, :] + attn.to(last.dtype))
        tok2 = self._sample(model.head.cond_forward(x2[:, 0]).float(), *sampling, u2)
        return tok1, tok2

    def _uniforms(self, seeds: Sequence[int], sample_count: int, pred_len: int, rows: int):
        """Per-row uniforms [rows, pred_len, 2] (s1, s2 draws), rows ordered series-major;
        rows past the real series (padding) get zeros."""
        out = torch.zeros(rows, pred_len, 2, dtype=torch.float64)
        for j, s in enumerate(seeds):
            for path in range(sample_count):
                gen = torch.Generator().manual_seed(row_seed(s, path))
                out[j * sample_count + path] = torch.rand(
                    pred_len, 2, generator=gen, dtype=torch.float64
                )
        return out if not self.rules.float64 else out.to(self.device)

    @staticmethod
    def _step_uniforms(uniforms: torch.Tensor | None, step: int | torch.Tensor):
        """(s1, s2) uniforms [rows] of one step (``step``: an int, or a device tensor [1]
        for the static step); on MPS they stay on the host, where they were drawn."""
        if uniforms is None:
            return None, None
        if isinstance(step, torch.Tensor):
            u = uniforms.index_select(1, step)[:, 0]
        else:
            u = uniforms[:, step]
        return u[:, 0], u[:, 1]

    # -- internals: one micro-batch ----------------------------------------------------

    def _run_chunk(
        self,
        xs: Sequence[np.ndarray],
        x_stamps: Sequence[np.ndarray],
        y_stamps: Sequence[np.ndarray],
        length: int,
        pred_len: int,
        temperature: float,
        top_k: int,
        top_p: float,
        sample_count: int,
        seeds: Sequence[int],
        forced: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generate for up to ``_series_rows`` series whose contexts fit in ``length``
        buffer slots (left-padded); returns paths [b, S, P, 6], pooled [b, D], ids.

        Every kernel sees the same shapes whatever ``b`` is: the series are padded to the
        fixed row count with inert zero rows. ``forced`` (teacher forcing, [b, S, P, 2]):
        choose these ids instead of sampling and keep the logits in ``last_logits``."""
        dev = self.device
        b, S, P = len(xs), sample_count, pred_len
        n_series = self._series_rows(S)
        rows = n_series * S
        total = length + P
        slides = total > self.max_context
        pads, s1_ctx, s2_ctx, stamp = self._encode_context(xs, x_stamps, y_stamps, n_series, length)
        pads_rows = pads.repeat_interleave(S)
        uniforms = None if top_k == 1 or forced is not None else self._uniforms(seeds, S, P, rows)
        sampling = (temperature, top_k, top_p)
        if slides:
            s1, s2, pooled = self._decode_sliding(
                s1_ctx, s2_ctx, stamp, pads, length, P, S, sampling, uniforms
            )
            generated = torch.stack([s1[:, length:], s2[:, length:]], dim=-1)
        else:
            forced_t = None
            if forced is not None:
                forced_t = torch.zeros(rows, P, 2, dtype=torch.long, device=dev)
                forced_t[: b * S] = torch.from_numpy(forced.reshape(b * S, P, 2)).to(dev)
            generated, pooled = self._decode_shared(
                s1_ctx, s2_ctx, stamp, pads, length, P, S, sampling, uniforms, forced_t
            )
        pooled = pooled[:b].cpu().numpy()

        if slides:
            dec_start = max(0, total - self.max_context)
            (decoded,) = self._in_row_blocks(
                lambda lo, hi: (
                    self._decode(s1[lo:hi, dec_start:], s2[lo:hi, dec_start:], pads_rows[lo:hi])[
                        :, -P:
                    ],
                ),
                rows,
                total - dec_start,
            )
        else:
            decoded = self._decode_generated(s1_ctx, s2_ctx, generated, pads, S)
        keep = b * S
        paths = decoded[:keep].float().cpu().numpy()
        ids = generated[:keep].cpu().numpy()
        return paths.reshape(b, S, P, -1), pooled, ids.reshape(b, S, P, 2)

    def _encode_context(self, xs, x_stamps, y_stamps, n_series: int, length: int):
        """Left-pad ``b`` contexts into ``n_series`` rows of ``length`` slots (rows past
        ``b`` are inert zeros) and tokenize them: returns pads [n], context ids (s1, s2)
        [n, length] and the stamps [n, length (+ P with ``y_stamps``), 5] on the device."""
        dev = self.device
        steps = 0 if y_stamps is None else y_stamps[0].shape[0]
        x = np.zeros((n_series, length, xs[0].shape[1]), np.float32)
        stamp_np = np.zeros((n_series, length + steps, x_stamps[0].shape[1]), np.float32)
        pads_np = np.zeros(n_series, np.int64)
        for j in range(len(xs)):
            t = xs[j].shape[0]
            pads_np[j] = length - t
            x[j, length - t :] = xs[j]
            stamp_np[j, length - t : length] = x_stamps[j]
            if steps:
                stamp_np[j, length:] = y_stamps[j]
        pads = torch.from_numpy(pads_np).to(dev)
        x_t = torch.from_numpy(x).to(dev, self.tokenizer_dtype)
        s1, s2 = self._in_row_blocks(
            lambda lo, hi: self._encode(x_t[lo:hi], pads[lo:hi]), n_series, length
        )
        return pads, s1, s2, torch.from_numpy(stamp_np).to(dev)

    def _prefill(self, cache, ids1, ids2, stamps, row_pads, span: int, dependency: bool = True):
        """Fill an empty cache with tokens [n, T] (row blocks); returns the last
        position's context [n, D] and the context averaged over real positions [n, D].
        ``dependency``: see :meth:`_extend`."""
        dev, t = self.device, ids1.shape[1]
        rotary = self.predictor.transformer[0].self_attn.rotary

        def block(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            p = row_pads[lo:hi]
            rope = self._rope(rotary, self._positions(p, t), max(t, span), self.dtype)
            bias = self._causal_bias(p, t, self.cache_dtype)
            context = self._extend(
                cache.rows(lo, hi), ids1[lo:hi], ids2[lo:hi], stamps[lo:hi], rope, bias,
                dependency=dependency,
            )  # fmt: skip
            real = (torch.arange(t, device=dev)[None, :] >= p[:, None]).float()
            pooled = (context.float() * real[..., None]).sum(dim=1) / real.sum(1)[:, None]
            return context[:, -1].clone(), pooled

        last, pooled = self._in_row_blocks(block, ids1.shape[0], t)
        cache.set_length(t)
        return last, pooled

    # -- internals: windows that slide past max_context ---------------------------------

    def _decode_sliding(self, s1_ctx, s2_ctx, stamp, pads, length, P, S, sampling, uniforms):
        """Series whose context plus forecast exceed ``max_context``: the reference slides
        its window and re-encodes it at each step past the limit, so these rows run one
        cache per path (the context is copied to every path) and re-prefill once the
        window slides. Returns the full ids [rows, length + P] (twice) and pooled [n, D]."""
        dev, model = self.device, self.predictor
        n_series, total, max_ctx = s1_ctx.shape[0], length + P, self.max_context
        s1 = torch.zeros(n_series, total, dtype=torch.long, device=dev)
        s2 = torch.zeros(n_series, total, dtype=torch.long, device=dev)
        s1[:, :length], s2[:, :length] = s1_ctx, s2_ctx
        pads_rows = pads.repeat_interleave(S)
        rotary = model.transformer[0].self_attn.rotary
        start = max(0, length - max_ctx)
        capacity = min(total, max_ctx)
        cache = model.new_cache(n_series, capacity, dev, self.cache_dtype)
        w = slice(start, length)
        last, pooled = self._prefill(cache, s1[:, w], s2[:, w], stamp[:, w], pads, total)
        s1 = s1.repeat_interleave(S, dim=0)
        s2 = s2.repeat_interleave(S, dim=0)
        stamp = stamp.repeat_interleave(S, dim=0)
        if S > 1:
            cache = cache.repeat_rows(S)
            last = last.repeat_interleave(S, dim=0)
        key_bias = self._key_bias(pads_rows, cache.dep_k.shape[2], self.cache_dtype)
        for i in range(P):
            cur = length + i  # slot of the token generated at this step
            if i > 0 and cur <= max_ctx:
                pos = cur - 1
                rope = self._rope(rotary, (pos - pads_rows)[:, None], total, self.dtype)
                last = self._extend(
                    cache, s1[:, pos : pos + 1], s2[:, pos : pos + 1], stamp[:, pos : pos + 1],
                    rope, key_bias[..., : pos + 1],
                )[:, -1]  # fmt: skip
            elif i > 0:
                cache.reset()
                w = slice(cur - max_ctx, cur)
                last, _ = self._prefill(cache, s1[:, w], s2[:, w], stamp[:, w], pads_rows, total)
            n = cache.length
            tok1, tok2 = self._next_tokens(
                cache.dep_k[:, :, :n], cache.dep_v[:, :, :n], key_bias[..., :n], last,
                sampling, *self._step_uniforms(uniforms, i),
            )  # fmt: skip
            s1[:, cur], s2[:, cur] = tok1, tok2
        return s1, s2, pooled

    # -- internals: shared-prefix decoding ----------------------------------------------

    def _own_slots(self, pred_len: int) -> int:
        """Slots of a path's own cache: the P - 1 tokens fed back, rounded up to the bucket."""
        return max(1, _round_up(max(pred_len - 1, 1), self.own_bucket))

    def _new_shared_state(self, n_series, S, length, P, uniforms, forced) -> _SharedDecode:
        """Allocate the decoding state of one micro-batch shape (own caches zeroed: slots
        not written yet are masked, and zeros keep them finite)."""
        dev, model, cd = self.device, self.predictor, self.cache_dtype
        G = self._own_slots(P)
        attn = model.transformer[0].self_attn
        cross = model.dep_layer.cross_attn
        own = (n_series, attn.n_heads, S, G, attn.head_dim)
        own_dep = (n_series, cross.n_heads, S, G, cross.head_dim)
        rows = n_series * S
        u_dev = dev if uniforms is None else uniforms.device
        logits = None
        if forced is not None:
            logits = (
                torch.zeros(rows, P, 2**model.s1_bits, device=dev),
                torch.zeros(rows, P, 2**model.s2_bits, device=dev),
            )
        return _SharedDecode(
            prefix=model.new_cache(n_series, length, dev, cd),
            own_k=[torch.zeros(own, device=dev, dtype=cd) for _ in model.transformer],
            own_v=[torch.zeros(own, device=dev, dtype=cd) for _ in model.transformer],
            own_dep_k=torch.zeros(own_dep, device=dev, dtype=cd),
            own_dep_v=torch.zeros(own_dep, device=dev, dtype=cd),
            prefix_bias=torch.zeros(n_series, 1, 1, length, device=dev, dtype=cd),
            slots=torch.arange(G, device=dev),
            open_bias=torch.zeros(G, device=dev, dtype=cd),
            base=torch.zeros(n_series, dtype=torch.long, device=dev),
            future_te=torch.zeros(n_series, P, model.d_model, device=dev, dtype=self.dtype),
            tokens=torch.zeros(rows, P, 2, dtype=torch.long, device=dev),
            fed=torch.zeros(1, dtype=torch.long, device=dev),
            next=torch.zeros(1, dtype=torch.long, device=dev),
            u_next=torch.zeros(1, dtype=torch.long, device=u_dev),
            uniforms=uniforms,
            sample_count=S,
            forced=forced,
            logits=logits,
        )

    def _decode_shared(self, s1_ctx, s2_ctx, stamp, pads, length, P, S, sampling, uniforms, forced):
        """Prefill each series' context once, then decode its S paths together over that
        one copy (:func:`shared_prefix_attention`). Returns generated ids [rows, P, 2] and
        the pooled context [n, D].

        The decode loop touches no host data: positions, the slot written and the uniforms
        read are device tensors advanced in place, tokens stay on the device, and the only
        host-side variable of a step is its own-cache width (the step index rounded up to
        ``own_bucket``), which the loop counter gives. With ``cuda_graphs`` on CUDA each
        width's step is captured once per shape in a CUDA graph and replayed, across
        micro-batches and ``forecast`` calls."""
        model = self.predictor
        n_series = s1_ctx.shape[0]
        graphs = self.cuda_graphs and self.device.type == "cuda" and forced is None
        key = (n_series, S, length, P, sampling, uniforms is None)
        st = self._graph_states.get(key) if graphs else None
        if st is None:
            st = self._new_shared_state(n_series, S, length, P, uniforms, forced)
            if graphs:
                self._graph_states[key] = st
        st.prefix.reset()
        last, pooled = self._prefill(st.prefix, s1_ctx, s2_ctx, stamp[:, :length], pads, length + P)
        st.prefix_bias.copy_(self._key_bias(pads, length, self.cache_dtype))
        st.base.copy_(length - pads)
        st.future_te.copy_(model.time_emb(stamp[:, length:]).to(self.dtype))
        if st.uniforms is not uniforms and uniforms is not None:
            st.uniforms.copy_(uniforms)  # a captured state reads its own buffer (CUDA only)
        st.fed.zero_(), st.next.zero_(), st.u_next.zero_()
        self._choose_next(st, last.repeat_interleave(S, dim=0), 0, sampling)
        self._decode_loop(st, P, sampling, graphs, key)
        if forced is not None:
            self.last_logits.append(tuple(t.float().cpu().numpy() for t in st.logits))
        return st.tokens.clone(), pooled

    def _decode_loop(self, st: _SharedDecode, P: int, sampling, graphs: bool, key) -> None:
        """Steps 1..P-1 (see :meth:`_decode_shared`)."""
        for j in range(1, P):
            width = _round_up(j, self.own_bucket)
            if not graphs:
                self._shared_step(st, width, sampling)
                continue
            graph = self._graphs.get((key, width))
            if graph is not None:
                graph.replay()
                continue
            # First use of this shape: a real step on a side stream (warm-up), then capture.
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._shared_step(st, width, sampling)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._shared_step(st, width, sampling)
            self._graphs[(key, width)] = graph

    def _paths(self, t: torch.Tensor, S: int) -> torch.Tensor:
        """[rows, H, 1, Dh] (rows series-major) -> [N, H, S, Dh]."""
        rows, h, _, dh = t.shape
        return t.transpose(1, 2).reshape(rows // S, S, h, dh).transpose(1, 2)

    def _shared_step(self, st: _SharedDecode, width: int, sampling) -> None:
        """Feed the generated token at slot ``st.fed`` of every path, write its keys and
        values there, attend over the shared prefix and the first ``width`` own slots
        (those past ``fed`` masked), and choose the next token. Fixed shapes, no host
        data: capturable in a CUDA graph."""
        model, S, cd = self.predictor, st.sample_count, self.cache_dtype
        n_series = st.base.shape[0]
        rows, d = n_series * S, model.d_model
        fed = st.fed
        ids = st.tokens.index_select(1, fed)  # [rows, 1, 2]
        x = model.embedding([ids[..., 0], ids[..., 1]])
        x = (x.view(n_series, S, d) + st.future_te.index_select(1, fed)).view(rows, 1, d)
        rotary = model.transformer[0].self_attn.rotary
        span = self._rope_span(st)
        cos_t, sin_t = self._rope_table(rotary, span, self.dtype, signed=True)
        at = st.base + fed + span
        cos = cos_t.index_select(0, at)[:, None, None, :]
        sin = sin_t.index_select(0, at)[:, None, None, :]
        own_bias = st.open_bias[:width].masked_fill(st.slots[:width] > fed, float("-inf"))
        for i, block in enumerate(model.transformer):
            attn = block.self_attn
            q, k, v = attn._project_qkv(block.norm1(x))
            q = _rope_one(self._paths(q, S), cos, sin)
            k = _rope_one(self._paths(k, S), cos, sin)
            st.own_k[i].index_copy_(3, fed, k.to(cd).unsqueeze(3))
            st.own_v[i].index_copy_(3, fed, self._paths(v, S).to(cd).unsqueeze(3))
            layer = st.prefix.layers[i]
            out = shared_prefix_attention(
                q.to(cd), layer.k, layer.v, st.prefix_bias,
                st.own_k[i][:, :, :, :width], st.own_v[i][:, :, :, :width], own_bias,
            )  # fmt: skip
            out = out.to(x.dtype).transpose(1, 2).reshape(rows, 1, d)
            x = x + attn.out_proj(out)
            x = x + block.ffn(block.norm2(x))
        x = model.norm(x)
        dep_k, dep_v = model.dep_layer.cross_attn.project_kv(x)
        st.own_dep_k.index_copy_(3, fed, self._paths(dep_k, S).to(cd).unsqueeze(3))
        st.own_dep_v.index_copy_(3, fed, self._paths(dep_v, S).to(cd).unsqueeze(3))
        self._choose_next(st, x[:, 0], width, sampling, own_bias)
        fed.add_(1)

    def _rope_span(self, st: _SharedDecode) -> int:
        """Half-width of the rotary table the decode gathers from (context + forecast)."""
        return st.prefix.layers[0].k.shape[2] + st.tokens.shape[1]

    def _choose_next(self, st: _SharedDecode, last, width: int, sampling, own_bias=None):
        """Choose token ``st.next`` of every path from the context ``last`` [rows, D] of
        the position before it: s1 from the s1 head, then s2 from the dependency layer
        over the prefix and the first ``width`` own slots (none for the first token)."""
        model, S, cd = self.predictor, st.sample_count, self.cache_dtype
        rows = last.shape[0]
        u1, u2 = self._step_uniforms(st.uniforms, st.u_next)
        tok1 = self._choose(st, model.s1_logits(last).float(), sampling, u1, 0)
        cross = model.dep_layer.cross_attn
        sibling = model.embedding.emb_s1(tok1)[:, None, :]
        q = self._paths(cross._heads(cross.q_proj(sibling)), S).to(cd)
        prefix = st.prefix
        if width == 0:
            out = shared_prefix_attention(q, prefix.dep_k, prefix.dep_v, st.prefix_bias)
        else:
            out = shared_prefix_attention(
                q, prefix.dep_k, prefix.dep_v, st.prefix_bias,
                st.own_dep_k[:, :, :, :width], st.own_dep_v[:, :, :, :width], own_bias,
            )  # fmt: skip
        out = out.to(last.dtype).transpose(1, 2).reshape(rows, 1, model.d_model)
        x2 = model.dep_layer.norm(last[:, None, :] + cross.out_proj(out))
        tok2 = self._choose(st, model.head.cond_forward(x2[:, 0]).float(), sampling, u2, 1)
        st.tokens.index_copy_(1, st.next, torch.stack([tok1, tok2], dim=-1)[:, None])
        st.next.add_(1)
        st.u_next.add_(1)

    def _choose(self, st: _SharedDecode, logits, sampling, uniforms, which: int):
        """Sampled ids [rows]; under teacher forcing the forced ids, logits recorded."""
        if st.forced is None:
            return self._sample(logits, *sampling, uniforms)
        st.logits[which].index_copy_(1, st.next, logits[:, None])
        return st.forced[:, :, which].index_select(1, st.next)[:, 0]

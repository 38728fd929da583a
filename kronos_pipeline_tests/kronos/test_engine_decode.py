"""The shared-prefix decode: its attention, its loop with no host round trip, its shapes.

* :func:`shared_prefix_attention` is attention over one concatenated cache (the context
  once per series, each path's own tokens), up to rounding, in fp32 and bf16;
* the decode loop after the prefill calls nothing that reads device data on the host
  (``item``, ``tolist``, ``cpu``, ``numpy``, a tensor's truth value, ``nonzero``, ...):
  checked on every device present by a guard that is shown to fire on a planted call;
* each step reads only the filled part of a path's own cache, rounded up to the bucket;
* ``dtype=bfloat16`` runs the tokenizer in bf16 too unless ``tokenizer_dtype`` says
  otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import kronos_pipeline.kronos.engine as engine_module
from kronos_pipeline.kronos.engine import KronosEngine
from kronos_pipeline.kronos.layers import shared_prefix_attention
from kronos_pipeline.kronos.tokenizer import KronosTokenizer
from kronos_pipeline_tests.kronos.conftest import TINY_TOKENIZER, make_bars

SAMPLING = dict(temperature=1.0, top_k=0, top_p=0.9, sample_count=4)


def _loops() -> list:
    """(device, CUDA graphs) pairs to run the decode loop on: CPU eager everywhere, and on
    a CUDA machine both the eager and the captured loop."""
    out = [pytest.param("cpu", False, id="cpu")]
    if torch.cuda.is_available():
        out += [
            pytest.param("cuda", False, id="cuda"),
            pytest.param("cuda", True, id="cuda-graphs"),
        ]
    return out


# -- the attention -------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_shared_prefix_attention_is_attention_over_one_concatenated_cache(dtype, atol) -> None:
    gen = torch.Generator().manual_seed(0)
    n, h, s, length, width, dh = 3, 2, 4, 11, 8, 16

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    q, pk, pv = rand(n, h, s, dh), rand(n, h, length, dh), rand(n, h, length, dh)
    ok, ov = rand(n, h, s, width, dh), rand(n, h, s, width, dh)
    pads = torch.tensor([0, 3, 10])  # series 2 has one real context bar
    prefix_bias = torch.zeros(n, 1, 1, length, dtype=dtype)
    prefix_bias.masked_fill_(torch.arange(length)[None, None, None, :] < pads[:, None, None, None],
                             float("-inf"))  # fmt: skip
    filled = 5  # own slots 0..4 written, 5..7 masked (and full of junk: must not matter)
    own_bias = torch.zeros(width, dtype=dtype).masked_fill(torch.arange(width) >= filled,
                                                           float("-inf"))  # fmt: skip
    got = shared_prefix_attention(q, pk, pv, prefix_bias, ok, ov, own_bias)
    for j in range(n):
        for p in range(s):
            keys = torch.cat([pk[j], ok[j, :, p]], dim=1).float()  # [h, L + W, dh]
            values = torch.cat([pv[j], ov[j, :, p]], dim=1).float()
            mask = torch.cat([prefix_bias[j, 0, 0], own_bias]).float()
            want = F.scaled_dot_product_attention(
                q[j, :, p : p + 1].float(), keys, values, attn_mask=mask
            )[:, 0]
            torch.testing.assert_close(got[j, :, p].float(), want, atol=atol, rtol=0)
    # Junk in the masked slots changes nothing, bit for bit.
    ok2, ov2 = ok.clone(), ov.clone()
    ok2[..., filled:, :] = 1e4
    ov2[..., filled:, :] = -3e3
    assert torch.equal(shared_prefix_attention(q, pk, pv, prefix_bias, ok2, ov2, own_bias), got)
    # No own tokens yet: the prefix alone.
    alone = shared_prefix_attention(q, pk, pv, prefix_bias)
    j, p = 1, 2
    want = F.scaled_dot_product_attention(
        q[j, :, p : p + 1].float(), pk[j].float(), pv[j].float(),
        attn_mask=prefix_bias[j, 0, 0].float(),
    )[:, 0]  # fmt: skip
    torch.testing.assert_close(alone[j, :, p].float(), want, atol=atol, rtol=0)


# -- no host round trip inside the decode loop ----------------------------------------------


class HostReadGuard(TorchFunctionMode):
    """Records every call that reads device data on the host (a synchronisation on an
    accelerator), or whose output shape depends on the data."""

    FORBIDDEN = {
        "item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
        "nonzero", "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave",
    }  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in self.FORBIDDEN:
            # repeat_interleave with an int count has a data-independent shape.
            if not (name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], int)):
                self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _guarded(engine: KronosEngine, guard: HostReadGuard, monkeypatch) -> None:
    original = engine._decode_loop

    def loop(*args, **kwargs):
        with guard:
            return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_decode_loop", loop)


@pytest.mark.parametrize(("device", "graphs"), _loops())
def test_the_decode_loop_reads_nothing_back_on_the_host(
    tiny_models, device, graphs, monkeypatch
) -> None:
    tok, pred = tiny_models
    engine = KronosEngine(tok, pred, device=device, batch_size=8, cuda_graphs=graphs)
    windows, stamps, futures = make_bars(3, 20, 9, seed=2)
    guard = HostReadGuard()
    _guarded(engine, guard, monkeypatch)
    for kw in (SAMPLING, dict(top_k=1)):
        engine.forecast(windows, stamps, futures, pred_len=9, seeds=[1, 2, 3], **kw)
    assert guard.seen == []
    if device == "cuda":  # CUDA's own detector agrees, inside the loop (the copies of the
        # inputs to the device before it and of the results back after it are not in it)
        original = engine._decode_loop

        def strict(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return original(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        monkeypatch.setattr(engine, "_decode_loop", strict)
        engine.forecast(windows, stamps, futures, pred_len=9, seeds=[1, 2, 3], **SAMPLING)


def test_the_host_read_guard_catches_a_planted_read(tiny_models, monkeypatch) -> None:
    tok, pred = tiny_models
    engine = KronosEngine(tok, pred, device="cpu", batch_size=8)
    windows, stamps, futures = make_bars(2, 20, 5, seed=2)
    step = engine._shared_step

    def leaky(st, width, sampling):
        if st.fed.item() >= 0:  # a host read of device data, as a bug would do
            return step(st, width, sampling)

    monkeypatch.setattr(engine, "_shared_step", leaky)
    guard = HostReadGuard()
    _guarded(engine, guard, monkeypatch)
    engine.forecast(windows, stamps, futures, pred_len=5, top_k=1)
    assert guard.seen.count("item") == 4  # steps 1..4


# -- shapes: the own cache is read up to its filled part, bucketed ------------------------------


def test_each_step_reads_the_own_cache_only_up_to_its_bucket(tiny_models, monkeypatch) -> None:
    tok, pred = tiny_models
    engine = KronosEngine(tok, pred, device="cpu", batch_size=8, own_bucket=4)
    widths: list[int] = []
    real = engine_module.shared_prefix_attention

    def spy(q, pk, pv, pb, ok=None, ov=None, ob=None):
        widths.append(0 if ok is None else ok.shape[3])
        return real(q, pk, pv, pb, ok, ov, ob)

    monkeypatch.setattr(engine_module, "shared_prefix_attention", spy)
    windows, stamps, futures = make_bars(2, 20, 10, seed=2)
    engine.forecast(windows, stamps, futures, pred_len=10, top_k=1)
    layers = len(engine.predictor.transformer)
    # First token: the dependency layer over the prefix only. Step j (1..9) feeds token j-1
    # and reads round_up(j, 4) own slots, in every block and in the dependency layer.
    expected = [0] + [w for j in range(1, 10) for w in [-(-j // 4) * 4] * (layers + 1)]
    assert widths == expected


# -- bf16 all the way ----------------------------------------------------------------------------


def test_bfloat16_runs_the_tokenizer_in_bfloat16_unless_told(tiny_models) -> None:
    tok, pred = tiny_models
    both = KronosEngine(tok, pred, device="cpu", dtype="bfloat16", batch_size=4)
    assert both.tokenizer_dtype == torch.bfloat16
    assert {p.dtype for p in both.tokenizer.parameters()} == {torch.bfloat16}
    told = KronosEngine(
        tok, pred, device="cpu", dtype="bfloat16", tokenizer_dtype="float32", batch_size=4
    )
    assert {p.dtype for p in told.tokenizer.parameters()} == {torch.float32}
    windows, stamps, futures = make_bars(3, 20, 6, seed=4)
    fp32 = KronosEngine(tok, pred, device="cpu", batch_size=4).forecast(
        windows, stamps, futures, pred_len=6, top_k=1
    )
    bf16 = both.forecast(windows, stamps, futures, pred_len=6, top_k=1)
    assert np.isfinite(bf16.paths).all()
    close = (bf16.paths[..., 3] - fp32.paths[..., 3]) / np.abs(fp32.paths[..., 3])
    assert np.median(np.abs(close)) < 0.05


# -- embeddings without a decode ------------------------------------------------------------


def test_embed_is_the_one_step_forecasts_embedding_bit_for_bit(tiny_models) -> None:
    """``engine.embed`` (what ``kronos_heads`` runs on its training dates) gives exactly the
    embeddings of a one-step greedy forecast: mixed context lengths over several
    micro-batches, and a context longer than ``max_context`` (the window slides)."""
    tok, pred = tiny_models
    engine = KronosEngine(tok, pred, device="cpu", batch_size=3, max_context=32)
    windows, stamps, futures = make_bars(7, 30, 1, seed=6)
    for i in (1, 4):
        windows[i], stamps[i] = windows[i].iloc[9:].reset_index(drop=True), stamps[i][9:]
    long_w, long_s, long_f = make_bars(1, 40, 1, seed=7)  # 40 + 1 > 32: slides
    windows, stamps, futures = windows + long_w, stamps + long_s, futures + long_f
    want = engine.forecast(
        windows, stamps, futures, pred_len=1, top_k=1, return_embeddings=True
    ).embeddings
    got = engine.embed(windows, stamps)
    assert got.shape == want.shape == (8, pred.d_model)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(engine.embed(windows[2:3], stamps[2:3])[0], want[2])


# -- the tokenizer's decode of the generated part ---------------------------------------------


@pytest.mark.parametrize("dec_layers", [2, 3])
def test_generated_part_decodes_as_the_whole_window(tiny_models, dec_layers) -> None:
    """Decoding only the generated positions over the series' context (once per series)
    reconstructs what decoding every path's whole window does: the decoder is causal."""
    torch.manual_seed(3)
    tok = KronosTokenizer(**dict(TINY_TOKENIZER, n_dec_layers=dec_layers)).eval()
    _, pred = tiny_models
    engine = KronosEngine(tok, pred, device="cpu", batch_size=8)
    gen = torch.Generator().manual_seed(1)
    n, length, paths, steps = 2, 40, 4, 7
    pads = torch.tensor([0, 17])  # series 1 is left-padded
    s1 = torch.randint(0, 2**tok.s1_bits, (n, length), generator=gen)
    s2 = torch.randint(0, 2**tok.s2_bits, (n, length), generator=gen)
    generated = torch.randint(0, 2**tok.s1_bits, (n * paths, steps, 2), generator=gen)
    with torch.inference_mode():
        got = engine._decode_generated(s1, s2, generated, pads, paths)
        whole = engine._decode(
            torch.cat([s1.repeat_interleave(paths, 0), generated[..., 0]], dim=1),
            torch.cat([s2.repeat_interleave(paths, 0), generated[..., 1]], dim=1),
            pads.repeat_interleave(paths),
        )[:, -steps:]
    torch.testing.assert_close(got, whole, atol=1e-6, rtol=0)


def test_one_position_rope_is_apply_rope_bit_for_bit() -> None:
    from kronos_pipeline.kronos.engine import _rope_one
    from kronos_pipeline.kronos.layers import RotaryEmbedding, apply_rope

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 1, 24, generator=gen) * 10
    cos, sin = RotaryEmbedding(24).tables(-7, 3, torch.device("cpu"), torch.float32)
    cos, sin = cos[0, 0, :, None, None, None, :], sin[0, 0, :, None, None, None, :]  # [3, ...]
    signed = torch.cat((-sin[..., :12], sin[..., 12:]), dim=-1)
    assert torch.equal(_rope_one(x, cos, signed), apply_rope(x, cos, sin))

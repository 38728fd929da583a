"""CPU fast paths (kronos/inference.py, single-query attention): same results, rows independent."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kronos_pipeline.kronos import Kronos, KronosTokenizer
from kronos_pipeline.kronos import inference as I
from kronos_pipeline.kronos.layers import TransformerBlock, single_query_attention
from kronos_pipeline_tests.kronos.conftest import SMALLISH_KRONOS, SMALLISH_TOKENIZER

needs_onednn = pytest.mark.skipif(
    I._OPS is None, reason="this torch build has no usable oneDNN linear operators"
)


def _prepared(module: torch.nn.Module) -> torch.nn.Module:
    return I.prepare_for_inference(copy.deepcopy(module).eval().requires_grad_(False))


def test_prepare_keeps_parameters_and_checkpoint_keys() -> None:
    torch.manual_seed(0)
    for model in (Kronos(**SMALLISH_KRONOS), KronosTokenizer(**SMALLISH_TOKENIZER)):
        before = model.state_dict()
        after = _prepared(model).state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(after[k], before[k]) for k in before)


@needs_onednn
def test_fast_paths_are_taken_on_cpu() -> None:
    """Guards against silently falling back: the classes change and weights are packed."""
    torch.manual_seed(0)
    model = _prepared(Kronos(**SMALLISH_KRONOS))
    block = model.transformer[0]
    assert isinstance(block.ffn, I.InferenceFeedForward)
    assert isinstance(block.self_attn, I.InferenceSelfAttention)
    assert isinstance(block.self_attn.qkv, I.InferenceLinear)
    assert block.ffn.w1._packed is not None and block.self_attn.qkv._packed is not None
    assert "transformer.0.self_attn.qkv.weight" not in model.state_dict()


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linears_equal_their_unfused_math(dtype) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 1024).to(dtype)
    fast = _prepared(torch.nn.Sequential(lin))[0]
    x = torch.randn(33, 512, dtype=dtype)
    other = torch.randn(33, 1024, dtype=dtype)
    plain = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=0.02)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x).double(), plain, **tol)
        torch.testing.assert_close(fast.silu(x).double(), F.silu(plain), **tol)
        torch.testing.assert_close(fast.times(x, other).double(), plain * other.double(), **tol)


def test_prepared_models_match_the_plain_ones() -> None:
    torch.manual_seed(1)
    pred, tok = Kronos(**SMALLISH_KRONOS).eval(), KronosTokenizer(**SMALLISH_TOKENIZER).eval()
    fast_pred, fast_tok = _prepared(pred), _prepared(tok)
    s1 = torch.randint(0, 2**6, (3, 40))
    s2 = torch.randint(0, 2**6, (3, 40))
    stamp = torch.randint(0, 5, (3, 40, 5)).float()
    x = torch.randn(3, 40, 6)
    with torch.inference_mode():
        targets = torch.randint(0, 2**6, (3, 40))
        plain_out = pred(s1, s2, stamp, use_teacher_forcing=True, s1_targets=targets)
        fast_out = fast_pred(s1, s2, stamp, use_teacher_forcing=True, s1_targets=targets)
        for a, b in zip(plain_out, fast_out, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            fast_tok.decode((s1, s2), half=True), tok.decode((s1, s2), half=True)
        )
        torch.testing.assert_close(fast_tok._encode_latent(x), tok._encode_latent(x))


@pytest.mark.parametrize("prepare", [False, True])
@pytest.mark.parametrize("shape", [(16, 40), (64, 1), (7, 13)], ids=["prefill", "decode", "odd"])
def test_a_rows_result_does_not_depend_on_its_batch_mates_at_a_fixed_shape(prepare, shape) -> None:
    """Bitwise, at Kronos-small width (d_model 512 / ff 1024): a row keeps its result when
    every other row of the call is replaced and it moves to another position, as long as
    the call's shape stays the same. This is all the engine's batch invariance rests on (it
    pads every micro-batch to fixed shapes); it does not need equal results at different
    row counts, which MKL on Intel CPUs does not give for the plain layers."""
    torch.manual_seed(2)
    block = TransformerBlock(512, 8, 1024).eval()
    if prepare:
        block = _prepared(block)
    rows, length = shape
    x = torch.randn(rows, length, 512)
    with torch.inference_mode():
        together = block(x)
        for i in range(rows):
            others = torch.randn(rows, length, 512)
            j = (5 * i + 3) % rows
            others[j] = x[i]
            assert torch.equal(block(others)[j], together[i]), (i, j)


def test_single_query_attention_matches_sdpa_and_is_row_independent() -> None:
    torch.manual_seed(3)
    cache_k, cache_v = torch.randn(64, 8, 342, 64), torch.randn(64, 8, 342, 64)
    k, v = cache_k[:, :, :297], cache_v[:, :, :297]  # a filled prefix, as in decoding
    q = torch.randn(64, 8, 1, 64)
    out = single_query_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    for i in (0, 31, 63):
        assert torch.equal(
            single_query_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1]), out[i : i + 1]
        )

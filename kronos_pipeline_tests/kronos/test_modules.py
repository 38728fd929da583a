"""Module-level parity with the reference: keys, shapes, forward passes, losses, gradients."""

from __future__ import annotations

import pytest
import torch

from kronos_pipeline.kronos import Kronos, KronosTokenizer
from kronos_pipeline_tests.kronos.conftest import (
    KRONOS_BASE,
    KRONOS_MINI,
    KRONOS_SMALL,
    SMALLISH_KRONOS,
    SMALLISH_KRONOS_FIXED_TE,
    SMALLISH_TOKENIZER,
    TOKENIZER_2K,
    TOKENIZER_BASE,
    make_pair,
)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("cfg", [TOKENIZER_BASE, TOKENIZER_2K], ids=["tok-base", "tok-2k"])
def test_tokenizer_state_dict_matches_reference(cfg: dict) -> None:
    from kronos_finance._vendor.kronos_model import KronosTokenizer as Ref

    with torch.device("meta"):
        assert _shapes(KronosTokenizer(**cfg)) == _shapes(Ref(**cfg))


@pytest.mark.parametrize(
    "cfg",
    [KRONOS_SMALL, KRONOS_MINI, KRONOS_BASE, dict(KRONOS_SMALL, learn_te=False)],
    ids=["small", "mini", "base", "small-fixed-te"],
)
def test_predictor_state_dict_matches_reference(cfg: dict) -> None:
    from kronos_finance._vendor.kronos_model import Kronos as Ref

    with torch.device("meta"):
        assert _shapes(Kronos(**cfg)) == _shapes(Ref(**cfg))


def test_tokenizer_forward_loss_and_gradients_match_reference() -> None:
    pair = make_pair(SMALLISH_TOKENIZER, SMALLISH_KRONOS, seed=5)
    ref, own = pair.ref_tokenizer.train(), pair.tokenizer.train()
    x = torch.randn(3, 40, 6)
    (r_pre, r_full), r_loss, r_q, r_idx = ref(x)
    (o_pre, o_full), o_loss, o_q, o_idx = own(x)
    torch.testing.assert_close(o_pre, r_pre, rtol=0, atol=1e-6)
    torch.testing.assert_close(o_full, r_full, rtol=0, atol=1e-6)
    torch.testing.assert_close(o_q, r_q, rtol=0, atol=0)
    assert torch.equal(o_idx, r_idx)
    assert abs(o_loss.item() - r_loss.item()) < 1e-6
    (r_loss + r_full.square().mean()).backward()
    (o_loss + o_full.square().mean()).backward()
    for (name, p_ref), p_own in zip(ref.named_parameters(), own.parameters(), strict=True):
        assert (p_ref.grad is None) == (p_own.grad is None), name
        if p_ref.grad is not None:
            torch.testing.assert_close(p_own.grad, p_ref.grad, rtol=1e-5, atol=1e-7)
    ref.eval()
    own.eval()


def test_tokenizer_encode_decode_match_reference(smallish_pair) -> None:
    x = torch.randn(4, 64, 6) * 2
    with torch.no_grad():
        for half in (True, False):
            r_ids = smallish_pair.ref_tokenizer.encode(x, half=half)
            o_ids = smallish_pair.tokenizer.encode(x, half=half)
            if half:
                assert all(torch.equal(a, b) for a, b in zip(r_ids, o_ids, strict=True))
            else:
                assert torch.equal(r_ids, o_ids)
            torch.testing.assert_close(
                smallish_pair.tokenizer.indices_to_bits(o_ids, half=half),
                smallish_pair.ref_tokenizer.indices_to_bits(r_ids, half=half),
                rtol=0,
                atol=0,
            )
            torch.testing.assert_close(
                smallish_pair.tokenizer.decode(o_ids, half=half),
                smallish_pair.ref_tokenizer.decode(r_ids, half=half),
                rtol=0,
                atol=1e-6,
            )


def _stamps(b: int, t: int) -> torch.Tensor:
    cols = [(0, 60), (0, 24), (0, 7), (1, 32), (1, 13)]
    return torch.stack([torch.randint(lo, hi, (b, t)) for lo, hi in cols], dim=-1).float()


@pytest.mark.parametrize("pred_cfg", [SMALLISH_KRONOS, SMALLISH_KRONOS_FIXED_TE])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_predictor_forward_matches_reference(pred_cfg: dict, mode: str) -> None:
    pair = make_pair(SMALLISH_TOKENIZER, pred_cfg, seed=6)
    ref, own = getattr(pair.ref_predictor, mode)(), getattr(pair.predictor, mode)()
    vocab = 2 ** pred_cfg["s1_bits"]
    s1, s2, targets = (torch.randint(0, vocab, (3, 30)) for _ in range(3))
    stamp = _stamps(3, 30)
    r1, r2 = ref(s1, s2, stamp, use_teacher_forcing=True, s1_targets=targets)
    o1, o2 = own(s1, s2, stamp, use_teacher_forcing=True, s1_targets=targets)
    torch.testing.assert_close(o1, r1, rtol=0, atol=1e-5)
    torch.testing.assert_close(o2, r2, rtol=0, atol=1e-5)
    r_loss = ref.head.compute_loss(r1, r2, targets, s2)
    o_loss = own.head.compute_loss(o1, o2, targets, s2)
    for a, b in zip(o_loss, r_loss, strict=True):
        assert abs(a.item() - b.item()) < 1e-5
    mask = torch.zeros(3, 30)
    mask[:, :5] = 1
    masked = own.head.compute_loss(o1, o2, targets, s2, padding_mask=mask)
    ref_masked = ref.head.compute_loss(r1, r2, targets, s2, padding_mask=mask)
    assert abs(masked[0].item() - ref_masked[0].item()) < 1e-5
    # Without teacher forcing s2 is conditioned on s1 ids drawn from the global RNG.
    torch.manual_seed(11)
    r1, r2 = ref(s1, s2, stamp)
    torch.manual_seed(11)
    o1, o2 = own(s1, s2, stamp)
    torch.testing.assert_close(o2, r2, rtol=0, atol=1e-5)
    ref.eval()
    own.eval()


def test_decode_s1_s2_match_reference(smallish_pair) -> None:
    s1 = torch.randint(0, 64, (2, 25))
    s2 = torch.randint(0, 64, (2, 25))
    stamp = _stamps(2, 25)
    with torch.no_grad():
        r_logits, r_ctx = smallish_pair.ref_predictor.decode_s1(s1, s2, stamp)
        o_logits, o_ctx = smallish_pair.predictor.decode_s1(s1, s2, stamp)
        torch.testing.assert_close(o_logits, r_logits, rtol=0, atol=1e-5)
        ids = torch.randint(0, 64, (2, 1))
        torch.testing.assert_close(
            smallish_pair.predictor.decode_s2(o_ctx, ids),
            smallish_pair.ref_predictor.decode_s2(r_ctx, ids),
            rtol=0,
            atol=1e-5,
        )


def test_constructible_from_config_kwargs_with_extra_keys() -> None:
    tok = KronosTokenizer(**TOKENIZER_BASE, some_future_field=1)
    assert tok.config.d_model == 256 and len(tok.encoder) == 3 and len(tok.decoder) == 3
    with torch.device("meta"):
        model = Kronos(**KRONOS_SMALL)
    assert model.config.n_layers == 8 and model.head.vocab_s1 == 1024
    n_params = sum(p.numel() for p in model.parameters())
    assert 24_000_000 < n_params < 26_000_000  # published: 24.7M


@pytest.mark.parametrize("positions", [1, 7, 64])
def test_rope_half_by_half_has_the_bits_of_the_two_product_form(positions: int) -> None:
    from kronos_pipeline.kronos.layers import apply_rope, rotate_half

    gen = torch.Generator().manual_seed(positions)
    x = torch.randn(5, 4, positions, 16, generator=gen)
    # Per-row tables whose halves differ, so nothing relies on the duplicated-halves layout.
    angles = torch.randn(5, 1, positions, 16, generator=gen)
    cos, sin = angles.cos(), angles.sin()
    assert torch.equal(apply_rope(x, cos, sin), x * cos + rotate_half(x) * sin)
    shared = (cos[:1], sin[:1])  # one table broadcast over the rows
    assert torch.equal(apply_rope(x, *shared), x * shared[0] + rotate_half(x) * shared[1])

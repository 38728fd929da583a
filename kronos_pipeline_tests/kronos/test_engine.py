"""Engine behaviour: batch invariance, sampling, seeds, OOM halving, dtypes, API checks.

Batch invariance is checked as the engine guarantees it, by construction: for one engine
(one set of settings) a series' forecast is bitwise the same alone and inside any batch.
Engines with other settings (``batch_size``, ``block_tokens``) run other kernel shapes and
agree within rounding only, which is asserted separately.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kronos_pipeline.kronos.engine import (
    ForecastResult,
    KronosEngine,
    _sorted_descending,
    filter_logits,
    sample_tokens,
)
from kronos_pipeline.kronos.hub import resolve_device
from kronos_pipeline_tests.kronos.conftest import make_bars

N_SERIES = 8
LOOKBACK = 24
PRED_LEN = 6


@pytest.fixture(scope="module")
def bars():
    """Eight windows; series 6 and 7 are shorter (another length group)."""
    windows, stamps, futures = make_bars(N_SERIES, LOOKBACK, PRED_LEN, seed=5)
    for i in (6, 7):
        windows[i], stamps[i] = windows[i].iloc[5:].reset_index(drop=True), stamps[i][5:]
    return windows, stamps, futures


CONFIGS = {
    1: dict(batch_size=1),
    2: dict(batch_size=2),
    3: dict(batch_size=3),
    5: dict(batch_size=5),
    64: dict(batch_size=64),
    "bucket-8": dict(batch_size=3, length_bucket=8),  # lengths 19 and 24 in two buckets
    "plain": dict(batch_size=5, fast_linear=False),  # PyTorch's own (MKL) linears
}


class Engines(dict):
    """Engines by configuration, with whether each one warned at start-up."""

    warned: dict


@pytest.fixture(scope="module")
def engines(tiny_models):
    """One engine per configuration (engines copy the models, so build them once)."""
    tok, pred = tiny_models
    out, out.warned = Engines(), {}
    for name, kw in CONFIGS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[name] = KronosEngine(tok, pred, device="cpu", **kw)
        out.warned[name] = any("changed with its position" in str(w.message) for w in caught)
    return out


def _run(engine, bars, idx, **kw):
    windows, stamps, futures = bars
    return engine.forecast(
        [windows[i] for i in idx],
        [stamps[i] for i in idx],
        [futures[i] for i in idx],
        pred_len=PRED_LEN,
        seeds=[1000 + i for i in idx],
        **kw,
    )


SAMPLING = dict(temperature=1.3, top_k=0, top_p=0.95, sample_count=3)
GREEDY = dict(top_k=1)


class Alone(dict):
    """(config, mode) -> each series forecast on its own by that engine, built lazily."""

    def __init__(self, engines, bars) -> None:
        super().__init__()
        self.engines, self.bars = engines, bars

    def __missing__(self, key):
        config, mode = key
        kw = GREEDY if mode == "greedy" else SAMPLING
        self[key] = [
            _run(self.engines[config], self.bars, [i], return_embeddings=True, **kw)
            for i in range(N_SERIES)
        ]
        return self[key]


@pytest.fixture(scope="module")
def alone(engines, bars):
    """Each series forecast on its own: the invariance baseline of each engine."""
    return Alone(engines, bars)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    subset=st.lists(st.integers(0, N_SERIES - 1), min_size=1, max_size=N_SERIES, unique=True),
    config=st.sampled_from(list(CONFIGS)),
    mode=st.sampled_from(["greedy", "sampling"]),
)
def test_batch_invariance(engines, bars, alone, subset, config, mode) -> None:
    """A series' paths and embedding are bitwise the same alone and inside a batch of any
    size or make-up (mixed context lengths included), for every engine configuration
    whose kernels the start-up probe found row-invariant on this CPU. The default fast
    path is so on every CPU (asserted); where another path is not (PyTorch's own linears
    on some CPUs), what the engine owes is to detect it and warn, which is asserted
    instead of what this hardware happens to give."""
    engine = engines[config]
    if config != "plain":
        assert engine.row_invariant
    if not engine.row_invariant:
        assert engines.warned[config]
        return
    assert not engines.warned[config]
    kw = GREEDY if mode == "greedy" else SAMPLING
    result = _run(engines[config], bars, subset, return_embeddings=True, **kw)
    for row, i in enumerate(subset):
        np.testing.assert_array_equal(result.paths[row], alone[config, mode][i].paths[0])
        np.testing.assert_array_equal(result.embeddings[row], alone[config, mode][i].embeddings[0])


def test_every_kernel_call_has_the_same_shapes_whatever_the_batch(engines, bars) -> None:
    """What the invariance rests on: one series alone and all eight series (two context
    lengths, several micro-batches) reach every predictor and tokenizer block with the
    same input shapes, and the padded slots and rows stay finite."""
    engine = engines[3]
    seen: list[tuple[int, ...]] = []

    def hook(module, args, output):
        seen.append(tuple(args[0].shape))
        assert torch.isfinite(output).all()

    blocks = [*engine.predictor.transformer, *engine.tokenizer.encoder, *engine.tokenizer.decoder]
    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        _run(engine, bars, [0], **SAMPLING)
        shapes_alone = set(seen)
        seen.clear()
        _run(engine, bars, list(range(N_SERIES)), **SAMPLING)
        shapes_batch = set(seen)
    finally:
        for h in handles:
            h.remove()
    assert shapes_alone == shapes_batch
    rows = engine.batch_size // SAMPLING["sample_count"] * SAMPLING["sample_count"]
    assert all(b.rows == rows for b in engine.last_batches)


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
def test_other_settings_agree_within_rounding(engines, bars, alone, mode) -> None:
    """Engines with other row counts, buckets or linears run other shapes: their
    forecasts agree with batch size 1 to rounding (and greedy tokens are the same here)."""
    for config in CONFIGS:
        for i in range(N_SERIES):
            np.testing.assert_allclose(
                alone[config, mode][i].paths[0], alone[1, mode][i].paths[0], rtol=1e-4, atol=1e-5
            )


def test_sampling_is_seeded_and_keeps_paths(engines, bars, alone) -> None:
    again = _run(engines[5], bars, list(range(N_SERIES)), **SAMPLING)
    np.testing.assert_array_equal(again.paths[2], alone[5, "sampling"][2].paths[0])
    assert again.paths.shape == (N_SERIES, 3, PRED_LEN, 6)
    # Paths of one series differ from each other (kept, not averaged away)...
    assert not np.array_equal(again.paths[0, 0], again.paths[0, 1])
    # ...and a different seed gives different paths.
    windows, stamps, futures = bars
    other = engines[5].forecast(
        windows[:1], stamps[:1], futures[:1], pred_len=PRED_LEN, seeds=[7], **SAMPLING
    )
    assert not np.array_equal(other.paths[0], again.paths[0])
    # Greedy needs no seed: any seed gives the same path.
    g1 = engines[2].forecast(
        windows[:2], stamps[:2], futures[:2], pred_len=PRED_LEN, seed=1, top_k=1
    )
    g2 = engines[2].forecast(
        windows[:2], stamps[:2], futures[:2], pred_len=PRED_LEN, seed=9, top_k=1
    )
    np.testing.assert_array_equal(g1.paths, g2.paths)


def test_result_helpers() -> None:
    paths = np.arange(2 * 4 * 3 * 6, dtype=np.float32).reshape(2, 4, 3, 6)
    index = pd.bdate_range("2024-01-01", periods=3)
    result = ForecastResult(paths=paths, future_timestamps=[index, index])
    np.testing.assert_allclose(result.mean(), paths.mean(axis=1))
    np.testing.assert_allclose(result.quantile(0.5), np.median(paths, axis=1))
    assert result.quantile([0.1, 0.9]).shape == (2, 2, 3, 6)
    frames = result.frames()
    assert list(frames[1].columns) == ["open", "high", "low", "close", "volume", "amount"]
    assert frames[1].index.equals(index)
    np.testing.assert_allclose(frames[1].values, paths[1].mean(axis=0))


def test_oom_halves_the_row_count_and_starts_over(tiny_models, bars, monkeypatch) -> None:
    """On out-of-memory the engine halves its fixed row count and reruns the whole call,
    so every series of the call runs at one shape: the result is bitwise that of an
    engine built with the smaller row count."""
    tok, pred = tiny_models
    engine = KronosEngine(tok, pred, device="cpu", batch_size=8)
    original = engine._run_chunk
    tried: list[int] = []

    def flaky(*args, **kwargs):
        tried.append(engine.batch_size)
        if engine.batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_run_chunk", flaky)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        result = _run(engine, bars, list(range(N_SERIES)), **GREEDY)
    assert engine.batch_size == 2 and tried[:2] == [8, 4] and set(tried[2:]) == {2}
    fresh = _run(
        KronosEngine(tok, pred, device="cpu", batch_size=2), bars, list(range(8)), **GREEDY
    )
    np.testing.assert_array_equal(result.paths, fresh.paths)

    def always(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(engine, "_run_chunk", always)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning):
        _run(engine, bars, [0, 1], **GREEDY)
    assert engine.batch_size == 1


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_and_stays_close(tiny_models, bars, dtype) -> None:
    tok, pred = tiny_models
    windows, stamps, futures = bars
    fp32 = KronosEngine(tok, pred, device="cpu").forecast(
        windows[:4], stamps[:4], futures[:4], pred_len=PRED_LEN, top_k=1, return_tokens=True
    )
    half = KronosEngine(tok, pred, device="cpu", dtype=dtype).forecast(
        windows[:4], stamps[:4], futures[:4], pred_len=PRED_LEN, top_k=1, return_tokens=True
    )
    assert half.paths.dtype == np.float32 and np.isfinite(half.paths).all()
    # Most greedy tokens agree with fp32 (ties broken differently by rounding are allowed).
    assert (half.tokens == fp32.tokens).mean() > 0.5
    assert next(pred.parameters()).dtype == torch.float32  # the engine copies the model


def test_filter_logits_matches_reference() -> None:
    from kronos_finance._vendor.kronos_model.kronos import top_k_top_p_filtering

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for top_k, top_p in [(0, 0.9), (0, 0.5), (0, 0.01), (5, 1.0), (5, 0.5), (1, 1.0)]:
        ours = filter_logits(logits.clone(), top_k, top_p)
        theirs = top_k_top_p_filtering(logits.clone(), top_k=top_k, top_p=top_p)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), (top_k, top_p)
        assert torch.equal(ours[~torch.isinf(ours)], logits[~torch.isinf(ours)])
    # No filtering at all (the reference skips the call in that case).
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)


def test_nucleus_keeps_every_token_tied_with_its_last_one() -> None:
    """Probabilities 0.4, 0.2, 0.2, 0.2: top_p 0.5 keeps the first token and the one that
    crosses 0.5, and with it the two tied with it, whatever order a sort gives them."""
    logits = torch.log(torch.tensor([[0.2, 0.4, 0.2, 0.2], [0.2, 0.2, 0.2, 0.4]]))
    assert not torch.isinf(filter_logits(logits, 0, 0.5)).any()
    assert torch.isinf(filter_logits(logits, 0, 0.3)).tolist() == [
        [True, False, True, True],
        [True, True, True, False],
    ]
    # Negative zero, zeros and infinities sort as floats do (the int32 keys keep the order).
    x = torch.tensor([[0.0, -0.0, -1.5, 3.0, float("-inf"), 2.5, -2.0, 1e-30, -1e-30]])
    assert torch.equal(_sorted_descending(x), torch.sort(x, descending=True).values)


def test_sample_tokens_follows_the_filtered_distribution() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    freq = torch.bincount(sample_tokens(logits, 1.0, 0, 1.0, u), minlength=4).double() / 20000
    torch.testing.assert_close(
        freq, torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64), atol=0.015, rtol=0
    )
    # top_p=0.7 keeps {0, 1} (0.5 < 0.7, then the token that crosses it).
    kept = sample_tokens(logits, 1.0, 0, 0.7, u)
    assert set(kept.tolist()) == {0, 1}
    assert set(sample_tokens(logits, 1.0, 2, 0.1, u).tolist()) == {0, 1}  # top_k wins
    assert sample_tokens(logits[:3], 1.0, 1, 1.0, None).tolist() == [0, 0, 0]


def test_input_validation(engines, bars) -> None:
    windows, stamps, futures = bars
    engine = engines[2]
    with pytest.raises(ValueError, match="equal lengths"):
        engine.forecast(windows[:2], stamps[:1], futures[:2], pred_len=PRED_LEN)
    with pytest.raises(ValueError, match="rows, not"):
        engine.forecast(windows[:1], stamps[:1], futures[:1], pred_len=PRED_LEN + 1)
    with pytest.raises(ValueError, match="seeds"):
        engine.forecast(windows[:2], stamps[:2], futures[:2], pred_len=PRED_LEN, seeds=[1])
    with pytest.raises(ValueError, match="pred_len"):
        engine.forecast(windows[:1], stamps[:1], futures[:1], pred_len=10_000)
    empty = engine.forecast([], [], [], pred_len=PRED_LEN)
    assert empty.paths.shape == (0, 1, PRED_LEN, 6)


def test_device_choice() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu").type == "cpu"


def test_mixed_context_lengths_share_a_micro_batch(engines, bars, alone) -> None:
    """Series of lengths 19 and 24 run in one left-padded micro-batch, order preserved,
    each bitwise as alone; 29 distinct lengths run in one micro-batch per 64-bar bucket."""
    result = _run(engines[64], bars, [7, 0, 6, 1], **GREEDY)
    assert [(b.length, b.series, b.padded) for b in engines[64].last_batches] == [(64, 4, True)]
    for row, i in enumerate([7, 0, 6, 1]):
        np.testing.assert_array_equal(result.paths[row], alone[64, "greedy"][i].paths[0])
    many = [max(1, 3 * k) for k in range(29)]  # 29 distinct lengths, 1..84 bars
    windows, stamps, futures = make_bars(29, 90, PRED_LEN, seed=8)
    windows = [w.iloc[-t:].reset_index(drop=True) for w, t in zip(windows, many, strict=True)]
    stamps = [s[-t:] for s, t in zip(stamps, many, strict=True)]
    engines[64].forecast(windows, stamps, futures, pred_len=PRED_LEN, top_k=1)
    # Buckets of 64 bars: lengths 1..63 and 64..84 -> two micro-batches, not 29.
    assert [(b.length, b.series) for b in engines[64].last_batches] == [(64, 22), (128, 7)]


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
def test_row_blocks_keep_invariance(tiny_models, bars, alone, mode) -> None:
    """Tokenizer and prefill run in equal row blocks of ``block_tokens`` (the last block
    overlaps instead of shrinking): with one row per block or blocks that split a
    micro-batch unevenly, a series is bitwise the same alone and in the batch, and within
    rounding of the unblocked engine."""
    tok, pred = tiny_models
    kw = GREEDY if mode == "greedy" else SAMPLING
    for block_tokens in (1, 3 * (LOOKBACK + PRED_LEN), 7 * 64):
        engine = KronosEngine(tok, pred, device="cpu", batch_size=64, block_tokens=block_tokens)
        together = _run(engine, bars, list(range(N_SERIES)), return_embeddings=True, **kw)
        for i in (0, 6):
            single = _run(engine, bars, [i], return_embeddings=True, **kw)
            np.testing.assert_array_equal(together.paths[i], single.paths[0])
            np.testing.assert_array_equal(together.embeddings[i], single.embeddings[0])
        for i in range(N_SERIES):
            np.testing.assert_allclose(
                together.paths[i], alone[64, mode][i].paths[0], rtol=1e-4, atol=1e-5
            )
    with pytest.raises(ValueError, match="block_tokens"):
        KronosEngine(tok, pred, device="cpu", block_tokens=0)


def test_row_blocks_are_equal_and_cover_every_row(engines) -> None:
    engine = engines[64]
    for n_rows, length in [(64, 600), (5, 4096), (1, 10), (13, 1000)]:
        blocks = engine._row_blocks(n_rows, length)
        sizes = {hi - lo for lo, hi, _ in blocks}
        assert len(sizes) == 1 and blocks[0][0] == 0 and blocks[-1][1] == n_rows

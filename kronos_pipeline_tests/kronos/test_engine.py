"""Engine behaviour: batch invariance, sampling, seeds, OOM halving, dtypes, API checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kronos_pipeline.kronos.engine import (
    ForecastResult,
    KronosEngine,
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


@pytest.fixture(scope="module")
def engines(tiny_models):
    """One engine per micro-batch size (engines copy the models, so build them once)."""
    tok, pred = tiny_models
    return {bs: KronosEngine(tok, pred, device="cpu", batch_size=bs) for bs in (1, 2, 3, 5, 64)}


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


@pytest.fixture(scope="module")
def alone(engines, bars):
    """Each series forecast on its own with batch size 1: the invariance baseline."""
    out = {}
    for name, kw in (("greedy", GREEDY), ("sampling", SAMPLING)):
        out[name] = [
            _run(engines[1], bars, [i], return_embeddings=True, **kw) for i in range(N_SERIES)
        ]
    return out


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    subset=st.lists(st.integers(0, N_SERIES - 1), min_size=1, max_size=N_SERIES, unique=True),
    batch_size=st.sampled_from([1, 2, 3, 5, 64]),
    mode=st.sampled_from(["greedy", "sampling"]),
)
def test_batch_invariance(engines, bars, alone, subset, batch_size, mode) -> None:
    """A series' paths do not depend on micro-batch size or on its batch-mates (exactly)."""
    kw = GREEDY if mode == "greedy" else SAMPLING
    result = _run(engines[batch_size], bars, subset, return_embeddings=True, **kw)
    for row, i in enumerate(subset):
        np.testing.assert_array_equal(result.paths[row], alone[mode][i].paths[0])
        np.testing.assert_array_equal(result.embeddings[row], alone[mode][i].embeddings[0])


def test_sampling_is_seeded_and_keeps_paths(engines, bars, alone) -> None:
    again = _run(engines[5], bars, list(range(N_SERIES)), **SAMPLING)
    np.testing.assert_array_equal(again.paths[2], alone["sampling"][2].paths[0])
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


def test_oom_halves_and_retries(engines, bars, alone, monkeypatch) -> None:
    engine = engines[64]
    original = engine._run_chunk
    tried: list[int] = []
    done: list[int] = []

    def flaky(x, *args, **kwargs):
        tried.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        done.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(engine, "_run_chunk", flaky)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        result = _run(engine, bars, list(range(N_SERIES)), **GREEDY)
    for i in range(N_SERIES):
        np.testing.assert_array_equal(result.paths[i], alone["greedy"][i].paths[0])
    # Lengths 19 (2 series) then 24 (6 series): 6 fails, 3 fails, then pieces of <= 2.
    assert tried[:3] == [2, 6, 3] and sum(done) == N_SERIES and max(done) <= 2

    def always(x, *args, **kwargs):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(engine, "_run_chunk", always)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning):
        _run(engine, bars, [0, 1], **GREEDY)


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


def test_mixed_context_lengths_group_separately(engines, bars, alone) -> None:
    """Series of different lengths in one call are batched by length, order preserved."""
    result = _run(engines[64], bars, [7, 0, 6, 1], **GREEDY)
    for row, i in enumerate([7, 0, 6, 1]):
        np.testing.assert_array_equal(result.paths[row], alone["greedy"][i].paths[0])


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
def test_row_blocks_do_not_change_results(tiny_models, bars, alone, mode) -> None:
    """Tokenizer and prefill run in row blocks of ``block_tokens``; any block size gives
    the same paths (here one row per block, and blocks that split a micro-batch)."""
    tok, pred = tiny_models
    kw = GREEDY if mode == "greedy" else SAMPLING
    for block_tokens in (1, 3 * (LOOKBACK + PRED_LEN)):
        engine = KronosEngine(tok, pred, device="cpu", batch_size=64, block_tokens=block_tokens)
        result = _run(engine, bars, list(range(N_SERIES)), return_embeddings=True, **kw)
        for i in range(N_SERIES):
            np.testing.assert_array_equal(result.paths[i], alone[mode][i].paths[0])
            np.testing.assert_array_equal(result.embeddings[i], alone[mode][i].embeddings[0])
    with pytest.raises(ValueError, match="block_tokens"):
        KronosEngine(tok, pred, device="cpu", block_tokens=0)

"""Engine device rules: MPS's dtype and device rules (run on CPU), micro-batch size from
free memory, the start-up row-invariance check, the static (CUDA-graph) decode step, and
batch invariance at Kronos-small width on every device present."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from kronos_pipeline.kronos import Kronos, KronosTokenizer
from kronos_pipeline.kronos import engine as E
from kronos_pipeline.kronos.engine import KronosEngine, batch_size_for_memory, device_rules
from kronos_pipeline_tests.kronos.conftest import KRONOS_SMALL, TOKENIZER_BASE, make_bars

PRED_LEN = 6
SAMPLING = dict(temperature=1.3, top_k=0, top_p=0.95, sample_count=3)


@pytest.fixture(scope="module")
def bars():
    """Six windows of 20..30 bars (one 64-bar bucket)."""
    windows, stamps, futures = make_bars(6, 30, PRED_LEN, seed=9)
    for i, cut in enumerate([0, 3, 10, 0, 7, 1]):
        windows[i], stamps[i] = windows[i].iloc[cut:].reset_index(drop=True), stamps[i][cut:]
    return windows, stamps, futures


def _run(engine, bars, idx, **kw):
    windows, stamps, futures = bars
    return engine.forecast(
        [windows[i] for i in idx],
        [stamps[i] for i in idx],
        [futures[i] for i in idx],
        pred_len=PRED_LEN,
        seeds=[50 + i for i in idx],
        **kw,
    )


# -- device rules ----------------------------------------------------------------------


def test_device_rules() -> None:
    cpu, mps, cuda = device_rules("cpu"), device_rules("mps"), device_rules("cuda")
    assert cpu.float64 and cpu.float32_cache and cpu.block_tokens == 4096
    assert not mps.float64 and not mps.float32_cache  # MPS has no float64 kernels
    assert cuda.float64 and not cuda.float32_cache and cuda.block_tokens == 1 << 20


class _Float64Spy(TorchFunctionMode):
    """Records every torch op producing a float64 tensor outside the host fallbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.on_host = 0
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if not self.on_host and any(
            isinstance(o, torch.Tensor) and o.dtype == torch.float64 for o in outs
        ):
            self.seen.append(getattr(func, "__name__", str(func)))
        return out


def _spy_engine(engine: KronosEngine, spy: _Float64Spy) -> None:
    """Mark the engine's declared host-side steps (uniforms, host sampling) for the spy."""
    for name in ("_uniforms", "_step_uniforms", "_host_sample"):
        original = getattr(engine, name)

        def marked(*args, _original=original, **kwargs):
            spy.on_host += 1
            try:
                return _original(*args, **kwargs)
            finally:
                spy.on_host -= 1

        setattr(engine, name, marked)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_mps_rules_keep_float64_on_the_host_and_change_no_result(
    tiny_models, bars, cuda_graphs
) -> None:
    """The MPS code path run on CPU: with MPS's rules (no float64 on the device, cache in
    the model dtype) no float64 op runs outside the host fallbacks, and the forecasts are
    bitwise those of the CPU rules (the fallback computes the same thing on the host)."""
    tok, pred = tiny_models
    with pytest.warns(RuntimeWarning) if cuda_graphs else _nothing():
        cpu_engine = KronosEngine(tok, pred, device="cpu", batch_size=4, cuda_graphs=cuda_graphs)
        mps_engine = KronosEngine(tok, pred, device="cpu", batch_size=4, cuda_graphs=cuda_graphs)
    mps_engine.rules = device_rules("mps")
    mps_engine.cache_dtype = mps_engine.dtype
    expected = _run(cpu_engine, bars, range(6), **SAMPLING)
    spy = _Float64Spy()
    _spy_engine(mps_engine, spy)
    with spy:
        got = _run(mps_engine, bars, range(6), **SAMPLING)
        greedy = _run(mps_engine, bars, range(6), top_k=1)
    assert sorted(set(spy.seen)) == []
    np.testing.assert_array_equal(got.paths, expected.paths)
    np.testing.assert_array_equal(greedy.paths, _run(cpu_engine, bars, range(6), top_k=1).paths)
    # The spy does see float64 where the CPU rules sample on the device.
    cpu_spy = _Float64Spy()
    _spy_engine(cpu_engine, cpu_spy)
    with cpu_spy:
        _run(cpu_engine, bars, [0], **SAMPLING)
    assert cpu_spy.seen


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- micro-batch size from free memory ---------------------------------------------------


def test_batch_size_for_memory_is_a_bounded_power_of_two() -> None:
    mib = 2**20
    # Half the free memory is used: 2000 / 250 rows fit -> the power of two below.
    assert batch_size_for_memory(80_000 * mib, 20 * mib) == 1024
    assert batch_size_for_memory(10_000 * mib, 20 * mib) == 128
    assert batch_size_for_memory(10 * mib, 20 * mib) == 16  # floor
    assert batch_size_for_memory(10**15, 1) == 4096  # ceiling
    # Somewhat less free memory does not change the row count (nor the kernel shapes).
    assert batch_size_for_memory(8_500 * mib, 20 * mib) == 128
    assert batch_size_for_memory(5_200 * mib, 20 * mib) == 128


def test_bytes_per_row_at_kronos_small_shape() -> None:
    torch.manual_seed(0)
    pred, tok = Kronos(**KRONOS_SMALL), KronosTokenizer(**TOKENIZER_BASE)
    fp32 = E.bytes_per_row(pred, tok, 4, 512)
    # K/V of 9 attention layers at 512 positions x 512 wide, K and V: 18.9 MB in fp32.
    assert 9 * 2 * 512 * 512 * 4 < fp32 < 60 * 2**20
    assert E.bytes_per_row(pred, tok, 2, 512) < fp32


def test_batch_size_defaults(tiny_models, monkeypatch) -> None:
    """CPU: 64 unless set; where free device memory is known (accelerators) it sets the
    row count; an explicit batch_size always wins."""
    tok, pred = tiny_models
    assert KronosEngine(tok, pred, device="cpu").batch_size == 64
    monkeypatch.setattr(E, "free_device_memory", lambda device: 8 * 2**30)
    engine = KronosEngine(tok, pred, device="cpu")
    row = E.bytes_per_row(engine.predictor, engine.tokenizer, 4, 512)
    assert engine.batch_size == batch_size_for_memory(8 * 2**30, row)
    assert KronosEngine(tok, pred, device="cpu", batch_size=7).batch_size == 7


# -- start-up check ----------------------------------------------------------------------


def test_start_up_check_passes_here_and_warns_on_position_dependent_kernels(
    tiny_models,
) -> None:
    tok, pred = tiny_models
    assert KronosEngine(tok, pred, device="cpu", batch_size=8).row_invariant

    def position_dependent(module, args, output):
        rows = torch.arange(output.shape[0], dtype=output.dtype)[:, None, None]
        return output + rows * 1e-6

    broken = Kronos(**pred.config.__dict__)
    broken.load_state_dict(pred.state_dict())
    broken.transformer[0].register_forward_hook(position_dependent)
    with pytest.warns(RuntimeWarning, match="depend on the other series"):
        engine = KronosEngine(tok, broken, device="cpu", batch_size=8)
    assert not engine.row_invariant


# -- static decode step ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
def test_static_decode_step_matches_the_dynamic_one_and_is_batch_invariant(
    tiny_models, bars, mode
) -> None:
    """``cuda_graphs=True`` (the capture path; eager on CPU, with a warning): same tokens
    as the dynamic cache and paths within rounding; bitwise alone vs in a batch."""
    tok, pred = tiny_models
    kw = dict(top_k=1) if mode == "greedy" else SAMPLING
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        static = KronosEngine(tok, pred, device="cpu", batch_size=4, cuda_graphs=True)
    dynamic = KronosEngine(tok, pred, device="cpu", batch_size=4)
    a = _run(static, bars, range(6), return_tokens=True, **kw)
    b = _run(dynamic, bars, range(6), return_tokens=True, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.paths, b.paths, rtol=1e-5, atol=1e-6)
    for i in (0, 2, 5):
        np.testing.assert_array_equal(_run(static, bars, [i], **kw).paths[0], a.paths[i])


# -- every device present, Kronos-small width --------------------------------------------


def _devices() -> list:
    out = [pytest.param("cpu", True, id="cpu"), pytest.param("cpu", False, id="cpu-plain")]
    if torch.cuda.is_available():
        out.append(pytest.param("cuda", True, id="cuda"))
    if torch.backends.mps.is_available():
        out.append(pytest.param("mps", True, id="mps"))
    return out


@pytest.mark.parametrize(("device", "fast_linear"), _devices())
def test_kronos_small_alone_equals_inside_batches_on_each_device(device, fast_linear) -> None:
    """The engine as the pipeline builds it (default batch size, Kronos-small width), on
    each device present: three series of mixed lengths forecast alone are bitwise the same
    inside batches of 5 and of 70 series (two micro-batches), greedy and sampled.
    The engine's default path (oneDNN on CPU) is row-invariant by construction on every
    CPU, and so asserted. ``cpu-plain`` runs PyTorch's own linears (MKL or OpenBLAS),
    which are position-invariant on some CPUs and not on others (seen on the H200 machine's host CPU):
    there the engine owes a start-up warning, which is what is asserted on such a CPU."""
    torch.manual_seed(0)
    small = dict(KRONOS_SMALL, n_layers=2)  # real width, fewer layers, to stay quick on CPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = KronosEngine(
            KronosTokenizer(**TOKENIZER_BASE).eval(),
            Kronos(**small).eval(),
            device=device,
            fast_linear=fast_linear,
        )
    warned = any("changed with its position" in str(w.message) for w in caught)
    assert warned == (not engine.row_invariant)
    if fast_linear:
        assert engine.row_invariant
    if not engine.row_invariant:
        return  # detected and warned: the engine promises nothing more on this hardware
    windows, stamps, futures = make_bars(70, 60, 4, seed=3)
    for i in range(70):
        cut = (7 * i) % 25
        windows[i], stamps[i] = windows[i].iloc[cut:].reset_index(drop=True), stamps[i][cut:]
    probe = [0, 3, 69]

    def run(idx, **kw):
        return engine.forecast(
            [windows[i] for i in idx],
            [stamps[i] for i in idx],
            [futures[i] for i in idx],
            pred_len=4,
            seeds=[100 + i for i in idx],
            **kw,
        ).paths

    for kw in (dict(top_k=1), dict(temperature=1.0, top_k=0, top_p=0.9, sample_count=2)):
        alone = [run([i], **kw)[0] for i in probe]
        five = run([3, 1, 0, 69, 2], **kw)
        every = run(list(range(70)), **kw)
        for i, single in zip(probe, alone, strict=True):
            np.testing.assert_array_equal(five[[3, 1, 0, 69, 2].index(i)], single)
            np.testing.assert_array_equal(every[i], single)

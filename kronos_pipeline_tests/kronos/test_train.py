"""Kronos training: planted pattern learned, LoRA freezes the base, guard, determinism,
save/load round trip. Tiny model configs so the module runs in well under a minute on 2 cores."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_pipeline.kronos import hub
from kronos_pipeline.kronos import lora as lora_mod
from kronos_pipeline.kronos import train as T
from kronos_pipeline.kronos.engine import KronosEngine
from kronos_pipeline.kronos.windows import FEATURE_COLUMNS, WindowSet, cut_windows

TINY_TOKENIZER = dict(
    T.COMPACT_TOKENIZER_CONFIG,
    d_model=32,
    ff_dim=64,
    n_enc_layers=2,
    n_dec_layers=2,
    s1_bits=4,
    s2_bits=4,
)
TINY_PREDICTOR = dict(
    T.COMPACT_PREDICTOR_CONFIG,
    d_model=32,
    ff_dim=64,
    n_layers=2,
    s1_bits=4,
    s2_bits=4,
    ffn_dropout_p=0.0,
    resid_dropout_p=0.0,
)
LOOKBACK, HORIZON = 30, 12
# A deterministic 6-bar candle cycle: close offsets (in units of 2 % of the base price) and
# relative volume per phase.
CLOSE_SHAPE = np.array([0.0, 1.0, 2.5, 1.5, -0.5, -1.5])
VOLUME_SHAPE = np.array([1.0, 1.4, 2.0, 1.2, 0.8, 0.9])


def planted_bars(n_tickers: int = 6, n_bars: int = 400, seed: int = 0) -> pd.DataFrame:
    """Bars whose every ticker repeats the same 6-bar candle shape (own phase and scale)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2001-01-01", periods=n_bars)
    period = len(CLOSE_SHAPE)
    frames = []
    for k in range(n_tickers):
        phase = int(rng.integers(period))
        base = 20.0 + 80.0 * rng.random()
        t = np.arange(n_bars) + phase
        close = base * (1 + 0.02 * CLOSE_SHAPE[t % period])
        opn = base * (1 + 0.02 * CLOSE_SHAPE[(t - 1) % period])
        frames.append(
            pd.DataFrame(
                {
                    "ticker": f"T{k}",
                    "date": dates,
                    "open": opn,
                    "high": np.maximum(opn, close) * 1.004,
                    "low": np.minimum(opn, close) * 0.996,
                    "close": close,
                    "volume": 1e6 * (1 + k) * VOLUME_SHAPE[t % period],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def tiny_cfg(**overrides: object) -> T.TrainConfig:
    base = dict(
        lookback=LOOKBACK,
        horizon=HORIZON,
        val_fraction=0.25,
        epochs=6,
        windows_per_epoch=512,
        max_val_windows=256,
        batch_size=32,
        lr=3e-3,
        patience=3,
        log_every=0,
        seed=0,
    )
    base.update(overrides)
    return T.TrainConfig(**base)


def greedy_forecast(
    tokenizer: torch.nn.Module,
    predictor: torch.nn.Module,
    windows: WindowSet,
    starts: np.ndarray,
    horizon: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy (top_k=1) engine forecasts after the context of each window, in input units.

    Returns ``(forecast, truth)``, both float [len(starts), horizon, 6].
    """
    raw = windows.raw_batch(starts)
    frames, stamps, future = [], [], []
    for row, start in enumerate(starts):
        dates = pd.DatetimeIndex(windows.dates[start : start + windows.window_length])
        frames.append(pd.DataFrame(raw[row, : windows.lookback], columns=list(FEATURE_COLUMNS)))
        stamps.append(dates[: windows.lookback])
        future.append(dates[windows.lookback : windows.lookback + horizon])
    engine = KronosEngine(tokenizer, predictor, device="cpu", batch_size=64)
    result = engine.forecast(frames, stamps, future, pred_len=horizon, top_k=1, top_p=1.0)
    return result.mean(), raw[:, windows.lookback : windows.lookback + horizon]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and other test processes share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return planted_bars()


@pytest.fixture(scope="module")
def windows(bars: pd.DataFrame) -> WindowSet:
    cfg = tiny_cfg()
    return cut_windows(bars, bars["date"].max(), LOOKBACK, HORIZON, cfg.val_fraction)


@pytest.fixture(scope="module")
def trained(windows: WindowSet) -> T.KronosTrainingOutput:
    cfg = tiny_cfg()
    return T.train_kronos(
        windows,
        windows.train_cut,
        cfg,
        cfg,
        tokenizer_config=TINY_TOKENIZER,
        predictor_config=TINY_PREDICTOR,
    )


def test_planted_pattern_is_learned(trained: T.KronosTrainingOutput, windows: WindowSet) -> None:
    tok, pred = trained.tokenizer, trained.predictor
    # Tokenizer: full-code reconstruction MSE (normalised units^2) drops by >= 95 %.
    assert tok.start_val_loss > 0.5
    assert tok.best_val_loss < 0.05 * tok.start_val_loss
    # Predictor: next-token CE starts near chance (ln 16 = 2.77 nats) and ends below 0.1 nats.
    assert pred.start_val_loss > 2.0
    assert pred.best_val_loss < 0.1
    assert pred.history[-1]["val_loss"] < pred.history[1]["val_loss"]

    # Greedy engine forecasts of the held-out windows reproduce the candle cycle.
    starts = windows.val_starts[:: max(1, len(windows.val_starts) // 16)]
    fc, truth = greedy_forecast(tok.model, pred.model, windows, starts, HORIZON)
    close_fc, close_true = fc[..., 3], truth[..., 3]
    base = truth[..., 3].mean(axis=1, keepdims=True)
    # The close swings over 8 % of its base price; the forecast error is under 0.5 %.
    assert np.abs(close_fc - close_true).mean() / base.mean() < 0.005
    assert (np.abs(close_fc - close_true) / base).max() < 0.02
    for row in range(len(starts)):
        assert np.corrcoef(close_fc[row], close_true[row])[0, 1] > 0.95
    # The forecast peaks at the same phase of the 6-bar cycle as the truth, in every window.
    period = len(CLOSE_SHAPE)
    assert (close_fc.argmax(1) % period == close_true.argmax(1) % period).all()


def test_metadata_records_the_run(trained: T.KronosTrainingOutput, windows: WindowSet) -> None:
    meta = trained.predictor.metadata
    assert meta["kind"] == "predictor" and meta["mode"] == "scratch" and meta["accepted"]
    assert meta["seed"] == 0
    assert meta["tickers"] == [f"T{k}" for k in range(6)]
    assert meta["data"]["train_cut"] == windows.train_cut.isoformat()
    assert meta["data"]["train"]["last_date"] < meta["data"]["val_start"]
    assert meta["data"]["val"]["first_date"] >= meta["data"]["val_start"]
    assert meta["losses"]["best_val_loss"] == trained.predictor.best_val_loss
    assert len(meta["losses"]["history"]) == len(trained.predictor.history)
    assert meta["model_config"] == TINY_PREDICTOR
    assert meta["tokenizer"]["config"] == TINY_TOKENIZER
    assert (
        len(meta["code_version"]["git_commit"]) in (40, 7)
        or meta["code_version"]["git_commit"] == "unknown"
    )
    assert meta["tokens_per_s"] > 0


def test_save_then_load_gives_identical_forecasts(
    trained: T.KronosTrainingOutput, windows: WindowSet, tmp_path
) -> None:
    tok_dir, pred_dir = trained.write(tmp_path)
    assert {p.name for p in pred_dir.iterdir()} >= {
        "config.json",
        "model.safetensors",
        T.METADATA_FILENAME,
    }
    assert json.loads((pred_dir / "config.json").read_text()) == TINY_PREDICTOR
    tok2 = hub.load_tokenizer(tok_dir)
    pred2 = hub.load_predictor(pred_dir)
    meta = T.read_training_metadata(pred_dir)
    assert meta["losses"]["best_val_loss"] == trained.predictor.best_val_loss

    starts = windows.val_starts[:8]
    before, _ = greedy_forecast(
        trained.tokenizer.model, trained.predictor.model, windows, starts, HORIZON
    )
    after, _ = greedy_forecast(tok2, pred2, windows, starts, HORIZON)
    np.testing.assert_array_equal(before, after)
    for name, tensor in trained.predictor.model.state_dict().items():
        assert torch.equal(tensor, pred2.state_dict()[name]), name

    # Fine-tuning can start from checkpoint directories (loaded by the engine's hub loader).
    res = T.fine_tune(
        windows,
        pred_dir,
        tiny_cfg(mode="lora", epochs=1, windows_per_epoch=32),
        tokenizer=str(tok_dir),
    )
    assert res.metadata["init"] == str(pred_dir)
    assert res.metadata["tokenizer"]["source"] == str(tok_dir)
    assert res.start_val_loss == pytest.approx(trained.predictor.best_val_loss, rel=1e-6)


def test_same_seed_gives_bit_identical_weights(windows: WindowSet) -> None:
    cfg = tiny_cfg(epochs=1, windows_per_epoch=128)
    a = T.train_tokenizer(windows, cfg, config=TINY_TOKENIZER)
    b = T.train_tokenizer(windows, cfg, config=TINY_TOKENIZER)
    c = T.train_tokenizer(windows, dataclasses.replace(cfg, seed=1), config=TINY_TOKENIZER)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize(
    "targets",
    [lora_mod.DEFAULT_TARGET_MODULES, ("q_proj", "v_proj")],  # the second: settings' default
    ids=["qkvo", "qv"],
)
def test_lora_trains_only_adapter_weights(
    trained: T.KronosTrainingOutput, windows: WindowSet, tmp_path, targets: tuple[str, ...]
) -> None:
    start = trained.predictor.model
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    cfg = tiny_cfg(
        mode="lora", epochs=2, lr=1e-3, lora_rank=4, lora_alpha=8.0, patience=5,
        lora_target_modules=targets,
    )  # fmt: skip
    res = T.fine_tune(windows, start, cfg, tokenizer=trained.tokenizer.model)
    assert res.accepted, res.metadata["guard_reason"]
    assert lora_mod.is_lora(res.model)
    # Base weights bit-identical; the caller's module untouched.
    base_after = lora_mod.base_state_dict(res.model)
    assert base_after.keys() == start_state.keys()
    for name, tensor in start_state.items():
        assert torch.equal(base_after[name], tensor), name
        assert torch.equal(start.state_dict()[name], tensor), name
    trainable = [n for n, p in res.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora_b = [p for n, p in res.model.named_parameters() if "lora_B" in n]
    assert any(bool(p.abs().sum() > 0) for p in lora_b)  # the adapters did move
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == set(targets)
    # Every attention block got adapters: the self-attention of each layer and the
    # dependency layer's cross-attention.
    blocks = {n.split(".lora_")[0].rsplit(".", 1)[0] for n in trainable}
    assert len(blocks) == TINY_PREDICTOR["n_layers"] + 1

    # Adapter saved and loaded on its own; merge gives a plain model with the same outputs.
    adapter_dir = lora_mod.save_adapter(res.model, tmp_path / "adapter")
    assert (adapter_dir / "adapter_model.safetensors").exists()
    reloaded = lora_mod.load_adapter(start, adapter_dir)
    merged = lora_mod.load_adapter(start, adapter_dir, merge=True)
    assert not lora_mod.is_lora(merged)
    assert merged.state_dict().keys() == start_state.keys()
    x, stamps = windows.batch(windows.val_starts[:4])
    with torch.no_grad():
        s1, s2 = trained.tokenizer.model.encode(torch.from_numpy(x), half=True)
        st = torch.from_numpy(stamps)
        ref = res.model.decode_s1(s1, s2, st)[0]
        assert torch.equal(reloaded.decode_s1(s1, s2, st)[0], ref)
        assert torch.allclose(merged.decode_s1(s1, s2, st)[0], ref, atol=1e-4)
        assert not torch.allclose(start.decode_s1(s1, s2, st)[0], ref, atol=1e-4)

    # The written checkpoint holds the merged weights and loads in the engine.
    out = T.write_trained_checkpoint(res, tmp_path / "ckpt")
    loaded = hub.load_predictor(out)
    assert (out / "adapter" / "adapter_config.json").exists()
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(loaded.state_dict()[name], tensor, atol=1e-6), name


def test_regression_guard_keeps_the_start(
    trained: T.KronosTrainingOutput, windows: WindowSet, tmp_path
) -> None:
    start = trained.predictor.model
    # A learning rate this large wrecks a converged model: the guard must refuse the result.
    cfg = tiny_cfg(mode="full", epochs=1, windows_per_epoch=64, lr=5.0, warmup_fraction=0.0)
    res = T.fine_tune(windows, start, cfg, tokenizer=trained.tokenizer.model)
    assert res.best_val_loss > res.start_val_loss
    assert not res.accepted
    assert "worse than the starting checkpoint" in res.metadata["guard_reason"]
    assert res.metadata["accepted"] is False
    for name, tensor in start.state_dict().items():
        assert torch.equal(res.model.state_dict()[name], tensor), name
    out = T.write_trained_checkpoint(res, tmp_path / "guarded")
    assert T.read_training_metadata(out)["guard_reason"] == res.metadata["guard_reason"]
    assert torch.equal(hub.load_predictor(out).head.proj_s1.weight, start.head.proj_s1.weight)


def test_full_fine_tune_is_accepted_when_it_helps(windows: WindowSet, trained) -> None:
    # Start from a briefly trained tokenizer; more training on the same data must not hurt.
    start = T.train_tokenizer(
        windows, tiny_cfg(epochs=1, windows_per_epoch=64), config=TINY_TOKENIZER
    ).model
    res = T.fine_tune(windows, start, tiny_cfg(mode="full", epochs=2), kind="tokenizer")
    assert res.accepted and res.metadata["guard_reason"] is None
    assert res.best_val_loss <= res.start_val_loss
    assert res.metadata["init"].startswith("module:")


def test_early_stopping_and_time_budget(windows: WindowSet) -> None:
    # min_delta this large means no epoch after the first counts as an improvement.
    cfg = tiny_cfg(epochs=10, windows_per_epoch=64, patience=2, min_delta=1e9)
    res = T.train_tokenizer(windows, cfg, config=TINY_TOKENIZER)
    assert res.metadata["stopped_by"] == "early_stopping"
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert res.best_val_loss == res.history[1]["val_loss"]

    budget = tiny_cfg(epochs=10, max_minutes=1e-6)
    res = T.train_tokenizer(windows, budget, config=TINY_TOKENIZER)
    assert res.metadata["stopped_by"] == "time_budget"
    assert res.metadata["steps"] == 1 and len(res.history) == 2


def test_modes_reject_bad_inputs(windows: WindowSet, trained) -> None:
    with pytest.raises(ValueError, match="takes no init"):
        T.train_tokenizer(windows, tiny_cfg(), init=trained.tokenizer.model)
    with pytest.raises(ValueError, match="needs init"):
        T.train_tokenizer(windows, tiny_cfg(mode="full"))
    with pytest.raises(ValueError, match="bits"):
        T.train_predictor(
            windows,
            trained.tokenizer.model,
            tiny_cfg(epochs=1),
            config=dict(TINY_PREDICTOR, s1_bits=5, s2_bits=5),
        )
    too_short = cut_windows(planted_bars(n_bars=100), "2001-05-18", LOOKBACK, HORIZON, 0.05)
    assert len(too_short.val_starts) == 0
    with pytest.raises(ValueError, match="no validation windows"):
        T.train_tokenizer(too_short, tiny_cfg(), config=TINY_TOKENIZER)


def test_caller_models_are_not_modified(trained: T.KronosTrainingOutput, windows) -> None:
    tok = trained.tokenizer.model
    before = copy.deepcopy(tok.state_dict())
    T.train_predictor(windows, tok, tiny_cfg(epochs=1, windows_per_epoch=32), config=TINY_PREDICTOR)
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())


def test_lora_on_tokenizer_with_trained_head(trained: T.KronosTrainingOutput, windows) -> None:
    start = trained.tokenizer.model
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    cfg = tiny_cfg(
        mode="lora", epochs=1, windows_per_epoch=64, lr=1e-3, lora_modules_to_save=("head",)
    )
    wrapped = lora_mod.apply_lora(
        start, rank=2, alpha=4.0, target_modules=cfg.lora_target_modules, modules_to_save=("head",)
    )
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".modules_to_save." in n for n in trainable)
    assert any(".head.modules_to_save." in n for n in trainable)

    res = T.fine_tune(windows, start, cfg, kind="tokenizer")
    assert res.metadata["lora"]["modules_to_save"] == ["head"]
    assert res.accepted and res.best_val_loss <= res.start_val_loss
    base_after = lora_mod.base_state_dict(res.model)
    assert all(torch.equal(base_after[k], v) for k, v in start_state.items())
    merged = T.plain_model(res.model)
    assert merged.state_dict().keys() == start_state.keys()
    assert not torch.equal(merged.head.weight, start_state["head.weight"])
    assert all(torch.equal(start.state_dict()[k], v) for k, v in start_state.items())


def test_bars_after_the_cut_never_reach_training(bars: pd.DataFrame) -> None:
    """Poisoned bars after the cut (polars input) give bit-identical weights to clean data."""
    import polars as pl

    cut = bars["date"].sort_values().unique()[300]
    clean = bars[bars["date"] <= cut]
    poisoned = bars.copy()
    after = poisoned["date"] > cut
    poisoned.loc[after, ["open", "high", "low", "close"]] *= 1000.0
    poisoned.loc[after, "volume"] = np.nan
    cfg = tiny_cfg(epochs=1, windows_per_epoch=64)
    a = T.train_tokenizer(clean, cfg, train_cut=cut, config=TINY_TOKENIZER)
    b = T.train_tokenizer(pl.from_pandas(poisoned), cfg, train_cut=cut, config=TINY_TOKENIZER)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert a.history[-1]["val_loss"] == b.history[-1]["val_loss"]
    assert b.metadata["data"]["val"]["last_date"] <= str(pd.Timestamp(cut).date())

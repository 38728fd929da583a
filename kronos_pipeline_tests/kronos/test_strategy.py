"""Checkpoint strategies per refit period: pinned hub revisions in settings, fine-tuning that
learns a planted pattern without touching the published weights, and the regression guard.

Tiny models on a planted market, "published" weights laid into an offline Hugging Face cache;
the module runs in well under a minute on 2 cores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_pipeline.data.calendar import trading_days
from kronos_pipeline.kronos import hub, scoring
from kronos_pipeline.kronos import strategy as S
from kronos_pipeline.kronos import train as T
from kronos_pipeline.kronos.predictor import Kronos
from kronos_pipeline.settings import KronosSettings, SettingsError, load_settings
from kronos_pipeline_tests.kronos.conftest import lay_into_hf_cache

SHA = "4f1c0b7e9d2a6c3b8e5f0a1d7c9b2e4f6a8d0c1b"

# --------------------------------------------------------------------------------------
# Settings: a hub checkpoint must be pinned to a commit
# --------------------------------------------------------------------------------------


def _error(environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(environ=environ)
    return str(info.value)


def test_default_settings_load_without_a_revision():
    k = load_settings(environ={}).kronos
    assert k.strategy == "scratch"
    assert k.predictor_revision is None and k.tokenizer_revision is None
    assert (k.finetune_mode, k.lora_r, k.lora_alpha) == ("lora", 8, 16)
    assert k.lora_targets == ("q_proj", "v_proj")
    assert (k.accept_min_ic_gain, k.validation_sessions) == (0.01, 252)


@pytest.mark.parametrize("strategy", ["published", "finetune"])
@pytest.mark.parametrize("revision", [None, "main", "v1.0", "0123abcd", SHA.upper()])
def test_a_hub_checkpoint_without_a_commit_sha_is_refused(strategy, revision):
    env = {"KRONOS_KRONOS__STRATEGY": strategy, "KRONOS_KRONOS__TOKENIZER_REVISION": SHA}
    if revision is not None:
        env["KRONOS_KRONOS__PREDICTOR_REVISION"] = revision
    message = _error(env)
    assert "predictor 'NeoQuasar/Kronos-small' is not an existing local directory" in message
    assert f"strategy '{strategy}' reads it as a hub repo id" in message
    got = "no revision" if revision is None else f"revision '{revision}' (not a commit sha)"
    assert got in message
    assert "KRONOS_KRONOS__PREDICTOR_REVISION=<40-hex commit sha>" in message
    assert "https://huggingface.co/NeoQuasar/Kronos-small/commits/main" in message
    assert "branch and tag names can move" in message
    assert "Kronos-Tokenizer-base" not in message  # the tokenizer is pinned


def test_both_unpinned_checkpoints_are_named_at_once():
    message = _error({"KRONOS_KRONOS__STRATEGY": "finetune"})
    assert "predictor 'NeoQuasar/Kronos-small'" in message
    assert "tokenizer 'NeoQuasar/Kronos-Tokenizer-base'" in message
    assert "KRONOS_KRONOS__TOKENIZER_REVISION=<40-hex commit sha>" in message


def test_pinned_shas_local_directories_and_scratch_need_nothing_more(tmp_path):
    pinned = {"KRONOS_KRONOS__PREDICTOR_REVISION": SHA, "KRONOS_KRONOS__TOKENIZER_REVISION": SHA}
    assert load_settings(environ={"KRONOS_KRONOS__STRATEGY": "published", **pinned})
    (tmp_path / "pred").mkdir()
    (tmp_path / "tok").mkdir()
    local = {"KRONOS_KRONOS__PREDICTOR": str(tmp_path / "pred")}
    local["KRONOS_KRONOS__TOKENIZER"] = str(tmp_path / "tok")
    assert load_settings(environ={"KRONOS_KRONOS__STRATEGY": "finetune", **local})
    k = load_settings(environ={"KRONOS_KRONOS__PREDICTOR_REVISION": "main"}).kronos
    assert k.strategy == "scratch"  # scratch never reads the hub


# --------------------------------------------------------------------------------------
# A planted market and "published" weights that never saw it
# --------------------------------------------------------------------------------------

CLOSE_SHAPE = np.array([0.0, 1.0, 2.5, 1.5, -0.5, -1.5])
VOLUME_SHAPE = np.array([1.0, 1.4, 2.0, 1.2, 0.8, 0.9])
TINY_TOKENIZER = dict(T.COMPACT_TOKENIZER_CONFIG, d_model=32, ff_dim=64, s1_bits=4, s2_bits=4)
TINY_PREDICTOR = dict(
    T.COMPACT_PREDICTOR_CONFIG, d_model=32, ff_dim=64, n_layers=2, s1_bits=4, s2_bits=4
)
HORIZONS = (2, 3)
PREDICTOR_REPO, TOKENIZER_REPO = "acme/Kronos-planted", "acme/Kronos-Tokenizer-planted"


def planted_bars(n_tickers: int = 12, n_sessions: int = 360, seed: int = 0) -> pd.DataFrame:
    """Every ticker repeats one 6-session candle cycle in step, with its own amplitude (1-6 %)
    and sign: the h-day return of each ticker is known from the cycle, and the cross-section
    is ranked by amplitude times the cycle's move."""
    rng = np.random.default_rng(seed)
    dates = trading_days("2015-01-02", "2017-12-29")[:n_sessions]
    t = np.arange(n_sessions)
    frames = []
    for k in range(n_tickers):
        amplitude = 0.01 * (1 + k // 2) * (1 if k % 2 == 0 else -1)
        base = 20.0 + 80.0 * rng.random()
        close = base * (1 + amplitude * CLOSE_SHAPE[t % 6])
        opn = base * (1 + amplitude * CLOSE_SHAPE[(t - 1) % 6])
        frames.append(
            pd.DataFrame(
                {
                    "ticker": f"T{k:02d}",
                    "date": dates,
                    "open": opn,
                    "high": np.maximum(opn, close) * 1.004,
                    "low": np.minimum(opn, close) * 0.996,
                    "close": close,
                    "volume": 1e6 * (1 + k) * VOLUME_SHAPE[t % 6],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return planted_bars()


@pytest.fixture(scope="module")
def cut(bars: pd.DataFrame):
    return bars["date"].max().date()


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory, bars, cut) -> Path:
    """Offline hub cache holding the "published" tokenizer (a codec trained on candles) and
    predictor (randomly initialised: it never saw the pattern) at commit ``SHA``."""
    root = tmp_path_factory.mktemp("published")
    cfg = T.TrainConfig(
        lookback=30, horizon=12, val_fraction=0.25, epochs=4, windows_per_epoch=512,
        max_val_windows=128, batch_size=32, lr=3e-3, log_every=0,
    )  # fmt: skip
    tokenizer = T.train_tokenizer(bars, cfg, train_cut=cut, config=TINY_TOKENIZER).model
    torch.manual_seed(1)
    hub.save_checkpoint(tokenizer, root / "tok")
    hub.save_checkpoint(Kronos(**TINY_PREDICTOR), root / "pred")
    cache = root / "hf" / "hub"
    lay_into_hf_cache(root / "pred", cache, PREDICTOR_REPO, SHA)
    lay_into_hf_cache(root / "tok", cache, TOKENIZER_REPO, SHA)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(root / "hf"))
        mp.setenv("HF_HUB_CACHE", str(cache))
        yield cache


def tiny_settings(**overrides) -> KronosSettings:
    values = dict(
        strategy="finetune", predictor=PREDICTOR_REPO, predictor_revision=SHA,
        tokenizer=TOKENIZER_REPO, tokenizer_revision=SHA, lookback=30, max_context=64,
        device="cpu", batch_size=64, train_horizon=12, train_stride=1, train_epochs=4,
        train_windows_per_epoch=512, train_batch_size=32, train_max_minutes=2.0,
        finetune_lr=1e-2, validation_sessions=40, validation_stride=2,
        sample_count=1, top_k=1, top_p=1.0,  # greedy: the guard decodes as the scores do
    )  # fmt: skip
    values.update(overrides)
    return KronosSettings(**values)


def _published_weights(cache: Path) -> Path:
    return hub.resolve_checkpoint_dir(PREDICTOR_REPO, SHA) / hub.WEIGHTS_NAME


@pytest.fixture(scope="module")
def published_sha(hf_cache) -> str:
    return hub.file_sha256(_published_weights(hf_cache))


@pytest.fixture(scope="module")
def start_manifest(hf_cache, bars, cut, tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("period_published")
    return S.fit_period_checkpoint("published", bars, cut, directory, tiny_settings(), None)


@pytest.fixture(scope="module")
def first(hf_cache, published_sha, bars, cut, tmp_path_factory) -> dict:
    """The first fine-tuned period: no previous checkpoint, so it starts from the published."""
    directory = tmp_path_factory.mktemp("period_first")
    return S.fit_period_checkpoint(
        "finetune", bars, cut, directory, tiny_settings(), None, horizons=HORIZONS
    )


def _figures_of(manifest: dict, bars, cut) -> dict:
    tokenizer = hub.load_tokenizer(manifest["tokenizer"], revision=manifest["tokenizer_revision"])
    predictor = hub.load_predictor(manifest["predictor"], revision=manifest["predictor_revision"])
    return S.validation_figures(tokenizer, predictor, bars, cut, HORIZONS, tiny_settings())


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------


def test_published_manifest_points_at_the_pinned_hub_weights(start_manifest, published_sha, cut):
    m = start_manifest
    assert (m["kind"], m["strategy"], m["model"]) == ("zero_shot", "published", "kronos_zero_shot")
    assert (m["predictor"], m["predictor_revision"]) == (PREDICTOR_REPO, SHA)
    assert (m["tokenizer"], m["tokenizer_revision"]) == (TOKENIZER_REPO, SHA)
    assert m["predictor_sha256"] == published_sha
    assert m["train_cut"] == str(cut) and m["last_bar"] == m["pretrain_cutoff"] == "2024-06-30"


def test_fine_tuning_learns_the_planted_pattern_and_leaves_the_published_weights(
    first, start_manifest, published_sha, hf_cache, bars, cut
):
    assert first["kind"] == "finetune" and first["model"] == S.FINETUNE_MODEL
    assert first["decision"]["accepted"] and first["decision"]["previous"] is None
    assert first["start"] == {
        "from": "published", "predictor": PREDICTOR_REPO, "predictor_revision": SHA
    }  # fmt: skip
    assert first["pretrain_cutoff"] == "2024-06-30"  # descended from the published weights
    # Next-token cross-entropy on held-out windows: near chance (ln 16 = 2.8 nats) -> < 1.
    assert first["predictor_start_val_loss"] > 2.5
    assert first["predictor_val_loss"] < 0.4 * first["predictor_start_val_loss"]
    # Forecasts on the validation block: the published model does not know the cycle, the
    # fine-tuned one does (error 5x smaller, ranking exact).
    new, published = first["decision"]["new"], _figures_of(start_manifest, bars, cut)
    assert new == _figures_of(first, bars, cut)  # the written weights are the judged ones
    assert new["mae"] < 0.3 * published["mae"]
    assert new["rank_ic"] > 0.99 and new["rank_ic"] > published["rank_ic"] + 0.05
    # LoRA on q/v only; the published file is bit-for-bit what it was.
    assert first["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert (first["lora"]["rank"], first["lora"]["alpha"]) == (8, 16.0)
    assert hub.file_sha256(_published_weights(hf_cache)) == published_sha
    # The fine-tuned weights: written in the published layout under the period's folder.
    pred_dir = Path(first["predictor"])
    assert pred_dir.name == S.PREDICTOR_DIR and first["predictor_revision"] is None
    assert {"config.json", "model.safetensors", hub.MANIFEST_NAME} <= {
        p.name for p in pred_dir.iterdir()
    }
    assert json.loads((pred_dir / "config.json").read_text()) == TINY_PREDICTOR
    assert first["predictor_sha256"] == hub.file_sha256(pred_dir / hub.WEIGHTS_NAME)
    assert scoring.read_manifest(pred_dir.parent) == json.loads(json.dumps(first))
    assert not [p for p in pred_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # Training windows end before the validation block; nothing after the cut.
    assert first["windows"]["train"]["last_date"] < new["block_start"]
    assert new["block_end"] == str(cut) and first["last_bar"] == str(cut)


def test_validation_block_is_the_last_sessions_and_outcomes_end_at_the_cut(first, bars, cut):
    new = first["decision"]["new"]
    sessions = np.sort(bars["date"].unique())
    assert new["block_start"] == str(pd.Timestamp(sessions[-40]).date())
    # 40 sessions, every 2nd from the first, with 3 sessions of outcome inside the block.
    assert new["forecast_dates"] == 19 and new["series"] == 19 * 12
    assert {h: v["dates"] for h, v in new["by_horizon"].items()} == {"2": 19, "3": 19}
    later = bars.assign(date=bars["date"] + pd.Timedelta(days=1))
    with pytest.raises(ValueError, match="dated after the cut"):
        S.fit_period_checkpoint("finetune", later, cut, Path("unused"), tiny_settings(), first)


def test_the_guard_accepts_a_better_checkpoint_over_the_published_one(
    start_manifest, bars, cut, tmp_path
):
    m = S.fit_period_checkpoint(
        "finetune", bars, cut, tmp_path, tiny_settings(), start_manifest, horizons=HORIZONS
    )
    d = m["decision"]
    assert d["accepted"] and d["loss_guard_accepted"]
    assert d["new"]["rank_ic"] >= d["previous"]["rank_ic"] + 0.01
    assert d["new"]["mae"] <= d["previous"]["mae"]
    assert d["previous"] == _figures_of(start_manifest, bars, cut)
    assert f"previous RankIC {d['previous']['rank_ic']:.4f}" in d["reason"]
    assert m["predictor"] == str(tmp_path / S.PREDICTOR_DIR)


def test_the_guard_keeps_the_previous_checkpoint_when_the_gain_is_too_small(
    first, bars, cut, tmp_path
):
    # The previous checkpoint already ranks perfectly: no run can gain 0.5 RankIC over it.
    settings = tiny_settings(accept_min_ic_gain=0.5, train_epochs=1)
    (tmp_path / S.PREDICTOR_DIR).mkdir()  # weights an earlier run of this period accepted
    m = S.fit_period_checkpoint("finetune", bars, cut, tmp_path, settings, first, horizons=HORIZONS)
    d = m["decision"]
    assert not d["accepted"] and d["loss_guard_accepted"]
    assert d["reason"].startswith("rejected: RankIC gain")
    assert f"new RankIC {d['new']['rank_ic']:.4f}" in d["reason"]
    assert f"previous RankIC {d['previous']['rank_ic']:.4f}" in d["reason"]
    assert d["previous"] == first["decision"]["new"]  # same block, same weights
    assert m["start"]["from"] == "previous"
    assert (m["predictor"], m["predictor_sha256"]) == (
        first["predictor"],
        first["predictor_sha256"],
    )
    assert m["tokenizer"] == first["tokenizer"]
    assert not (tmp_path / S.PREDICTOR_DIR).exists()
    assert scoring.read_manifest(tmp_path)["decision"]["reason"] == d["reason"]
    S.verify_pointed_weights(m)
    with pytest.raises(hub.KronosCheckpointError, match="changed since this manifest"):
        S.verify_pointed_weights({**m, "predictor_sha256": "0" * 64})


def test_a_run_the_training_loop_rejects_keeps_the_previous_checkpoint(first, bars, cut, tmp_path):
    # A learning rate this large wrecks the converged model; its validation loss gets worse.
    settings = tiny_settings(
        finetune_mode="full", finetune_lr=5.0, train_epochs=1, train_windows_per_epoch=64
    )
    m = S.fit_period_checkpoint("finetune", bars, cut, tmp_path, settings, first, horizons=HORIZONS)
    d = m["decision"]
    assert not d["accepted"] and not d["loss_guard_accepted"]
    assert "rejected by the training loop's guard" in d["reason"]
    assert "worse than the starting checkpoint" in d["reason"]
    assert m["predictor_val_loss"] > m["predictor_start_val_loss"]
    assert m["predictor"] == first["predictor"] and m["lora"] is None


@pytest.mark.parametrize(
    ("new", "previous", "accepted", "why"),
    [
        ({"rank_ic": 0.05, "mae": 0.030}, None, True, "no previous checkpoint"),
        ({"rank_ic": 0.05, "mae": 0.030}, {"rank_ic": 0.03, "mae": 0.031}, True, "MAE not worse"),
        ({"rank_ic": 0.04, "mae": 0.030}, {"rank_ic": 0.03, "mae": 0.030}, True, "gain >= 0.01"),
        ({"rank_ic": 0.035, "mae": 0.030}, {"rank_ic": 0.03, "mae": 0.031}, False, "+0.0050 < 0.0100"),
        ({"rank_ic": 0.06, "mae": 0.032}, {"rank_ic": 0.03, "mae": 0.031}, False, "MAE worse by 0.00100"),
        ({"rank_ic": 0.01, "mae": 0.040}, {"rank_ic": 0.03, "mae": 0.031}, False, "RankIC gain -0.0200"),
        ({"rank_ic": math.nan, "mae": 0.03}, {"rank_ic": 0.03, "mae": 0.031}, False, "could not be computed"),
    ],
)  # fmt: skip
def test_accept_decision_needs_the_ic_gain_and_no_worse_mae(new, previous, accepted, why):
    ok, reason = S.accept_decision(new, previous, 0.01)
    assert ok is accepted
    assert why in reason
    assert reason.startswith("accepted" if accepted else "rejected")
    assert f"new RankIC {new['rank_ic']:.4f}, MAE {new['mae']:.5f}" in reason
    if previous is not None:
        assert f"previous RankIC {previous['rank_ic']:.4f}, MAE {previous['mae']:.5f}" in reason


def test_strategy_model_names_are_fixed_per_strategy():
    assert [S.strategy_model_name(s) for s in S.STRATEGIES] == [
        "kronos_zero_shot", "kronos_walkforward", "kronos_finetune"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown strategy"):
        S.strategy_model_name("distilled")


def test_sampled_figures_are_reproducible(first, bars, cut):
    # With sampled paths (the scores' default decoding) every series draws from its own seed,
    # so a rerun, and the other model of a comparison, meet the same random numbers.
    settings = tiny_settings(sample_count=2, top_k=0, top_p=0.9)
    tokenizer = hub.load_tokenizer(first["tokenizer"], revision=first["tokenizer_revision"])
    predictor = hub.load_predictor(first["predictor"])
    a = S.validation_figures(tokenizer, predictor, bars, cut, HORIZONS, settings)
    b = S.validation_figures(tokenizer, predictor, bars, cut, HORIZONS, settings)
    assert a == b
    assert a["mae"] != first["decision"]["new"]["mae"]  # sampled, not the greedy path

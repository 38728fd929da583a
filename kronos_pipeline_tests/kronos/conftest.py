"""Fixtures for the Kronos library tests: model shapes, paired reference/own models, bars."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_pipeline.kronos import Kronos, KronosTokenizer
from kronos_pipeline.kronos.hub import file_sha256

# Published shapes. Kronos-mini's exact shape is not published in the reference package;
# "mini" below is a Kronos-mini-*shaped* model (4.1M-parameter class) as used in the issue.
TOKENIZER_BASE = dict(
    d_in=6,
    d_model=256,
    n_heads=4,
    ff_dim=512,
    n_enc_layers=4,
    n_dec_layers=4,
    ffn_dropout_p=0.0,
    attn_dropout_p=0.0,
    resid_dropout_p=0.0,
    s1_bits=10,
    s2_bits=10,
    beta=0.05,
    gamma0=1.0,
    gamma=1.1,
    zeta=0.05,
    group_size=4,
)
TOKENIZER_2K = dict(TOKENIZER_BASE)
KRONOS_SMALL = dict(
    s1_bits=10,
    s2_bits=10,
    n_layers=8,
    d_model=512,
    n_heads=8,
    ff_dim=1024,
    ffn_dropout_p=0.0,
    attn_dropout_p=0.0,
    resid_dropout_p=0.0,
    token_dropout_p=0.0,
    learn_te=True,
)
KRONOS_MINI = dict(KRONOS_SMALL, n_layers=4, d_model=256, n_heads=4, ff_dim=512)
KRONOS_BASE = dict(KRONOS_SMALL, n_layers=12, d_model=832, n_heads=16, ff_dim=2048)

TINY_TOKENIZER = dict(
    TOKENIZER_BASE, d_model=32, n_heads=2, ff_dim=64, n_enc_layers=2, n_dec_layers=3
)
TINY_TOKENIZER.update(s1_bits=4, s2_bits=4)
TINY_KRONOS = dict(KRONOS_SMALL, s1_bits=4, s2_bits=4, n_layers=2, d_model=32, n_heads=2, ff_dim=64)
SMALLISH_TOKENIZER = dict(TOKENIZER_BASE, d_model=64, n_heads=4, ff_dim=128, n_enc_layers=3)
SMALLISH_TOKENIZER.update(n_dec_layers=3, s1_bits=6, s2_bits=6)
SMALLISH_KRONOS = dict(
    KRONOS_SMALL, s1_bits=6, s2_bits=6, n_layers=3, d_model=96, n_heads=6, ff_dim=160
)
SMALLISH_KRONOS_FIXED_TE = dict(SMALLISH_KRONOS, learn_te=False)


def lay_into_hf_cache(
    checkpoint: Path,
    cache: Path,
    repo_id: str,
    commit: str,
    files=("config.json", "model.safetensors"),
) -> Path:
    """``<cache>/models--<org>--<name>/{blobs/<sha256>, snapshots/<commit>/<file> -> blob,
    refs/main}``: the files a download leaves, published layout (no manifest of ours)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        digest = file_sha256(checkpoint / name)
        (repo / "blobs" / digest).write_bytes((checkpoint / name).read_bytes())
        (snapshot / name).symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@dataclass
class ModelPair:
    """Reference and own models holding identical random weights (eval mode)."""

    ref_tokenizer: torch.nn.Module
    ref_predictor: torch.nn.Module
    tokenizer: KronosTokenizer
    predictor: Kronos


def make_pair(tok_cfg: dict, pred_cfg: dict, seed: int = 0) -> ModelPair:
    """Random reference models of the given shapes and own models with the same weights."""
    from kronos_finance._vendor.kronos_model import Kronos as RefKronos
    from kronos_finance._vendor.kronos_model import KronosTokenizer as RefTokenizer

    torch.manual_seed(seed)
    ref_tok = RefTokenizer(**tok_cfg).eval()
    ref_pred = RefKronos(**pred_cfg).eval()
    tok = KronosTokenizer(**tok_cfg)
    tok.load_state_dict(ref_tok.state_dict(), strict=True)
    pred = Kronos(**pred_cfg)
    pred.load_state_dict(ref_pred.state_dict(), strict=True)
    return ModelPair(ref_tok, ref_pred, tok.eval(), pred.eval())


def make_bars(
    n: int, lookback: int, pred_len: int, seed: int = 0, with_amount: bool = False
) -> tuple[list[pd.DataFrame], list[pd.DatetimeIndex], list[pd.DatetimeIndex]]:
    """``n`` random-walk OHLCV windows with business-day timestamps and future stamps."""
    rng = np.random.default_rng(seed)
    windows, stamps, futures = [], [], []
    for _ in range(n):
        close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, lookback)))
        opened = close * np.exp(rng.normal(0.0, 0.01, lookback))
        df = pd.DataFrame(
            {
                "open": opened,
                "high": np.maximum(opened, close) * (1 + rng.uniform(0, 0.02, lookback)),
                "low": np.minimum(opened, close) * (1 - rng.uniform(0, 0.02, lookback)),
                "close": close,
                "volume": rng.lognormal(12.0, 0.8, lookback),
            }
        )
        if with_amount:
            df["amount"] = df["volume"] * df["close"] * rng.uniform(0.98, 1.02, lookback)
        start = pd.Timestamp("2018-01-02") + pd.Timedelta(days=int(rng.integers(0, 400)))
        ts = pd.bdate_range(start, periods=lookback + pred_len)
        windows.append(df)
        stamps.append(ts[:lookback])
        futures.append(ts[lookback:])
    return windows, stamps, futures


@pytest.fixture(scope="session")
def smallish_pair() -> ModelPair:
    """Reference/own pair of a small shape (fast)."""
    return make_pair(SMALLISH_TOKENIZER, SMALLISH_KRONOS, seed=1)


@pytest.fixture(scope="session")
def tiny_models() -> tuple[KronosTokenizer, Kronos]:
    """Own tokenizer and predictor of a tiny shape (for property tests)."""
    torch.manual_seed(3)
    return KronosTokenizer(**TINY_TOKENIZER).eval(), Kronos(**TINY_KRONOS).eval()


@pytest.fixture(scope="session")
def small_pair() -> ModelPair:
    """Reference/own pair with the real Kronos-small + Tokenizer-base shapes."""
    return make_pair(TOKENIZER_BASE, KRONOS_SMALL, seed=2)


@pytest.fixture(scope="session")
def mini_pair() -> ModelPair:
    """Reference/own pair with Kronos-mini + Tokenizer-2k shapes."""
    return make_pair(TOKENIZER_2K, KRONOS_MINI, seed=4)

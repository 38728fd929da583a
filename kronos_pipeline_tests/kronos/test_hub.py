"""Checkpoint loading/saving in the published layout, and its error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kronos_pipeline.kronos import (
    Kronos,
    KronosCheckpointError,
    KronosTokenizer,
    load_predictor,
    load_tokenizer,
    save_checkpoint,
)
from kronos_pipeline.kronos.hub import MANIFEST_NAME
from kronos_pipeline_tests.kronos.conftest import (
    SMALLISH_KRONOS,
    SMALLISH_TOKENIZER,
    lay_into_hf_cache,
    make_pair,
)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reference_checkpoint_directory_loads_unchanged(tmp_path: Path) -> None:
    pair = make_pair(SMALLISH_TOKENIZER, SMALLISH_KRONOS, seed=8)
    # The reference's own save_pretrained writes the published layout.
    pair.ref_tokenizer.save_pretrained(tmp_path / "tok")
    pair.ref_predictor.save_pretrained(tmp_path / "pred")
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "pred"))
    tok = load_tokenizer(tmp_path / "tok")
    pred = load_predictor(str(tmp_path / "pred"), device="cpu")
    assert isinstance(tok, KronosTokenizer) and isinstance(pred, Kronos)
    assert not pred.training
    assert _same_state(tok, pair.ref_tokenizer)
    assert _same_state(pred, pair.ref_predictor)


def test_save_checkpoint_round_trip_and_reference_reads_it(tmp_path: Path) -> None:
    from kronos_finance._vendor.kronos_model import Kronos as RefKronos

    torch.manual_seed(0)
    model = Kronos(**SMALLISH_KRONOS)
    out = save_checkpoint(model, tmp_path / "ckpt", extra_metadata={"run": "test"})
    config = json.loads((out / "config.json").read_text())
    assert config == SMALLISH_KRONOS
    assert _same_state(load_predictor(out), model)
    assert _same_state(RefKronos.from_pretrained(str(out)), model)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "run": "test"}


def test_corrupt_weights_give_one_clear_error(tmp_path: Path) -> None:
    save_checkpoint(Kronos(**SMALLISH_KRONOS), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    # A checkpoint we wrote: its manifest's hash catches the change before anything loads.
    with pytest.raises(KronosCheckpointError, match="does not match the sha256 recorded"):
        load_predictor(tmp_path)
    # A published checkpoint has no manifest: the safetensors reader still fails clearly.
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(KronosCheckpointError, match="not a readable safetensors file"):
        load_predictor(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(KronosCheckpointError, match="not a readable safetensors file"):
        load_predictor(tmp_path)


def test_wrong_shapes_give_one_clear_error(tmp_path: Path) -> None:
    save_checkpoint(Kronos(**dict(SMALLISH_KRONOS, d_model=48)), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(SMALLISH_KRONOS))
    with pytest.raises(KronosCheckpointError, match="config.json does not match the sha256"):
        load_predictor(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()  # as a published checkpoint: no manifest
    with pytest.raises(KronosCheckpointError, match="wrong shape") as info:
        load_predictor(tmp_path)
    assert "embedding.emb_s1.weight" in str(info.value)
    # A tokenizer checkpoint handed to the predictor loader.
    save_checkpoint(KronosTokenizer(**SMALLISH_TOKENIZER), tmp_path / "tok")
    with pytest.raises(KronosCheckpointError, match="lacks the fields"):
        load_predictor(tmp_path / "tok")


def test_missing_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KronosCheckpointError, match="has no model.safetensors"):
        load_tokenizer(tmp_path)
    with pytest.raises(KronosCheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "nope" / "deeper")


_HUB_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from kronos_pipeline.kronos import (
        Kronos, KronosCheckpointError, load_predictor, save_checkpoint,
    )
    cache, config = Path(sys.argv[1]), json.loads(sys.argv[2])
    result = {}
    try:
        load_predictor("NeoQuasar/Kronos-small", revision="0123abcd")
    except KronosCheckpointError as exc:
        result["missing"] = str(exc)
    # A repo already in the hub cache at a pinned commit loads offline.
    commit = "a" * 40
    repo = cache / "models--acme--kronos-test"
    save_checkpoint(Kronos(**config), repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model = load_predictor("acme/kronos-test", revision=commit)
    result["pinned"] = type(model).__name__
    result["main"] = type(load_predictor("acme/kronos-test")).__name__
    print(json.dumps(result))
    """
)


def test_hub_repo_ids_offline(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
    )
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _HUB_SCRIPT,
            str(tmp_path / "hf" / "hub"),
            json.dumps(SMALLISH_KRONOS),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    message = result["missing"]
    assert "NeoQuasar/Kronos-small" in message
    assert "0123abcd" in message
    assert "HF_HUB_OFFLINE" in message
    assert "local directory" in message
    assert result["pinned"] == "Kronos" and result["main"] == "Kronos"


# --------------------------------------------------------------------------------------
# Hub repo ids through a Hugging Face cache laid out as huggingface_hub lays it out
# --------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache named by HF_HOME / HF_HUB_CACHE, offline mode on."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return cache


def test_pinned_repo_ids_load_from_the_hf_cache_offline(tmp_path: Path, offline_hf_cache: Path):
    torch.manual_seed(5)
    predictor, tokenizer = Kronos(**SMALLISH_KRONOS), KronosTokenizer(**SMALLISH_TOKENIZER)
    save_checkpoint(predictor, tmp_path / "pred")
    save_checkpoint(tokenizer, tmp_path / "tok")
    lay_into_hf_cache(tmp_path / "pred", offline_hf_cache, "acme/Kronos-tiny", COMMIT)
    lay_into_hf_cache(tmp_path / "tok", offline_hf_cache, "acme/Kronos-Tokenizer-tiny", COMMIT)

    loaded = load_predictor("acme/Kronos-tiny", revision=COMMIT)
    loaded_tok = load_tokenizer("acme/Kronos-Tokenizer-tiny", revision=COMMIT)
    assert _same_state(loaded, predictor)
    assert _same_state(loaded_tok, tokenizer)
    # A branch name resolves through refs/ (settings refuse it; the loader still reads it).
    assert _same_state(load_predictor("acme/Kronos-tiny", revision="main"), predictor)


def test_offline_without_the_weights_says_what_to_do(tmp_path: Path, offline_hf_cache: Path):
    save_checkpoint(Kronos(**SMALLISH_KRONOS), tmp_path / "pred")
    # config.json cached, model.safetensors never downloaded.
    lay_into_hf_cache(
        tmp_path / "pred", offline_hf_cache, "acme/Kronos-tiny", COMMIT, files=("config.json",)
    )
    for repo_id in ("acme/Kronos-tiny", "acme/not-cached"):
        with pytest.raises(KronosCheckpointError) as info:
            load_predictor(repo_id, revision=COMMIT)
        message = str(info.value)
        assert f"hub repo '{repo_id}' at revision '{COMMIT}'" in message
        assert str(offline_hf_cache) in message
        assert "offline mode is on (HF_HUB_OFFLINE=1)" in message
        assert f"huggingface-cli download {repo_id} --revision {COMMIT}" in message
        assert "local directory" in message

"""Faults of the process, not of the data: SIGKILL inside a warehouse write and inside a
checkpoint write, two writers at once, a corrupted model.safetensors, a misspelled setting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kronos_pipeline.kronos import Kronos, KronosCheckpointError, load_predictor, save_checkpoint
from kronos_pipeline.settings import load_settings
from kronos_pipeline_tests.faults.conftest import clean_digest, digest
from kronos_pipeline_tests.kronos.conftest import SMALLISH_KRONOS

REPO_ROOT = Path(__file__).resolve().parents[2]

# The real ingest, made to stop inside its transaction (after raw_bars, bars_quarantine and
# the side tables were written, before the commit) until it is killed.
KILLED_INGEST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kronos_pipeline import warehouse
    from kronos_pipeline_tests.faults.conftest import ingest

    original = warehouse.WarehouseTransaction.replace_table
    def slow(self, table, frame):
        n = original(self, table, frame)
        if table == "source_tickers":
            print("inside", flush=True)
            time.sleep(60)
        return n
    warehouse.WarehouseTransaction.replace_table = slow
    ingest(Path(sys.argv[1]), warehouse.Warehouse(sys.argv[2]))
    """
)
INGEST = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kronos_pipeline.warehouse import Warehouse
    from kronos_pipeline_tests.faults.conftest import ingest
    for _ in range(3):
        ingest(Path(sys.argv[1]), Warehouse(sys.argv[2]))
    print("done", flush=True)
    """
)
# save_checkpoint of new weights, stopped after half of model.safetensors reached the disk.
KILLED_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    from kronos_pipeline.kronos import Kronos, hub
    from kronos_pipeline_tests.kronos.conftest import SMALLISH_KRONOS
    original = hub.atomic_write_bytes
    def slow(path, data):
        if path.name == "model.safetensors":
            tmp = path.with_name("." + path.name + ".tmp-x")
            tmp.write_bytes(data[: len(data) // 2])
            print("inside", flush=True)
            time.sleep(60)
        original(path, data)
    hub.atomic_write_bytes = slow
    torch.manual_seed(2)
    hub.save_checkpoint(Kronos(**SMALLISH_KRONOS), sys.argv[1])
    """
)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when_inside(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "inside", proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_inside_the_warehouse_transaction_leaves_nothing_and_the_rerun_is_clean(
    vendor, tmp_path
):
    from kronos_pipeline.warehouse import Warehouse
    from kronos_pipeline_tests.faults.conftest import ingest

    path = tmp_path / "lake"
    _kill_when_inside(_spawn(KILLED_INGEST, str(vendor), str(path)))
    db = Warehouse(path)  # its staged files are ignored by readers
    assert not {"raw_bars", "ticker_history"} & set(db.tables())  # nothing was committed
    ingest(vendor, db)
    assert digest(db) == clean_digest(vendor, tmp_path)
    # A crash over an existing warehouse leaves the previous content.
    before = digest(db)
    _kill_when_inside(_spawn(KILLED_INGEST, str(vendor), str(path)))
    assert digest(db) == before


def test_two_writers_at_once_both_finish_and_leave_a_clean_warehouse(vendor, tmp_path):
    from kronos_pipeline.warehouse import Warehouse

    path = tmp_path / "lake"
    procs = [_spawn(INGEST, str(vendor), str(path)) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "Could not set lock" not in err and out.strip() == "done"
    assert digest(Warehouse(path)) == clean_digest(vendor, tmp_path)


def test_sigkill_inside_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    torch.manual_seed(1)
    first = Kronos(**SMALLISH_KRONOS)
    save_checkpoint(first, tmp_path)
    _kill_when_inside(_spawn(KILLED_SAVE, str(tmp_path)))
    loaded = load_predictor(tmp_path)  # verified against the manifest: the first, whole
    for key, value in first.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_renamed_in_without_their_manifest_fail_the_hash_check(tmp_path):
    torch.manual_seed(1)
    save_checkpoint(Kronos(**SMALLISH_KRONOS), tmp_path / "a")
    torch.manual_seed(2)
    save_checkpoint(Kronos(**SMALLISH_KRONOS), tmp_path / "b")
    # As if the process died between renaming the new weights and writing the new manifest.
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(KronosCheckpointError, match="does not match the sha256 recorded"):
        load_predictor(tmp_path / "a")


def test_corrupted_model_safetensors_gives_a_clear_error(tmp_path):
    save_checkpoint(Kronos(**SMALLISH_KRONOS), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a readable safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(KronosCheckpointError, match="model.safetensors does not match the sha256"):
        load_predictor(tmp_path)


def test_misspelled_setting_is_refused_with_the_right_spelling():
    with pytest.raises(Exception, match="KRONOS_DATA__VENDOR_DIR"):
        load_settings(environ={"KRONOS_DATA__VENDORDIR": "x"})

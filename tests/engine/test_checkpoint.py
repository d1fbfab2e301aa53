import os
import random

import numpy as np
import pytest
import torch

from panfpn.engine.training import checkpoint as ck


def test_rng_state_round_trip_loads_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ck.capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ck.save_checkpoint(tmp_path, "a.pth", {"rng": state})
    loaded = ck.load_training_checkpoint(ck.find_last_checkpoint(tmp_path))  # weights_only=True
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.restore_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    ck.atomic_torch_save({"x": torch.ones(2)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_torch_save({"x": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_last_checkpoint_marker(tmp_path):
    assert ck.find_last_checkpoint(tmp_path) is None
    ck.save_checkpoint(tmp_path, "model_0000010.pth", {"iteration": 10})
    ck.save_checkpoint(tmp_path, "model_0000020.pth", {"iteration": 20})
    assert ck.find_last_checkpoint(tmp_path).name == "model_0000020.pth"
    os.remove(tmp_path / "model_0000020.pth")
    with pytest.raises(FileNotFoundError, match="model_0000020.pth"):
        ck.find_last_checkpoint(tmp_path)


def test_prune_keeps_the_newest_periodic_checkpoints_final_and_last(tmp_path):
    for it in (10, 20, 30, 40):
        ck.save_checkpoint(tmp_path, f"model_{it:07d}.pth", {"iteration": it})
    ck.save_checkpoint(tmp_path, "model_final.pth", {"iteration": 50})
    (tmp_path / "model_best_notes.pth").write_bytes(b"user file")  # not ours: never touched
    assert ck.prune_checkpoints(tmp_path, None) == []
    removed = ck.prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["model_0000010.pth", "model_0000020.pth"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000030.pth", "model_0000040.pth", "model_best_notes.pth", "model_final.pth"]
    # The checkpoint last_checkpoint names survives even when it is not among the newest.
    ck.atomic_write_text(tmp_path / ck.LAST_CHECKPOINT, "model_0000030.pth")
    ck.prune_checkpoints(tmp_path, 1)
    assert (tmp_path / "model_0000030.pth").is_file() and (tmp_path / "model_0000040.pth").is_file()
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        ck.prune_checkpoints(tmp_path, 0)

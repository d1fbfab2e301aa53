"""Weights and checkpoints that cannot be read: the error names the file and what was expected,
for weights=, eval/predict's model record and resume=true."""

import pickle

import pytest
import torch
from torch import nn

from panfpn.engine.training.checkpoint import LAST_CHECKPOINT, CheckpointError, load_resumable, load_training_checkpoint
from panfpn.engine.model_spec import read_model_record
from panfpn.modeling.weights import WeightsError, load_weights

# torch warns that the plain pickles below use a protocol it did not write; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def _zip_bytes(tmp_path) -> bytes:
    torch.save({"model": {"w": torch.zeros(4)}, "iteration": 1}, tmp_path / "whole.pth")
    return (tmp_path / "whole.pth").read_bytes()


# name -> bytes of the file, given tmp_path
BAD_FILES = {
    "text": lambda tmp: b"these are not weights\nbut a text file named like them\n",
    "empty": lambda tmp: b"",
    "truncated_zip": lambda tmp: _zip_bytes(tmp)[:300],
    "random_bytes": lambda tmp: bytes(range(7, 256)) * 3,
    "pickled_list": lambda tmp: pickle.dumps([1, 2, 3]),
    "pickled_list_protocol_2": lambda tmp: pickle.dumps([1, 2, 3], protocol=2),
}
# What each message must say about what is wrong (beyond the file's name).
REASONS = {
    "text": "it is text starting with",
    "empty": "empty",
    "truncated_zip": "zip archive",
    "random_bytes": "binary data",
    "pickled_list": "plain pickle",
    "pickled_list_protocol_2": "plain pickle",
}


def _write(tmp_path, kind: str, name: str):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[kind](tmp_path))
    return path


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".pkl"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_unreadable_weights_name_the_file_and_the_accepted_formats(tmp_path, kind, suffix):
    path = _write(tmp_path, kind, f"weights{suffix}")
    model = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_weights(model, str(path))
    message = str(err.value)
    assert str(path) in message and "weights= accepts" in message, message
    if suffix != ".pkl":
        assert REASONS[kind] in message, message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_eval_and_predict_model_record_names_an_unreadable_file(tmp_path, kind):
    path = _write(tmp_path, kind, "model_final.pth")
    with pytest.raises(WeightsError, match=str(path)):
        read_model_record(str(path))


def test_a_torch_file_holding_a_list_is_not_weights(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"list\.pth: expected a state dict .* got list"):
        load_weights(nn.Linear(2, 2), str(tmp_path / "list.pth"))
    with pytest.raises(CheckpointError, match=r"list\.pth holds a list, not a training checkpoint"):
        load_training_checkpoint(tmp_path / "list.pth")


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_unreadable_checkpoints_name_the_file_and_what_was_expected(tmp_path, kind):
    path = _write(tmp_path, kind, "model_0000002.pth")
    with pytest.raises(CheckpointError) as err:
        load_training_checkpoint(path)
    assert str(path) in str(err.value) and "expected a training checkpoint" in str(err.value)
    assert REASONS[kind] in str(err.value)


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_resume_from_an_unreadable_checkpoint_names_it_and_what_was_expected(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    path = _write(run, kind, "model_0000002.pth")
    (run / LAST_CHECKPOINT).write_text(path.name)
    with pytest.raises(CheckpointError) as err:
        load_resumable(run)
    message = str(err.value)
    assert f"no checkpoint in {run} loads" in message and str(path) in message
    assert "expected a training checkpoint" in message and REASONS[kind] in message

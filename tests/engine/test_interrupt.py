"""Signals stop a run after a checkpoint and say so; Ctrl-C during an evaluation stops it too."""

import json
import signal

import pytest

from panfpn.engine.training.checkpoint import find_last_checkpoint, load_training_checkpoint
from panfpn.engine.train_run import train_from_config
from tests.engine.test_train import wrap_forward

# 6 validation images evaluated one by one after every iteration; no periodic checkpoint.
EVAL_EVERY_STEP = ("train.eval_period=1", "train.checkpoint_period=100", "data.val.num_images=6",
                   "eval.max_images=null", "eval.compute_ap=false", "train.num_vis_images=0")


@pytest.fixture(autouse=True)
def sigint_not_ignored():
    """A shell starts background jobs (`pytest ... &`) with SIGINT ignored, and the trainer rightly
    leaves an ignored signal alone; these tests need Python's default Ctrl-C handler."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def signal_in_eval_call(monkeypatch, *signals):
    """Raise ``signals`` during the model's first forward pass in eval mode; count eval calls."""
    from panfpn.modeling import panoptic_fpn

    original = panoptic_fpn.PanopticFPN.forward
    eval_calls = []

    def wrapped(self, batch):
        out = original(self, batch)
        if not self.training:
            eval_calls.append(1)
            if len(eval_calls) == 1:
                for sig in signals:
                    signal.raise_signal(sig)
        return out

    monkeypatch.setattr(panoptic_fpn.PanopticFPN, "forward", wrapped)
    return eval_calls


def test_ctrl_c_during_evaluation_stops_it_and_saves_the_iteration(tiny_cfg, tmp_path, monkeypatch):
    eval_calls = signal_in_eval_call(monkeypatch, signal.SIGINT)
    result = train_from_config(tiny_cfg(*EVAL_EVERY_STEP))
    assert result["interrupted"] and result["signal"] == signal.SIGINT
    assert result["iteration"] == 1 and result["eval"] is None
    assert len(eval_calls) == 1  # the other 5 images were not evaluated
    run = tmp_path / "run"
    assert find_last_checkpoint(run).name == "model_0000001.pth"
    assert load_training_checkpoint(run / "model_0000001.pth")["iteration"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train"]  # the partial evaluation is not logged


def test_ctrl_c_during_the_final_evaluation_still_reports_the_interruption(tiny_cfg, tmp_path, monkeypatch):
    eval_calls = signal_in_eval_call(monkeypatch, signal.SIGINT)
    result = train_from_config(tiny_cfg(*EVAL_EVERY_STEP, "train.eval_period=0"))  # evaluate only at the end
    assert result["interrupted"] and result["signal"] == signal.SIGINT and result["iteration"] == 4
    assert len(eval_calls) == 1 and result["eval"] is None
    assert load_training_checkpoint(tmp_path / "run" / "model_final.pth")["iteration"] == 4


def test_second_ctrl_c_aborts_at_once_and_handlers_are_restored(tiny_cfg, monkeypatch):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    eval_calls = signal_in_eval_call(monkeypatch, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_from_config(tiny_cfg(*EVAL_EVERY_STEP))
    assert len(eval_calls) == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_reports_its_signal(tiny_cfg, tmp_path, monkeypatch):
    wrap_forward(monkeypatch, lambda n, out: signal.raise_signal(signal.SIGTERM) if n == 3 else None)
    result = train_from_config(tiny_cfg("train.eval_period=-1", "train.checkpoint_period=100"))
    assert result["interrupted"] and result["signal"] == signal.SIGTERM and result["iteration"] == 3
    assert result["checkpoint"] == str(tmp_path / "run" / "model_0000003.pth")

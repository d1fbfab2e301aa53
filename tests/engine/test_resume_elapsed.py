"""time/elapsed_s (the evaluations' elapsed training time) continues over resume=true: each
checkpoint records it (``elapsed_s``), a resumed run counts on from the checkpoint's value, and an
older checkpoint without it still resumes (from 0, with a note in the log)."""

import json
import logging
import math
import time

import pytest
import torch

from panfpn.engine.train_run import train_from_config
from panfpn.engine.training.checkpoint import load_training_checkpoint
from panfpn.engine.training.elapsed import ELAPSED_KEY, ElapsedTime, recorded_elapsed

EVAL = ("train.eval_period=2", "train.checkpoint_period=2")  # an evaluation and a checkpoint at 2 and 4
EARLIER = 1000.0  # seconds of training the first attempt's last checkpoint is made to record


def _elapsed_by_iteration(run) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["time/elapsed_s"] for r in records if r["kind"] == "eval"}


def _rewrite(path, **changes) -> None:
    """The checkpoint at ``path`` with keys set (None: removed), as an older or longer run wrote it."""
    ckpt = load_training_checkpoint(path)
    for key, value in changes.items():
        ckpt.pop(key) if value is None else ckpt.__setitem__(key, value)
    torch.save(ckpt, path)


def test_a_resumed_run_continues_the_elapsed_time_of_its_checkpoint(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train_from_config(tiny_cfg(*EVAL))
    first = _elapsed_by_iteration(run)
    at_2, final = (load_training_checkpoint(run / name)[ELAPSED_KEY] for name in ("model_0000002.pth", "model_final.pth"))
    assert 0 < at_2 <= first[2] <= final <= first[4]  # saved before the evaluation at the same iteration
    _rewrite(run / "model_final.pth", **{ELAPSED_KEY: EARLIER})  # as if the first 4 iterations took 1000 s
    started = time.perf_counter()
    train_from_config(tiny_cfg(*EVAL, "solver.max_iter=6", "resume=true"))
    this_attempt = time.perf_counter() - started
    after = _elapsed_by_iteration(run)
    assert after[2] == first[2] and after[4] == first[4]  # the first attempt's records are kept
    assert EARLIER < after[6] < EARLIER + this_attempt  # counted on, not from 0 again
    assert EARLIER < load_training_checkpoint(run / "model_final.pth")[ELAPSED_KEY] <= after[6]


def test_an_older_checkpoint_without_elapsed_time_resumes_from_0_with_a_note(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train_from_config(tiny_cfg(*EVAL))
    _rewrite(run / "model_final.pth", **{ELAPSED_KEY: None})
    started = time.perf_counter()
    result = train_from_config(tiny_cfg(*EVAL, "solver.max_iter=6", "resume=true"))
    assert result["iteration"] == 6 and not result["interrupted"]
    assert 0 < _elapsed_by_iteration(run)[6] < time.perf_counter() - started
    assert "model_final.pth records no elapsed training time (an older checkpoint): time/elapsed_s counts " \
           "from 0 again" in (run / "log.txt").read_text()


@pytest.mark.parametrize("value", [float("nan"), -1.0, "abc"])
def test_a_recorded_elapsed_time_that_is_no_duration_counts_from_0(value, caplog):
    with caplog.at_level(logging.WARNING, logger="panfpn"):
        assert recorded_elapsed({ELAPSED_KEY: value}, "run/model_0000002.pth") == 0.0
    assert "run/model_0000002.pth records elapsed training time" in caplog.text


def test_elapsed_time_adds_this_attempt_to_the_earlier_ones():
    clock = ElapsedTime(10.0)
    assert clock() == 10.0  # not started: nothing of this attempt yet
    clock.start()
    time.sleep(0.01)
    assert 10.01 <= clock() < 11.0 and math.isclose(recorded_elapsed({ELAPSED_KEY: 2.5}, "x"), 2.5)

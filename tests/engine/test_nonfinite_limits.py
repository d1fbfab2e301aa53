"""train.on_nonfinite=skip gives up: too many non-finite steps in a row, or too many in the run."""

import pytest

from panfpn.engine.training.checkpoint import load_training_checkpoint
from panfpn.engine.train_run import NonFiniteLossError, train_from_config
from tests.engine.test_train import wrap_forward

SKIP = ("train.eval_period=-1", "train.on_nonfinite=skip", "solver.max_iter=10")


def nan_mask_loss_when(pred):
    def hook(n, out):
        if pred(n):
            out["loss_mask"] = out["loss_mask"] * float("nan")
    return hook


def test_skip_gives_up_after_the_default_five_in_a_row(tiny_cfg, tmp_path, monkeypatch):
    # 9 of 10 steps non-finite: steps 2..6 are the five in a row. The message numbers the step as
    # the log and checkpoints do (the first step is "iter 1"; it said iteration 5, the 0-based count)
    wrap_forward(monkeypatch, nan_mask_loss_when(lambda n: n >= 2))
    with pytest.raises(NonFiniteLossError,
                       match=r"iteration 6: loss_mask=nan: 5 non-finite steps in a row "
                             r"\(train\.max_consecutive_nonfinite=5\)"):
        train_from_config(tiny_cfg(*SKIP))
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_the_consecutive_limit_is_configurable(tiny_cfg, tmp_path, monkeypatch):
    wrap_forward(monkeypatch, nan_mask_loss_when(lambda n: n in (2, 4, 5)))
    with pytest.raises(NonFiniteLossError, match=r"iteration 5: .*2 non-finite steps in a row"):
        train_from_config(tiny_cfg(*SKIP, "train.max_consecutive_nonfinite=2"))
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_too_many_skipped_steps_in_the_run_withhold_model_final(tiny_cfg, tmp_path, monkeypatch):
    wrap_forward(monkeypatch, nan_mask_loss_when(lambda n: n % 4 != 1))  # 3 of 4, never 4 in a row
    with pytest.raises(NonFiniteLossError,
                       match=r"7 of 10 steps were skipped for non-finite losses \(loss_mask x7\), more "
                             r"than train\.max_skipped_fraction=0\.5: model_final not written"):
        train_from_config(tiny_cfg(*SKIP))
    run = tmp_path / "run"
    assert not (run / "model_final.pth").exists()
    assert load_training_checkpoint(run / "model_0000008.pth")["skipped_steps"] == 6


def test_no_skipped_fraction_limit_when_null(tiny_cfg, tmp_path, monkeypatch):
    wrap_forward(monkeypatch, nan_mask_loss_when(lambda n: n % 4 != 1))
    result = train_from_config(tiny_cfg(*SKIP, "train.max_skipped_fraction=null"))
    assert result["iteration"] == 10 and result["losses"]["skipped_steps"] == 7.0
    assert load_training_checkpoint(tmp_path / "run" / "model_final.pth")["skipped_steps"] == 7

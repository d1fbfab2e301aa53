import json
import math
import signal

import pytest
import torch

from panfpn.engine.training.checkpoint import find_last_checkpoint, load_training_checkpoint
from panfpn.engine.train_run import NonFiniteLossError, train_from_config


def test_train_runs_checkpoints_logs_and_evaluates(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    result = train_from_config(tiny_cfg())
    assert result["iteration"] == 4 and not result["interrupted"]
    assert find_last_checkpoint(run).name == "model_final.pth"
    assert (run / "model_0000002.pth").is_file()
    ckpt = load_training_checkpoint(run / "model_final.pth")
    assert ckpt["iteration"] == 4 and {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(ckpt)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in train_rows] == [1, 2, 3, 4]
    for key in ("loss/loss_sem_seg", "loss/loss_rpn_cls", "loss/loss_rpn_loc", "loss/loss_cls",
                "loss/loss_box_reg", "loss/loss_mask", "lr", "time/iter", "time/data"):
        assert all(math.isfinite(r[key]) for r in train_rows), key
    eval_rows = [r for r in records if r["kind"] == "eval"]
    assert len(eval_rows) == 1 and {"pq/All", "pq/Things", "pq/Stuff", "sem_seg/mIoU"} <= set(eval_rows[0])
    assert 0.0 <= result["eval"]["panoptic"]["All"]["pq"] <= 1.0

    # TensorBoard reads the event files we wrote.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert "loss/total" in acc.Tags()["scalars"] and "pq/All" in acc.Tags()["scalars"]
    assert len(acc.Scalars("loss/total")) == 4
    assert {"val/panoptic/0", "val/panoptic/1"} <= set(acc.Tags()["images"])  # GT | prediction overlays


def test_keep_checkpoints_limits_the_periodic_checkpoints(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train_from_config(tiny_cfg("solver.max_iter=6", "solver.schedule.steps=[5]", "train.keep_checkpoints=1",
                   "train.eval_period=-1"))
    assert sorted(p.name for p in run.glob("*.pth")) == ["model_0000004.pth", "model_final.pth"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_and_gradient_clipping(tiny_cfg, tmp_path, dtype):
    result = train_from_config(tiny_cfg("train.amp=true", f"train.amp_dtype={dtype}", "train.clip_grad_norm=1.0",
                            "train.eval_period=-1"))
    assert result["iteration"] == 4
    assert all(math.isfinite(v) for k, v in result["losses"].items() if k.startswith("loss/"))
    ckpt = load_training_checkpoint(tmp_path / "run" / "model_final.pth")
    # float16 trains through the grad scaler (its state is checkpointed); bfloat16 needs none
    assert bool(ckpt["scaler"]) == (dtype == "float16")


def wrap_forward(monkeypatch, hook):
    """Patch PanopticFPN.forward so ``hook(call_number, outputs)`` runs on each call (1-based)
    before the outputs are returned; returns a function that restores the original."""
    from panfpn.modeling import panoptic_fpn

    original = panoptic_fpn.PanopticFPN.forward
    calls = {"n": 0}

    def wrapped(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        hook(calls["n"], out)
        return out

    monkeypatch.setattr(panoptic_fpn.PanopticFPN, "forward", wrapped)
    return lambda: monkeypatch.setattr(panoptic_fpn.PanopticFPN, "forward", original)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_cfg, tmp_path, workers, monkeypatch):
    overrides = (f"data.num_workers={workers}", "train.eval_period=-1", "train.checkpoint_period=100")
    straight = train_from_config(tiny_cfg(*overrides, run_dir=tmp_path / "a"))

    def sigterm_in_second_iteration(n, out):
        if n == 2:
            signal.raise_signal(signal.SIGTERM)

    restore = wrap_forward(monkeypatch, sigterm_in_second_iteration)
    stopped = train_from_config(tiny_cfg(*overrides, run_dir=tmp_path / "b"))
    assert stopped["interrupted"] and stopped["iteration"] == 2
    restore()
    resumed = train_from_config(tiny_cfg(*overrides, "resume=true", run_dir=tmp_path / "b"))
    assert resumed["iteration"] == straight["iteration"] == 4
    a = load_training_checkpoint(tmp_path / "a" / "model_final.pth")["model"]
    b = load_training_checkpoint(tmp_path / "b" / "model_final.pth")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nonfinite_loss_raises_naming_iteration_and_term(tiny_cfg, monkeypatch):
    def nan_mask_loss_in_third_iteration(n, out):
        if n == 3:
            out["loss_mask"] = out["loss_mask"] * float("nan")

    wrap_forward(monkeypatch, nan_mask_loss_in_third_iteration)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_mask=nan"):  # as logged: "iter 3"
        train_from_config(tiny_cfg("train.eval_period=-1"))


def test_nonfinite_loss_skip_mode_skips_the_step(tiny_cfg, monkeypatch, tmp_path):
    def inf_cls_loss_in_second_iteration(n, out):
        if n == 2:
            out["loss_cls"] = out["loss_cls"] + float("inf")

    wrap_forward(monkeypatch, inf_cls_loss_in_second_iteration)
    result = train_from_config(tiny_cfg("train.eval_period=-1", "train.on_nonfinite=skip"))
    assert result["iteration"] == 4 and result["losses"]["skipped_steps"] == 1.0
    ckpt = load_training_checkpoint(tmp_path / "run" / "model_final.pth")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())

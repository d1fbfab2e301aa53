"""Training runs that did something other than asked and still ended as a success (exit 0)."""

import json
import shutil
import signal

import pytest
import torch

from panfpn.engine.training.checkpoint import LAST_CHECKPOINT, load_training_checkpoint
from panfpn.engine.config import ConfigError
from panfpn.engine.train_run import train_from_config
from panfpn.engine.training.solver import WarmupMultiStep
from tests.engine.test_interrupt import signal_in_eval_call


@pytest.fixture(autouse=True)
def sigint_not_ignored():
    """Python's default Ctrl-C handler, also when pytest runs as a background job (SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_resume_after_a_periodic_evaluation_gives_the_uninterrupted_weights(tiny_cfg, tmp_path):
    """The evaluation at iteration 2 drew from the global torch RNG (the eval DataLoader's base
    seed), after the checkpoint of iteration 2 was saved: a run resumed from that checkpoint (killed
    after it) sampled other RPN / ROI proposals than the uninterrupted run, so the weights differed
    (160 tensors), although docs/training.md promises bit-identical results."""
    overrides = ("train.eval_period=2", "train.checkpoint_period=2", "eval.compute_ap=false")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_from_config(tiny_cfg(*overrides, run_dir=straight))
    resumed.mkdir()  # as if killed right after the checkpoint of iteration 2
    shutil.copy(straight / "model_0000002.pth", resumed / "model_0000002.pth")
    (resumed / LAST_CHECKPOINT).write_text("model_0000002.pth")
    train_from_config(tiny_cfg(*overrides, "resume=true", run_dir=resumed))
    a = load_training_checkpoint(straight / "model_final.pth")["model"]
    b = load_training_checkpoint(resumed / "model_final.pth")["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_resume_after_the_final_evaluation_was_interrupted_evaluates(tiny_cfg, tmp_path, monkeypatch):
    """Ctrl-C during the final evaluation exits 130 and says 'continue with resume=true'; that
    resume found model_final at solver.max_iter, trained nothing and returned without the final
    evaluation (exit 0, no metrics, no objective)."""
    overrides = ("train.eval_period=0", "eval.compute_ap=false", "train.num_vis_images=0")
    signal_in_eval_call(monkeypatch, signal.SIGINT)
    stopped = train_from_config(tiny_cfg(*overrides))
    assert stopped["interrupted"] and stopped["iteration"] == 4 and stopped["eval"] is None
    monkeypatch.undo()
    result = train_from_config(tiny_cfg(*overrides, "resume=true"))
    assert not result["interrupted"] and result["iteration"] == 4
    assert result["eval"] is not None and "panoptic" in result["eval"]
    assert [r["iter"] for r in records(tmp_path / "run", "eval")] == [4]


def test_resume_at_a_lowered_max_iter_writes_model_final_and_evaluates(tiny_cfg, tmp_path):
    """solver.max_iter lowered to the iteration of the newest periodic checkpoint: the resumed run
    trained nothing and ended 'successfully' without model_final.pth and without evaluating."""
    run = tmp_path / "run"
    train_from_config(tiny_cfg("train.eval_period=-1"))  # checkpoints at 2 and 4 (final)
    (run / "model_final.pth").unlink()  # as if killed before iteration 4
    (run / LAST_CHECKPOINT).write_text("model_0000002.pth")
    result = train_from_config(tiny_cfg("train.eval_period=0", "eval.compute_ap=false", "solver.max_iter=2",
                                        "solver.schedule.steps=[1]", "solver.schedule.warmup_iters=1",
                                        "resume=true"))
    assert result["iteration"] == 2 and result["eval"] is not None
    final = load_training_checkpoint(run / "model_final.pth")
    assert final["iteration"] == 2
    weights = load_training_checkpoint(run / "model_0000002.pth")["model"]
    assert all(torch.equal(final["model"][k], v) for k, v in weights.items())


def test_the_logged_lr_is_the_lr_of_the_logged_steps(tiny_cfg, tmp_path, monkeypatch):
    """metrics.jsonl / TensorBoard 'lr' at iteration N was read after the scheduler stepped: the
    lr of step N + 1, not of the step whose losses the row holds (Detectron2 logs the lr the step
    used). The warmup's first lr never appeared, the step decay showed one iteration early and a
    cosine run ended at 'lr 0' although its last step used more."""
    used = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    train_from_config(tiny_cfg("train.eval_period=-1"))  # warmup 2, step at 3, 4 iterations
    logged = [r["lr"] for r in records(tmp_path / "run", "train")]
    assert used == pytest.approx([0.01 * 0.001, 0.01 * (0.001 * 0.5 + 0.5), 0.01, 0.001], rel=1e-9)
    assert logged == used


@pytest.mark.parametrize("steps", [[3, 3], [0, 3], [-1]], ids=["duplicated", "zero", "negative"])
def test_steps_that_are_no_lr_drop_are_rejected_with_the_key(steps):
    """steps=[3, 3] (a typo for [3, 4]) passed the 'increasing' check and applied gamma twice at
    iteration 3 (lr x 0.01); a step at 0 or below decayed the lr from the first iteration. Detectron2
    (fvcore MultiStepParamScheduler) requires strictly increasing positive milestones."""
    with pytest.raises(ValueError, match=r"solver\.schedule\.steps"):
        WarmupMultiStep(steps=steps, gamma=0.1, warmup_iters=0, max_iter=4)


def _two_iterations(tiny_cfg, *overrides):
    return train_from_config(tiny_cfg("train.eval_period=-1", "solver.max_iter=2", "solver.schedule.steps=[1]",
                                      "solver.schedule.warmup_iters=1", *overrides))


def test_resume_on_other_categories_is_an_error_naming_them(tiny_cfg, tmp_path):
    """The model config only records class counts: a run resumed on a dataset with as many classes
    but other categories (here two thing categories swapped) went on training, the model's class 0
    now meaning another category, and model_final recorded the new labels."""
    _two_iterations(tiny_cfg)
    final = tmp_path / "run" / "model_final.pth"
    ckpt = load_training_checkpoint(final)
    cats = ckpt["metadata"]["categories"]
    cats[0]["id"], cats[1]["id"] = cats[1]["id"], cats[0]["id"]  # the old run's dataset: 1 rectangle, 3 ellipse
    torch.save(ckpt, final)
    with pytest.raises(ConfigError) as err:
        train_from_config(tiny_cfg("train.eval_period=-1", "solver.schedule.warmup_iters=1", "resume=true"))
    message = str(err.value)
    assert str(final) in message and "class 0: id 1 'rectangle' (thing) -> id 1 'ellipse' (thing)" in message
    assert "class 2" not in message  # only what differs
    assert load_training_checkpoint(final)["iteration"] == 2  # nothing trained


def test_resume_with_another_seed_or_training_data_says_so(tiny_cfg, tmp_path):
    """seed and data.train changed between a run and its resume: the sample order, the augmentation
    seeds and the images differ from the uninterrupted run's, and nothing said so (only solver.*
    changes were listed)."""
    _two_iterations(tiny_cfg)
    train_from_config(tiny_cfg("train.eval_period=-1", "solver.schedule.warmup_iters=1", "resume=true", "seed=5",
                               "data.train.num_images=6", "data.num_workers=1"))
    log = (tmp_path / "run" / "log.txt").read_text()
    line = next(line for line in log.splitlines() if "training data" in line)
    assert "WARNING" in line and "seed: 0 -> 5" in line and "data.train.num_images: 8 -> 6" in line
    assert "num_workers" not in line  # does not change what is read


def test_resume_with_another_amp_or_clipping_says_so(tiny_cfg, tmp_path):
    """train.clip_grad_norm / train.amp changed on resume changed every later step without a word."""
    _two_iterations(tiny_cfg)
    train_from_config(tiny_cfg("train.eval_period=-1", "solver.schedule.warmup_iters=1", "resume=true",
                               "train.clip_grad_norm=1.0", "train.amp=true"))
    log = (tmp_path / "run" / "log.txt").read_text()
    line = next(line for line in log.splitlines() if "training step changed" in line)
    assert "WARNING" in line and "train.clip_grad_norm: None -> 1.0" in line and "train.amp: False -> True" in line
    assert "training data changed" not in log


def test_a_fresh_run_in_a_used_folder_says_so_and_logs_only_its_own_iterations(tiny_cfg, tmp_path):
    """resume=false (e.g. a requeued job without resume=true) in a folder holding a finished run:
    training restarted from scratch without a word, and metrics.jsonl held both runs (iterations
    1, 2, 3, 4, 1, 2), which the learning-curve and speed scripts read as one run."""
    train_from_config(tiny_cfg("train.eval_period=-1"))
    _two_iterations(tiny_cfg)
    run = tmp_path / "run"
    assert [r["iter"] for r in records(run, "train")] == [1, 2]
    log = (run / "log.txt").read_text()
    assert any("WARNING" in line and "resume=false" in line and "model_final.pth" in line
               for line in log.splitlines())


def test_a_periodic_evaluation_stopped_by_a_signal_is_run_on_resume(tiny_cfg, tmp_path, monkeypatch):
    """SIGTERM/Ctrl-C during the evaluation at iteration 2 (long evaluations are where a
    preemption usually lands) saves iteration 2 and drops the partial metrics; the resumed run
    started training at iteration 3, so the curve silently lacked that evaluation for good."""
    overrides = ("train.eval_period=2", "train.checkpoint_period=100", "eval.compute_ap=false",
                 "train.num_vis_images=0")
    signal_in_eval_call(monkeypatch, signal.SIGINT)
    stopped = train_from_config(tiny_cfg(*overrides))
    assert stopped["interrupted"] and stopped["iteration"] == 2
    monkeypatch.undo()
    train_from_config(tiny_cfg(*overrides, "resume=true"))
    assert [r["iter"] for r in records(tmp_path / "run", "eval")] == [2, 4]


def test_with_a_backbone_lr_multiplier_the_logs_report_the_base_lr(tiny_cfg, tmp_path):
    """The logs read param_groups[0], which is the backbone's group when solver.lr_multipliers has
    backbone: 0.1 (the official Mask2Former presets): every metrics line showed the lr 10x too
    small, and the start block said 'lr 0.002 (solver.base_lr=0.02 scaled linearly to the global
    batch)' with an 'lr scaling applied' warning although the global batch was the recipe's."""
    train_from_config(tiny_cfg("train.eval_period=-1", "solver.max_iter=2", "solver.schedule.steps=[1]",
                               "solver.schedule.warmup_iters=0", "data.batch_size=4",
                               "+solver.lr_multipliers={backbone: 0.1}"))
    run = tmp_path / "run"
    assert [r["lr"] for r in records(run, "train")] == pytest.approx([0.02, 0.002], rel=1e-12)
    log = (run / "log.txt").read_text()
    assert "lr scaling applied" not in log
    assert any(line.strip().startswith("lr") and "0.02 (not scaled)" in line for line in log.splitlines())


def test_resume_in_a_folder_without_checkpoints_warns_how_to_point_at_the_run(tiny_cfg, tmp_path):
    """`python tools/train.py resume=true` without hydra.run.dir runs in a new timestamped folder,
    so it can never resume: it trained from scratch with only an INFO line saying so."""
    _two_iterations(tiny_cfg, "resume=true")
    log = (tmp_path / "run" / "log.txt").read_text()
    line = next(line for line in log.splitlines() if "holds no checkpoint" in line)
    assert "WARNING" in line and "hydra.run.dir" in line


def test_resume_turning_on_float16_amp_starts_a_fresh_grad_scaler(tiny_cfg, tmp_path):
    """A checkpoint of a run without float16 AMP holds an empty (disabled) grad scaler state:
    resuming it with train.amp=true train.amp_dtype=float16 stopped with torch's 'The source state
    dict is empty' RuntimeError. The scaler starts fresh instead (the change is logged)."""
    _two_iterations(tiny_cfg)
    result = train_from_config(tiny_cfg("train.eval_period=-1", "solver.schedule.warmup_iters=1", "resume=true",
                                        "train.amp=true", "train.amp_dtype=float16"))
    assert result["iteration"] == 4
    assert "train.amp_dtype: 'bfloat16' -> 'float16'" in (tmp_path / "run" / "log.txt").read_text()

"""resume=true is right or refuses: current lr schedule, same model, corrupt checkpoints, clean logs."""

import json
import math
import re

import pytest
import torch

from panfpn.engine.training.checkpoint import CheckpointError, LAST_CHECKPOINT, load_training_checkpoint
from panfpn.engine.config import ConfigError
from panfpn.engine.train_run import train_from_config
from config_helpers import compose_config
from tests.engine.conftest import TINY

NO_EVAL = ("train.eval_period=-1",)
# The default solver (AdamW, cosine decay to 0 at solver.max_iter), at the tiny size.
COSINE = [a for a in TINY if not a.startswith("solver")] + [
    "solver=synthetic_cpu", "solver.schedule.warmup_iters=2", "train.eval_period=-1"]


def rows(run, kind="train"):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == kind]


def log_text(run):
    return (run / "log.txt").read_text()


def test_extending_a_run_follows_the_current_schedule_and_says_what_changed(tmp_path):
    straight = tmp_path / "straight"
    train_from_config(compose_config([*COSINE, "solver.max_iter=8"], output_dir=straight))
    run = tmp_path / "run"
    train_from_config(compose_config([*COSINE, "solver.max_iter=4"], output_dir=run))
    # the last step of the 4-iteration cosine (lr 1e-3 at the tiny batch) used cos(3/4 pi), its end is 0
    assert rows(run)[-1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(0.75 * math.pi)), rel=1e-12)
    result = train_from_config(compose_config([*COSINE, "solver.max_iter=8", "resume=true"], output_dir=run))
    assert result["iteration"] == 8
    want = {r["iter"]: r["lr"] for r in rows(straight)}
    got = {r["iter"]: r["lr"] for r in rows(run)}
    assert sorted(got) == list(range(1, 9))
    for it in range(5, 9):  # the 8-iteration schedule from iteration 4 on, as a straight run has it
        assert got[it] == pytest.approx(want[it], rel=1e-12), it
    assert all(got[it] > 0 for it in range(5, 8))
    log = log_text(run)
    assert "solver.max_iter: 4 -> 8" in log and "solver.schedule.max_iter: 4 -> 8" in log
    assert "the lr schedule follows the current config" in log


def test_resume_refuses_another_optimizer(tmp_path):
    run = tmp_path / "run"
    train_from_config(compose_config([*COSINE, "solver.max_iter=2"], output_dir=run))
    cfg = compose_config([*COSINE, "solver.max_iter=4", "resume=true", "solver.optimizer._target_=torch.optim.Adam"],
                         output_dir=run)
    with pytest.raises(ConfigError, match=r"solver\.optimizer\._target_ is 'torch\.optim\.Adam'.*AdamW"):
        train_from_config(cfg)


@pytest.mark.parametrize("old_checkpoint", [False, True], ids=["model_config", "config_only"])
def test_resume_with_another_model_config_names_the_keys(tiny_cfg, tmp_path, old_checkpoint):
    run = tmp_path / "run"
    train_from_config(tiny_cfg(*NO_EVAL, "solver.max_iter=2", "solver.schedule.steps=[1]"))
    final = run / "model_final.pth"
    if old_checkpoint:  # written before checkpoints recorded model_config: the config's model section
        ckpt = load_training_checkpoint(final)
        del ckpt["model_config"]
        torch.save(ckpt, final)
    cfg = tiny_cfg(*NO_EVAL, "solver.max_iter=4", "resume=true", "model.merge.score_thresh=0.3")
    with pytest.raises(ConfigError) as err:
        train_from_config(cfg)
    message = str(err.value)
    assert "model.merge.score_thresh: 0.5 -> 0.3" in message and str(final) in message
    assert "model.backbone" not in message  # only what differs


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_last_checkpoint_falls_back_to_the_older_one(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train_from_config(tiny_cfg(*NO_EVAL))  # checkpoints at 2 and final (4)
    _truncate(run / "model_final.pth")
    result = train_from_config(tiny_cfg(*NO_EVAL, "solver.max_iter=6", "resume=true"))
    assert result["iteration"] == 6
    log = log_text(run)
    assert re.search(r"ERROR\].*model_final\.pth cannot be loaded", log)
    assert re.search(r"WARNING\].*resuming from the older checkpoint .*model_0000002\.pth", log)
    assert "resumed from" in log and "at iteration 2" in log
    assert load_training_checkpoint(run / "model_final.pth")["iteration"] == 6
    assert [r["iter"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]  # 3 and 4 were trained again, logged once


def test_no_loadable_checkpoint_is_an_error_not_a_fresh_start(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train_from_config(tiny_cfg(*NO_EVAL))
    for name in ("model_final.pth", "model_0000002.pth"):
        _truncate(run / name)
    with pytest.raises(CheckpointError) as err:
        train_from_config(tiny_cfg(*NO_EVAL, "solver.max_iter=6", "resume=true"))
    assert "model_final.pth" in str(err.value) and "model_0000002.pth" in str(err.value)
    assert sorted(p.name for p in run.glob("*.pth")) == ["model_0000002.pth", "model_final.pth"]


def test_resume_past_the_new_max_iter_is_an_error(tiny_cfg, tmp_path):
    train_from_config(tiny_cfg(*NO_EVAL))
    with pytest.raises(ConfigError, match=r"at iteration 4, past solver\.max_iter=2"):
        train_from_config(tiny_cfg(*NO_EVAL, "solver.max_iter=2", "solver.schedule.steps=[1]", "resume=true"))


def test_temp_files_of_a_killed_write_are_removed_at_start(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # Names as panfpn.utils.atomic gives them: ".<target>.<random>.tmp" beside the target.
    stale = [".model_0000002.pth.k2j4hq_1.tmp", f".{LAST_CHECKPOINT}.a8d7f6.tmp", ".metrics.jsonl.zz91.tmp"]
    for name in stale:
        (run / name).write_bytes(b"half a file")
    (run / ".notes.tmp").write_text("not ours")
    train_from_config(tiny_cfg(*NO_EVAL, "solver.max_iter=2", "solver.schedule.steps=[1]"))
    assert not any((run / name).exists() for name in stale)
    assert (run / ".notes.tmp").read_text() == "not ours"
    assert ".model_0000002.pth.k2j4hq_1.tmp" in log_text(run)


@pytest.mark.parametrize("cut_line", [False, True], ids=["whole_lines", "last_line_cut"])
def test_metrics_hold_each_iteration_once_after_resume(tiny_cfg, tmp_path, cut_line):
    run = tmp_path / "run"
    train_from_config(tiny_cfg(*NO_EVAL))
    # As if killed while writing model_final: the log has iterations 1-4, the marker names 2
    # (and, when cut_line, the kill also cut the last metrics line short).
    (run / "model_final.pth").unlink()
    (run / LAST_CHECKPOINT).write_text("model_0000002.pth")
    if cut_line:
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"kind": "train", "it')
    train_from_config(tiny_cfg(*NO_EVAL, "resume=true"))
    assert [r["iter"] for r in rows(run)] == [1, 2, 3, 4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3, 4]  # each step shown once


@pytest.mark.parametrize("marker", ["missing", "names_a_deleted_file"])
def test_a_lost_marker_resumes_from_the_newest_checkpoint_not_from_scratch(tiny_cfg, tmp_path, marker):
    run = tmp_path / "run"
    train_from_config(tiny_cfg(*NO_EVAL))
    if marker == "missing":
        (run / LAST_CHECKPOINT).unlink()
    else:
        (run / LAST_CHECKPOINT).write_text("model_0000009.pth")
    result = train_from_config(tiny_cfg(*NO_EVAL, "solver.max_iter=6", "resume=true"))
    assert result["iteration"] == 6
    assert "model_final.pth at iteration 4" in log_text(run)
    assert [r["iter"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]

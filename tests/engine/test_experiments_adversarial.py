"""Adversarial cases for the experiment tooling: what a sweep summary, a run folder's result files
and the training log say when runs crashed, were resumed, scored other images or were collected
from several places. Each case once gave a silently wrong answer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from panfpn.engine.sweep.summary import best_job, collect, format_table, objective_decimals, write_summary
from panfpn.engine.training.job import run_training_job

ROOT = Path(__file__).resolve().parents[2]


def _results(pq: float, images: int = 20, digest: str = "a" * 64) -> dict:
    split = {"pq": pq, "sq": 0.8, "rq": 0.5, "n": 3}
    return {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
            "sem_seg": {"mIoU": 0.5}, "image_set": {"count": images, "sha256": digest}}


def _run(path: Path, status: str = "done", pq: float | None = 0.3, overrides: tuple = ("seed=0",), *,
         objective: str = "pq/All", direction: str = "maximize", images: int = 20, digest: str = "a" * 64) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    value = None if pq is None else 100 * pq
    (path / "job_status.json").write_text(json.dumps({
        "status": status, "iteration": 100, "wall_s": 1.0, "error": None,
        "objective": {"name": objective, "direction": direction, "value": value}}))
    if pq is not None:
        (path / "eval_results.json").write_text(json.dumps(_results(pq, images, digest)))
    return path


# ----- the run folder's result files ------------------------------------------------------------

def test_a_final_evaluation_with_an_undefined_class_iou_still_writes_the_result_files(tiny_cfg, tmp_path,
                                                                                      monkeypatch):
    """A class absent from the scored images has IoU NaN; the strict JSON writer refused it after
    the training had finished, so the job raised and left no job_status.json (shown as killed)."""
    from panfpn.engine import train_run

    def trained(cfg):
        return {"iteration": 4, "interrupted": False, "signal": None, "checkpoint": "model_final.pth",
                "losses": {"loss/total": 1.0},
                "eval": {**_results(0.25), "sem_seg": {"mIoU": 0.5, "IoU": [0.5, float("nan")]}}}

    monkeypatch.setattr(train_run, "train_from_config", trained)
    run_training_job(tiny_cfg())
    run = tmp_path / "run"
    assert json.loads((run / "job_status.json").read_text())["status"] == "done"
    assert json.loads((run / "eval_results.json").read_text())["sem_seg"]["IoU"] == [0.5, None]


# ----- the sweep summary ------------------------------------------------------------------------

def test_a_resumed_run_that_is_still_running_is_not_reported_done_with_its_old_metrics(tmp_path):
    """A finished run extended with resume=true keeps the earlier attempt's job_status.json
    ("done") until it ends; while it runs (or after it was killed outright) the summary showed it
    done and could call it the best job."""
    from panfpn.engine.training.run_lock import LOCK_FILE

    sweep = tmp_path / "sweep"
    _run(sweep / "0", pq=0.3)
    extended = _run(sweep / "1", pq=0.5)
    (extended / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "n01", "started": "2026-12-06T10:00:00"}))
    rows, objective = collect([sweep])
    assert rows[1]["status"] == "running" and "pid 4242 on host n01" in rows[1]["error"]
    assert best_job(rows, objective) == "0"


def test_a_lock_left_by_a_killed_training_on_this_host_is_not_shown_running(tmp_path):
    """A training killed outright (SIGKILL, the OOM killer) leaves its train.lock file, no longer
    locked: the summary showed the job "running" for ever. On the host that ran it the kernel's lock
    table tells a held lock from a left file, without taking it; a lock held now stays running."""
    import fcntl
    import socket

    from panfpn.engine.training.run_lock import LOCK_FILE

    sweep = tmp_path / "sweep"
    _run(sweep / "0", pq=0.3)
    for job in ("1", "2"):
        (_run(sweep / job, pq=0.5) / LOCK_FILE).write_text(json.dumps(
            {"pid": 4242, "host": socket.gethostname(), "started": "2026-12-06T10:00:00"}))
    with open(sweep / "2" / LOCK_FILE) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # job 2's training runs
        rows, objective = collect([sweep])
        write_summary([sweep], sweep)  # the page lists why, not only in a row's tooltip
    assert [r["status"] for r in rows] == ["done", "unknown", "running"]
    notes = (sweep / "summary.html").read_text().split('<ul id="notes">')[1]
    assert "job 1 (unknown): <code>train.lock of pid 4242" in notes and "job 2 (running)" in notes
    assert "not held: that training ended without releasing it (killed outright?)" in rows[1]["error"]
    assert "job_status.json and the metrics are of an earlier attempt" in rows[1]["error"]
    assert "running now (it holds the lock)" in rows[2]["error"]
    assert best_job(rows, objective) == "0"


def test_a_job_killed_before_writing_any_result_file_is_a_row_not_dropped(tmp_path):
    """A sweep run with hydra.output_subdir=null (no .hydra record) whose job 1 was killed outright
    mid-training: its folder holds log.txt, metrics.jsonl and checkpoints but none of the files the
    summary looked for, and the job vanished from the table (2 jobs of 3, none said missing)."""
    sweep = tmp_path / "sweep"
    for job in ("0", "2"):
        _run(sweep / job, pq=0.3)
        (sweep / job / ".hydra" / "overrides.yaml").unlink()
    killed = sweep / "1"
    killed.mkdir()
    (killed / "log.txt").write_text("training starts\n")
    (killed / "metrics.jsonl").write_text('{"kind": "train", "iter": 20, "loss/total": 1.5}\n')
    (killed / "last_checkpoint").write_text("model_0000020.pth")
    rows, _ = collect([sweep])
    assert [(r["job"], r["status"]) for r in rows] == [("0", "done"), ("1", "unknown"), ("2", "done")]


def test_two_sweeps_summarised_together_name_their_jobs_apart(tmp_path):
    """Jobs were named by their folder's name only: two sweeps' job 0 and 1 got the same names and
    'best: job 1' (and the page's highlight) matched a job of each sweep."""
    _run(tmp_path / "a" / "0", pq=0.3)
    _run(tmp_path / "a" / "1", pq=0.2)
    _run(tmp_path / "b" / "0", pq=0.1)
    _run(tmp_path / "b" / "1", pq=0.6)
    rows = write_summary([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert [r["job"] for r in rows] == ["a/0", "a/1", "b/0", "b/1"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["best"] == "b/1"
    assert (tmp_path / "out" / "summary.html").read_text().count('class="done best"') == 1


def test_a_run_folder_given_twice_is_one_row(tmp_path):
    """The same folder through a symlink or as the sweep and as one of its runs was two rows."""
    run = _run(tmp_path / "sweep" / "0")
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    rows, _ = collect([tmp_path / "sweep", run, tmp_path / "link"])
    assert len(rows) == 1 and rows[0]["run_dir"] == str(run.resolve())


def test_no_best_job_across_different_objectives(tmp_path):
    """Runs made separately can have different train.objective: the best was picked by comparing
    a PQ with a loss, in the first run's direction."""
    _run(tmp_path / "0", pq=0.3)
    loss = _run(tmp_path / "1", pq=0.2, objective="loss/total", direction="minimize")
    status = json.loads((loss / "job_status.json").read_text())
    status["objective"]["value"] = 95.0  # a large loss: "best" under maximize
    (loss / "job_status.json").write_text(json.dumps(status))
    rows, objective = collect([tmp_path])
    assert best_job(rows, objective) is None
    table = format_table(rows, objective)
    assert "no best job" in table and "pq/All" in table and "loss/total" in table


def test_no_best_job_across_different_image_sets(tmp_path):
    """A run evaluated on 5 images (eval.max_images=5) beat one evaluated on 500 and was called best."""
    _run(tmp_path / "0", pq=0.3, images=500, digest="a" * 64)
    _run(tmp_path / "1", pq=0.6, images=5, digest="b" * 64)
    rows, objective = collect([tmp_path])
    assert [r["images"] for r in rows] == [500, 5]
    assert best_job(rows, objective) is None
    assert "different image sets" in format_table(rows, objective)


def test_jobs_that_tie_on_the_objective_are_shown_as_a_tie(tmp_path):
    """Four tiny jobs all at PQ 0.00 (none learnt anything): 'best pq/All: job 0' and its highlight
    said job 0 was better. The first of equals stays best (Optuna's best_params are the first
    trial's too), and the summary says it is a tie."""
    for job in "0123":
        _run(tmp_path / job, pq=0.0 if job != "3" else None)
    write_summary([tmp_path], tmp_path)
    rows, objective = collect([tmp_path])
    assert best_job(rows, objective) == "0"
    assert "job 0 (tied with job 1, 2: the same value)" in format_table(rows, objective)
    assert "tied with job 1, 2" in (tmp_path / "summary.html").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["tied_with_best"] == ["1", "2"]


def test_summarize_writes_nothing_and_fails_when_no_folder_is_a_run(tmp_path):
    """An empty folder gave exit 1 but first overwrote the summary files in --out with empty ones."""
    out = tmp_path / "out"
    _run(tmp_path / "sweep" / "0")
    write_summary([tmp_path / "sweep"], out)
    before = (out / "summary.json").read_text()
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "tools/summarize.py"), str(tmp_path / "empty"),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no run folders" in proc.stderr
    assert (out / "summary.json").read_text() == before


def test_summarize_names_an_out_it_cannot_write_in_one_line(tmp_path):
    """--out naming a file (or a read-only place): a FileExistsError traceback from mkdir, exit 1."""
    _run(tmp_path / "sweep" / "0")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for out, says in ((tmp_path / "sweep" / "0" / "job_status.json", "not a folder"),
                      (tmp_path / "sweep" / "0" / "job_status.json" / "sub", "cannot write the summary into")):
        proc = subprocess.run([sys.executable, str(ROOT / "tools/summarize.py"), str(tmp_path / "sweep"),
                               "--out", str(out)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{out}" in proc.stderr and says in proc.stderr


def test_summarize_warns_once_about_an_unreadable_file(tmp_path):
    """A run's job_status.json cut short was warned about four times (the files were read again for
    the objective and for the printed table)."""
    run = _run(tmp_path / "0")
    (run / "job_status.json").write_text("{not json")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "tools/summarize.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(f"{run / 'job_status.json'} is not valid JSON") == 1, proc.stderr


# ----- the training log -------------------------------------------------------------------------

def test_logged_lr_is_base_lr_not_a_multiplied_groups(tiny_cfg, tmp_path):
    """With solver.lr_multipliers (Mask2Former's backbone x0.1) the first param group can be the
    backbone's: the start block said "0.0003 (solver.base_lr scaled linearly)", warned about lr
    scaling that never happened, and TensorBoard's lr curve was the backbone's."""
    from panfpn.engine.training.run_log import start_lines
    from panfpn.engine.training.solver import build_optimizer, reported_lr
    from panfpn.engine.train_run import _window_scalars

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    optimizer = build_optimizer(model, torch.optim.SGD, lr=0.003, weight_decay=0.0, lr_multipliers={"0": 0.1})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0003)  # the case: group 0 is multiplied
    assert reported_lr(optimizer) == pytest.approx(0.003)
    scalars = _window_scalars({"l": [1.0]}, {"iter": 1.0, "data": 0.0, "n": 1}, reported_lr(optimizer),
                              torch.device("cpu"), 0)
    assert scalars["lr"] == pytest.approx(0.003)
    cfg = tiny_cfg("solver.base_lr=0.003", "solver.ims_per_batch=2")

    class _Resumed:
        checkpoint, iteration = None, 0

    lines = start_lines(cfg, run_dir=tmp_path, config_file=None, model=model, train_set=[0], val_loader=None,
                        optimizer=optimizer, scheduler=None, resumed=_Resumed(), device=torch.device("cpu"))
    lr_line = next(line for line in lines if line.strip().startswith("lr "))
    assert "0.003 (not scaled)" in lr_line


def test_final_metrics_of_an_extended_run_are_at_their_iterations_not_both_at_step_0(tiny_cfg, tmp_path):
    """TensorBoard's final/* scalars were logged at step 0: a run extended with resume=true had
    two final/loss/total points at step 0 (the old and the new end), one drawn over the other."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from panfpn.engine.train_run import train_from_config

    train_from_config(tiny_cfg("train.eval_period=-1"))
    train_from_config(tiny_cfg("train.eval_period=-1", "solver.max_iter=6", "resume=true"))
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("final/loss/total")] == [4, 6]


def test_an_interrupted_runs_metrics_say_which_iteration_they_were_evaluated_at(tiny_cfg, tmp_path, monkeypatch):
    """A run stopped by a signal writes its last evaluation (an earlier iteration) as
    eval_results.json; the summary showed those metrics as the run's, with nothing saying they
    were not of where it stopped (nor of an earlier attempt's, after a resumed attempt failed)."""
    from panfpn.engine import train_run

    def stopped(cfg):
        return {"iteration": 3, "interrupted": True, "signal": 15, "checkpoint": "model_0000003.pth",
                "losses": {"loss/total": 1.0}, "eval": _results(0.25), "eval_iteration": 2}

    monkeypatch.setattr(train_run, "train_from_config", stopped)
    run_training_job(tiny_cfg())
    run = tmp_path / "run"
    assert json.loads((run / "eval_results.json").read_text())["iteration"] == 2
    rows = write_summary([run], tmp_path / "out")
    assert (rows[0]["status"], rows[0]["iteration"], rows[0]["eval_iteration"]) == ("interrupted", 3, 2)
    assert "2 (run at 3)" in (tmp_path / "out" / "summary.html").read_text()
    assert "eval_iteration" in format_table(rows)


def test_a_training_records_the_iteration_of_its_last_evaluation(tiny_cfg):
    from panfpn.engine.train_run import train_from_config

    assert train_from_config(tiny_cfg("train.eval_period=0"))["eval_iteration"] == 4


def test_config_differences_outside_the_overrides_are_shown(tmp_path):
    """Runs made separately, config.yaml edited between them (solver.max_iter 150 -> 300): their
    overrides differed only in the lr, so the summary's params showed the lr alone."""
    for job, lr, max_iter in (("0", 0.01, 150), ("1", 0.02, 300)):
        run = _run(tmp_path / job, overrides=(f"solver.base_lr={lr}", "seed=0"))
        (run / "config.yaml").write_text(f"output_dir: {run}\nseed: 0\nsolver:\n  base_lr: {lr}\n"
                                         f"  max_iter: {max_iter}\n  steps: [100]\n")
    rows, objective = collect([tmp_path])
    assert [r["params"] for r in rows] == ["solver.base_lr=0.01", "solver.base_lr=0.02"]
    assert [r["config_diff"] for r in rows] == ["solver.max_iter=150", "solver.max_iter=300"]
    assert "job 1: solver.max_iter=300" in format_table(rows, objective)
    write_summary([tmp_path], tmp_path)
    assert "solver.max_iter=300" in (tmp_path / "summary.html").read_text()


def test_an_override_of_one_list_item_explains_that_items_difference(tmp_path):
    """Two runs on COCO photos, one with the train transform's sizes overridden by index
    (data.train.transforms.transforms.0.short_edge_lengths=[160]): the summary said config.yaml
    differed outside the overrides in data.train.transforms.transforms (the list compared whole)."""
    for job, sizes, max_size, max_iter in (("0", [640, 800], 1333, 150), ("1", [160], 256, 300)):
        item = [f"data.train.transforms.transforms.0.short_edge_lengths=[{sizes[0]}]",
                f"data.train.transforms.transforms.0.max_size={max_size}"]
        run = _run(tmp_path / job, overrides=(*item, "seed=0") if job == "1" else ("seed=0",))
        transforms = [{"_target_": "ResizeShortestEdge", "short_edge_lengths": sizes, "max_size": max_size},
                      {"_target_": "RandomHorizontalFlip", "prob": 0.5}]
        (run / "config.yaml").write_text(json.dumps({  # JSON is YAML
            "output_dir": str(run), "seed": 0, "solver": {"max_iter": max_iter},
            "data": {"train": {"transforms": {"transforms": transforms}}}}))
    rows, _ = collect([tmp_path])
    assert rows[1]["params"] == ("data.train.transforms.transforms.0.short_edge_lengths=[160] "
                                 "data.train.transforms.transforms.0.max_size=256")
    # the transform's keys are explained by the overrides; an edit outside them is still shown
    assert [r["config_diff"] for r in rows] == ["solver.max_iter=150", "solver.max_iter=300"]


def test_nan_in_an_older_runs_files_is_no_value_not_a_crash_nor_the_best(tmp_path):
    """Files written before panfpn's JSON was strict can hold NaN literals: summary.json then
    refused to be written (ValueError: the whole summary, and a multirun's callback, failed), and a
    diverged run's NaN objective (loss/total, minimize) came first and stayed the 'best'."""
    for job, loss in (("0", "NaN"), ("1", "2.0")):
        run = tmp_path / job
        run.mkdir()
        (run / "job_status.json").write_text('{"status": "done", "objective": {"name": "loss/total", '
                                             f'"direction": "minimize", "value": {loss}}}}}')
        (run / "eval_results.json").write_text('{"panoptic": {"All": {"pq": NaN, "sq": 0.5, "rq": Infinity}}}')
    rows = write_summary([tmp_path], tmp_path)
    assert [(r["objective"], r["PQ"], r["SQ"], r["RQ"]) for r in rows] == [(None, None, 50.0, None),
                                                                            (2.0, None, 50.0, None)]
    assert json.loads((tmp_path / "summary.json").read_text())["best"] == "1"


def test_a_run_that_skipped_non_finite_steps_says_so_in_the_summary(tiny_cfg, tmp_path, monkeypatch):
    """train.on_nonfinite=skip lets up to train.max_skipped_fraction (half) of the steps be skipped
    for NaN losses; such a run ended 'done' and the summary showed it like a healthy one."""
    from panfpn.engine import train_run

    def diverging(cfg):
        return {"iteration": 4, "interrupted": False, "signal": None, "checkpoint": "model_final.pth",
                "losses": {"loss/total": 1.0, "skipped_steps": 2.0}, "eval": _results(0.25), "eval_iteration": 4}

    monkeypatch.setattr(train_run, "train_from_config", diverging)
    run_training_job(tiny_cfg())
    assert json.loads((tmp_path / "run" / "job_status.json").read_text())["skipped_steps"] == 2
    rows = write_summary([tmp_path / "run"], tmp_path / "out")
    assert rows[0]["skipped_steps"] == 2 and "done (2 steps skipped)" in format_table(rows)
    assert "done (2 steps skipped)" in (tmp_path / "out" / "summary.html").read_text()


def test_unreadable_files_in_a_run_folder_are_named_not_a_traceback(tmp_path):
    """A damaged .hydra/overrides.yaml stopped the whole summary with a YAML traceback (in a
    multirun: the sweep callback); a truncated job_status.json made the row 'unknown' with no word
    why, beyond a log line."""
    bad = tmp_path / "0"
    (bad / ".hydra").mkdir(parents=True)
    (bad / ".hydra" / "overrides.yaml").write_text("foo: [\n")
    (bad / "job_status.json").write_text('{"status": "done"')
    _run(tmp_path / "1")
    rows = write_summary([tmp_path], tmp_path)
    assert [r["status"] for r in rows] == ["unknown", "done"]
    assert "job_status.json" in rows[0]["error"] and "overrides.yaml: unreadable" in rows[0]["error"]


# ----- compare.html -----------------------------------------------------------------------------

def _eval_results(context: dict | None) -> dict:
    per_class = {"1": {"pq": 0.5, "sq": 0.8, "rq": 0.625, "tp": 3, "fp": 1, "fn": 2}}
    out = {**_results(0.5), "panoptic": {**_results(0.5)["panoptic"], "per_class": per_class}}
    return out if context is None else {**out, "context": context}


def test_compare_page_shows_the_settings_the_evaluations_differ_in():
    """compare.html showed PQ deltas of evaluations made with other merge thresholds (or another
    checkpoint) as if only the model changed: eval_results.json did not say what an evaluation ran
    with, so the page could not either."""
    from panfpn.evaluation.compare_page import build_compare, make_runs

    a = {"checkpoint": "/runs/a/model_final.pth", "merge": "Detectron2 rules: overlap_thresh=0.5, score_thresh=0.5"}
    b = {"checkpoint": "/runs/a/model_final.pth", "merge": "Detectron2 rules: overlap_thresh=0.5, score_thresh=0.7"}
    runs = make_runs([_eval_results(a), _eval_results(b), _eval_results(None)], ["a.json", "b.json", "c.json"])
    page = build_compare(runs, {1: "person"})
    assert 'id="settings"' in page and "score_thresh=0.7" in page
    assert "differ in: merge" in page and "not recorded by C" in page


def test_eval_results_json_records_what_the_evaluation_ran_with(tiny_cfg, tmp_path):
    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.engine.train_run import train_from_config

    train_from_config(tiny_cfg("train.eval_period=-1", "solver.max_iter=1", "solver.schedule.steps=[]",
                               "solver.schedule.warmup_iters=0", run_dir=tmp_path / "train"))
    cfg = tiny_cfg(f"weights={tmp_path / 'train' / 'model_final.pth'}", "eval.report=false",
                   "model.merge.score_thresh=0.3", run_dir=tmp_path / "eval")
    evaluate_from_config(cfg, overrides=["model.merge.score_thresh=0.3"])
    context = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["context"]
    assert context["iteration"] == "1" and "score_thresh=0.3" in context["merge"]


def test_no_best_job_across_other_ground_truth_with_the_same_image_ids(tmp_path):
    """Two jobs evaluated on val sets numbered alike (another data.val.seed, another annotation
    file of ids 1..N): the id digests matched and the better PQ was called best."""
    for job, pq, gt in (("0", 0.3, "c"), ("1", 0.6, "d")):
        _run(tmp_path / job, pq=pq)
        results = json.loads((tmp_path / job / "eval_results.json").read_text())
        results["image_set"]["gt_sha256"] = gt * 64
        (tmp_path / job / "eval_results.json").write_text(json.dumps(results))
    rows, objective = collect([tmp_path])
    assert best_job(rows, objective) is None
    assert "different image sets (20 images each, other ids or ground truth;" in format_table(rows, objective)
    assert [r["image_gt"] for r in rows] == ["c" * 64, "d" * 64]


def test_params_compare_override_values_as_hydra_parses_them(tmp_path):
    """A sweep's jobs record `train.progress_bar=False` where a run made alone records the
    `train.progress_bar=false` it was given: summarised together, the params column listed it as
    what told the runs apart (and 0.01 against 1e-2). A deletion given to one run still differs."""
    _run(tmp_path / "sweep" / "0", overrides=("train.progress_bar=False", "solver.base_lr=0.01", "seed=1"))
    _run(tmp_path / "alone", overrides=("train.progress_bar=false", "solver.base_lr=1e-2", "seed=2", "~weights"))
    rows, _ = collect([tmp_path])
    assert [r["params"] for r in rows] == ["seed=2 ~weights", "seed=1"]


def test_the_summary_objective_is_a_name_and_direction_not_the_first_jobs_value(tmp_path):
    """summary.json's top-level objective was job 0's whole record, value included: a sweep whose
    best job is 1 read as if its objective value were job 0's."""
    _run(tmp_path / "0", pq=0.2)
    _run(tmp_path / "1", pq=0.6)
    write_summary([tmp_path], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == {"name": "pq/All", "direction": "maximize"}
    assert summary["best"] == "1"


def test_the_objective_is_shown_with_the_decimals_that_tell_the_best_job(tmp_path):
    """Two loss/total jobs at 4.2888 and 4.2906 (minimize) were both shown as 4.29 in the table and the
    page, which named job 0 best and no tie: as many decimals as tell them apart (2 when they do)."""
    for job, loss in (("0", 4.2888), ("1", 4.2906)):
        run = _run(tmp_path / job, pq=0.0, objective="loss/total", direction="minimize")
        status = json.loads((run / "job_status.json").read_text())
        status["objective"]["value"] = loss
        (run / "job_status.json").write_text(json.dumps(status))
    write_summary([tmp_path], tmp_path)
    rows, objective = collect([tmp_path])
    table = format_table(rows, objective)
    assert "4.289" in table and "4.291" in table and "best loss/total (minimize): job 0" in table
    page = (tmp_path / "summary.html").read_text()
    assert ">4.289<" in page and ">4.291<" in page
    # values that 2 decimals tell apart keep 2 decimals
    assert [objective_decimals(r) for r in ([{"objective": 65.3}, {"objective": 61.3}], rows)] == [2, 3]


def test_a_key_interpolated_from_a_swept_key_is_not_an_other_config_difference(tmp_path):
    """A sweep over solver.max_iter=150,300: config.yaml's solver.schedule.max_iter (${solver.max_iter}
    in hydra's record) differs too, and every job's "other config" listed it as changed outside the
    overrides. A key set by an interpolation of keys follows them; an env resolver does not."""
    for job, max_iter, root in (("0", 150, "/a"), ("1", 300, "/b")):
        run = _run(tmp_path / job, overrides=(f"solver.max_iter={max_iter}", "seed=0"))
        (run / "config.yaml").write_text(f"seed: 0\ndata:\n  root: {root}\nsolver:\n  max_iter: {max_iter}\n"
                                         f"  schedule:\n    max_iter: {max_iter}\n")
        (run / ".hydra" / "config.yaml").write_text(
            "seed: 0\ndata:\n  root: ${oc.env:DATA}\nsolver:\n  max_iter: 100\n"
            "  schedule:\n    max_iter: ${solver.max_iter}\n")
        (run / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    rows, _ = collect([tmp_path])
    assert [r["params"] for r in rows] == ["solver.max_iter=150", "solver.max_iter=300"]
    assert [r["config_diff"] for r in rows] == ["data.root=\"/a\"", "data.root=\"/b\""]


def test_a_sweep_stopped_after_its_first_job_shows_that_jobs_swept_values(tmp_path):
    """-m solver.base_lr=0.01,0.02 stopped by SIGTERM in job 0: the summary had one row whose params
    were empty (no other job differed yet), so which lr it trained with was not shown; the page
    listed the lr as 'shared by all jobs'. hydra's multirun.yaml names the swept keys."""
    _run(tmp_path / "0", status="interrupted", overrides=("solver.base_lr=0.01", "seed=0"))
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - solver.base_lr=0.01,0.02\n    - seed=0\n"
        "    - 'model.merge.score_thresh=choice(0.3,0.6)'\n")
    write_summary([tmp_path], tmp_path)
    rows, objective = collect([tmp_path])
    assert [r["params"] for r in rows] == ["solver.base_lr=0.01"]
    assert "solver.base_lr=0.01" in format_table(rows, objective).splitlines()[1]
    assert json.loads((tmp_path / "summary.json").read_text())["jobs"][0]["params"] == "solver.base_lr=0.01"
    page = (tmp_path / "summary.html").read_text()
    assert "shared by all jobs: <code>seed=0</code>" in page


def test_a_job_without_an_objective_sorts_last_on_the_page_whatever_the_direction(tmp_path):
    """loss/total (minimize): a failed job's empty objective cell sorted as -1e30, first in the
    ascending (best-first) order, above the best job."""
    for job, value in (("0", 3.2), ("1", None)):
        run = _run(tmp_path / job, pq=0.1, objective="loss/total", direction="minimize",
                   status="done" if value is not None else "failed")
        status = json.loads((run / "job_status.json").read_text())
        status["objective"]["value"] = value
        (run / "job_status.json").write_text(json.dumps(status))
    write_summary([tmp_path], tmp_path)
    page = (tmp_path / "summary.html").read_text()
    assert '<td data-v="1e+30">-</td>' in page and '<td data-v="3.2">3.20</td>' in page

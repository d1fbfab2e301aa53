"""What a training tells its log (start block, a metrics line every log_period, evaluation results),
TensorBoard (hparams, per-class PQ, the config), and the warnings about schedules the config changes."""

import io
import json
import re

import numpy as np
import pytest

from panfpn.engine.progress import bar_enabled
from panfpn.engine.training.run_log import MetricsLine, hparam_values
from panfpn.engine.training.solver import WarmupCosine, WarmupMultiStep, schedule_warnings
from panfpn.engine.training.job import check_objective, objective_value, run_training_job
from panfpn.utils.errors import ConfigError


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_auto_only_on_a_terminal():
    assert bar_enabled("auto", _Tty()) and not bar_enabled("auto", io.StringIO())
    assert bar_enabled(True, io.StringIO()) and not bar_enabled(False, _Tty())


def test_metrics_line_has_iteration_eta_losses_lr_times_and_memory():
    line = MetricsLine(100)(20, {"loss/loss_sem_seg": 0.5, "loss/loss_cls": 0.25, "loss/total": 0.75, "lr": 0.002,
                                 "time/iter": 0.5, "time/data": 0.01, "memory/max_allocated_mb": 1234.0})
    assert line.startswith("iter 20/100  eta 0:00:40  loss 0.7500  loss_sem_seg 0.5000  loss_cls 0.2500")
    assert "lr 0.002" in line and "time 0.500 s/it" in line and "data 0.010 s" in line and "max_mem 1234 MB" in line


def test_schedule_warnings_for_warmup_past_the_end_and_late_steps():
    short = schedule_warnings(WarmupCosine(max_iter=60, warmup_iters=100), 60)
    assert len(short) == 1 and "warmup_iters=100 >= solver.max_iter=60" in short[0]
    assert "never reaches base_lr" in short[0]
    late = schedule_warnings(WarmupMultiStep(steps=[50, 60], warmup_iters=10), 60)
    assert late == ["solver.schedule.steps [60] are at or past solver.max_iter=60: never applied"]
    # a schedule built without max_iter cannot refuse steps past the end itself
    assert "steps [70] are at or past" in schedule_warnings(WarmupMultiStep(steps=[50, 70], warmup_iters=10), 60)[0]
    assert "differs from solver.max_iter=60" in schedule_warnings(WarmupCosine(max_iter=100, warmup_iters=0), 60)[0]
    assert schedule_warnings(WarmupMultiStep(steps=[40], warmup_iters=10), 60) == []


def test_hparams_from_overrides_keep_types():
    assert hparam_values(["solver.base_lr=0.001", "model.merge.overlap_thresh=null", "+x=abc", "train.amp=true"]) \
        == {"solver.base_lr": 0.001, "model.merge.overlap_thresh": "null", "x": "abc", "train.amp": True}
    # each value as hydra gives it to the config: YAML 1.1 kept '1e-3' as text (a text column in
    # TensorBoard's HParams beside a run's 0.002) and made 'on' a boolean
    assert hparam_values(["solver.base_lr=1e-3", "solver.weight_decay=5e-4", "data.val.name=on", "x=inf",
                          "solver.schedule.steps=[1, 2]"]) \
        == {"solver.base_lr": 0.001, "solver.weight_decay": 0.0005, "data.val.name": "on", "x": "inf",
            "solver.schedule.steps": "[1, 2]"}


def test_objective_names_are_checked_at_start(tiny_cfg):
    with pytest.raises(ConfigError, match="did you mean 'pq/All'"):
        check_objective(tiny_cfg("train.objective=pq/all"))
    with pytest.raises(ConfigError, match="eval.compute_ap=false"):
        check_objective(tiny_cfg("train.objective=segm/AP", "eval.compute_ap=false"))
    assert "train.eval_period=-1" in check_objective(tiny_cfg("train.eval_period=-1"))
    assert check_objective(tiny_cfg("train.objective=loss/total", "train.eval_period=-1")) is None
    cfg = tiny_cfg("train.objective=sem_seg/mIoU")
    result = {"losses": {"loss/total": 2.5}, "eval": {"panoptic": {s: {"pq": .1, "sq": .2, "rq": .3}
                                                                    for s in ("All", "Things", "Stuff")},
                                                       "sem_seg": {"mIoU": 0.42}}}
    assert objective_value(cfg, result) == pytest.approx(42.0)
    assert objective_value(tiny_cfg("train.objective=loss/total"), result) == 2.5
    assert objective_value(tiny_cfg("train.objective=null"), result) is None


def test_silent_training_log_has_start_block_metrics_lines_eval_and_tensorboard(tiny_cfg, tmp_path, capsys):
    """progress_bar=false: log.txt has the start block, a metrics line every log_period and the
    evaluation; TensorBoard has hparams (overrides + final metrics), per-class PQ and the config."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)  # what hydra writes for a job launched with these overrides
    (run / ".hydra" / "overrides.yaml").write_text("- solver.base_lr=0.01\n- train.log_period=2\n")
    result = run_training_job(tiny_cfg("train.log_period=2", "solver.schedule.warmup_iters=10",
                                       "eval.compute_ap=false"))
    log = (run / "log.txt").read_text()
    block = log[log.index("training starts"):]
    for label in ("run folder", "config", "model", "train data", "val data", "batch", "lr", "schedule",
                  "device", "amp", "seed", "resume"):
        assert re.search(rf"^  {label} +\S", block, re.M), label
    assert f"run folder  {run}" in block and "1 process x 2 images = global batch 2" in block
    assert "warmup_iters=10 >= solver.max_iter=4" in log  # the cut-short warmup is a warning
    assert "lr scaling applied" in log
    # said once: an INFO line before the start block said it too ("lr scaled linearly 0.002 -> 0.001")
    assert "lr scaled linearly" not in log and log.count("solver.ims_per_batch=4") == 2  # batch line, warning
    lines = re.findall(r"iter (\d+)/4  eta \S+  loss [\d.]+  loss_sem_seg .* lr \S+  time \S+ s/it  data \S+ s  "
                       r"max_mem \d+ MB", log)
    assert lines == ["2", "4"]
    assert "evaluation at iteration 4" in log and "mIoU" in log
    assert (run / "config.yaml").is_file() and (run / "eval_results.json").is_file()
    assert result["objective"] == pytest.approx(100 * result["eval"]["panoptic"]["All"]["pq"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    per_class = {t for t in acc.Tags()["scalars"] if t.startswith("pq_per_class/")}
    assert per_class == {f"pq_per_class/{n}" for n in ("ellipse", "rectangle", "triangle", "ring", "gradient",
                                                        "stripes", "checker", "speckle")}
    # the values are the evaluation's per-class PQ (percent)
    ellipse = next(r for c, r in result["eval"]["panoptic"]["per_class"].items() if int(c) == 1)
    assert acc.Scalars("pq_per_class/ellipse")[-1].value == pytest.approx(100 * ellipse["pq"])
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert b"max_iter: 4" in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    # no experiment record: TensorBoard builds the HParams tab from every run's session and scalars
    # (test_the_hparams_tab_joins_the_hparams_and_metrics_of_every_run_of_a_logdir)
    assert "_hparams_/experiment" not in content and "_hparams_/session_end_info" in content
    assert "final/pq/All" in acc.Tags()["scalars"]
    hparams = session.session_start_info.hparams
    assert hparams["solver.base_lr"].number_value == 0.01 and hparams["train.log_period"].number_value == 2


def test_progress_without_a_bar_logs_lines_and_a_summary():
    import logging

    from panfpn.engine.progress import Progress

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("panfpn")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for i in Progress(range(3), desc="eval", bar=False, every_s=0.0):
            if i == 1:
                break  # evaluate() stops early (eval.max_images, a signal): the summary still comes
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records[0].startswith("eval: 1/3 batches, ") and "eta" in records[0]
    assert records[-1] == "eval: 2 batches in 0:00:00"


@pytest.mark.parametrize("error,status", [(RuntimeError("CUDA out of memory"), "failed"),
                                          (KeyboardInterrupt(), "interrupted")])
def test_job_status_is_written_when_the_training_raises(tiny_cfg, tmp_path, monkeypatch, error, status):
    import json

    from panfpn.engine import train_run

    def boom(cfg):
        raise error

    monkeypatch.setattr(train_run, "train_from_config", boom)
    with pytest.raises(type(error)):
        run_training_job(tiny_cfg())
    record = json.loads((tmp_path / "run" / "job_status.json").read_text())
    assert record["status"] == status and record["error"].startswith(type(error).__name__)
    assert record["objective"] == {"name": "pq/All", "direction": "maximize", "value": None}
    assert not (tmp_path / "run" / "eval_results.json").exists()


def test_a_resumed_run_shows_its_own_hparams_and_config_in_tensorboard(tiny_cfg, tmp_path):
    """TensorBoard keeps the first hparams record it reads in a run: after `resume=true
    solver.max_iter=4` the HParams tab paired the first attempt's solver.max_iter=2 with the final
    metrics of iteration 4; and both attempts' configs were texts at step 0 (which is current?).
    Read with TensorBoard's own multiplexer, as its server does."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    common = ("solver.schedule.steps=[1]", "train.eval_period=-1")
    (run / ".hydra" / "overrides.yaml").write_text("- solver.max_iter=2\n")
    run_training_job(tiny_cfg("solver.max_iter=2", *common))
    (run / ".hydra" / "overrides.yaml").write_text("- solver.max_iter=4\n- resume=true\n")
    run_training_job(tiny_cfg("solver.max_iter=4", "resume=true", *common))

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run / "tensorboard"))
    mux.Reload()
    [(name, tags)] = mux.PluginRunToTagToContent("hparams").items()
    session = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["solver.max_iter"].number_value == 4
    assert [e.step for e in mux.Tensors(name, "final/loss/total")] == [2, 4]  # each end, as before
    assert [e.step for e in mux.Tensors(name, "loss/total")] == [1, 2, 3, 4]  # the rewritten file kept its events
    configs = mux.Tensors(name, "config/text_summary")
    assert [e.step for e in configs] == [1, 3]  # each attempt's from its first iteration on
    assert b"max_iter: 4" in configs[-1].tensor_proto.string_val[0]


def test_drop_hparams_keeps_every_other_event_of_a_file_cut_short(tmp_path):
    """The earlier attempt's event file, its last record cut short by a kill: the rewrite keeps
    every whole event (read back by TensorBoard) and only the hparams records go."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    from panfpn.engine.training.metrics_log import drop_hparams

    writer = SummaryWriter(str(tmp_path))
    for summary in hparams({"seed": 1}, {"final/pq/All": 5.0}):
        writer.file_writer.add_summary(summary)
    for step in range(1, 301):
        writer.add_scalar("loss/total", 1.0 / step, step)
    writer.add_image("val/panoptic/0", np.zeros((4, 6, 3), np.uint8), 300, dataformats="HWC")
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00")  # a record cut short
    assert drop_hparams(path) and not drop_hparams(path)  # the second time: nothing to remove
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/total")] == list(range(1, 301))
    assert [e.step for e in acc.Images("val/panoptic/0")] == [300]
    assert "hparams" not in acc.Tags().get("tensors", []) and not any(
        t.startswith("_hparams_") for t in acc.summary_metadata)


def test_a_fresh_start_in_a_used_folder_hides_all_of_the_earlier_run_in_tensorboard(tmp_path):
    """resume=false into a folder of an earlier run: its events from step 1 on were purged, but not
    those at step 0 (its config text: two configs showed, the earlier one first)."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    from panfpn.engine.training.metrics_log import MetricsLog

    earlier = MetricsLog(tmp_path, resumed_at=0)
    earlier.text("config", "solver:\n  max_iter: 8", step=0)  # where runs before this change wrote it
    earlier.scalars(8, {"loss/total": 1.0})
    earlier.close()
    fresh = MetricsLog(tmp_path, resumed_at=0)
    fresh.text("config", "solver:\n  max_iter: 2", step=1)
    fresh.scalars(1, {"loss/total": 2.0})
    fresh.close()
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path / "tensorboard"))
    mux.Reload()
    configs = mux.Tensors(".", "config/text_summary")
    assert [(e.step, b"max_iter: 2" in e.tensor_proto.string_val[0]) for e in configs] == [(1, True)]
    assert [e.step for e in mux.Tensors(".", "loss/total")] == [1]


@pytest.mark.parametrize("objective,scores", [
    ("cityscapes_ap/AP", {"cityscapes_ap": {"AP": None, "AP50": None, "per_class": {}}}),
    ("cityscapes_sem_seg/iIoU", {"cityscapes_sem_seg": {"IoU": 0.5, "iIoU": float("nan"), "IoU_sup": 0.75,
                                                         "iIoU_sup": float("nan")}}),
    ("bbox/APs", {"bbox": {"AP": 0.25, "AP50": 0.5, "AP75": 0.25, "APs": -1.0, "APm": 0.25, "APl": 0.25}})])
def test_an_objective_undefined_on_the_scored_images_leaves_a_done_run(objective, scores, tmp_path, monkeypatch,
                                                                       caplog):
    """A Cityscapes AP with no instance in the scored images (None), an iIoU of NaN, a COCO APs of -1
    (no small object): the finished training raised "config key 'train.objective' ... not a metric of
    this run", so job_status.json said failed and eval_results.json was never written; it is a done run
    that returns no objective (as one without an evaluation), with a warning naming the key."""
    from config_helpers import compose_config

    from panfpn.engine import train_run

    split = {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 1}
    evaluated = {"panoptic": {"All": split, "Things": split, "Stuff": split, "per_class": {}},
                 "sem_seg": {"mIoU": 0.5}, **scores}
    monkeypatch.setattr(train_run, "train_from_config", lambda cfg: {
        "iteration": 4, "interrupted": False, "signal": None, "checkpoint": None, "losses": {"loss/total": 1.0},
        "eval": evaluated, "eval_iteration": 4})
    cfg = compose_config(["experiment=cityscapes_r50", f"train.objective={objective}"], output_dir=tmp_path)
    with caplog.at_level("WARNING", logger="panfpn"):
        result = run_training_job(cfg)
    assert result["objective"] is None
    assert f"config key 'train.objective': {objective} is undefined in the final evaluation" in caplog.text
    status = json.loads((tmp_path / "job_status.json").read_text())
    assert status["status"] == "done" and status["objective"]["value"] is None
    assert json.loads((tmp_path / "eval_results.json").read_text())["sem_seg"]["mIoU"] == 0.5


def test_an_interrupted_runs_final_metrics_are_at_the_iteration_of_their_evaluation(tmp_path):
    """A run stopped at iteration 7 whose last evaluation was at 4: TensorBoard had final/pq/All at
    step 7, a step no evaluation was made at (the summary's eval_iteration says 4). The losses are
    the last window's, at 7. Read with TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from panfpn.engine.training.metrics_log import MetricsLog
    from panfpn.engine.training.run_log import log_end

    split = {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 1}
    log = MetricsLog(tmp_path, resumed_at=0)
    evaluated = {"panoptic": {s: split for s in ("All", "Things", "Stuff")}, "sem_seg": {"mIoU": 0.5}}
    log_end(log, tmp_path, {"iteration": 7, "eval_iteration": 4, "losses": {"loss/total": 2.5}, "eval": evaluated})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("final/pq/All")] == [(4, 50.0)]
    assert [(e.step, e.value) for e in events.Scalars("final/sem_seg/mIoU")] == [(4, 50.0)]
    assert [(e.step, e.value) for e in events.Scalars("final/loss/total")] == [(7, 2.5)]


def test_a_fresh_start_in_a_used_folder_removes_the_earlier_runs_results(tiny_cfg, tmp_path):
    """A sweep re-launched without resume=true into its folder: a job that then failed, or ran with
    train.eval_period=-1, kept the earlier run's eval_results.json, and the summary showed its
    metrics for the new run (a failed row with PQ, a done row with another config's PQ)."""
    from panfpn.engine.sweep.summary import collect

    run = tmp_path / "run"
    run.mkdir()
    split = {"pq": 0.9, "sq": 0.9, "rq": 0.9, "n": 1}
    (run / "eval_results.json").write_text(json.dumps({
        "panoptic": {s: split for s in ("All", "Things", "Stuff")}, "sem_seg": {"mIoU": 0.9}, "iteration": 4}))
    run_training_job(tiny_cfg("train.eval_period=-1", "train.objective=loss/total", "solver.max_iter=1",
                              "solver.schedule.steps=[]", "solver.schedule.warmup_iters=0"))
    assert not (run / "eval_results.json").exists()
    [row], _ = collect([run])
    assert row["status"] == "done" and row["PQ"] is None and row["objective"] is not None


def test_the_hparams_tab_joins_the_hparams_and_metrics_of_every_run_of_a_logdir(tmp_path):
    """Each run wrote an HParams experiment record; TensorBoard takes the first it finds for the whole
    logdir, so `tensorboard --logdir <sweep>` lacked the hparams and metrics of the other runs (a job
    re-run with resume=true: no `resume` column; a first job that never evaluated: no final/pq/All).
    Read with TensorBoard's own HParams backend, as its server does."""
    from panfpn.engine.training.metrics_log import MetricsLog

    for run, params, metrics in (("0", {"solver.base_lr": 0.01}, {"final/loss/total": 2.0}),
                                 ("1", {"solver.base_lr": 0.02, "resume": True},
                                  {"final/loss/total": 1.5, "final/pq/All": 40.0})):
        log = MetricsLog(tmp_path / run, resumed_at=0)
        log.hparams(params, metrics, step=4)
        log.close()
    experiment = _hparams_experiment(tmp_path)
    assert {h.name for h in experiment.hparam_infos} == {"solver.base_lr", "resume"}
    assert {"final/loss/total", "final/pq/All"} <= {m.name.tag for m in experiment.metric_infos}


def _hparams_experiment(logdir):
    """The HParams experiment TensorBoard's own backend makes of ``logdir``, as its server does."""
    import warnings

    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                                                            data_provider=provider))
    ctx = context.RequestContext()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backend.experiment_from_metadata(ctx, "", True, backend.hparams_metadata(ctx, ""),
                                                backend.hparams_from_data_provider(ctx, "", None))


def test_boolean_hparams_are_booleans_in_tensorboard(tmp_path):
    """torch's hparams() tests for a number before a bool (a bool is an int): `train.amp=true` was
    the number 1 in TensorBoard's HParams (a float column of 0 and 1). Read back with TensorBoard's
    own multiplexer and HParams backend."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    from panfpn.engine.training.metrics_log import MetricsLog

    for run, amp in (("0", True), ("1", False)):
        log = MetricsLog(tmp_path / run, resumed_at=0)
        log.hparams(hparam_values([f"train.amp={str(amp).lower()}", "solver.base_lr=0.01", "seed=3"]),
                    {"final/loss/total": 1.0}, step=2)
        log.close()
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    contents = {name.split("/")[0]: tags for name, tags in mux.PluginRunToTagToContent("hparams").items()}
    for run, amp in (("0", True), ("1", False)):
        content = contents[run]["_hparams_/session_start_info"]
        values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert values["train.amp"].WhichOneof("kind") == "bool_value" and values["train.amp"].bool_value is amp
        assert values["solver.base_lr"].number_value == 0.01 and values["seed"].number_value == 3
    infos = {h.name: h for h in _hparams_experiment(tmp_path).hparam_infos}
    assert infos["train.amp"].type == api_pb2.DATA_TYPE_BOOL
    assert [v.bool_value for v in infos["train.amp"].domain_discrete.values] == [False, True]
    assert infos["solver.base_lr"].type == api_pb2.DATA_TYPE_FLOAT64


def test_job_status_wall_time_adds_up_the_attempts_of_a_resumed_run(tiny_cfg, tmp_path, monkeypatch):
    """job_status.json's wall_s was the last attempt's: a run resumed (a re-launched sweep's job)
    after 2 hours showed the minutes of its last attempt, and so did the summary's wall_s. It is
    now the run's total over its attempts, attempt_wall_s the attempt's own; a fresh start counts
    from 0 again."""
    from panfpn.engine import train_run
    from panfpn.engine.sweep.summary import collect

    run = tmp_path / "run"
    common = ("solver.schedule.steps=[1]", "train.eval_period=-1")
    run_training_job(tiny_cfg("solver.max_iter=2", *common))
    first = json.loads((run / "job_status.json").read_text())
    assert first["attempts"] == 1 and first["wall_s"] == first["attempt_wall_s"] > 0
    run_training_job(tiny_cfg("solver.max_iter=4", "resume=true", *common))
    second = json.loads((run / "job_status.json").read_text())
    assert second["status"] == "done" and second["iteration"] == 4 and second["attempts"] == 2
    assert 0 < second["attempt_wall_s"] < second["wall_s"]
    assert second["wall_s"] == pytest.approx(first["wall_s"] + second["attempt_wall_s"], abs=2e-3)
    [row], _ = collect([run])
    assert row["wall_s"] == second["wall_s"]  # the summary's wall_s: the whole run's

    def boom(cfg):
        raise RuntimeError("CUDA out of memory")

    # an attempt that fails counts too; a record of an older panfpn (wall_s: its attempt's) is its start
    (run / "job_status.json").write_text(json.dumps({"status": "done", "wall_s": 100.0, "iteration": 4}))
    with monkeypatch.context() as patch, pytest.raises(RuntimeError):
        patch.setattr(train_run, "train_from_config", boom)
        run_training_job(tiny_cfg("solver.max_iter=6", "resume=true", *common))
    failed = json.loads((run / "job_status.json").read_text())
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert failed["wall_s"] == pytest.approx(100.0 + failed["attempt_wall_s"], abs=2e-3)

    run_training_job(tiny_cfg("solver.max_iter=2", *common))  # resume=false: a new run in the folder
    fresh = json.loads((run / "job_status.json").read_text())
    assert fresh["attempts"] == 1 and fresh["wall_s"] == fresh["attempt_wall_s"]

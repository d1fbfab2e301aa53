"""Bad input to tools/train.py, eval.py, predict.py and merge.py gets one clear line, early, and
the right one (panfpn/engine/tool_errors.py):

- a known input error (ConfigError, WeightsError, a missing named input ...) prints
  ``tools/<x>.py: <message>`` on stderr and exits 2, no traceback; HYDRA_FULL_ERROR=1 keeps the
  full trace, and a bug keeps its traceback; tools/train.py still writes job_status.json;
- training and evaluation check their data files before building the model or fetching weights;
- a failed download of torchvision weights is one WeightsError naming the weights, the URL and
  where torch looks for the file;
- coco_panoptic_folder with a data.root without annotations names the root and the files tried;
- tools/eval.py with a missing weights file says so first, nothing said about its contents;
- tools/merge.py refuses a typed key it never reads (another tool's), one line, exit 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
import urllib.error
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from config_helpers import compose_config
from merge_helpers import write_tiny_merge_inputs
from panfpn.engine import tool_errors
from panfpn.engine.tool_errors import input_error, input_errors_exit_2
from panfpn.utils.errors import ConfigError
from process_helpers import run

ROOT = Path(__file__).resolve().parents[2]


def _tool(tool: str, args: list[str], tmp_path: Path, **env: str):
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *args], cwd=tmp_path, env=environ,
               capture_output=True, text=True, timeout=240)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ---- the classification ----

def _raised_here(err: BaseException) -> BaseException:
    try:
        raise err
    except BaseException as caught:  # noqa: BLE001 - the test wants the raised object, traceback set
        return caught


def test_input_errors_are_ours_and_named_bugs_are_not(tmp_path):
    from hydra.errors import InstantiationException

    from panfpn.data.folder import find_split_json
    from panfpn.data.validate import check_categories

    assert input_error(ConfigError("config key 'x'")) is not None
    with pytest.raises(ValueError) as annotations:  # an annotation file that breaks a rule
        check_categories([], tmp_path / "panoptic_train.json")
    assert input_error(annotations.value) is annotations.value
    with pytest.raises(FileNotFoundError) as ours:  # raised by panfpn's check of a named input
        find_split_json(tmp_path, "train")
    assert input_error(ours.value) is ours.value
    with pytest.raises(FileNotFoundError) as os_error:  # the OS's own (errno): a bug's, keeps its traceback
        open(tmp_path / "missing")
    assert input_error(os_error.value) is None
    assert input_error(_raised_here(FileNotFoundError("not raised by panfpn"))) is None
    assert input_error(RuntimeError("a bug")) is None
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = ours.value
    assert input_error(wrapped) is ours.value  # hydra's instantiate: told by its cause


def test_an_error_from_a_dataloader_worker_is_told_by_its_own_line():
    from panfpn.data.image_io import ImageReadError

    sent = ImageReadError("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most "
                          "recent call last):\n  File \"x.py\", line 1, in f\npanfpn.data.image_io.ImageReadError: "
                          "a.jpg: cannot identify image file\n")
    assert tool_errors.error_line("train", sent) == ("tools/train.py: panfpn.data.image_io.ImageReadError: a.jpg: "
                                                     "cannot identify image file")


def test_known_error_exits_2_with_one_line_on_rank_0_only(monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for rank, printed in (("0", "tools/eval.py: config key 'weights' is bad\n"), ("1", "")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as done, input_errors_exit_2("eval"):
            raise ConfigError("config key 'weights' is bad")
        assert done.value.code == 2 and capsys.readouterr().err == printed
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError), input_errors_exit_2("eval"):  # a bug: as it is
        raise RuntimeError("a bug")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError), input_errors_exit_2("eval"):  # the full trace asked for
        raise ConfigError("config key 'weights' is bad")
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    monkeypatch.setattr(tool_errors, "in_multirun", lambda: True)
    with pytest.raises(ConfigError), input_errors_exit_2("train"):  # hydra's sweep callback records the job
        raise ConfigError("config key 'weights' is bad")


def test_another_ranks_input_error_exits_2_with_rank_0_naming_it(monkeypatch, capsys):
    """A rank that ends because another one hit an input error (a bad image in its shard: that rank
    exits 2) exits 2 too, rank 0 with one line naming the rank and its error (not its own closed
    connection). Before, it was no input error: hydra's traceback and exit 1 (tools/train.py)."""
    from panfpn.engine.rank_errors import OtherRankFailedError

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    closed = RuntimeError("Connection closed by peer")
    told = OtherRankFailedError([(1, "BadImageError: image id 5 of a.json: b.jpg: cannot read", None, True)], closed)
    for rank, printed in (("0", "tools/train.py: rank 1 failed: BadImageError: image id 5 of a.json: b.jpg: "
                                "cannot read\n"), ("2", "")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as done, input_errors_exit_2("train"):
            raise told
        assert done.value.code == 2 and capsys.readouterr().err == printed
    monkeypatch.setenv("RANK", "0")
    bug = OtherRankFailedError([(1, "ValueError: a bug", None, False)], closed)
    stopped = OtherRankFailedError([(1, "stopped by SIGTERM", 15, False)], closed)
    assert (bug.exit_status(), stopped.exit_status(), told.exit_status()) == (1, 143, 2)
    with pytest.raises(OtherRankFailedError), input_errors_exit_2("train"):  # another rank's bug: its traceback
        raise bug
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(OtherRankFailedError), input_errors_exit_2("train"):  # the full trace asked for
        raise told


# ---- tools, as run ----

def test_eval_missing_weights_one_line_exit_2_and_nothing_said_of_its_contents(tmp_path):
    done = _tool("eval", ["weights=/no/such.pth", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_line(done.stderr) == ("tools/eval.py: weights file /no/such.pth does not exist (and is not a "
                                      "torchvision weights name like 'ResNet50_Weights.IMAGENET1K_V1')")
    log = (tmp_path / "run" / "eval.log").read_text() if (tmp_path / "run" / "eval.log").exists() else ""
    assert "record no model" not in done.stdout + done.stderr + log
    full = _tool("eval", ["weights=/no/such.pth", f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path,
                 HYDRA_FULL_ERROR="1")
    assert full.returncode == 1 and "Traceback" in full.stderr and "/no/such.pth does not exist" in full.stderr


def test_train_missing_data_root_one_line_exit_2_and_job_status_failed(tmp_path):
    missing = tmp_path / "no_coco"
    run_dir = tmp_path / "run"
    done = _tool("train", ["data=coco_panoptic", f"data.root={missing}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_line(done.stderr)
    assert line.startswith("tools/train.py: COCO panoptic annotations: ") and str(missing) in line
    status = json.loads((run_dir / "job_status.json").read_text())
    assert status["status"] == "failed" and str(missing) in status["error"]


def test_train_folder_without_annotations_job_status_says_what_was_looked_for(tmp_path):
    (tmp_path / "data").mkdir()
    run_dir = tmp_path / "run"
    done = _tool("train", ["data=coco_panoptic_folder", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"],
                 tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_line(done.stderr).startswith(f"tools/train.py: no train annotations under data.root={tmp_path / 'data'}")
    status = json.loads((run_dir / "job_status.json").read_text())
    assert status["error"].startswith(f"FileNotFoundError: no train annotations under data.root={tmp_path / 'data'}: "
                                      "tried ")  # not OmegaConf's wrapper


def test_predict_missing_input_one_line_exit_2(tmp_path):
    done = _tool("predict", ["weights=/no/such.pth", f"predict.input={tmp_path / 'nothing'}",
                             f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_line(done.stderr).startswith(f"tools/predict.py: predict input '{tmp_path / 'nothing'}'")


def test_train_a_schedule_step_past_max_iter_one_line_exit_2_and_job_status_failed(tmp_path):
    """``solver.schedule.steps`` past ``solver.max_iter`` (a Detectron2 user shortening a preset with
    ``solver.max_iter=2``): the schedule's constructor refuses it. Before, a single run exited 1 with
    hydra's ``Error in call to target ...WarmupMultiStep`` block (a multirun's dry start already said
    it in one line); now one line, exit 2, as docs/training.md promises for a bad config value."""
    from tests.engine.conftest import TINY

    run_dir = tmp_path / "run"
    done = _tool("train", [*TINY, "solver.max_iter=2", "train.eval_period=-1", "train.objective=null",
                           f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_line(done.stderr) == ("tools/train.py: config key 'solver.schedule': ValueError: "
                                      "solver.schedule.steps [3] go past solver.max_iter=2")
    status = json.loads((run_dir / "job_status.json").read_text())
    assert status["status"] == "failed" and "go past solver.max_iter=2" in status["error"]
    assert not list(run_dir.glob("model_*.pth"))


def test_train_an_optimizer_argument_the_optimizer_lacks_is_a_config_error(tmp_path):
    """``solver.optimizer._target_=torch.optim.AdamW`` over an SGD solver keeps its ``momentum``: the
    optimizer's TypeError was a bug's traceback (exit 1); it is a ConfigError naming the section."""
    from panfpn.engine.train_run import train_from_config
    from tests.engine.conftest import TINY

    cfg = compose_config([*TINY, "solver.optimizer._target_=torch.optim.AdamW"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^config section 'solver' \(optimizer, parameter groups, schedule\): "
                                          r"TypeError: .*unexpected keyword argument 'momentum'") as err:
        train_from_config(cfg)
    assert input_error(err.value) is err.value and isinstance(err.value.__cause__, TypeError)



def _internal_bug(*args, **kwargs):
    raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")


@pytest.mark.parametrize("target", ["panfpn.engine.training.solver.param_groups",
                                    "panfpn.engine.training.solver.WarmupMultiStep.__call__"])
def test_a_bug_in_panfpn_s_solver_code_keeps_its_traceback(monkeypatch, tmp_path, target):
    """A TypeError raised inside panfpn's own code while the solver is built (the parameter groups, the
    schedule's lr factor LambdaLR asks for at once) is a bug, not a config value: it was a one-line
    ConfigError ('config section solver') with its traceback hidden, in the job and in a multirun's dry
    start; now both raise it as it is (not an input error: exit 1 with its traceback)."""
    import torch

    from panfpn.engine.train_run import _build_solver
    from panfpn.engine.training.dry_start import build_solver_cheaply
    from panfpn.modeling.build import instantiate_model
    from tests.engine.conftest import TINY

    cfg = compose_config(list(TINY), output_dir=tmp_path / "run")
    model = instantiate_model(cfg)
    monkeypatch.setattr(target, _internal_bug)
    for build in (lambda: _build_solver(cfg, model, torch.device("cpu")), lambda: build_solver_cheaply(cfg, model)):
        with pytest.raises(TypeError, match="unsupported operand") as err:
            build()
        assert input_error(err.value) is None
        assert err.value.__traceback__ is not None and any(
            frame.f_code is _internal_bug.__code__ for frame, _ in traceback.walk_tb(err.value.__traceback__))



def test_a_start_check_warning_is_said_once_in_the_tool_s_format_on_stderr_and_in_log_txt(tmp_path):
    """train.eval_period=-1 with the default train.objective: the start check warns before the run's
    logging was set up. Before, hydra's handler printed it on stdout in its format ("[date][panfpn]
    [WARNING] - ..."), and log.txt lacked it (hydra's train.log had it)."""
    from tests.engine.conftest import TINY

    run_dir = tmp_path / "run"
    done = _tool("train", [*TINY, "solver.max_iter=2", "solver.schedule.steps=[1]", "train.eval_period=-1",
                           f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    said = "train.objective=pq/All needs an evaluation but train.eval_period=-1"
    assert said not in done.stdout, done.stdout
    lines = [line for line in done.stderr.splitlines() if said in line]
    assert len(lines) == 1 and re.match(r"\[\d\d:\d\d:\d\d WARNING\] train\.objective", lines[0]), done.stderr[-3000:]
    log = (run_dir / "log.txt").read_text().splitlines()
    assert sum(said in line for line in log) == 1 and said in log[0], log[:3]


def test_a_job_s_log_txt_starts_with_its_own_start_lines_only(tmp_path):
    """What a job logs before its log.txt opens is written there, not what an earlier job of the same
    process (a multirun) logged before it failed at its start."""
    import logging

    from panfpn.engine.job_setup import setup_logging, start_job_logging

    logger = logging.getLogger("panfpn")
    before = list(logger.handlers)
    try:
        start_job_logging()
        logger.warning("job 0's start warning")  # job 0 stops before its log.txt
        start_job_logging()
        logger.warning("job 1's start warning")
        setup_logging(tmp_path)
        logger.info("job 1 runs")
    finally:
        for handler in [h for h in logger.handlers if h not in before]:
            logger.removeHandler(handler)
            handler.close()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["job 1's start warning", "job 1 runs"], lines


# ---- data files before the model and its weights ----

def _no_model(*args, **kwargs):
    raise AssertionError("the model was built (its weights fetched) before the data files were checked")


def test_training_checks_its_data_files_before_building_the_model(monkeypatch, tmp_path):
    from panfpn.engine import train_run

    monkeypatch.setattr(train_run, "build_model", _no_model)
    cfg = compose_config(["data=coco_panoptic", f"data.root={tmp_path / 'no_coco'}",
                          "weights=ResNet50_Weights.IMAGENET1K_V1"], output_dir=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"COCO panoptic annotations: .*no_coco"):
        train_run.train_from_config(cfg)


def test_evaluation_checks_its_data_files_before_building_the_model(monkeypatch, tmp_path):
    from panfpn.engine import eval_run

    monkeypatch.setattr(eval_run, "build_inference_model", _no_model)
    cfg = compose_config(["data=coco_panoptic", f"data.root={tmp_path / 'no_coco'}", "weights=/any.pth"],
                         output_dir=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"COCO panoptic annotations: .*no_coco"):
        eval_run.evaluate_from_config(cfg, [])


def test_a_failed_download_is_one_weights_error(monkeypatch, tmp_path):
    import torchvision

    from panfpn.modeling.weights import WeightsError, load_weights
    from panfpn.modeling.zoo import panoptic_fpn_r50

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    model = panoptic_fpn_r50()
    with pytest.raises(WeightsError) as err:
        load_weights(model, "ResNet50_Weights.IMAGENET1K_V1")
    text = str(err.value)
    assert text.startswith("torchvision weights ResNet50_Weights.IMAGENET1K_V1 could not be downloaded from "
                           "https://download.pytorch.org/models/resnet50-0676ba61.pth (URLError: ")
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in text
    assert "weights=/path/to/resnet50-0676ba61.pth" in text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # not urllib's chained traceback


# ---- a wrong dataset folder ----

def test_a_folder_without_annotations_is_named_with_the_files_tried(tmp_path):
    from panfpn.engine.config import validate_config

    (tmp_path / "images").mkdir()
    cfg = compose_config(["data=coco_panoptic_folder", f"data.root={tmp_path}"], output_dir=tmp_path / "run")
    with pytest.raises(Exception) as err:
        validate_config(cfg)
    known = input_error(err.value)
    assert known is not None, err.value
    ann = tmp_path / "annotations"
    assert str(known) == (f"no train annotations under data.root={tmp_path}: tried {ann}/panoptic_train.json, "
                          f"{ann}/panoptic_train2017.json; set data.train.json_file=PATH for another layout")
    assert OmegaConf.select(compose_config(["data=coco_panoptic_folder"]), "data.metadata.root") is None


# ---- tools/merge.py: another tool's keys ----

@pytest.mark.parametrize("via_hydra_main", [False, True])
def test_merge_refuses_keys_it_does_not_read(tmp_path, via_hydra_main):
    args = [*write_tiny_merge_inputs(tmp_path, (1,)), "merge.workers=0", "device=cpu",
            f"merge.output_dir={tmp_path / 'out'}", "eval.batch_size=8", "solver.max_iter=3"]
    if via_hydra_main:
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    done = _tool("merge", args, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_line(done.stderr) == ("tools/merge.py does not read eval.batch_size=8, "
                                      "solver.max_iter=3: it reads merge.*, device and output_dir only, so the run "
                                      "would ignore them; remove them")
    assert not (tmp_path / "out").exists()

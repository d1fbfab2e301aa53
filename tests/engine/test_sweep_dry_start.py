"""The multirun pre-check's dry start (panfpn/engine/training/dry_start.py): before the first job, each
job's model is built on the meta device, its labels, weights, solver and data files checked, so a
sweep whose job 1 would stop at its start is refused before job 0 trains; equal parts are built once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from config_helpers import compose_config
from test_sweep_check import SWEEP_TINY, _refusal_lines, _train_multirun
from test_sweep_precheck_inputs import multirun_config

from panfpn.engine.sweep.precheck import refuse_bad_sweep
from panfpn.engine.training import dry_start
from panfpn.engine.training.dry_start import DryStart

MODELS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "model").glob("*.yaml"))


def _refused(capsys, *overrides: str) -> list[str] | None:
    """The refusal's job lines of ``tools/train.py -m OVERRIDES`` (checked in this process, no job
    run), None when the sweep would start."""
    with multirun_config(*overrides) as cfg:
        try:
            refuse_bad_sweep(cfg)
        except SystemExit as stop:
            assert stop.code in (1, 2)  # 2: every refusal a known input error (test_sweep_exit_status.py)
            return _refusal_lines(capsys.readouterr().err)
    return None


def test_a_bad_model_value_or_weights_file_stops_the_multirun_before_job_0_writes_anything(tmp_path, tiny_args):
    """The model's constructor refuses ResNet depth 51; the weights file does not exist: jobs 1-3 would
    stop at their start, after job 0 trained."""
    sweep = tmp_path / "sweep"
    missing = tmp_path / "no" / "such.pth"
    proc = _train_multirun(tmp_path, *tiny_args, *SWEEP_TINY, "model.backbone.depth=18,51", f"weights=null,{missing}",
                           f"hydra.sweep.dir={sweep}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert not sweep.exists(), sorted(str(p) for p in sweep.rglob("*"))
    assert not list(tmp_path.rglob("metrics.jsonl")) and "Traceback" not in out
    lines = _refusal_lines(proc.stderr)
    assert [line.split(" [")[0] for line in lines] == ["job 1", "job 2", "job 3"], proc.stderr
    assert lines[0].startswith(f"job 1 [model.backbone.depth=18 weights={missing}]: FileNotFoundError: weights file "
                               f"{missing} does not exist"), lines
    depth = "config key 'model.backbone': ValueError: ResNet depth must be one of [18, 34, 50, 101], got 51"
    assert lines[1] == f"job 2 [model.backbone.depth=51 weights=null]: {depth}", lines
    assert lines[2] == f"job 3 [model.backbone.depth=51 weights={missing}]: {depth}", lines  # the model comes first


def test_an_unknown_torchvision_weights_name_is_refused_without_downloading(capsys, tiny_args, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("the sweep check must not fetch weights")

    monkeypatch.setattr("torchvision.models.WeightsEnum.get_state_dict", no_download)
    lines = _refused(capsys, *tiny_args, "weights=ResNet18_Weights.IMAGENET1K_V1,ResNet18_Weights.IMAGENET1K_V9")
    assert lines == ["job 1 [weights=ResNet18_Weights.IMAGENET1K_V9]: config key 'weights': "
                     "'ResNet18_Weights.IMAGENET1K_V9' is neither a file nor a torchvision weights name (KeyError: "
                     "'IMAGENET1K_V9'); e.g. ResNet50_Weights.IMAGENET1K_V1"], lines


def test_a_weights_file_of_another_model_is_refused_and_one_of_this_model_loads(capsys, tiny_args, tmp_path):
    """The file is loaded into a meta-device build of each job's model as the job would load it: a
    checkpoint of another model (a torch file the first-bytes check passes) stopped its job only at
    the job's start; one of the job's own model is accepted."""
    from panfpn.modeling.build import instantiate_model

    other, own = tmp_path / "other.pth", tmp_path / "own.pth"
    torch.save({"model": {"other.weight": torch.zeros(2)}}, other)
    with multirun_config(*tiny_args, "seed=1,2") as cfg:
        torch.save({"model": instantiate_model(cfg).state_dict()}, own)
    lines = _refused(capsys, *tiny_args, f"weights={own},{other}")
    assert len(lines) == 1 and lines[0].startswith(f"job 1 [weights={other}]: WeightsError: "), lines
    assert _refused(capsys, *tiny_args, f"weights={own}", "seed=1,2") is None


def test_a_weights_file_that_is_not_a_torch_file_is_refused(capsys, tiny_args, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    lines = _refused(capsys, *tiny_args, f"weights={text}", "seed=1,2")
    assert lines is not None and len(lines) == 2, lines
    assert lines[0].startswith(f"job 0 [seed=1]: WeightsError: weights={text} cannot be read as a torch weights "
                               "file: it is text"), lines


def test_model_label_counts_that_differ_from_the_data_s_are_refused(capsys, tiny_args):
    """A job trains a 5-class box head on 4 thing classes and fails in its first evaluation (the mask
    head has 4); eval/predict/export refuse its checkpoint (check_labels_fit)."""
    lines = _refused(capsys, *tiny_args, "model.roi_heads.box_head.num_classes=4,5")
    assert lines == ["job 1 [model.roi_heads.box_head.num_classes=5]: model.roi_heads.box_head.num_classes is 5 but "
                     "the label metadata of data.metadata ('synthetic') gives 4"], lines


def test_the_solver_is_built_on_the_meta_model(capsys, tiny_args):
    """The optimizer's and the schedule's constructors refuse values the config schema lets through."""
    lines = _refused(capsys, *tiny_args, "solver.optimizer.momentum=0.9,-1", "solver.schedule.steps=[3],[50]")
    assert lines is not None and [line.split(" [")[0] for line in lines] == ["job 1", "job 2", "job 3"], lines
    by_job = {line.split(" [")[0]: line.split("]: ", 1)[1] for line in lines}
    momentum = "config section 'solver' (optimizer, parameter groups, schedule): ValueError: Invalid momentum value: -1"
    steps = "config key 'solver.schedule': ValueError: solver.schedule.steps [50] go past solver.max_iter=4"
    for line in lines:  # the optimizer is built before the schedule, as the job builds them
        assert by_job[line.split(" [")[0]] == (momentum if "momentum=-1" in line else steps), lines


def _folder_dataset(root: Path) -> None:
    """A COCO-panoptic folder (docs/data.md layout) with two categories and no images."""
    categories = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}]
    for split in ("train", "val"):
        (root / "annotations" / f"panoptic_{split}").mkdir(parents=True)
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": categories}))


def test_missing_data_files_are_refused_naming_the_key(capsys, tiny_args, tmp_path):
    root = tmp_path / "data"
    _folder_dataset(root)
    folder = ["data=coco_panoptic_folder", f"data.root={root}", "data.num_workers=0"]
    assert _refused(capsys, *folder, "seed=1,2") is None
    missing = tmp_path / "gone"
    lines = _refused(capsys, *folder, f"data.val.image_dir={root / 'images' / 'val'},{missing}")
    assert lines == [f"job 1 [data.val.image_dir={missing}]: FileNotFoundError: config key 'data.val.image_dir' is "
                     f"'{missing}', which is not a folder"], lines
    # a job that never evaluates does not open data.val
    assert _refused(capsys, *folder, f"data.val.image_dir={missing}", "train.eval_period=-1", "seed=1,2") is None
    (root / "annotations" / "panoptic_train").rmdir()
    lines = _refused(capsys, *folder, "seed=1,2")
    assert lines is not None and len(lines) == 2 and "config key 'data.train.png_dir' is not set and none of " \
        f"{root / 'annotations' / 'panoptic_train'} is a folder" in lines[0], lines
    # data=synthetic generates its images: a data.root there is refused (it was meant for another dataset)
    lines = _refused(capsys, *tiny_args, f"data.root=null,{root}")
    assert lines is not None and len(lines) == 1, lines
    assert lines[0].startswith(f"job 1 [data.root={root}]: config key 'data.root' is '{root}' but data=synthetic"), \
        lines


def test_files_missing_here_are_not_judged_for_jobs_run_elsewhere(capsys, tiny_args, tmp_path, caplog):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    missing = tmp_path / "on_the_nodes_only.pth"
    with caplog.at_level(logging.INFO, logger="panfpn"):
        assert _refused(capsys, *tiny_args, "hydra/launcher=slurm", f"weights={missing}", "seed=1,2") is None
    assert "not judged on this machine" in caplog.text and str(missing) in caplog.text
    # a weights name no machine resolves is still refused
    lines = _refused(capsys, *tiny_args, "hydra/launcher=slurm", "weights=ResNet18_Weights.NOPE", "seed=1,2")
    assert lines is not None and len(lines) == 2 and "'ResNet18_Weights.NOPE' is neither a file" in lines[0], lines


def test_jobs_with_equal_parts_share_one_build(capsys, tiny_args, monkeypatch, caplog):
    """A 3 x 2 grid over the lr and one model width builds 2 models (and one metadata, data and weights
    check); every job's solver (its lr differs) is built."""
    built: list[int] = []
    build = dry_start.build_model_cheaply

    def counting(cfg):
        built.append(int(cfg.model.semantic_head.conv_channels))
        return build(cfg)

    monkeypatch.setattr(dry_start, "build_model_cheaply", counting)
    with caplog.at_level(logging.INFO, logger="panfpn"):
        grid = ["solver.base_lr=0.01,0.02,0.03", "model.semantic_head.conv_channels=32,64"]
        assert _refused(capsys, *tiny_args, *grid) is None
    assert sorted(built) == [32, 64], built
    built_line = ("6 job configs valid, dry start built 1 data, 2 labels, 1 metadata, 2 model, 6 solver, 1 weights, "
                  "2 weights fit")
    assert built_line in caplog.text


def test_a_failing_part_is_reported_for_every_job_that_has_it(capsys, tiny_args, monkeypatch):
    built: list[int] = []
    build = dry_start.build_model_cheaply
    monkeypatch.setattr(dry_start, "build_model_cheaply", lambda cfg: (built.append(1), build(cfg))[1])
    lines = _refused(capsys, *tiny_args, "model.backbone.depth=51", "solver.base_lr=0.01,0.02,0.03")
    assert lines is not None and [line.split(" [")[0] for line in lines] == ["job 0", "job 1", "job 2"], lines
    assert all("ResNet depth must be one of" in line for line in lines) and len(built) == 1, (lines, built)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_dry_starts_without_weights_or_memory(name, tmp_path, monkeypatch):
    """Each configs/model/*.yaml builds on the meta device, or on the CPU when its constructor needs
    real tensors (torchvision's RegNet computes its widths with tensors); nothing is downloaded."""
    monkeypatch.setattr("torchvision.models.WeightsEnum.get_state_dict",
                        lambda *a, **k: pytest.fail("the dry start must not fetch weights"))
    built = []
    build = dry_start.build_model_cheaply
    monkeypatch.setattr(dry_start, "build_model_cheaply", lambda cfg: (built.append(build(cfg)), built[-1])[1])
    dry = DryStart()
    dry.check(compose_config([f"model={name}"], output_dir=tmp_path))  # labels, weights, solver, data too
    [(model, device)] = built
    assert device == ("cpu" if "regnet" in name else "meta"), device
    assert dry.cpu_models == (device == "cpu")
    assert all(p.device.type == "meta" for p in model.parameters())  # a CPU build is kept on meta, without memory
    assert sum(p.numel() for p in model.parameters()) > 1e6
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("weights,fits", [("RegNet_Y_3_2GF_Weights.IMAGENET1K_V2", True),
                                          ("RegNet_Y_1_6GF_Weights.IMAGENET1K_V2", False)])
def test_a_regnet_model_is_built_on_the_cpu_once_with_weights_too(monkeypatch, tmp_path, weights, fits):
    """The weights check loads into a deep copy of the job's (meta) model instead of a second CPU build
    of it (0.5 s or more for RegNet); weights of another RegNet are still refused."""
    from panfpn.modeling import build
    from panfpn.modeling.weights import WeightsError

    monkeypatch.setattr("torchvision.models.WeightsEnum.get_state_dict",
                        lambda *a, **k: pytest.fail("the dry start must not fetch weights"))
    cpu_builds = []
    instantiate = build.instantiate_model
    monkeypatch.setattr(build, "instantiate_model", lambda cfg: (
        cpu_builds.append(1) if torch.get_default_device().type == "cpu" else None, instantiate(cfg))[1])
    dry = DryStart()
    cfg = compose_config(["model=panoptic_fpn_regnety_3_2gf", f"weights={weights}"], output_dir=tmp_path)
    if fits:
        dry.check(cfg)
    else:
        with pytest.raises(WeightsError, match=f"weights {weights} \\(torchvision imagenet\\) do not fit the model"):
            dry.check(cfg)
    assert len(cpu_builds) == 1 and dry.cpu_models == 1, (cpu_builds, dry.cpu_models)


def test_jobs_whose_environment_differs_do_not_share_a_check(tmp_path, monkeypatch):
    """data=coco_panoptic reads $COCO_ROOT when data.root is null: the variables hydra sets around a
    job (hydra.job.env_set, e.g. from an experiment preset) are part of each part's key."""
    good = tmp_path / "coco"
    for split in ("train", "val"):
        (good / "annotations" / f"panoptic_{split}2017").mkdir(parents=True)
        (good / "annotations" / f"panoptic_{split}2017.json").write_text("{}")
        (good / f"{split}2017").mkdir()
    cfg = compose_config(["data=coco_panoptic", "data.num_workers=0"], output_dir=tmp_path / "run")
    dry = DryStart()
    monkeypatch.setenv("COCO_ROOT", str(good))  # as hydra's env_override sets it around the check
    dry.check(cfg, {"COCO_ROOT": str(good)})
    missing = tmp_path / "elsewhere"
    monkeypatch.setenv("COCO_ROOT", str(missing))
    with pytest.raises(FileNotFoundError, match=f"COCO panoptic annotations: {missing}"):
        dry.check(cfg, {"COCO_ROOT": str(missing)})
    assert dry.builds["data"] == 2 and dry.builds["model"] == 2

"""What a user types on a tool's command line vs what runs: every tool composes the same config,
so an override of a key the tool never reads used to compose, validate and be ignored in silence."""

import logging
import re

import pytest

from config_helpers import compose_config
from panfpn.engine import model_spec
from panfpn.engine.config import ConfigError
from panfpn.engine.eval_run import evaluate_from_config
from panfpn.engine.export_run import export_from_config
from panfpn.engine.predict_run import predict_from_config
from panfpn.engine.train_run import train_from_config


def test_eval_refuses_another_tools_option(tmp_path):
    # Before: `tools/eval.py predict.batch_size=4` evaluated as if it was not there (the error
    # below was about the missing weights, after the run had started).
    cfg = compose_config(["predict.batch_size=4"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape("tools/eval.py does not read predict.batch_size=4")):
        evaluate_from_config(cfg, overrides=["predict.batch_size=4"])


def test_predict_refuses_the_eval_batch_and_names_its_own(tmp_path):
    # `tools/predict.py eval.batch_size=8`: the prediction batch is predict.batch_size (2 by default).
    overrides = ["eval.batch_size=8"]
    cfg = compose_config([*overrides, f"predict.input={tmp_path}"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape("eval.batch_size=8 (its setting is predict.batch_size)")):
        predict_from_config(cfg, overrides=overrides)


def test_predict_still_reads_allow_renamed_categories(tmp_path):
    overrides = ["eval.allow_renamed_categories=true"]
    cfg = compose_config([*overrides, f"predict.input={tmp_path}"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="config key 'weights' must name"):  # not refused: it is read
        predict_from_config(cfg, overrides=overrides)


def test_export_refuses_predict_options(tmp_path):
    overrides = ["predict.batch_size=1"]
    cfg = compose_config([*overrides, f"weights={tmp_path / 'none.pth'}"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape("tools/export.py does not read predict.batch_size=1")):
        export_from_config(cfg, overrides=overrides)


def test_train_refuses_predict_options_typed_on_its_command_line(tiny_cfg, monkeypatch, tmp_path):
    # Before: `tools/train.py predict.input=photos/` trained to the end and never looked at photos/.
    monkeypatch.setattr(model_spec, "command_line_overrides", lambda: ["predict.input=photos/"])
    with pytest.raises(ConfigError, match=re.escape("tools/train.py does not read predict.input=photos/")):
        train_from_config(tiny_cfg("solver.max_iter=1", "solver.schedule.steps=[]", "train.eval_period=-1"))
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_eval_logs_the_training_only_keys_it_ignores(tmp_path):
    # A command line shared with tools/train.py is a habit, so a warning, not an error: but no
    # longer silent, and data.batch_size is told apart from eval.batch_size.
    overrides = ["solver.base_lr=0.1", "data.batch_size=16", "eval.max_images=2"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)  # the panfpn logger does not propagate once the job starts
    handler.emit = records.append
    logging.getLogger("panfpn").addHandler(handler)
    try:
        with pytest.raises(ConfigError, match="'weights'"):
            evaluate_from_config(cfg, overrides=overrides)
    finally:
        logging.getLogger("panfpn").removeHandler(handler)
    assert any("tools/eval.py ignores solver.base_lr=0.1, data.batch_size=16 (its setting is eval.batch_size) "
               "(training only)" in r.getMessage() for r in records), [r.getMessage() for r in records]


@pytest.mark.parametrize("override,shown", [
    ("short_edge_lengths='800'", "'800'"),   # a string (e.g. from ${oc.env:...}) was iterated: [8, 0, 0]
    ("short_edge_lengths=[0]", "0"),          # 0 or < 0 resized every image to 1 pixel high
    ("short_edge_lengths=[-5]", "-5"),
    ("short_edge_lengths=true", "True"),      # a bool was the size 1
    ("max_size=0", "0"),                      # every image 1 x 1 pixel
    ("max_size=-1", "-1"),
    ("max_size='1333'", "'1333'"),
])
def test_a_resize_size_that_is_not_a_pixel_count_stops_the_run(tiny_cfg, tmp_path, override, shown):
    # Before: each of these composed, validated and trained on images of the wrong size.
    cfg = tiny_cfg(f"data.train.transforms.transforms.0.{override}", "train.eval_period=-1")
    with pytest.raises(ConfigError, match=re.escape(f"must be a whole number of pixels >= 1, got {shown}")) as err:
        train_from_config(cfg)
    assert "data.train.transforms.transforms.0" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_detectron2_short_edge_of_0_says_how_to_skip_the_resize(tiny_cfg):
    # Detectron2 takes INPUT.MIN_SIZE_TEST: 0 as "do not resize"; here 0 is refused (a 0 from a typo
    # would shrink every image to 1 pixel). Before: the refusal did not say how to skip the resize.
    from panfpn.data.transforms import check_data_transforms

    with pytest.raises(ConfigError, match=re.escape("Detectron2's 0 = no resize is not taken: leave the resize "
                                                    "out (at test time data.val.transforms=null)")) as err:
        check_data_transforms(tiny_cfg("data.val.transforms.short_edge_lengths=[0]"))
    assert str(err.value).startswith("config key 'data.val.transforms': short_edge_lengths:")
    check_data_transforms(tiny_cfg("data.val.transforms=null"))  # the way the message names is taken
    with pytest.raises(ConfigError) as err:  # no hint where 0 is not a short edge
        check_data_transforms(tiny_cfg("data.val.transforms.max_size=0"))
    assert "Detectron2" not in str(err.value)


@pytest.mark.parametrize("override", ["short_edge_lengths=64", "short_edge_lengths=[64,80]", "max_size=128.0"])
def test_a_scalar_size_or_a_whole_float_is_still_a_size(tiny_cfg, override):
    from panfpn.data.transforms import check_data_transforms

    check_data_transforms(tiny_cfg(f"data.train.transforms.transforms.0.{override}"))


@pytest.mark.parametrize("override", ["eval.save_predictions=true", "eval.save_semantic=true", "eval.report=false",
                                      "eval.save_overlays=4"])
def test_train_refuses_the_eval_tools_file_options(tiny_cfg, monkeypatch, tmp_path, override):
    # Before: `tools/train.py eval.save_predictions=true` trained and evaluated, and no prediction
    # file was written (training's evaluations build no writers: build_evaluators(training=True)).
    monkeypatch.setattr(model_spec, "command_line_overrides", lambda: [override])
    with pytest.raises(ConfigError, match=re.escape(f"tools/train.py does not read {override}")):
        train_from_config(tiny_cfg("solver.max_iter=1", "solver.schedule.steps=[]", override))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,shown", [
    (["model.loss_weights.loss_sem_seg=-1"], "{'loss_sem_seg': -1}"),     # trained the loss up, silently
    (["model.loss_weights.loss_sem_seg=nan"], "{'loss_sem_seg': nan}"),
    (["+model.loss_weights.loss_mask=true"], "{'loss_mask': True}"),
    (["experiment=synthetic_mask2former", "model.criterion.dice_weight=-5"], "{'dice_weight': -5}"),
    (["experiment=synthetic_mask2former", "model.matcher.class_weight=-2"], "{'class_weight': -2}"),
])
def test_a_negative_or_nan_loss_weight_is_refused_when_the_model_is_built(overrides, shown, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config(overrides, output_dir=tmp_path)
    with pytest.raises(Exception, match=re.escape(f"each weight must be a finite number >= 0 (0 turns a loss off), "
                                                  f"got {shown}")):
        instantiate(cfg.model)


def test_a_zero_loss_weight_still_turns_a_loss_off(tmp_path):
    from hydra.utils import instantiate

    model = instantiate(compose_config(["model.loss_weights.loss_sem_seg=0"], output_dir=tmp_path).model)
    assert model.loss_weights["loss_sem_seg"] == 0.0


def test_a_data_root_with_the_default_synthetic_data_is_refused(tmp_path):
    # Before: `tools/train.py data.root=/data/coco` (data=... forgotten) trained on the synthetic
    # scenes of the default experiment; data.root was never read.
    from hydra.utils import instantiate

    cfg = compose_config([f"data.root={tmp_path}", "data.val.num_images=2"], output_dir=tmp_path)
    with pytest.raises(Exception, match=re.escape(f"config key 'data.root' is '{tmp_path}' but data=synthetic "
                                                  "reads no data root")):
        instantiate(cfg.data.val)
    instantiate(compose_config(["data.val.num_images=2"], output_dir=tmp_path).data.val)  # null: fine


@pytest.mark.parametrize("direction,objective_direction", [(None, "maximize"), ("maximize", "minimize"),
                                                           ("[maximize,minimize]", "maximize")])
def test_a_sweeper_optimising_the_other_way_is_refused(tiny_cfg, monkeypatch, tmp_path, direction,
                                                       objective_direction):
    # Before: `-m hydra/sweeper=optuna train.objective=pq/All` (optuna minimises by default) trained
    # every trial and searched for the worst PQ; the summary's best was optuna's worst.
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra.core.hydra_config import HydraConfig

    from panfpn.engine.training.job import run_training_job

    sweeper = ["hydra/sweeper=optuna"] + ([f"hydra.sweeper.direction={direction}"] if direction else [])
    hydra_cfg = compose_config(sweeper, output_dir=tmp_path, return_hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    HydraConfig.instance().set_config(hydra_cfg)
    cfg = tiny_cfg("solver.max_iter=1", "solver.schedule.steps=[]", "train.objective=pq/All",
                   f"train.objective_direction={objective_direction}")
    with pytest.raises(ConfigError, match=re.escape(f"train.objective_direction={objective_direction}")):
        run_training_job(cfg)
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_a_sweeper_optimising_the_same_way_is_fine(monkeypatch, tmp_path, tiny_cfg):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra.core.hydra_config import HydraConfig

    from panfpn.engine.sweep.direction import check_sweeper_direction

    hydra_cfg = compose_config(["hydra/sweeper=optuna", "hydra.sweeper.direction=maximize"], output_dir=tmp_path,
                               return_hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(hydra_cfg)
    check_sweeper_direction(tiny_cfg("train.objective=pq/All"))
    check_sweeper_direction(tiny_cfg("train.objective=null", "train.objective_direction=minimize"))


def test_network_export_of_backbone_only_weights_is_refused(tmp_path):
    # Before: `tools/export.py experiment=... export.scope=network` with the experiment's ImageNet
    # weights (no weights= typed) exported random heads without a word. Now refused by name, as the
    # pipeline scope, eval and predict refuse such weights (no weights at all stays a warning).
    import torch
    import torchvision

    from panfpn.engine import export_run
    from panfpn.modeling.weights import WeightsError

    backbone = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), backbone)  # the small model's backbone
    cfg = compose_config([f"weights={backbone}", "export.scope=network", "device=cpu"], output_dir=tmp_path)
    with pytest.raises(WeightsError, match="resnet18.pth"):
        export_run.export_from_config(cfg, overrides=[])
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.pt2"))


def test_a_training_key_another_key_interpolates_is_not_called_ignored(tmp_path, caplog):
    # coco_panoptic_folder's categories (data.metadata.json_file) are ${data.train.json_file}: that
    # override changes what tools/eval.py evaluates with, so it must not be logged as ignored.
    from panfpn.engine.config.unread import unread_overrides

    overrides = ["data=coco_panoptic_folder", f"data.root={tmp_path}", f"data.train.json_file={tmp_path}/a.json",
                 "data.train.image_dir=x"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    refused, ignored = unread_overrides("eval", overrides, cfg)
    assert refused == [] and ignored == [("data.train.image_dir=x", "data.train.image_dir")]

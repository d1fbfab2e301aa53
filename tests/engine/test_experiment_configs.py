import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.job_setup import build_metadata

# experiment: (backbone depth, thing classes, semantic classes) as published for each dataset
# (synthetic: 4 things, 4 stuff + the merged thing label; COCO: 80, 53 + 1; Cityscapes: 8, all 19).
EXPERIMENTS = {"synthetic_cpu": (18, 4, 5), "coco_r50_1x": (50, 80, 54), "coco_r50_3x": (50, 80, 54),
               "coco_r101_3x": (101, 80, 54), "cityscapes_r50": (50, 8, 19)}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_validates_and_builds_its_solver(name, tmp_path, compose_cfg):
    cfg = compose_cfg([f"experiment={name}"], output_dir=tmp_path)
    validate_config(cfg)
    OmegaConf.resolve(cfg)
    schedule = instantiate(cfg.solver.schedule)
    assert schedule(cfg.solver.max_iter - 1) > 0
    depth, num_things, num_sem = EXPERIMENTS[name]
    metadata = build_metadata(cfg)  # raises when the data config's counts disagree with the metadata
    assert (metadata.num_thing_classes, metadata.num_sem_classes) == (num_things, num_sem)
    model = cfg.model  # the model reads the dataset's counts, on the backbone the recipe names
    assert model._target_ == "panfpn.modeling.panoptic_fpn.PanopticFPN" and model.backbone.depth == depth
    assert model.semantic_head.num_classes == num_sem
    assert model.roi_heads.box_head.num_classes == model.roi_heads.mask_head.num_classes == num_things
    assert list(model.thing_sem_labels) == metadata.thing_sem_labels


def test_detectron2_recipes(compose_cfg):
    r50 = compose_cfg(["experiment=coco_r50_1x"])
    assert (r50.solver.base_lr, r50.solver.ims_per_batch, r50.solver.max_iter) == (0.02, 16, 90000)
    assert list(r50.solver.schedule.steps) == [60000, 80000]
    assert r50.solver.schedule.warmup_iters == 1000
    r3x = compose_cfg(["experiment=coco_r101_3x"])
    assert (r3x.solver.max_iter, list(r3x.solver.schedule.steps)) == (270000, [210000, 250000])
    assert r3x.model.backbone.depth == 101
    city = compose_cfg(["experiment=cityscapes_r50"])
    assert (city.solver.base_lr, city.solver.ims_per_batch, city.solver.max_iter) == (0.01, 32, 65000)
    assert list(city.solver.schedule.steps) == [40000, 55000]
    assert city.data.num_sem_classes == 19


def test_unknown_key_on_command_line_fails_with_its_name(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="chekpoint_period"):
        compose_cfg(["train.chekpoint_period=5"])


def test_unknown_key_added_by_a_config_fails_with_its_name(tmp_path, compose_cfg):
    cfg = compose_cfg(["+train.chekpoint_period=5"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"train\.chekpoint_period.*checkpoint_period"):
        validate_config(cfg)


def test_bad_choice_fails_with_key_name(tmp_path, compose_cfg):
    cfg = compose_cfg(["train.on_nonfinite=ignore"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="train.on_nonfinite"):
        validate_config(cfg)


@pytest.mark.parametrize("value", ["0", "-2", "two", "true"])
def test_bad_keep_checkpoints_fails_with_key_name(tmp_path, compose_cfg, value):
    cfg = compose_cfg([f"train.keep_checkpoints={value}"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="train.keep_checkpoints"):
        validate_config(cfg)


def test_missing_coco_root_names_the_config_key(tmp_path, monkeypatch, compose_cfg):
    for var in ("COCO_ROOT", "PANFPN_DATA"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose_cfg(["experiment=coco_r50_1x"], output_dir=tmp_path)
    with pytest.raises(Exception, match="data.root") as err:
        instantiate(cfg.data.val)
    assert isinstance(err.value.__cause__ or err.value, FileNotFoundError)

"""solver.weight_decay_by_name and the Mask2Former Swin presets: the optimizer that training builds
from a preset (train_run._build_solver) gives every parameter the lr and weight decay that the
official optimizer gives it: facebookresearch/Mask2Former train_net.py ``build_optimizer`` for the
Mask2Former presets, Detectron2's ``get_default_optimizer_params`` (solver/build.py) for Panoptic
FPN. Both are rewritten below from reading those sources, with the official configs' values
written out, not read from panfpn's solver or configs."""

import pytest
import torch
from config_helpers import compose_config
from omegaconf import OmegaConf
from torch import nn

from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.train_run import _build_solver
from panfpn.engine.training.solver import param_groups
from panfpn.modeling.build import instantiate_model

# the norm module types both official optimizers list
OFFICIAL_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
                  nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)
# Mask2Former Base-COCO / Base-Cityscapes-PanopticSegmentation.yaml SOLVER (+ its add_maskformer2_config defaults)
M2F = dict(base_lr=1e-4, weight_decay=0.05, weight_decay_norm=0.0, weight_decay_embed=0.0, backbone_multiplier=0.1)
# Detectron2 defaults.py + Base-RCNN-FPN / panoptic_fpn_R_50_1x SOLVER: BASE_LR 0.02, WEIGHT_DECAY 1e-4,
# WEIGHT_DECAY_NORM 0.0, BIAS_LR_FACTOR 1.0, WEIGHT_DECAY_BIAS None
D2 = dict(base_lr=0.02, weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=None)


def official_mask2former_hyperparams(model, *, base_lr, weight_decay, weight_decay_norm, weight_decay_embed,
                                     backbone_multiplier):
    """Parameter -> (lr, weight decay) as Mask2Former's build_optimizer sets them, module by module:
    lr x BACKBONE_MULTIPLIER when the module's name contains 'backbone'; decay 0 when the parameter's
    own name contains 'relative_position_bias_table' or 'absolute_pos_embed', then WEIGHT_DECAY_NORM
    for norm modules, then WEIGHT_DECAY_EMBED for nn.Embedding. Frozen and repeated ones skipped."""
    out = {}
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or p in out:
                continue
            lr = base_lr * (backbone_multiplier if "backbone" in module_name else 1.0)
            wd = weight_decay
            if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
                wd = 0.0
            if isinstance(module, OFFICIAL_NORMS):
                wd = weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            out[p] = (lr, wd)
    return out


def detectron2_hyperparams(model, *, base_lr, weight_decay, weight_decay_norm, weight_decay_bias):
    """Parameter -> (lr, weight decay) as Detectron2's get_default_optimizer_params sets them (the
    optimizer's lr / weight decay, WEIGHT_DECAY_NORM on norm modules, then the override of parameters
    named 'bias' when WEIGHT_DECAY_BIAS is set)."""
    out = {}
    for _, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or p in out:
                continue
            wd = weight_decay_norm if isinstance(module, OFFICIAL_NORMS) else weight_decay
            if param_name == "bias" and weight_decay_bias is not None:
                wd = weight_decay_bias
            out[p] = (base_lr, wd)
    return out


def ours(model, cfg):
    """Parameter -> (lr, weight decay) of the optimizer training builds from ``cfg`` (the lr before
    the schedule's first factor: Detectron2's warmup starts at 0.001 x)."""
    optimizer, _, _ = _build_solver(cfg, model, torch.device("cpu"))
    return {p: (g["initial_lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def assert_same(model, got, expected):
    """The same parameters with the same (lr, weight decay); a failure names the first that differ."""
    names = {p: n for n, p in model.named_parameters()}
    assert sorted(names[p] for p in got) == sorted(names[p] for p in expected)
    bad = [(names[p], got[p], expected[p]) for p in expected
           if got[p][1] != expected[p][1] or got[p][0] != pytest.approx(expected[p][0], rel=1e-12)]
    assert not bad, f"{len(bad)} of {len(expected)} parameters differ, e.g. {bad[:5]}"


def build(overrides):
    """Compose and build the model with 16 images per step (the recipes' batch: lr not rescaled)."""
    cfg = compose_config([*overrides, "data.batch_size=16"], output_dir="unused")
    torch.manual_seed(0)
    return cfg, instantiate_model(cfg)


@pytest.mark.parametrize("experiment,tables", [("coco_mask2former_swin_l", 24), ("cityscapes_mask2former_swin_l", 24),
                                               ("coco_mask2former_r50", 0)])
def test_mask2former_presets_give_every_parameter_the_official_lr_and_decay(experiment, tables):
    """Full-size models of the presets (Swin-L: 215M parameters, 24 position tables): every group
    as the official optimizer's; the position tables at decay 0 and backbone lr, and only they
    change when solver.weight_decay_by_name is removed (0.05 as any weight: the code before it)."""
    cfg, model = build([f"experiment={experiment}"])
    got = ours(model, cfg)
    assert_same(model, got, official_mask2former_hyperparams(model, **M2F))
    positions = [p for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")]
    assert len(positions) == tables and all(got[p] == (pytest.approx(1e-5), 0.0) for p in positions)
    del cfg.solver.weight_decay_by_name
    without = ours(model, cfg)
    assert {p for p in got if got[p] != without[p]} == set(positions)
    assert all(without[p][1] == 0.05 for p in positions)


@pytest.mark.parametrize("overrides", [["experiment=coco_r50_1x"],
                                       ["experiment=coco_r50_1x", "model=panoptic_fpn_swin_t"]])
def test_panoptic_fpn_groups_are_detectron2s(overrides):
    """Panoptic FPN with the Detectron2 recipe's solver: every parameter as Detectron2's optimizer
    (its Swin-T position tables keep weight decay 1e-4: the name rule is not in Detectron2's
    optimizer and solver.weight_decay_by_name is unset there)."""
    cfg, model = build(overrides)
    assert "weight_decay_by_name" not in cfg.solver
    got = ours(model, cfg)
    assert_same(model, got, detectron2_hyperparams(model, **D2))
    positions = [p for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")
                 and p.requires_grad]  # freeze_at 2: the first stage's 2 are frozen
    assert len(positions) == (10 if "swin" in overrides[-1] else 0)
    assert all(got[p] == (pytest.approx(0.02), 1e-4) for p in positions)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(2, 2)
        self.attn.relative_position_bias_table = nn.Parameter(torch.zeros(3, 1))
        self.attn.pos_table = nn.Parameter(torch.zeros(3, 1))
        self.norm = nn.LayerNorm(2)
        self.query = nn.Embedding(2, 2)


def test_weight_decay_by_name_longest_key_wins_norms_and_embeddings_keep_theirs():
    net = _Net()
    groups = param_groups(net, weight_decay=0.05, weight_decay_norm=0.01, weight_decay_bias=0.02,
                          weight_decay_embed=0.03,
                          weight_decay_by_name={"table": 0.1, "position_bias_table": 0.0, "norm": 0.4,
                                                "query": 0.5, "attn.bias": 0.6})
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd[id(net.attn.relative_position_bias_table)] == 0.0   # longest of 'table', 'position_bias_table'
    assert wd[id(net.attn.pos_table)] == 0.1
    assert wd[id(net.attn.bias)] == 0.6 and wd[id(net.attn.weight)] == 0.05   # the full name is matched
    assert wd[id(net.norm.weight)] == wd[id(net.norm.bias)] == 0.01
    assert wd[id(net.query.weight)] == 0.03


def test_bad_weight_decay_by_name_names_the_key(tmp_path):
    cfg = compose_config(["experiment=synthetic_mask2former", "+solver.weight_decay_by_name.pos=-1"],
                         output_dir=tmp_path)
    with pytest.raises(ConfigError, match="solver.weight_decay_by_name"):
        validate_config(cfg)


SWIN_PRESETS = {  # experiment: (model, weights, queries, iterations, batch per process), per the official configs
    "coco_mask2former_swin_t": ("mask2former_swin_t", "Swin_T_Weights.IMAGENET1K_V1", 100, 368750, 2),
    "coco_mask2former_swin_s": ("mask2former_swin_s", "Swin_S_Weights.IMAGENET1K_V1", 100, 368750, 2),
    "coco_mask2former_swin_b_384": ("mask2former_swin_b_384", None, 100, 368750, 2),
    "coco_mask2former_swin_l": ("mask2former_swin_l", None, 200, 737500, 1),
    "cityscapes_mask2former_swin_t": ("mask2former_swin_t", "Swin_T_Weights.IMAGENET1K_V1", 100, 90000, 2),
    "cityscapes_mask2former_swin_s": ("mask2former_swin_s", "Swin_S_Weights.IMAGENET1K_V1", 100, 90000, 2),
    "cityscapes_mask2former_swin_b_384": ("mask2former_swin_b_384", None, 100, 90000, 2),
    "cityscapes_mask2former_swin_l": ("mask2former_swin_l", None, 200, 90000, 1),
}


@pytest.mark.parametrize("experiment", SWIN_PRESETS)
def test_swin_presets_are_the_r50_recipes_with_the_zoo_swin_models(experiment, tmp_path):
    """Each Swin preset validates; its model is exactly the zoo's Swin config (Cityscapes: in the
    official class order; the R50 recipe's ResNet-only norm undone); solver, data and training as
    the R50 recipe but the official Swin-L 100 epochs on COCO."""
    model, weights, queries, iters, batch = SWIN_PRESETS[experiment]
    dataset = experiment.split("_")[0]
    cfg = compose_config([f"experiment={experiment}"], output_dir=tmp_path)
    validate_config(cfg)
    r50 = compose_config([f"experiment={dataset}_mask2former_r50"], output_dir=tmp_path)
    expected = compose_config([f"model={model}", f"data={dataset}_panoptic"], output_dir=tmp_path).model
    if dataset == "cityscapes":
        expected.class_order = "semantic"
    assert OmegaConf.to_container(cfg.model, resolve=True) == OmegaConf.to_container(expected, resolve=True)
    assert (cfg.weights, cfg.model.predictor.num_queries, cfg.solver.max_iter, cfg.data.batch_size) == (
        weights, queries, iters, batch)
    assert cfg.model.backbone.norm == "native" and cfg.data.train == r50.data.train and cfg.train == r50.train
    steps = {"coco_mask2former_swin_l": [655556, 710184]}.get(experiment, r50.solver.schedule.get("steps"))
    assert cfg.solver.schedule.get("steps") == steps
    assert {k: v for k, v in cfg.solver.items() if k not in ("max_iter", "schedule")} == {
        k: v for k, v in r50.solver.items() if k not in ("max_iter", "schedule")}


TINY_SWIN = ["model.backbone.arch.embed_dim=16", "model.backbone.arch.depths=[2,2,2,2]",
             "model.backbone.arch.num_heads=[1,2,2,4]", "model.backbone.arch.window_size=4",
             "model.backbone.arch.stochastic_depth_prob=0.0",  # else a dropped block gets no gradient
             "model.pixel_decoder.conv_dim=32", "model.pixel_decoder.mask_dim=32", "model.pixel_decoder.num_layers=1",
             "model.pixel_decoder.n_heads=2", "model.pixel_decoder.dim_feedforward=64",
             "model.predictor.hidden_dim=32", "model.predictor.mask_dim=32", "model.predictor.n_heads=2",
             "model.predictor.dim_feedforward=64", "model.predictor.dec_layers=3", "model.matcher.num_points=256"]


def _batch(num_things, num_sem, size=64):
    g = torch.Generator().manual_seed(0)
    sem_seg = torch.randint(0, num_sem, (1, size, size), generator=g)
    masks = torch.zeros((1, size, size), dtype=torch.uint8)
    masks[0, 8:40, 16:48] = 1
    return {"images": torch.randint(0, 256, (1, 3, size, size), generator=g, dtype=torch.uint8),
            "image_sizes": [(size, size)], "orig_sizes": [(size, size)], "sem_seg": sem_seg,
            "instances": [{"boxes": torch.tensor([[16.0, 8.0, 48.0, 40.0]]), "labels": torch.tensor([num_things - 1]),
                           "masks": masks}], "image_ids": [0], "file_names": ["0.png"]}


def test_the_cityscapes_swin_l_preset_trains_a_step():
    """The preset (shrunk, without drop path) builds, its optimizer steps with the recipe's clipping, and
    the step reaches every position table (decay 0 there, so only the gradient moves them)."""
    cfg, model = build(["experiment=cityscapes_mask2former_swin_l", *TINY_SWIN])
    optimizer, _, _ = _build_solver(cfg, model, torch.device("cpu"))
    tables = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")}
    losses = model.train()(_batch(cfg.data.num_thing_classes, cfg.data.num_sem_classes))
    total = sum(losses.values())
    assert torch.isfinite(total) and len(losses) == 3 * (1 + 3)  # final + 3 auxiliary predictions
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
    optimizer.step()
    params = dict(model.named_parameters())
    assert len(tables) == 8 and all(not torch.equal(params[n], t) for n, t in tables.items())

"""solver.lr_multipliers / weight_decay_embed (Mask2Former's backbone lr x0.1, no decay on query
embeddings), the poly schedule, and the Mask2Former presets that use them."""

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.training.solver import WarmupPoly, build_optimizer


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.backbone_extra = nn.Linear(2, 2)  # a name that starts like 'backbone' but is not under it
        self.query = nn.Embedding(3, 2)


def test_backbone_multiplier_and_embedding_decay():
    net = _Net()
    opt = build_optimizer(net, torch.optim.AdamW, lr=1e-4, weight_decay=0.05, weight_decay_norm=0.0,
                          weight_decay_embed=0.0, lr_multipliers={"backbone": 0.1})
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    conv, bn = net.backbone[0], net.backbone[1]
    assert by_param[id(conv.weight)]["lr"] == pytest.approx(1e-5) and by_param[id(conv.weight)]["weight_decay"] == 0.05
    assert by_param[id(bn.weight)]["lr"] == pytest.approx(1e-5) and by_param[id(bn.weight)]["weight_decay"] == 0.0
    assert by_param[id(net.backbone_extra.weight)]["lr"] == pytest.approx(1e-4)
    assert by_param[id(net.query.weight)]["weight_decay"] == 0.0 and by_param[id(net.query.weight)]["lr"] == 1e-4
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupPoly(max_iter=10, power=0.9))
    for _ in range(5):
        opt.step()
        sched.step()
    assert by_param[id(conv.weight)]["lr"] == pytest.approx(1e-5 * 0.5 ** 0.9)
    assert by_param[id(net.query.weight)]["lr"] == pytest.approx(1e-4 * 0.5 ** 0.9)


def test_poly_schedule():
    poly = WarmupPoly(max_iter=100, power=0.9, warmup_iters=10, warmup_factor=0.1)
    assert poly(0) == pytest.approx(0.1) and poly(50) == pytest.approx(0.5 ** 0.9)
    assert poly(100) == 0.0 and poly(200) == 0.0


@pytest.mark.parametrize("experiment,schedule,iters", [("coco_mask2former_r50", "WarmupMultiStep", 368750),
                                                        ("cityscapes_mask2former_r50", "WarmupPoly", 90000)])
def test_mask2former_presets_compose_and_validate(compose_cfg, tmp_path, experiment, schedule, iters):
    cfg = compose_cfg([f"experiment={experiment}"], output_dir=tmp_path)
    validate_config(cfg)
    assert cfg.model._target_ == "panfpn.modeling.mask2former.Mask2Former"
    assert cfg.solver.base_lr == 1e-4 and cfg.solver.ims_per_batch == 16 and cfg.solver.max_iter == iters
    assert dict(cfg.solver.lr_multipliers) == {"backbone": 0.1} and cfg.train.clip_grad_norm == 0.01
    assert type(instantiate(cfg.solver.schedule)).__name__ == schedule


def test_bad_lr_multiplier_names_the_key(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=synthetic_mask2former", "+solver.lr_multipliers.backbone=-1"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="solver.lr_multipliers"):
        validate_config(cfg)

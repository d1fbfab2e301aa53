import math

import pytest
import torch
from torch import nn

from panfpn.engine.training.solver import WarmupCosine, WarmupMultiStep, build_optimizer, param_groups, scaled_lr


def test_warmup_multistep_factors():
    sched = WarmupMultiStep(steps=[60000, 80000], gamma=0.1, warmup_iters=1000, warmup_factor=0.001)
    assert sched(0) == pytest.approx(0.001)
    assert sched(500) == pytest.approx(0.001 * 0.5 + 0.5)
    assert sched(1000) == 1.0
    assert sched(59999) == 1.0
    assert sched(60000) == pytest.approx(0.1)
    assert sched(80000) == pytest.approx(0.01)


def test_steps_beyond_max_iter_rejected_with_key_name():
    with pytest.raises(ValueError, match="solver.schedule.steps"):
        WarmupMultiStep(steps=[10, 200], max_iter=100)


def test_warmup_cosine_endpoints():
    sched = WarmupCosine(max_iter=100, warmup_iters=0, final_factor=0.0)
    assert sched(0) == 1.0
    assert sched(50) == pytest.approx(0.5)
    assert sched(100) == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(WarmupCosine(max_iter=100, warmup_iters=10, warmup_factor=0.1)(0), 0.1)


def test_no_weight_decay_on_norms_and_frozen_params_left_out():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1, bias=False))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=None)
    by_wd = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert by_wd[0.0] == {id(model[1].weight), id(model[1].bias)}
    assert by_wd[1e-4] == {id(model[0].weight), id(model[0].bias)}
    opt = build_optimizer(model, torch.optim.SGD, lr=0.1, weight_decay=1e-4)
    assert sum(len(g["params"]) for g in opt.param_groups) == 4


def test_linear_lr_scaling():
    assert scaled_lr(0.02, reference_batch=16, global_batch=2) == pytest.approx(0.0025)
    assert scaled_lr(0.02, reference_batch=16, global_batch=16) == 0.02

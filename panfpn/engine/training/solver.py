"""Optimizer parameter groups and iteration-based learning-rate schedules (warmup + steps, cosine or poly)."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
)


def param_groups(
    model: nn.Module, *, weight_decay: float, weight_decay_norm: float | None = 0.0,
    weight_decay_bias: float | None = None, weight_decay_embed: float | None = None,
    weight_decay_by_name: Mapping[str, float] | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict]:
    """Split trainable parameters by weight decay: norms get ``weight_decay_norm``, embeddings
    ``weight_decay_embed`` (None = same as ``weight_decay``), a parameter whose full name contains a
    key of ``weight_decay_by_name`` that key's value (``{"relative_position_bias_table": 0.0}``, the
    official Mask2Former Swin rule; the longest matching key wins; norms and embeddings keep their
    own), biases ``weight_decay_bias``; and by lr factor: a parameter under a prefix of
    ``lr_multipliers`` (``{"backbone": 0.1}``, the longest prefix wins) has ``lr_mult`` set in its
    group. Frozen parameters are left out."""
    wd_norm = weight_decay if weight_decay_norm is None else weight_decay_norm
    wd_bias = weight_decay if weight_decay_bias is None else weight_decay_bias
    wd_embed = weight_decay if weight_decay_embed is None else weight_decay_embed
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{name}" if mname else name
            by_name = _by_name(full, weight_decay_by_name)
            wd = wd_norm if is_norm else wd_embed if isinstance(module, nn.Embedding) else (
                by_name if by_name is not None else wd_bias if name == "bias" else weight_decay)
            groups.setdefault((wd, _lr_mult(full, lr_multipliers)), []).append(p)
    return [{"params": ps, "weight_decay": wd} | ({"lr_mult": mult} if mult != 1.0 else {})
            for (wd, mult), ps in groups.items()]


def reported_lr(optimizer: torch.optim.Optimizer, key: str = "lr") -> float:
    """The lr of the run as logs and TensorBoard call it (base_lr x schedule, no group's
    ``lr_mult``): :func:`base_group`'s, divided by its multiplier when every group has one.
    ``key="initial_lr"``: the lr the schedule starts from."""
    group = base_group(optimizer)
    return float(group.get(key, group["lr"])) / float(group.get("lr_mult", 1.0))


def _by_name(name: str, decays: Mapping[str, float] | None) -> float | None:
    hits = [k for k in (decays or {}) if k in name]
    return float(decays[max(hits, key=len)]) if hits else None


def _lr_mult(name: str, multipliers: Mapping[str, float] | None) -> float:
    hits = [p for p in (multipliers or {}) if name == p or name.startswith(p + ".")]
    return float(multipliers[max(hits, key=len)]) if hits else 1.0


def build_optimizer(
    model: nn.Module, optimizer_factory: Callable[..., torch.optim.Optimizer], *, lr: float,
    weight_decay: float, weight_decay_norm: float | None = 0.0,
    weight_decay_bias: float | None = None, weight_decay_embed: float | None = None,
    weight_decay_by_name: Mapping[str, float] | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Instantiate a ``_partial_`` optimizer (SGD, AdamW, ...) on the model's parameter groups
    (a group with ``lr_mult`` gets ``lr * lr_mult``; the schedule scales every group alike)."""
    groups = param_groups(model, weight_decay=weight_decay, weight_decay_norm=weight_decay_norm,
                          weight_decay_bias=weight_decay_bias, weight_decay_embed=weight_decay_embed,
                          weight_decay_by_name=weight_decay_by_name, lr_multipliers=lr_multipliers)
    for group in groups:
        if "lr_mult" in group:
            group["lr"] = lr * group["lr_mult"]
    return optimizer_factory(groups, lr=lr, weight_decay=weight_decay)


class WarmupMultiStep:
    """lr factor at iteration ``it``: linear warmup from ``warmup_factor``, then ×gamma at each step."""

    def __init__(self, *, steps: Sequence[int], gamma: float = 0.1, warmup_iters: int = 1000,
                 warmup_factor: float = 0.001, max_iter: int | None = None) -> None:
        if any(b <= a for a, b in zip([0, *steps], steps)):  # a repeated step would apply gamma twice
            raise ValueError(f"solver.schedule.steps must be strictly increasing iterations >= 1, got {list(steps)}")
        if max_iter is not None and any(s > max_iter for s in steps):
            raise ValueError(f"solver.schedule.steps {list(steps)} go past solver.max_iter={max_iter}")
        self.steps = list(steps)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor

    def __call__(self, it: int) -> float:
        factor = self.gamma ** sum(1 for s in self.steps if it >= s)
        return factor * _warmup(it, self.warmup_iters, self.warmup_factor)


class WarmupCosine:
    """lr factor: linear warmup, then half-cosine from 1 to ``final_factor`` at ``max_iter``."""

    def __init__(self, *, max_iter: int, warmup_iters: int = 1000, warmup_factor: float = 0.001,
                 final_factor: float = 0.0) -> None:
        self.max_iter = max_iter
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.final_factor = final_factor

    def __call__(self, it: int) -> float:
        progress = min(it, self.max_iter) / max(self.max_iter, 1)
        cos = self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        return cos * _warmup(it, self.warmup_iters, self.warmup_factor)


class WarmupPoly:
    """lr factor: linear warmup, then ``(1 - it / max_iter) ** power`` (Detectron2's WarmupPolyLR,
    Mask2Former's Cityscapes / ADE20K schedule), never below ``final_factor``."""

    def __init__(self, *, max_iter: int, power: float = 0.9, warmup_iters: int = 0,
                 warmup_factor: float = 1.0, final_factor: float = 0.0) -> None:
        self.max_iter, self.power = max_iter, power
        self.warmup_iters, self.warmup_factor, self.final_factor = warmup_iters, warmup_factor, final_factor

    def __call__(self, it: int) -> float:
        progress = min(it, self.max_iter) / max(self.max_iter, 1)
        poly = max((1 - progress) ** self.power, self.final_factor)
        return poly * _warmup(it, self.warmup_iters, self.warmup_factor)


def _warmup(it: int, warmup_iters: int, warmup_factor: float) -> float:
    if it >= warmup_iters or warmup_iters <= 0:
        return 1.0
    alpha = it / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


def schedule_warnings(schedule: object, max_iter: int) -> list[str]:
    """What a schedule silently changes in a run of ``max_iter`` iterations: a warmup that never
    finishes (the lr never reaches base_lr) or takes a large share of the run, lr steps at or past
    the end (never applied), a cosine horizon other than the run's length."""
    out: list[str] = []
    warmup = int(getattr(schedule, "warmup_iters", 0) or 0)
    if warmup >= max_iter:
        last = _warmup(max_iter - 1, warmup, float(getattr(schedule, "warmup_factor", 0.0)))
        out.append(f"solver.schedule.warmup_iters={warmup} >= solver.max_iter={max_iter}: the warmup is cut short "
                   f"and the lr never reaches base_lr (it ends at {last:.3g} x base_lr); lower "
                   "solver.schedule.warmup_iters")
    elif warmup > max_iter // 2:
        out.append(f"solver.schedule.warmup_iters={warmup} is more than half of solver.max_iter={max_iter}")
    late = [s for s in getattr(schedule, "steps", []) if s >= max_iter]
    if late:
        out.append(f"solver.schedule.steps {late} are at or past solver.max_iter={max_iter}: never applied")
    horizon = getattr(schedule, "max_iter", None)
    if isinstance(schedule, WarmupCosine) and horizon != max_iter:
        what = "is cut off before its end" if horizon > max_iter else "stays at its final factor from there on"
        out.append(f"solver.schedule.max_iter={horizon} differs from solver.max_iter={max_iter}: the cosine {what}")
    return out


def set_schedule_iteration(scheduler: torch.optim.lr_scheduler.LambdaLR, iteration: int) -> list[float]:
    """Put a freshly built schedule at ``iteration`` (resume): the optimizer's lrs become the
    current config's ``base_lr * factor(iteration)``, as if it had stepped there; returns them."""
    scheduler.last_epoch = iteration
    lrs = [base * fn(iteration) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)  # what get_last_lr() reports
    return lrs


def base_group(optimizer: torch.optim.Optimizer) -> dict:
    """The parameter group at the base lr (no ``lr_mult``; the first group when all have one):
    the lr the logs report, as Detectron2 reports its main group's, not a backbone's x0.1."""
    return next((g for g in optimizer.param_groups if "lr_mult" not in g), optimizer.param_groups[0])


def scaled_lr(base_lr: float, *, reference_batch: int, global_batch: int) -> float:
    """Linear scaling rule: lr grows with the global batch relative to the recipe's batch."""
    return base_lr * global_batch / reference_batch


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)

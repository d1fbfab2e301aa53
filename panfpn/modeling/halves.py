"""A model's network and postprocessor halves, built once over its own modules and kept outside
its module tree (no second set of ``state_dict`` keys), so ``.eval()`` or hooks set on a half
persist. Shared by every architecture (Panoptic FPN, Mask2Former)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_CACHE = "_halves_cache"


def cached_halves(model: nn.Module, build: Callable[[], tuple[nn.Module, nn.Module]]
                  ) -> tuple[nn.Module, nn.Module]:
    """``model``'s halves, made by ``build()`` on first use with the model's mode flag; the same
    objects afterwards. The buffers of the halves must then be pointed at the model's current ones
    (``.to()`` replaces them): :func:`share_buffers`."""
    halves = model.__dict__.get(_CACHE)
    if halves is None:
        halves = build()
        for half in halves:
            half.training = model.training  # the flag only: the shared modules keep their own
        object.__setattr__(model, _CACHE, halves)
    return halves


def share_buffers(half: nn.Module, **buffers: torch.Tensor) -> None:
    """Point ``half``'s buffers at the model's tensors of the same names (no copies)."""
    for name, tensor in buffers.items():
        half._buffers[name] = tensor


def set_halves_mode(model: nn.Module, mode: bool) -> None:
    """Give the halves (if built) the model's mode; ``nn.Module.train`` cannot reach them."""
    for half in model.__dict__.get(_CACHE) or ():
        half.training = mode

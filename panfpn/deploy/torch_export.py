"""The whole pipeline as a ``torch.export`` program (``.pt2``) that ``torch.export.load`` runs without panfpn.

The program holds ATen ops and torchvision's ``nms``/``roi_align`` (a user imports torchvision before
``torch.export.load``). The one obstacle was torchvision's fake kernel of ``torchvision::nms``: it sizes
the kept indices with ``ctx.create_unbacked_symint()``, whose default lower bound is 2, so every NMS in
the program got a baked-in runtime assertion ``u >= 2`` (``Runtime assertion failed for expression u10
>= 2`` on an image where an FPN level keeps one proposal). :func:`nms_fake_from_zero` swaps in a fake
kernel with the true bound (0 to the number of boxes) while exporting; the op in the program is still
``torchvision::nms``. The pipeline itself turns its derived sizes (resized, padded, top-k counts) into
fresh symbols under ``torch.export`` (:func:`panfpn.deploy.resize.unbacked_size`): no guard on the
resize's formula, and a faster export and load.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torchvision  # noqa: F401  registers torchvision::nms and its fake kernel
from torch import Tensor

from panfpn.deploy.export import MAX_SIDE, example_image
from panfpn.deploy.pipeline import INPUT_NAME, PanopticPipeline
from panfpn.utils.atomic import atomic_write_path

MIN_SIDE = 2  # smallest exported input side (torch.export specialises sizes 0 and 1)


def _nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Fake ``torchvision::nms``: between 0 and ``len(dets)`` kept indices."""
    kept = torch.library.get_ctx().new_dynamic_size(min=0)
    torch._check(kept <= dets.shape[0])
    return dets.new_empty(kept, dtype=torch.long)


@contextlib.contextmanager
def nms_fake_from_zero() -> Iterator[None]:
    """While exporting, ``torchvision::nms``'s fake kernel allows 0 and 1 kept boxes (see the module docstring)."""
    lib = torch.library.Library("torchvision", "FRAGMENT")
    try:
        torch.library.register_fake("torchvision::nms", _nms_fake, lib=lib)
        yield
    finally:
        lib._destroy()  # torchvision's own fake kernel is in force again


def export_pipeline_program(pipeline: PanopticPipeline, path: str | os.PathLike) -> Path:
    """Write the pipeline as a ``.pt2`` program with dynamic height and width (``MIN_SIDE..MAX_SIDE``)."""
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    with torch.no_grad(), nms_fake_from_zero(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on unbacked sizes
        program = torch.export.export(pipeline, (example_image(),), strict=False,
                                      dynamic_shapes={INPUT_NAME: {0: height, 1: width}})
    return atomic_write_path(path, lambda tmp: save_program(program, tmp), suffix=".tmp.pt2")


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> None:
    """``torch.export.save`` without its note on channels_last weights (the convolutions' NHWC layout).

    torch 2.9+ takes a weight that is not contiguous for a slice of a larger tensor and warns "No
    complete tensor found in the group! ... may cause issues when your weights are not on CPU"; an
    NHWC weight fills its whole storage, is saved and loads back with its strides (the program is
    compared with eager after export). Only that message is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
        torch.export.save(program, str(path))

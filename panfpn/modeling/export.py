"""Export PanopticFPN's network to ``torch.export`` / ONNX; run the rest eagerly on its outputs.

Where the graph is cut::

    uint8 batch --normalize_images (eager)--> images float [B, 3, H, W], H, W multiples of 32
      | ExportableNetwork (exported: static shapes only, no data-dependent control flow)
      |   backbone        -> p2..p6           [B, C, H/s, W/s], s = 4, 8, 16, 32, 64
      |   semantic head   -> sem_logits       [B, S, H, W]
      |   RPN head        -> objectness_p*    [B, A, H/s, W/s] logits, deltas_p* [B, 4A, H/s, W/s]
      v
    PanopticPostprocess (eager): anchors + proposal decoding + NMS, RoI heads (box head, box NMS,
      mask head), box rescaling, mask pasting, semantic resize/argmax, fused panoptic merge
      -> the per-image dicts of ``PanopticFPN`` in eval (docs/interfaces.md section 3)

Everything after the RPN head depends on data (how many proposals survive NMS, which FPN level
each RoI pools from), which neither ``torch.export`` without guards nor ONNX expresses cleanly,
and it is a small share of the compute: the backbone, FPN and semantic head are most of the FLOPs.
The cut keeps the exported graph free of custom ops (no RoIAlign, no NMS), so any ONNX runtime
runs it. The eager remainder shares its modules (RPN, RoI heads) with the model it was built
from, and the same functions as the model's own eval path, so its output equals
``model.eval()(batch)`` up to the numerical difference of the exported graph.

Input sizes: H and W are dynamic (multiples of 32, at least :data:`MIN_SIZE` so that P6 is never
1 pixel, which tracing would specialise on); the batch size is dynamic too.

Usage::

    net = ExportableNetwork(model.eval())
    program = export_program(net, height=800, width=1216)        # torch.export.ExportedProgram
    export_onnx(net, "model.onnx", height=800, width=1216)         # opset 17
    post = PanopticPostprocess(model)
    results = run_exported(as_network(program), post, batch)        # == model(batch)
    results = run_exported(onnxruntime.InferenceSession("model.onnx"), post, batch)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from panfpn.utils.atomic import atomic_write_path
from panfpn.modeling.panoptic_fpn import SIZE_DIVISIBILITY, PanopticFPN, normalize_images
from panfpn.modeling.postprocess import panoptic_results

FEATURE_NAMES = ("p2", "p3", "p4", "p5", "p6")
INPUT_NAME = "images"
OUTPUT_NAMES = (*FEATURE_NAMES, "sem_logits", *(f"objectness_{n}" for n in FEATURE_NAMES),
                *(f"deltas_{n}" for n in FEATURE_NAMES))
MIN_SIZE = 96   # P6 (stride 64) must be >= 2 pixels for the traced shapes to stay symbolic
MAX_SIZE = 4096
DEFAULT_OPSET = 17

Network = Callable[[torch.Tensor], Sequence[torch.Tensor]]


class ExportableNetwork(nn.Module):
    """The exported part of a :class:`PanopticFPN`: backbone, semantic head and RPN head.

    ``forward(images)``: normalised float ``[B, 3, H, W]`` (:func:`normalize_images`), H and W
    multiples of 32 and at least :data:`MIN_SIZE`. Returns a flat tuple in the order of
    :data:`OUTPUT_NAMES` (ONNX outputs are flat): ``p2..p6`` ``[B, C, H/s, W/s]``, ``sem_logits``
    ``[B, S, H, W]``, ``objectness_p2..p6`` ``[B, A, H/s, W/s]``, ``deltas_p2..p6`` ``[B, 4A, H/s, W/s]``.
    """

    def __init__(self, model: PanopticFPN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.semantic_head = model.semantic_head
        self.rpn_head = model.rpn.head
        self.train(model.training)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        if tuple(features) != FEATURE_NAMES:
            raise ValueError(f"backbone levels {list(features)} differ from {list(FEATURE_NAMES)}")
        sem_logits = self.semantic_head(features)
        objectness, deltas = self.rpn_head(list(features.values()))
        return (*features.values(), sem_logits, *objectness, *deltas)


def split_outputs(outputs: Sequence[torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                             list[torch.Tensor], list[torch.Tensor]]:
    """The flat tuple of :class:`ExportableNetwork` -> ``(features, sem_logits, objectness, deltas)``."""
    if len(outputs) != len(OUTPUT_NAMES):
        raise ValueError(f"expected {len(OUTPUT_NAMES)} network outputs ({', '.join(OUTPUT_NAMES)}), "
                         f"got {len(outputs)}")
    n = len(FEATURE_NAMES)
    features = dict(zip(FEATURE_NAMES, outputs[:n]))
    return features, outputs[n], list(outputs[n + 1:2 * n + 1]), list(outputs[2 * n + 1:])


class PanopticPostprocess(nn.Module):
    """The eager remainder: from the network's raw outputs to ``PanopticFPN``'s eval output.

    Shares ``rpn`` and ``roi_heads`` with the model it is built from (no copies) and keeps its
    normalisation and merge settings. Build it from a model in eval mode; it refuses to run while
    the shared modules are in training mode (the RPN's proposal limits depend on the mode).

    ``preprocess(images, image_sizes)``: uint8 batch ``[B, 3, Hp, Wp]`` -> ``ImageList`` of the
    network input. ``forward(outputs, image_sizes, orig_sizes)``: the network's flat outputs (any
    sequence of tensors or arrays in :data:`OUTPUT_NAMES` order) -> per-image dicts with
    ``panoptic``, ``instances``, ``sem_seg`` (docs/interfaces.md section 3).
    """

    def __init__(self, model: PanopticFPN) -> None:
        super().__init__()
        if model.training:
            raise ValueError("build PanopticPostprocess from an eval-mode model: call model.eval() first")
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone())
        self.register_buffer("pixel_std", model.pixel_std.detach().clone())
        self.memory_format = model.memory_format
        self.thing_sem_labels = list(model.thing_sem_labels)
        self.merge_thresholds = model.merge_thresholds
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]]) -> ImageList:
        return normalize_images(images.to(self.device), image_sizes, self.pixel_mean, self.pixel_std,
                                memory_format=self.memory_format)

    @torch.no_grad()
    def forward(self, outputs: Sequence[Any], image_sizes: Sequence[Sequence[int]],
                orig_sizes: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        tensors = [torch.as_tensor(t).to(self.device) for t in outputs]
        features, sem_logits, objectness, deltas = split_outputs(tensors)
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        batch, height, width = sem_logits.shape[0], sem_logits.shape[-2], sem_logits.shape[-1]
        if len(sizes) != batch or len(orig_sizes) != batch:
            raise ValueError(f"network outputs are for {batch} images but got {len(sizes)} image_sizes "
                             f"and {len(orig_sizes)} orig_sizes")
        if self.rpn.training or self.roi_heads.training:
            raise RuntimeError("PanopticPostprocess runs in eval mode only; call model.eval()")
        # The anchors and proposal clipping read only the image sizes, not the pixels.
        images = ImageList(sem_logits.new_empty((batch, 3, height, width)), sizes)
        proposals = self.rpn.proposals(images, list(features.values()), objectness, deltas)
        detections = self.roi_heads(features, proposals, sizes)
        return panoptic_results(detections, sem_logits, sizes, orig_sizes,
                                thing_sem_labels=self.thing_sem_labels, merge=self.merge_thresholds)


class ProgramNetwork:
    """A ``torch.export`` program called like :class:`ExportableNetwork`.

    ``program.module()`` builds a new GraphModule (tens of ms), so it is done once here; a
    dynamic program refuses inputs below :data:`MIN_SIZE` with a clear message instead of a guard
    failure.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.program = program
        self.module = program.module()

    def __call__(self, images: torch.Tensor) -> Sequence[torch.Tensor]:
        height, width = images.shape[-2:]
        if min(height, width) < MIN_SIZE:
            raise ValueError(f"the exported program takes padded inputs of at least {MIN_SIZE}x{MIN_SIZE}, "
                             f"got {height}x{width}; run larger images (or the eager model)")
        return self.module(images)


class OnnxNetwork:
    """An onnxruntime session called like :class:`ExportableNetwork`: tensor in, tensors out (CPU)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        array = images.detach().cpu().contiguous().numpy()  # onnxruntime reads C-contiguous memory
        return [torch.from_numpy(a) for a in self.session.run(None, {self.input_name: array})]


def as_network(network: Any) -> Network:
    """An ``ExportedProgram``, an onnxruntime ``InferenceSession`` or any callable -> a callable
    (convert once when calling many times: wrapping a program costs tens of ms)."""
    if isinstance(network, torch.export.ExportedProgram):
        return ProgramNetwork(network)
    if hasattr(network, "get_inputs") and hasattr(network, "run"):
        return OnnxNetwork(network)
    if callable(network):
        return network
    raise TypeError(f"cannot run {type(network).__name__}: expected an ExportedProgram, an onnxruntime "
                    "InferenceSession or a callable")


@torch.no_grad()
def run_exported(network: Any, postprocess: PanopticPostprocess,
                 batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run a collated batch (docs/interfaces.md section 2) through an exported network and the
    eager remainder; returns what ``model.eval()(batch)`` returns.

    ``network``: ``ExportedProgram``, onnxruntime ``InferenceSession`` or a callable as
    :class:`ExportableNetwork` (such as :func:`as_network`'s result, best for repeated calls).
    """
    images = postprocess.preprocess(batch["images"], batch["image_sizes"])
    outputs = as_network(network)(images.tensors)
    return postprocess(outputs, images.image_sizes, batch["orig_sizes"])


def example_input(height: int, width: int, *, batch_size: int = 2,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """A random normalised input ``[batch_size, 3, height, width]`` for tracing (use a batch of
    at least 2 for a dynamic export: tracing with 1 specialises the graph on it)."""
    for name, size in (("height", height), ("width", width)):
        if size % SIZE_DIVISIBILITY or not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"export {name} must be a multiple of {SIZE_DIVISIBILITY} in "
                             f"[{MIN_SIZE}, {MAX_SIZE}], got {size}")
    return torch.randn((batch_size, 3, height, width), device=device)


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    step = SIZE_DIVISIBILITY
    dim = torch.export.Dim
    return {INPUT_NAME: {0: dim("batch", min=1, max=64),
                         2: step * dim("h32", min=MIN_SIZE // step, max=MAX_SIZE // step),
                         3: step * dim("w32", min=MIN_SIZE // step, max=MAX_SIZE // step)}}


def _check_eval(network: ExportableNetwork) -> None:
    if network.training:
        raise ValueError("export an eval-mode network: call model.eval() before ExportableNetwork(model)")


def export_program(network: ExportableNetwork, *, height: int = 800, width: int = 1216,
                   dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``network`` traced on a ``[2, 3, height, width]`` input; batch, H and W
    dynamic unless ``dynamic=False`` (then the program only takes ``[1, 3, height, width]``)."""
    _check_eval(network)
    device = next(network.parameters()).device
    x = example_input(height, width, batch_size=2 if dynamic else 1, device=device)
    with torch.no_grad():
        return torch.export.export(network, (x,), dynamic_shapes=_dynamic_shapes() if dynamic else None)


def export_onnx(network: ExportableNetwork, path: str | os.PathLike, *, height: int = 800,
                width: int = 1216, dynamic: bool = True, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``network`` as an ONNX model (inputs/outputs named :data:`INPUT_NAME`/:data:`OUTPUT_NAMES`).

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs the
    ``onnxscript`` package. Batch, H and W are dynamic axes unless ``dynamic=False`` (then the
    model takes ``[1, 3, height, width]`` only). Written to
    a temporary file first, then moved into place.
    """
    _check_eval(network)
    if opset < 17:
        raise ValueError(f"ONNX opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(network.parameters()).device
    x = example_input(height, width, batch_size=2 if dynamic else 1, device=device)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name in OUTPUT_NAMES:
        axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(network, (x,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_axes=axes if dynamic else None)

    return atomic_write_path(path, write)


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """``torch.export.save`` through a temporary file and ``os.replace`` (load with ``torch.export.load``)."""
    # torch.export.save wants the .pt2 suffix on the temp file too.
    return atomic_write_path(path, lambda tmp: torch.export.save(program, str(tmp)), suffix=".tmp.pt2")


def max_abs_diffs(got: Sequence[Any], want: Sequence[torch.Tensor]) -> dict[str, float]:
    """Per output name, the largest absolute difference between two flat network outputs."""
    if len(got) != len(want):
        raise ValueError(f"output counts differ: {len(got)} vs {len(want)}")
    return {name: float((torch.as_tensor(g).to(w.device).float() - w.float()).abs().max())
            for name, g, w in zip(OUTPUT_NAMES, got, want)}

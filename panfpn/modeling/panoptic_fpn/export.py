"""Export PanopticFPN's network to ``torch.export`` / ONNX; run the rest eagerly on its outputs.

The model is two objects (``PanopticFPN.network``, ``PanopticFPN.postprocessor``); the network's
forward is what is exported, and the same postprocessor runs on the exported graph's outputs::

    uint8 batch --model.network.preprocess (eager)--> images float [B, 3, H, W], H, W multiples of 32
      | model.network (exported: static shapes only, no data-dependent control flow)
      |   backbone        -> p2..p6           [B, C, H/s, W/s], s = 4, 8, 16, 32, 64
      |   semantic head   -> sem_logits       [B, S, H, W]
      |   RPN head        -> objectness_p*    [B, A, H/s, W/s] logits, deltas_p* [B, 4A, H/s, W/s]
      v
    model.postprocessor (eager): anchors + proposal decoding + NMS, RoI heads (box head, box NMS,
      mask head), box rescaling, mask pasting, semantic resize/argmax, fused panoptic merge
      -> the per-image dicts of ``PanopticFPN`` in eval (docs/interfaces.md section 3)

Everything after the RPN head depends on data (how many proposals survive NMS, which FPN level
each RoI pools from), which neither ``torch.export`` without guards nor ONNX expresses cleanly,
and it is a small share of the compute: the backbone, FPN and semantic head are most of the FLOPs.
The cut keeps the exported graph free of custom ops (no RoIAlign, no NMS), so any ONNX runtime
runs it. ``model.eval()(batch)`` is itself ``postprocessor(network(preprocess(batch)))``, so
:func:`run_exported` equals it up to the numerical difference of the exported graph.

Input sizes: H and W are dynamic (multiples of 32, at least :data:`MIN_SIZE` so that P6 is never
1 pixel, which tracing would specialise on); the batch size is dynamic too.

Usage::

    net = model.eval().network
    program = export_program(net, height=800, width=1216)        # torch.export.ExportedProgram
    export_onnx(net, "model.onnx", height=800, width=1216)         # opset 17
    results = run_exported(as_network(program), model, batch)       # == model(batch)
    results = run_exported(onnxruntime.InferenceSession("model.onnx"), model, batch)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from panfpn.data.size_limits import MAX_SIZE, MIN_SIZE
from panfpn.utils.atomic import atomic_write_path
from panfpn.modeling.panoptic_fpn.network import FEATURE_NAMES, OUTPUT_NAMES, SIZE_DIVISIBILITY, PanopticNetwork, split_outputs
from panfpn.modeling.panoptic_fpn import PanopticFPN

__all__ = ["FEATURE_NAMES", "INPUT_NAME", "OUTPUT_NAMES", "MIN_SIZE", "MAX_SIZE", "DEFAULT_OPSET",
           "as_network", "example_input", "export_onnx", "export_program", "max_abs_diffs", "output_names",
           "run_exported", "save_program", "split_outputs", "supports_dynamic"]

INPUT_NAME = "images"
DEFAULT_OPSET = 17

Network = Callable[[torch.Tensor], Sequence[torch.Tensor]]


class ProgramNetwork:
    """A ``torch.export`` program called like :class:`~panfpn.modeling.panoptic_fpn.network.PanopticNetwork`.

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
    """An onnxruntime session called like :class:`~panfpn.modeling.panoptic_fpn.network.PanopticNetwork`: tensor in, tensors out (CPU)."""

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
def run_exported(network: Any, model: PanopticFPN, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``model.eval()(batch)`` with ``network`` in place of ``model.network``'s forward: the model's
    own preprocessing and postprocessor around an exported graph (docs/interfaces.md sections 2, 3).

    ``network``: ``ExportedProgram``, onnxruntime ``InferenceSession`` or a callable as
    :class:`~panfpn.modeling.panoptic_fpn.network.PanopticNetwork` (such as :func:`as_network`'s result, best
    for repeated calls). ``model`` must be in eval mode.
    """
    if model.training:
        raise ValueError("run_exported needs an eval-mode model: call model.eval() first")
    images = model.network.preprocess(batch["images"], batch["image_sizes"])
    outputs = as_network(network)(images.tensors)
    return model.postprocessor(outputs, images.image_sizes, batch["orig_sizes"])


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


def output_names(network: Any) -> tuple[str, ...]:
    """The names of ``network``'s flat outputs: its ``OUTPUT_NAMES`` (Panoptic FPN's by default)."""
    return tuple(getattr(network, "OUTPUT_NAMES", OUTPUT_NAMES))


def supports_dynamic(network: Any) -> bool:
    """Whether ``network`` exports with dynamic batch/H/W (``DYNAMIC_SHAPES``, True by default)."""
    return bool(getattr(network, "DYNAMIC_SHAPES", True))


def _output_axes(network: Any) -> dict[str, dict[int, str]]:
    axes = getattr(network, "OUTPUT_AXES", None)
    if axes is not None:
        return dict(axes)
    return {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in output_names(network)}


def _check_eval(network: PanopticNetwork, dynamic: bool = False) -> None:
    if network.training:
        raise ValueError("export an eval-mode network: call model.eval() before taking model.network")
    if dynamic and not supports_dynamic(network):
        raise ValueError(f"{type(network).__name__} exports with one fixed input size only: "
                         "set export.dynamic=false (dynamic=False)")


def export_program(network: PanopticNetwork, *, height: int = 800, width: int = 1216,
                   dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``network`` traced on a ``[2, 3, height, width]`` input; batch, H and W
    dynamic unless ``dynamic=False`` (then the program only takes ``[1, 3, height, width]``)."""
    _check_eval(network, dynamic)
    device = next(network.parameters()).device
    x = example_input(height, width, batch_size=2 if dynamic else 1, device=device)
    with torch.no_grad():
        return torch.export.export(network, (x,), dynamic_shapes=_dynamic_shapes() if dynamic else None)


def export_onnx(network: PanopticNetwork, path: str | os.PathLike, *, height: int = 800,
                width: int = 1216, dynamic: bool = True, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``network`` as an ONNX model (inputs/outputs named :data:`INPUT_NAME`/:data:`OUTPUT_NAMES`).

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs the
    ``onnxscript`` package. Batch, H and W are dynamic axes unless ``dynamic=False`` (then the
    model takes ``[1, 3, height, width]`` only). Written to
    a temporary file first, then moved into place.
    """
    _check_eval(network, dynamic)
    if opset < 17:
        raise ValueError(f"ONNX opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(network.parameters()).device
    x = example_input(height, width, batch_size=2 if dynamic else 1, device=device)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **_output_axes(network)}

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(network, (x,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(output_names(network)),
                              dynamic_axes=axes if dynamic else None)

    return atomic_write_path(path, write)


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """``torch.export.save`` through a temporary file and ``os.replace`` (load with ``torch.export.load``)."""
    # torch.export.save wants the .pt2 suffix on the temp file too.
    return atomic_write_path(path, lambda tmp: torch.export.save(program, str(tmp)), suffix=".tmp.pt2")


def max_abs_diffs(got: Sequence[Any], want: Sequence[torch.Tensor],
                  names: Sequence[str] = OUTPUT_NAMES) -> dict[str, float]:
    """Per output name (``names``: :func:`output_names` of the network), the largest absolute
    difference between two flat network outputs."""
    if len(got) != len(want):
        raise ValueError(f"output counts differ: {len(got)} vs {len(want)}")
    return {name: float((torch.as_tensor(g).to(w.device).float() - w.float()).abs().max())
            for name, g, w in zip(names, got, want)}

"""Adversarial checks of the exported Panoptic FPN pipeline's static steps against the eager model:
the box head's final order on tied scores (deploy/static_ops.py ``class_nms``), and the in-box paste
and merge (``PanopticPipeline.merged``) on degenerate inputs against the eager paste and merge, in
torch and in onnxruntime."""

import dataclasses
import types
import warnings

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from panfpn.deploy.pipeline import OUTPUT_NAMES, PanopticPipeline
from panfpn.deploy.static_ops import class_nms
from panfpn.modeling.merge import MergeThresholds, merge_panoptic
from panfpn.modeling.panoptic_fpn.postprocess import paste_masks_binary


def _tied_detections(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` (box, class) candidates in the box head's (RoI, class) order whose scores take three
    values only (a confident model's scores saturate at exactly 1.0 in float32)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand((n, 2), generator=g) * 300
    boxes = torch.cat([xy, xy + 10 + torch.rand((n, 2), generator=g) * 60], 1)
    scores = torch.tensor([1.0, 0.75, 0.5])[torch.randint(0, 3, (n,), generator=g)]
    labels = torch.randint(0, 5, (n,), generator=g)
    return boxes, scores, labels


@pytest.mark.parametrize("seed", range(3))
def test_class_nms_breaks_score_ties_as_the_eager_box_head(seed):
    # Eager BoxHead.predict keeps batched_nms's order: descending score, ties in (RoI, class) order
    # (up to 1000 candidates on the CPU, where torchvision offsets the boxes per class and runs one
    # stable NMS). class_nms ran one NMS per class and sorted the concatenation: ties came class by
    # class, so two detections scored 1.0 could swap, changing the instance order, the segment ids
    # and which instance an overlap goes to.
    boxes, scores, labels = _tied_detections(300, seed)
    want = batched_nms(boxes, scores, labels, 0.5)
    assert len(want) > 100 and want.tolist() == sorted(want.tolist(), key=lambda i: (-float(scores[i]), i))
    assert class_nms(boxes, scores, labels, 0.5, 5).tolist() == want.tolist()


def test_class_nms_tie_order_in_onnxruntime(tmp_path):
    # The same order in the exported graph (its sort is a TopK, which puts the lower index first).
    ort = pytest.importorskip("onnxruntime")

    class ClassNMS(torch.nn.Module):
        def forward(self, boxes, scores, labels):
            return class_nms(boxes, scores, labels, 0.5, 5)

    boxes, scores, labels = _tied_detections(300)
    path = tmp_path / "nms.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ClassNMS(), (boxes[:20], scores[:20], labels[:20]), str(path), dynamo=False,
                          opset_version=17, input_names=["b", "s", "l"],
                          dynamic_axes={"b": {0: "n"}, "s": {0: "n"}, "l": {0: "n"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"b": boxes.numpy(), "s": scores.numpy(), "l": labels.numpy()})[0]
    assert got.tolist() == batched_nms(boxes, scores, labels, 0.5).tolist()

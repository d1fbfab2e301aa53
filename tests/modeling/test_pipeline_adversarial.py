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


RULES = {
    "detectron2": dataclasses.replace(MergeThresholds.detectron2(), score_thresh=0.3, stuff_area=3),
    "textbook": dataclasses.replace(MergeThresholds.textbook(), score_thresh=0.3, stuff_area=3),
}
K = 10  # the padded slots (detections_per_image)


class Merged(torch.nn.Module):
    """:meth:`PanopticPipeline.merged` alone (padding, in-box paste and merge, output arrays) on
    given detections: a small graph to export."""

    merged = PanopticPipeline.merged

    def __init__(self, k: int, rules: MergeThresholds) -> None:
        super().__init__()
        self.max_detections, self.merge = k, rules
        self.model = types.SimpleNamespace(thing_sem_labels=[0])
        self.register_buffer("thing_category_ids", torch.tensor([1, 2, 3]))
        self.register_buffer("sem_category_ids", torch.tensor([-1, 10, 11, 12, 13]))

    def forward(self, probs, boxes, scores, labels, sem, image):
        return self.merged(probs, boxes, scores, labels, sem, image)


def _degenerate_cases() -> list[tuple]:
    """(name, mask probabilities, clipped XYXY boxes, descending scores, labels, semantic labels)."""
    g = torch.Generator().manual_seed(0)

    def case(name, h, w, boxes, scores=None, probs=None):
        d = len(boxes)
        probs = torch.rand((d, 6, 6), generator=g) if probs is None else probs
        scores = torch.linspace(0.9, 0.35, d) if scores is None else scores
        boxes = torch.tensor(boxes, dtype=torch.float).reshape(d, 4)
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float))  # as clip_boxes
        return (name, probs, boxes, scores, torch.randint(0, 3, (d,), generator=g),
                torch.randint(0, 5, (h, w), generator=g))

    cases = []
    for h, w in ((1, 1), (2, 3), (1, 40), (40, 1)):
        # the whole image twice, past the borders, outside (clipped to a border: no width), at the
        # origin with no size, one pixel, no width on a pixel centre (reaches one column), no height
        boxes = [[0, 0, w, h], [0, 0, w, h], [-5, -5, w + 5, h + 5], [w + 3, 0, w + 9, h], [0, 0, 0, 0],
                 [0, 0, 1, 1], [w / 2, 0, w / 2, h], [0, h / 2, w, h / 2]]
        cases.append(case(f"{h}x{w}", h, w, boxes))
    box = [[3, 4, 20, 15]]
    same = torch.rand((1, 6, 6), generator=g).expand(6, -1, -1)
    cases.append(case("identical", 20, 30, box * 6, scores=torch.full((6,), 0.7), probs=same))
    cases.append(case("below_threshold", 20, 30, box * 4, scores=torch.full((4,), 0.29)))
    levels = torch.tensor([0.49, 0.5, 0.51])[:, None, None].expand(3, 6, 6)  # empty mask, exactly 0.5, full
    cases.append(case("empty_and_half", 20, 30, box * 3, probs=levels))
    cases.append(case("none", 20, 30, []))
    cases.append(case("all_slots", 20, 30, [[i, i, 2 * i + 3, 2 * i + 2] for i in range(K)]))
    return cases


def _eager_merge(probs, boxes, scores, labels, sem, rules):
    """The eager model's paste and merge (postprocess.panoptic_results' steps)."""
    masks = paste_masks_binary(probs, boxes, tuple(sem.shape))
    return merge_panoptic(masks, scores, labels, sem, thing_sem_labels=[0], **dataclasses.asdict(rules))


def _assert_equals_eager(outputs, probs, boxes, scores, labels, sem, rules, name):
    out = dict(zip(OUTPUT_NAMES, (np.asarray(o) for o in outputs)))
    want_map, want = _eager_merge(probs, boxes, scores, labels, sem, rules)
    assert np.array_equal(out["panoptic"], want_map.numpy()), name
    n = int(out["num_segments"])
    got = [(int(out["segments_id"][i]), bool(out["segments_isthing"][i]), int(out["segments_area"][i]))
           for i in range(n)]
    assert got == [(s["id"], s["isthing"], s["area"]) for s in want], name
    thing_scores = [float(out["segments_score"][i]) for i in range(n) if out["segments_isthing"][i]]
    assert thing_scores == [float(np.float32(s["score"])) for s in want if s["isthing"]], name


@pytest.mark.parametrize("rules", sorted(RULES))
def test_merged_equals_the_eager_merge_on_degenerate_detections(rules):
    # PanopticPipeline.merged run eagerly (what the ONNX graph traces) against the eager model's
    # paste_masks_binary + merge_panoptic, bit for bit.
    k1 = ("k1", *_degenerate_cases()[0][1:])  # one slot: the 1x1 image's first detection
    for name, probs, boxes, scores, labels, sem in (*_degenerate_cases(), k1):
        k = 1 if name == "k1" else K
        probs, boxes, scores, labels = probs[:k], boxes[:k], scores[:k], labels[:k]
        image = torch.zeros((*sem.shape, 3), dtype=torch.uint8)
        with torch.no_grad():
            outputs = Merged(k, RULES[rules])(probs, boxes, scores, labels, sem, image)
        _assert_equals_eager(outputs, probs, boxes, scores, labels, sem, RULES[rules], name)


def test_merged_in_onnxruntime_on_degenerate_detections(tmp_path):
    # The same, exported: empty spans (Slice, Range and ScatterND of nothing), one-row and
    # one-column images, no detection, every slot used.
    ort = pytest.importorskip("onnxruntime")
    rules = RULES["detectron2"]
    _, *example = _degenerate_cases()[-1]
    image = torch.zeros((*example[-1].shape, 3), dtype=torch.uint8)
    names = ["i_probs", "i_boxes", "i_scores", "i_labels", "i_sem", "i_image"]
    axes = {**{n: {0: "d"} for n in names[:4]}, "i_sem": {0: "h", 1: "w"}, "i_image": {0: "h", 1: "w"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Merged(K, rules), (*example, image), str(tmp_path / "merged.onnx"), dynamo=False,
                          opset_version=17, input_names=names, output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
    session = ort.InferenceSession(str(tmp_path / "merged.onnx"), providers=["CPUExecutionProvider"])
    for name, *inputs in _degenerate_cases():
        image = np.zeros((*inputs[-1].shape, 3), dtype=np.uint8)
        outputs = session.run(None, {**{n: t.numpy() for n, t in zip(names, inputs)}, "i_image": image})
        _assert_equals_eager(outputs, *inputs, rules, name)

"""Detectron2 checkpoints: the semantic head is read in Detectron2's label order.

The checkpoints are written as Detectron2 writes them: its parameter names, numpy arrays in a
``{"model": ..., "__author__": ...}`` pickle (model zoo) or tensors in a ``{"model": ...}`` torch
file. The semantic predictor and the box classifier are built by hand in Detectron2's conventions:

* COCO Panoptic FPN (Detectron2's "separated" panoptic metadata): semantic class 0 is the merged
  'things' class, class i = 1..53 is the i-th stuff category in ascending category id
  (1 banner/92, 2 blanket/93, 3 bridge/95, 40 sky-other-merged/187, 52 wall-other-merged/199,
  53 rug-merged/200);
* Cityscapes: contiguous ids are the train ids (0 road/7, 10 sky/23, 13 car/26);
* box classifier: background is the last class.

A zero predictor weight with a one-hot bias makes one Detectron2 class win at every pixel; the
stuff segment that comes out must be that class's category.
"""

import pickle

import numpy as np
import pytest
import torch

from panfpn.data.builtin_meta import cityscapes_panoptic_metadata, coco_panoptic_metadata
from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.panoptic_fpn.box_head import BoxHead
from panfpn.modeling.panoptic_fpn.detectron2_import import ours_to_d2, remap_d2_semantic_predictor
from panfpn.modeling.panoptic_fpn.mask_head import MaskHead
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.modeling.panoptic_fpn.roi_heads import RoIHeads, RoISampling
from panfpn.modeling.panoptic_fpn.rpn import RPN, ProposalLimits
from panfpn.modeling.panoptic_fpn.semantic_head import SemanticFPNHead
from panfpn.modeling.weights import load_weights

from modeling_helpers import make_batch

CHANNELS, SEM_CHANNELS, FC_DIM = 32, 32, 32
COCO = coco_panoptic_metadata()
CITYSCAPES = cityscapes_panoptic_metadata()
# Detectron2's COCO panoptic semantic class -> (category id, name); 0 = the merged things.
D2_COCO_STUFF = {1: (92, "banner"), 2: (93, "blanket"), 3: (95, "bridge"), 40: (187, "sky-other-merged"),
                 52: (199, "wall-other-merged"), 53: (200, "rug-merged")}
# Cityscapes train id -> label id.
D2_CITYSCAPES = {0: 7, 10: 23}
D2_CITYSCAPES_THING = 13  # car


def tiny_model(meta, seed=0):
    """A Panoptic FPN on ``meta``'s classes with an R18 body and narrow heads."""
    torch.manual_seed(seed)
    model = PanopticFPN(
        ResNetFPN(18, norm="frozen_bn", freeze_at=2, out_channels=CHANNELS),
        SemanticFPNHead(meta.num_sem_classes, in_channels=CHANNELS, conv_channels=SEM_CHANNELS),
        RPN(in_channels=CHANNELS, limits=ProposalLimits(50, 50, 20, 20)),
        RoIHeads(BoxHead(meta.num_thing_classes, in_channels=CHANNELS, fc_dim=FC_DIM),
                 MaskHead(meta.num_thing_classes, in_channels=CHANNELS, conv_dim=16, num_convs=1),
                 sampling=RoISampling(16)),
        thing_sem_labels=meta.thing_sem_labels, merge=MergeThresholds(0.5, 0.5, 4))
    return model.eval()


def d2_checkpoint(meta, winner: int) -> dict[str, np.ndarray]:
    """Detectron2-named float32 arrays for a model on ``meta``: random trunk, a semantic head whose
    Detectron2 class ``winner`` wins everywhere, a box classifier where background wins."""
    trunk = {}
    for key, value in tiny_model(meta, seed=1).state_dict().items():
        name = ours_to_d2(key)
        if name is not None and not name.startswith(("sem_seg_head.predictor.", "roi_heads.box_predictor.cls")):
            trunk[name] = value.float().numpy().copy()
    # Written by hand in Detectron2's layout.
    num_sem, num_things = meta.num_sem_classes, meta.num_thing_classes
    trunk["sem_seg_head.predictor.weight"] = np.zeros((num_sem, SEM_CHANNELS, 1, 1), np.float32)
    trunk["sem_seg_head.predictor.bias"] = np.zeros(num_sem, np.float32)
    trunk["sem_seg_head.predictor.bias"][winner] = 10.0
    trunk["roi_heads.box_predictor.cls_score.weight"] = np.zeros((num_things + 1, FC_DIM), np.float32)
    trunk["roi_heads.box_predictor.cls_score.bias"] = np.zeros(num_things + 1, np.float32)
    trunk["roi_heads.box_predictor.cls_score.bias"][num_things] = 10.0  # background is last
    return trunk


def write(path, state, fmt):
    if fmt == "pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    else:
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}, "iteration": 90000}, path)
    return path


def panoptic_of(model):
    batch = make_batch([(64, 80)], [(64, 80)], num_things=1, num_sem=1, seed=3)
    with torch.no_grad():
        return model(batch)[0]["panoptic"]


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
@pytest.mark.parametrize("d2_class", sorted(D2_COCO_STUFF))
def test_coco_stuff_class_keeps_its_category(tmp_path, fmt, d2_class):
    model = tiny_model(COCO)
    path = write(tmp_path / f"model_final.{fmt}", d2_checkpoint(COCO, d2_class), fmt)
    report = load_weights(model, path)
    assert report.format == "detectron2" and report.complete, str(report)
    assert ("semantic predictor rows permuted from Detectron2's order (things at 0, stuff i at i+1) "
            "to ours (stuff 0..52, things 53)") in report.notes
    id_map, segments = panoptic_of(model)
    assert len(segments) == 1 and not segments[0]["isthing"], segments
    category_id, name = D2_COCO_STUFF[d2_class]
    cat = COCO.category(COCO.segment_category_id(False, segments[0]["category"]))
    assert (cat.id, cat.name) == (category_id, name)
    assert (id_map == segments[0]["id"]).all()


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_coco_things_channel_gives_no_stuff(tmp_path, fmt):
    model = tiny_model(COCO)
    load_weights(model, write(tmp_path / f"model_final.{fmt}", d2_checkpoint(COCO, 0), fmt))
    id_map, segments = panoptic_of(model)
    assert segments == [] and (id_map == 0).all()  # no instance passes: every pixel is void


@pytest.mark.parametrize("d2_class", [*sorted(D2_CITYSCAPES), D2_CITYSCAPES_THING])
def test_cityscapes_head_uses_train_id_order(tmp_path, d2_class):
    model = tiny_model(CITYSCAPES)
    report = load_weights(model, write(tmp_path / "model_final.pkl", d2_checkpoint(CITYSCAPES, d2_class), "pkl"))
    assert report.complete, str(report)
    assert any(n.startswith("semantic predictor rows kept in order") and "Cityscapes train ids" in n
               for n in report.notes), report.notes
    id_map, segments = panoptic_of(model)
    if d2_class == D2_CITYSCAPES_THING:
        assert segments == [] and (id_map == 0).all()
    else:
        assert len(segments) == 1 and not segments[0]["isthing"]
        assert CITYSCAPES.segment_category_id(False, segments[0]["category"]) == D2_CITYSCAPES[d2_class]


def test_unknown_layout_is_an_error(tmp_path):
    model = tiny_model(COCO)
    model.thing_sem_labels = [54]  # outside the 54 semantic classes: the layout cannot be known
    path = write(tmp_path / "model_final.pkl", d2_checkpoint(COCO, 1), "pkl")
    with pytest.raises(ValueError, match=r"model_final\.pkl.*thing_sem_labels \[54\].*54 semantic classes"):
        load_weights(model, path)


def test_predictor_of_another_size_is_left_alone():
    """A head for other classes cannot be mapped by category; it stays as is (a shape mismatch)."""
    weight, bias = torch.randn(10, 4, 1, 1), torch.randn(10)
    mapped = {"semantic_head.predictor.weight": weight, "semantic_head.predictor.bias": bias}
    note = remap_d2_semantic_predictor(mapped, 54, [53], "x.pkl")
    assert "not remapped" in note and "54" in note
    assert mapped["semantic_head.predictor.weight"] is weight and mapped["semantic_head.predictor.bias"] is bias

"""An official-named Mask2Former checkpoint gives the outputs the official tensors define.

The checkpoint is written in the official model-zoo naming (``backbone.stem.*``,
``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*``; facebookresearch/Mask2Former) with
seeded random values for ``mask2former_small``'s shapes, loaded through ``load_weights``, and parts
of our forward are recomputed here from the official tensors alone, not through our modules:

* input: RGB minus the ImageNet mean over the std; stem: ``conv1`` (7x7, stride 2) + its BN;
* ``mask_features`` = 1x1 conv ``pixel_decoder.mask_features`` of the pixel decoder's last map;
* predictor head of a query state q (official ``MultiScaleMaskedTransformerDecoder.forward_prediction_heads``):
  x = LayerNorm(q; ``decoder_norm``), class logits = x W^T + b (``class_embed``, K+1 rows, no-object
  last), mask embedding = 3-layer ReLU MLP (``mask_embed.layers.{0,1,2}``), masks = einsum(embedding,
  mask_features); checked for the query init (``query_feat``) and the final layer.

Label order (official ``register_coco_panoptic_annos_semseg.py`` / ``cityscapes_panoptic.py``):
official class k of COCO panoptic is the k-th of the 133 categories sorted by id (80 things with
ids 1..90, then 53 stuff with ids 92..200); of Cityscapes, train id k (11 stuff then 8 things).
A class head that makes k win everywhere must give a segment of that dataset category.
"""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from modeling_helpers import compose_model_config

from panfpn.data.builtin_meta import (cityscapes_panoptic_metadata, coco_panoptic_categories,
                                      coco_panoptic_metadata)
from panfpn.modeling.build import instantiate_model
from panfpn.modeling.mask2former.official_weights import official_name
from panfpn.modeling.weights import WeightsError, load_weights

PR = "sem_seg_head.predictor"
PD = "sem_seg_head.pixel_decoder"
IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
# Cityscapes label ids in train-id order (cityscapesscripts labels.py)
CITYSCAPES_BY_TRAIN_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def _build(data, *overrides):
    torch.manual_seed(0)
    return instantiate_model(compose_model_config("mask2former_small", data, overrides)).eval()


def official_state(model, seed=0):
    """Seeded random tensors under the official names, fan-in scaled so activations stay finite."""
    g = np.random.default_rng(seed)
    state = {}
    for ours, value in model.state_dict().items():
        name = official_name(ours)
        if name is None or name.endswith("num_batches_tracked"):
            continue
        shape = tuple(value.shape)
        if name.endswith("running_var"):
            x = g.uniform(0.5, 1.5, shape)
        elif len(shape) > 1:
            x = g.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        else:
            x = 0.1 * g.standard_normal(shape) + (1.0 if name.endswith("weight") else 0.0)  # norm scales ~1
        state[name] = x.astype(np.float32)
    return state


def _load(model, state, path):
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "FAIR"}, f)
    report = load_weights(model, str(path))
    assert report.complete and report.format == "official Mask2Former"


def _t(state, name):
    return torch.from_numpy(state[name])


def official_head(state, queries, mask_features, *, rows=None, swap_mlp=False):
    """Class logits and mask logits of query states ``[B, Q, C]`` from the official tensors;
    ``rows`` / ``swap_mlp``: a deliberately wrong mapping (class rows permuted, MLP layers 0/1 swapped)."""
    x = F.layer_norm(queries, queries.shape[-1:], _t(state, f"{PR}.decoder_norm.weight"),
                     _t(state, f"{PR}.decoder_norm.bias"), 1e-5)
    w, b = _t(state, f"{PR}.class_embed.weight"), _t(state, f"{PR}.class_embed.bias")
    if rows is not None:
        w, b = w[rows], b[rows]
    logits = x @ w.T + b
    order = (1, 0, 2) if swap_mlp else (0, 1, 2)
    e = x
    for i, layer in enumerate(order):
        e = e @ _t(state, f"{PR}.mask_embed.layers.{layer}.weight").T + _t(state, f"{PR}.mask_embed.layers.{layer}.bias")
        e = F.relu(e) if i < 2 else e
    return logits, torch.einsum("bqc,bchw->bqhw", e, mask_features)


def _close(ours, ref):
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def _differs(ours, ref):
    return not torch.allclose(ours, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))


def _capture(model):
    """Forward hooks recording the tensors our modules see / produce; returns (store, handles)."""
    seen = {}
    body = model.backbone.body
    hooks = [
        body.conv1.register_forward_pre_hook(lambda m, a: seen.__setitem__("input", a[0])),
        body.bn1.register_forward_hook(lambda m, a, o: seen.__setitem__("stem", o.clone())),  # ReLU is in place
        model.pixel_decoder.mask_features.register_forward_pre_hook(lambda m, a: seen.__setitem__("last_map", a[0])),
        model.predictor.register_forward_hook(lambda m, a, o: seen.update(mask_features=a[1], predictions=o)),
        model.predictor.transformer_ffn_layers[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("final", o)),
    ]
    return seen, hooks


def _batch(images):
    b, _, h, w = images.shape
    return {"images": images, "image_sizes": [(h, w)] * b, "orig_sizes": [(h, w)] * b}


def test_forward_matches_the_official_tensors(tmp_path):
    model = _build("coco_panoptic")
    state = official_state(model)
    _load(model, state, tmp_path / "model_final.pkl")
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    seen, hooks = _capture(model)
    try:
        with torch.no_grad():
            model(_batch(images))
    finally:
        for h in hooks:
            h.remove()
    x = (images.float() - IMAGENET_MEAN) / IMAGENET_STD
    _close(seen["input"], x)
    stem = F.batch_norm(F.conv2d(x, _t(state, "backbone.stem.conv1.weight"), stride=2, padding=3),
                        _t(state, "backbone.stem.conv1.norm.running_mean"),
                        _t(state, "backbone.stem.conv1.norm.running_var"),
                        _t(state, "backbone.stem.conv1.norm.weight"), _t(state, "backbone.stem.conv1.norm.bias"),
                        training=False, eps=1e-5)
    _close(seen["stem"], stem)
    mask_features = F.conv2d(seen["last_map"], _t(state, f"{PD}.mask_features.weight"),
                             _t(state, f"{PD}.mask_features.bias"))
    _close(seen["mask_features"], mask_features)
    classes, masks = seen["predictions"]
    assert classes[-1].shape == (2, 20, 134) and masks[-1].shape == (2, 20, 16, 16)
    init = _t(state, f"{PR}.query_feat.weight")[None].expand(2, -1, -1)
    final = seen["final"].transpose(0, 1)  # [Q, B, C] -> [B, Q, C]
    for queries, logits, mask in ((init, classes[0], masks[0]), (final, classes[-1], masks[-1])):
        ref_logits, ref_masks = official_head(state, queries, mask_features)
        _close(logits, ref_logits)
        _close(mask, ref_masks)
        # the comparison can fail: a shifted class head or swapped MLP layers give other outputs
        wrong_logits, _ = official_head(state, queries, mask_features, rows=torch.arange(134).roll(1))
        _, wrong_masks = official_head(state, queries, mask_features, swap_mlp=True)
        assert _differs(logits, wrong_logits) and _differs(mask, wrong_masks)


def _winner_state(state, k):
    """The official state with class k winning every query (others and no-object very negative)
    and every mask logit positive (mask features 1, mask embedding 1)."""
    out = dict(state)
    w = out[f"{PR}.class_embed.weight"]
    out[f"{PR}.class_embed.weight"] = np.zeros_like(w)
    out[f"{PR}.class_embed.bias"] = np.where(np.arange(w.shape[0]) == k, 20.0, -20.0).astype(np.float32)
    for name in (f"{PD}.mask_features", f"{PR}.mask_embed.layers.2"):
        out[f"{name}.weight"] = np.zeros_like(out[f"{name}.weight"])
        out[f"{name}.bias"] = np.ones_like(out[f"{name}.bias"])
    return out


def _categories(model, metadata, tmp_path, classes):
    """Per official class k: the dataset category ids of the panoptic segments and the semantic labels."""
    images = torch.zeros((1, 3, 32, 32), dtype=torch.uint8)
    state = _winner_state(official_state(model), classes[0])
    _load(model, state, tmp_path / "winner.pkl")
    bias = model.predictor.class_embed.bias  # loaded from the official bias above; row k set per class
    result = {}
    for k in classes:
        with torch.no_grad():
            bias.copy_(torch.from_numpy(_winner_state(state, k)[f"{PR}.class_embed.bias"]))
            out = model(_batch(images))[0]
        id_map, segments = out["panoptic"]
        assert segments and bool((id_map > 0).all()), f"class {k}: the winning class does not cover the image"
        ids = {metadata.segment_category_id(s["isthing"], s["category"]) for s in segments}
        result[k] = (ids, set(out["sem_seg"].unique().tolist()))
    return result


def test_coco_class_k_is_the_kth_category_by_id(tmp_path):
    coco = coco_panoptic_metadata()
    by_id = sorted(coco_panoptic_categories(), key=lambda c: c["id"])
    names = {k: by_id[k]["name"] for k in (0, 79, 80, 132)}
    assert names == {0: "person", 79: "toothbrush", 80: "banner", 132: "rug-merged"}
    model = _build("coco_panoptic")
    got = _categories(model, coco, tmp_path, list(range(133)))
    for k, (ids, sem) in got.items():
        assert ids == {by_id[k]["id"]}, f"official class {k}: {by_id[k]['name']} (id {by_id[k]['id']}), got {ids}"
        (label,) = sem
        # semantic output: the stuff category's own label, the merged 'thing' label for things
        assert coco.sem_label_to_category[label] == (None if by_id[k]["isthing"] else by_id[k]["id"])


@pytest.mark.parametrize("order", ["semantic", "things_first"])
def test_cityscapes_class_k_is_train_id_k(tmp_path, order):
    """class_order=semantic gives the official order; things_first (the COCO convention) would read
    every official class as another category, so the official file is refused naming the key."""
    city = cityscapes_panoptic_metadata()
    model = _build("cityscapes_panoptic", f"model.class_order={order}")
    if order == "things_first":
        with pytest.raises(WeightsError, match="model.class_order=semantic"):
            _load(model, official_state(model), tmp_path / "model_final_cc.pkl")
        return
    got = _categories(model, city, tmp_path, list(range(19)))
    ids = [next(iter(got[k][0])) for k in range(19)]
    assert all(len(got[k][0]) == 1 for k in range(19))
    assert ids == CITYSCAPES_BY_TRAIN_ID
    assert [got[k][1] for k in range(19)] == [{k} for k in range(19)]  # semantic label = train id

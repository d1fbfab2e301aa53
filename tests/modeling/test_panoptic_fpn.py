"""PanopticFPN end to end on CPU: one training step and eval outputs, for the R18 and R50 configs."""

import math
import warnings

import pytest
import torch
from omegaconf import OmegaConf

import panfpn
from panfpn.modeling.build import build_model
from panfpn.modeling.panoptic_fpn import LOSS_KEYS

from modeling_helpers import check_panoptic, compose_model_config, make_batch

# Zero thresholds so that a randomly initialised model still outputs instances and the merge
# really has overlapping things to resolve.
EVAL_ALL = ("model.merge.score_thresh=0.0", "model.roi_heads.box_head.test.score_thresh=0.0",
            "model.merge.stuff_area=8", "model.roi_heads.box_head.test.detections_per_image=20")
CASES = {
    "small": ("panoptic_fpn_small", "synthetic", ()),
    # Trainable BN: frozen BN with default statistics is not a trainable configuration.
    "r50": ("panoptic_fpn_r50", "coco_panoptic",
            ("model.backbone.norm=bn", "model.roi_heads.sampling.batch_size_per_image=64",
             "model.rpn.limits.pre_nms_topk_train=200", "model.rpn.limits.post_nms_topk_train=100",
             "model.rpn.limits.pre_nms_topk_test=100", "model.rpn.limits.post_nms_topk_test=50")),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request):
    model_name, data, overrides = CASES[request.param]
    cfg = compose_model_config(model_name, data, (*overrides, *EVAL_ALL))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frozen-BN-without-weights warning (R50)
        model = build_model(cfg)
    return model, cfg


def test_one_training_step(built):
    model, cfg = built
    d = cfg.data
    batch = make_batch([(64, 96), (60, 80)], [(64, 96), (60, 80)],
                       num_things=d.num_thing_classes, num_sem=d.num_sem_classes)
    model.train()
    model.zero_grad()
    losses = model(batch)
    assert set(losses) == set(LOSS_KEYS)
    for key, value in losses.items():
        assert value.dim() == 0 and math.isfinite(value.item()), key
    assert losses["loss_sem_seg"].item() > 0 and losses["loss_mask"].item() > 0
    sum(losses.values()).backward()
    heads = {
        "semantic": model.semantic_head.predictor.weight,
        "rpn": model.rpn.head.cls_logits.weight,
        "box cls": model.roi_heads.box_head.cls_score.weight,
        "box reg": model.roi_heads.box_head.bbox_pred.weight,
        "mask": model.roi_heads.mask_head.predictor.weight,
        "fpn": model.backbone.fpn.layer_blocks[0][0].weight,
    }
    for name, p in heads.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches the {name} head"
    frozen = model.backbone.body.conv1.weight
    assert frozen.grad is None or cfg.model.backbone.freeze_at == 0


def test_eval_outputs_are_valid_panoptic_partitions(built):
    model, cfg = built
    d = cfg.data
    orig = [(100, 150), (60, 70)]  # outputs come back at the original sizes, not the input sizes
    batch = make_batch([(64, 96), (60, 70)], orig, num_things=d.num_thing_classes,
                       num_sem=d.num_sem_classes, seed=1)
    model.eval()
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2
    thing_sem = list(OmegaConf.to_container(d.thing_sem_labels))
    for result, size in zip(results, orig):
        check_panoptic(result, size, num_things=d.num_thing_classes, num_sem=d.num_sem_classes,
                       thing_sem_labels=thing_sem)
    assert any(s["isthing"] for r in results for s in r["panoptic"][1]), "no thing segment to check"
    for r in results:
        assert len(r["instances"]["scores"]) > 0
        assert (r["instances"]["scores"][:-1] >= r["instances"]["scores"][1:]).all()


def test_padding_does_not_change_predictions():
    """An image predicted alone and next to a larger one (so padded) gives the same semantics."""
    cfg = compose_model_config("panoptic_fpn_small", "synthetic", EVAL_ALL)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    big = make_batch([(64, 64), (96, 128)], [(64, 64), (96, 128)], num_things=4, num_sem=5, seed=3)
    alone = {**big, "images": big["images"][:1, :, :64, :64], "image_sizes": [(64, 64)],
             "orig_sizes": [(64, 64)]}
    with torch.no_grad():
        r_big = model(big)[0]
        r_alone = model(alone)[0]
    # Receptive fields reach into the padding, so logits differ a little near the border; the
    # zeroed padding keeps the bulk of the argmax identical.
    agree = (r_big["sem_seg"] == r_alone["sem_seg"]).float().mean()
    assert agree > 0.8


def test_bad_images_raise_clear_error():
    model = panfpn.panoptic_fpn_small(num_thing_classes=4, num_stuff_classes=4).eval()
    batch = make_batch([(64, 64)], [(64, 64)], num_things=4, num_sem=5)
    batch["images"] = batch["images"].float()
    with pytest.raises(ValueError, match="uint8"):
        model(batch)


def test_eval_without_detections_gives_stuff_only():
    cfg = compose_model_config("panoptic_fpn_small", "synthetic",
                               ("model.roi_heads.box_head.test.score_thresh=1.0", "model.merge.stuff_area=1"))
    model = build_model(cfg).eval()
    batch = make_batch([(64, 64)], [(70, 50)], num_things=4, num_sem=5)
    with torch.no_grad():
        (result,) = model(batch)
    check_panoptic(result, (70, 50), num_things=4, num_sem=5, thing_sem_labels=[4])
    assert len(result["instances"]["scores"]) == 0
    assert result["panoptic"][1] and not any(s["isthing"] for s in result["panoptic"][1])


def test_bf16_autocast_keeps_boxes_and_losses_in_float32():
    cfg = compose_model_config("panoptic_fpn_small", "synthetic", EVAL_ALL)
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = make_batch([(64, 96)], [(64, 96)], num_things=4, num_sem=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(batch)
        sum(losses.values()).backward()
        with torch.no_grad():
            (result,) = model.eval()(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert result["instances"]["boxes"].dtype == torch.float32
    check_panoptic(result, (64, 96), num_things=4, num_sem=5, thing_sem_labels=[4])


def test_network_and_postprocessor_are_built_once_and_keep_what_is_set_on_them():
    """They were built anew on every access: `.eval()` on model.network or a hook on it was lost."""
    import copy

    import panfpn

    model = panfpn.panoptic_fpn_small(4, 4).train()
    keys = set(model.state_dict())
    assert model.network is model.network and model.postprocessor is model.postprocessor
    assert set(model.state_dict()) == keys  # the halves add no second set of keys
    calls = []
    model.network.register_forward_hook(lambda *args: calls.append(1))
    model.network.eval()
    assert not model.network.training and not model.backbone.training
    model.eval()
    batch = {"images": torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "image_sizes": [(64, 64)],
             "orig_sizes": [(64, 64)]}
    with torch.no_grad():
        model(batch)
    assert calls == [1]
    model.train()
    assert model.network.training and model.postprocessor.training
    model.double()  # .to() replaces the model's buffers: the network follows
    assert model.network.pixel_mean is model.pixel_mean and model.pixel_mean.dtype == torch.float64
    clone = copy.deepcopy(model)
    assert clone.network.backbone is clone.backbone and clone.network is not model.network

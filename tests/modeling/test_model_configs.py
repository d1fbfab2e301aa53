"""The model configs after panoptic_fpn_small.yaml was rebuilt on panoptic_fpn_r50.yaml (hydra
defaults-list inheritance): every key of the composed small model, the demo experiment's model
and R101 are what they were when each file listed every key."""

from config_helpers import compose_config
from omegaconf import OmegaConf

from modeling_helpers import compose_model_config

# model=panoptic_fpn_small data=synthetic, composed and resolved from the self-contained
# panoptic_fpn_small.yaml of commit d9c91bd (before it inherited from R50).
SMALL_BEFORE = {
    "_target_": "panfpn.modeling.panoptic_fpn.PanopticFPN",
    "thing_sem_labels": [4],
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
    "channels_last": True,
    "loss_weights": {"loss_sem_seg": 0.5},
    "merge": {"_target_": "panfpn.modeling.merge.MergeThresholds",
              "score_thresh": 0.5, "overlap_thresh": 0.5, "stuff_area": 64,
              "thing_min_remaining_area": 0},  # added later with its no-op default
    "backbone": {"_target_": "panfpn.modeling.backbone.ResNetFPN", "depth": 18, "norm": "bn",
                 "freeze_at": 0, "stride_in_1x1": False, "out_channels": 64},
    "semantic_head": {"_target_": "panfpn.modeling.panoptic_fpn.semantic_head.SemanticFPNHead",
                      "num_classes": 5, "in_channels": 64, "conv_channels": 64, "num_groups": 32},
    "rpn": {
        "_target_": "panfpn.modeling.panoptic_fpn.rpn.RPN",
        "in_channels": 64,
        "anchor_sizes": [16, 32, 64, 128, 256],
        "aspect_ratios": [0.5, 1.0, 2.0],
        "sampling": {"_target_": "panfpn.modeling.panoptic_fpn.rpn.RPNSampling", "fg_iou_thresh": 0.7,
                     "bg_iou_thresh": 0.3, "batch_size_per_image": 128, "positive_fraction": 0.5},
        "limits": {"_target_": "panfpn.modeling.panoptic_fpn.rpn.ProposalLimits", "pre_nms_topk_train": 400,
                   "pre_nms_topk_test": 200, "post_nms_topk_train": 200, "post_nms_topk_test": 100,
                   "nms_thresh": 0.7},
    },
    "roi_heads": {
        "_target_": "panfpn.modeling.panoptic_fpn.roi_heads.RoIHeads",
        "sampling": {"_target_": "panfpn.modeling.panoptic_fpn.roi_heads.RoISampling", "batch_size_per_image": 128,
                     "positive_fraction": 0.25, "fg_iou_thresh": 0.5},
        "box_head": {
            "_target_": "panfpn.modeling.panoptic_fpn.box_head.BoxHead", "num_classes": 4, "in_channels": 64,
            "pooler_resolution": 7, "fc_dim": 256, "num_fc": 2, "box_weights": [10.0, 10.0, 5.0, 5.0],
            "test": {"_target_": "panfpn.modeling.panoptic_fpn.box_head.BoxTestConfig", "score_thresh": 0.05,
                     "nms_thresh": 0.5, "detections_per_image": 50},
        },
        "mask_head": {"_target_": "panfpn.modeling.panoptic_fpn.mask_head.MaskHead", "num_classes": 4, "in_channels": 64,
                      "pooler_resolution": 14, "conv_dim": 64, "num_convs": 2},
    },
}


def _resolved(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def test_small_model_composes_as_before_key_for_key():
    assert _resolved(compose_model_config("panoptic_fpn_small").model) == SMALL_BEFORE


def test_demo_experiment_composes_the_same_small_model():
    cfg = compose_config(output_dir="unused")  # the default: experiment=synthetic_cpu
    assert cfg.data.name == "synthetic"
    assert _resolved(cfg.model) == SMALL_BEFORE


def test_small_model_still_follows_r50_interpolations():
    """The inherited keys still read the small model's own width and the dataset's counts."""
    cfg = compose_model_config("panoptic_fpn_small", "coco_panoptic", ("model.backbone.out_channels=48",))
    heads = cfg.model.roi_heads
    assert (cfg.model.rpn.in_channels, heads.box_head.in_channels, heads.mask_head.in_channels) == (48, 48, 48)
    assert (cfg.model.semantic_head.num_classes, heads.box_head.num_classes) == (54, 80)


def test_r101_is_r50_with_a_deeper_backbone_key_for_key():
    r50 = _resolved(compose_model_config("panoptic_fpn_r50", "coco_panoptic").model)
    r101 = _resolved(compose_model_config("panoptic_fpn_r101", "coco_panoptic").model)
    assert r101["backbone"].pop("depth") == 101 and r50["backbone"].pop("depth") == 50
    assert r101 == r50


def test_textbook_merge_rules_from_model_merge_overrides():
    """docs/merge.md 'Two networks + merge': these overrides give the model the textbook merge rules."""
    from hydra.utils import instantiate

    from panfpn.modeling.merge import MergeThresholds

    cfg = compose_config(["model.merge.overlap_thresh=null", "model.merge.stuff_area=0",
                          "model.merge.thing_min_remaining_area=64"], output_dir="unused")
    assert instantiate(cfg.model.merge) == MergeThresholds.textbook()
    r50 = compose_config(["model=panoptic_fpn_r50"], output_dir="unused")
    assert instantiate(r50.model.merge) == MergeThresholds.detectron2()  # R50: Detectron2's rules

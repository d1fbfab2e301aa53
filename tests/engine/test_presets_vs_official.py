"""The experiment presets compose to the official recipes they name, key by key.

Each expected value below is copied from the official config it cites (Detectron2 or Mask2Former,
file and key named in the comment), so a preset that drifts from its source fails here. Differences
the presets declare as deliberate (torchvision ImageNet weights instead of MSRA .pkl files, the
heads the LSJ presets keep, ...) are not asserted; the preset comments
and docs/mask2former.md list them. Composing configs only: no model is built.
"""

from __future__ import annotations

from typing import Any

import pytest
from config_helpers import compose_config
from omegaconf import OmegaConf

# Detectron2 configs/Base-RCNN-FPN.yaml (+ detectron2/config/defaults.py for what it leaves out),
# shared by the Panoptic FPN yaml presets and, through configs/common/models/mask_rcnn_fpn.py (same
# values), by the LSJ presets.
RCNN_FPN_MODEL: dict[str, Any] = {
    "model.backbone.out_channels": 256,                 # defaults.py MODEL.FPN.OUT_CHANNELS
    "model.rpn.anchor_sizes": [32, 64, 128, 256, 512],  # Base-RCNN-FPN ANCHOR_GENERATOR.SIZES
    "model.rpn.aspect_ratios": [0.5, 1.0, 2.0],         # Base-RCNN-FPN ANCHOR_GENERATOR.ASPECT_RATIOS
    "model.rpn.sampling.bg_iou_thresh": 0.3,            # defaults.py MODEL.RPN.IOU_THRESHOLDS [0.3, 0.7]
    "model.rpn.sampling.fg_iou_thresh": 0.7,
    "model.rpn.sampling.batch_size_per_image": 256,     # defaults.py MODEL.RPN.BATCH_SIZE_PER_IMAGE
    "model.rpn.sampling.positive_fraction": 0.5,        # defaults.py MODEL.RPN.POSITIVE_FRACTION
    "model.rpn.limits.pre_nms_topk_train": 2000,        # Base-RCNN-FPN RPN.PRE_NMS_TOPK_TRAIN
    "model.rpn.limits.pre_nms_topk_test": 1000,         # Base-RCNN-FPN RPN.PRE_NMS_TOPK_TEST
    "model.rpn.limits.post_nms_topk_train": 1000,       # Base-RCNN-FPN RPN.POST_NMS_TOPK_TRAIN
    "model.rpn.limits.post_nms_topk_test": 1000,        # Base-RCNN-FPN RPN.POST_NMS_TOPK_TEST
    "model.rpn.limits.nms_thresh": 0.7,                 # defaults.py MODEL.RPN.NMS_THRESH
    "model.roi_heads.sampling.batch_size_per_image": 512,  # defaults.py ROI_HEADS.BATCH_SIZE_PER_IMAGE
    "model.roi_heads.sampling.positive_fraction": 0.25,    # defaults.py ROI_HEADS.POSITIVE_FRACTION
    "model.roi_heads.sampling.fg_iou_thresh": 0.5,         # defaults.py ROI_HEADS.IOU_THRESHOLDS [0.5]
    "model.roi_heads.box_head.pooler_resolution": 7,       # Base-RCNN-FPN ROI_BOX_HEAD.POOLER_RESOLUTION
    "model.roi_heads.box_head.num_fc": 2,                  # Base-RCNN-FPN ROI_BOX_HEAD.NUM_FC
    "model.roi_heads.box_head.fc_dim": 1024,               # defaults.py ROI_BOX_HEAD.FC_DIM
    "model.roi_heads.box_head.box_weights": [10.0, 10.0, 5.0, 5.0],  # defaults.py ROI_BOX_HEAD.BBOX_REG_WEIGHTS
    "model.roi_heads.box_head.test.score_thresh": 0.05,    # defaults.py ROI_HEADS.SCORE_THRESH_TEST
    "model.roi_heads.box_head.test.nms_thresh": 0.5,       # defaults.py ROI_HEADS.NMS_THRESH_TEST
    "model.roi_heads.box_head.test.detections_per_image": 100,  # defaults.py TEST.DETECTIONS_PER_IMAGE
    "model.roi_heads.mask_head.pooler_resolution": 14,     # Base-RCNN-FPN ROI_MASK_HEAD.POOLER_RESOLUTION
    "model.roi_heads.mask_head.num_convs": 4,              # Base-RCNN-FPN ROI_MASK_HEAD.NUM_CONV
    "model.roi_heads.mask_head.conv_dim": 256,             # defaults.py ROI_MASK_HEAD.CONV_DIM
    # the semantic head and the merge: defaults.py MODEL.SEM_SEG_HEAD / PANOPTIC_FPN.COMBINE, loss
    # weight from configs/COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml SEM_SEG_HEAD.LOSS_WEIGHT
    "model.semantic_head.conv_channels": 128,              # defaults.py SEM_SEG_HEAD.CONVS_DIM
    "model.semantic_head.num_groups": 32,                  # defaults.py SEM_SEG_HEAD.NORM "GN" (32 groups)
    "model.loss_weights.loss_sem_seg": 0.5,                # Base-Panoptic-FPN.yaml SEM_SEG_HEAD.LOSS_WEIGHT
    "model.merge.overlap_thresh": 0.5,                     # defaults.py PANOPTIC_FPN.COMBINE.OVERLAP_THRESH
    "model.merge.stuff_area": 4096,                        # defaults.py PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT
    "model.merge.score_thresh": 0.5,                       # defaults.py COMBINE.INSTANCES_CONFIDENCE_THRESH
    "model.merge.thing_min_remaining_area": 0,             # panoptic_fpn.py combine: no such rule
    # evaluation input: defaults.py INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (common/data/coco.py test: same)
    "data.val.transforms.short_edge_lengths": [800],
    "data.val.transforms.max_size": 1333,
    "data.val.split": "val",                               # DATASETS.TEST coco_2017_val*
    "data.train.split": "train",                           # DATASETS.TRAIN coco_2017_train*
}

# Detectron2 configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml and its bases.
PANOPTIC_FPN_1X: dict[str, Any] = {
    **RCNN_FPN_MODEL,
    "model.backbone.depth": 50,                        # panoptic_fpn_R_50_1x.yaml RESNETS.DEPTH
    "model.backbone.norm": "frozen_bn",                # defaults.py RESNETS.NORM "FrozenBN"
    "model.backbone.freeze_at": 2,                     # defaults.py BACKBONE.FREEZE_AT
    "solver.optimizer._target_": "torch.optim.SGD",    # detectron2/solver/build.py build_optimizer
    "solver.optimizer.momentum": 0.9,                  # defaults.py SOLVER.MOMENTUM
    "solver.base_lr": 0.02,                            # Base-RCNN-FPN.yaml SOLVER.BASE_LR
    "solver.ims_per_batch": 16,                        # Base-RCNN-FPN.yaml SOLVER.IMS_PER_BATCH
    "solver.weight_decay": 1.0e-4,                     # defaults.py SOLVER.WEIGHT_DECAY
    "solver.weight_decay_norm": 0.0,                   # defaults.py SOLVER.WEIGHT_DECAY_NORM
    "solver.weight_decay_bias": None,                  # defaults.py SOLVER.WEIGHT_DECAY_BIAS (None: = WEIGHT_DECAY)
    "solver.max_iter": 90000,                          # Base-RCNN-FPN.yaml SOLVER.MAX_ITER
    "solver.schedule._target_": "panfpn.engine.training.solver.WarmupMultiStep",  # WarmupMultiStepLR
    "solver.schedule.steps": [60000, 80000],           # Base-RCNN-FPN.yaml SOLVER.STEPS
    "solver.schedule.gamma": 0.1,                      # defaults.py SOLVER.GAMMA
    "solver.schedule.warmup_iters": 1000,              # defaults.py SOLVER.WARMUP_ITERS (method linear)
    "solver.schedule.warmup_factor": 0.001,            # defaults.py SOLVER.WARMUP_FACTOR 1/1000
    "train.clip_grad_norm": None,                      # defaults.py SOLVER.CLIP_GRADIENTS.ENABLED False
    "train.amp": False,                                # defaults.py SOLVER.AMP.ENABLED False
    "train.checkpoint_period": 5000,                   # defaults.py SOLVER.CHECKPOINT_PERIOD
    "data.train.transforms.transforms.0.short_edge_lengths": [640, 672, 704, 736, 768, 800],  # MIN_SIZE_TRAIN
    "data.train.transforms.transforms.0.sample_style": "choice",  # defaults.py MIN_SIZE_TRAIN_SAMPLING
    "data.train.transforms.transforms.0.max_size": 1333,          # defaults.py INPUT.MAX_SIZE_TRAIN
    "data.train.transforms.transforms.1.prob": 0.5,    # defaults.py RANDOM_FLIP horizontal (T.RandomFlip p=0.5)
    "data.train.filter_empty": False,                  # Base-Panoptic-FPN.yaml DATALOADER.FILTER_EMPTY_ANNOTATIONS
}

# panoptic_fpn_R_50_3x.yaml / panoptic_fpn_R_101_3x.yaml: SOLVER.STEPS and MAX_ITER, RESNETS.DEPTH.
PANOPTIC_FPN_3X = {**PANOPTIC_FPN_1X, "solver.max_iter": 270000, "solver.schedule.steps": [210000, 250000]}
PANOPTIC_FPN_R101_3X = {**PANOPTIC_FPN_3X, "model.backbone.depth": 101}

# Detectron2 configs/new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py with configs/common/{optim.py,
# train.py, data/coco.py, data/constants.py, models/mask_rcnn_fpn.py}.
LSJ_100EP: dict[str, Any] = {
    **RCNN_FPN_MODEL,
    "weights": None,                                   # 100ep_LSJ.py train.init_checkpoint = "" (from scratch)
    "model.backbone.depth": 50,                        # mask_rcnn_fpn.py make_default_stages(depth=50)
    "model.backbone.freeze_at": 0,                     # 100ep_LSJ.py bottom_up.freeze_at = 0
    "model.backbone.norm": "bn",                       # 100ep_LSJ.py stem/stages norm "SyncBN"
    "model.backbone.stride_in_1x1": True,              # mask_rcnn_fpn.py make_default_stages(stride_in_1x1=True)
    "model.pixel_mean": [123.675, 116.28, 103.53],     # constants.py imagenet_bgr256_mean, in RGB order
    "model.pixel_std": [1.0, 1.0, 1.0],                # constants.py imagenet_bgr256_std
    "solver.optimizer._target_": "torch.optim.SGD",    # common/optim.py SGD
    "solver.optimizer.momentum": 0.9,                  # common/optim.py SGD momentum
    "solver.base_lr": 0.1,                             # 100ep_LSJ.py optimizer.lr
    "solver.ims_per_batch": 64,                        # 100ep_LSJ.py dataloader.train.total_batch_size
    "solver.weight_decay": 4.0e-5,                     # 100ep_LSJ.py optimizer.weight_decay
    "solver.weight_decay_norm": 0.0,                   # common/optim.py weight_decay_norm=0.0
    "solver.weight_decay_bias": None,                  # get_default_optimizer_params weight_decay_bias=None
    "solver.max_iter": 184375,                         # 100ep_LSJ.py train.max_iter
    "solver.schedule.steps": [163889, 177546],         # 100ep_LSJ.py MultiStepParamScheduler milestones
    "solver.schedule.gamma": 0.1,                      # 100ep_LSJ.py values [1.0, 0.1, 0.01]
    "solver.schedule.warmup_iters": 500,               # 100ep_LSJ.py warmup_length = 500 / train.max_iter
    "solver.schedule.warmup_factor": 0.067,            # 100ep_LSJ.py warmup_factor
    "train.clip_grad_norm": None,                      # no clipping in the lazy config
    "train.amp": True,                                 # 100ep_LSJ.py train.amp.enabled
    "train.amp_dtype": "float16",                        # detectron2/engine/train_loop.py AMPTrainer precision
    "train.checkpoint_period": 5000,                   # common/train.py checkpointer.period
    "data.train.filter_empty": True,                   # common/data/coco.py get_detection_dataset_dicts default
    "data.train.transforms.transforms.0.output_size": [1024, 1024],  # 100ep_LSJ.py ResizeScale target / crop 1024
    "data.train.transforms.transforms.0.min_scale": 0.1,             # 100ep_LSJ.py ResizeScale min_scale
    "data.train.transforms.transforms.0.max_scale": 2.0,             # 100ep_LSJ.py ResizeScale max_scale
    "data.train.transforms.transforms.0.pad_value": 128,             # T.FixedSizeCrop pad_value default 128.0
    "data.train.transforms.transforms.1.prob": 0.5,                  # T.RandomFlip(horizontal=True), p 0.5
}
# mask_rcnn_R_50_FPN_400ep_LSJ.py: max_iter and milestones x4; warmup_length stays 500/184375 of the run.
LSJ_400EP = {**LSJ_100EP, "solver.max_iter": 737500, "solver.schedule.steps": [655556, 710184],
             "solver.schedule.warmup_iters": 2000}

# Mask2Former configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml, its
# Base-COCO-PanopticSegmentation.yaml, mask2former/config.py defaults and train_net.py build_optimizer.
M2F_MODEL: dict[str, Any] = {
    "model.pixel_mean": [123.675, 116.28, 103.53],      # Base-COCO-Panoptic PIXEL_MEAN (FORMAT RGB)
    "model.pixel_std": [58.395, 57.12, 57.375],          # Base-COCO-Panoptic PIXEL_STD
    "model.backbone.freeze_at": 0,                       # Base-COCO-Panoptic BACKBONE.FREEZE_AT
    "model.pixel_decoder.conv_dim": 256,                 # maskformer2_R50 SEM_SEG_HEAD.CONVS_DIM
    "model.pixel_decoder.mask_dim": 256,                 # maskformer2_R50 SEM_SEG_HEAD.MASK_DIM
    "model.pixel_decoder.num_layers": 6,                 # maskformer2_R50 SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS
    "model.pixel_decoder.n_heads": 8,                    # msdeformattn.py from_config: MASK_FORMER.NHEADS
    "model.pixel_decoder.n_points": 4,                   # config.py DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS
    "model.pixel_decoder.dim_feedforward": 1024,         # msdeformattn.py from_config transformer_dim_feedforward
    "model.pixel_decoder.dropout": 0.0,                  # maskformer2_R50 MASK_FORMER.DROPOUT
    "model.predictor.hidden_dim": 256,                   # maskformer2_R50 MASK_FORMER.HIDDEN_DIM
    "model.predictor.num_queries": 100,                  # maskformer2_R50 MASK_FORMER.NUM_OBJECT_QUERIES
    "model.predictor.n_heads": 8,                        # maskformer2_R50 MASK_FORMER.NHEADS
    "model.predictor.dim_feedforward": 2048,             # maskformer2_R50 MASK_FORMER.DIM_FEEDFORWARD
    "model.predictor.dec_layers": 9,                     # maskformer2_R50 DEC_LAYERS 10 ("9 decoder layers")
    "model.predictor.mask_dim": 256,                     # maskformer2_R50 SEM_SEG_HEAD.MASK_DIM
    "model.predictor.dropout": 0.0,                      # maskformer2_R50 MASK_FORMER.DROPOUT
    "model.matcher.class_weight": 2.0,                   # maskformer2_R50 MASK_FORMER.CLASS_WEIGHT
    "model.matcher.mask_weight": 5.0,                    # maskformer2_R50 MASK_FORMER.MASK_WEIGHT
    "model.matcher.dice_weight": 5.0,                    # maskformer2_R50 MASK_FORMER.DICE_WEIGHT
    "model.matcher.num_points": 12544,                   # maskformer2_R50 MASK_FORMER.TRAIN_NUM_POINTS
    "model.criterion.no_object_weight": 0.1,             # maskformer2_R50 MASK_FORMER.NO_OBJECT_WEIGHT
    "model.criterion.class_weight": 2.0,
    "model.criterion.mask_weight": 5.0,
    "model.criterion.dice_weight": 5.0,
    "model.criterion.oversample_ratio": 3.0,             # maskformer2_R50 MASK_FORMER.OVERSAMPLE_RATIO
    "model.criterion.importance_sample_ratio": 0.75,     # maskformer2_R50 MASK_FORMER.IMPORTANCE_SAMPLE_RATIO
    "model.criterion.deep_supervision": True,            # maskformer2_R50 MASK_FORMER.DEEP_SUPERVISION
    "model.inference.object_mask_threshold": 0.8,        # maskformer2_R50 MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD
    "model.inference.overlap_threshold": 0.8,            # maskformer2_R50 MASK_FORMER.TEST.OVERLAP_THRESHOLD
    "model.inference.topk_instances": 100,               # maskformer_model.py: TEST.DETECTIONS_PER_IMAGE
    "solver.optimizer._target_": "torch.optim.AdamW",    # Base-COCO-Panoptic SOLVER.OPTIMIZER "ADAMW"
    "solver.optimizer.betas": [0.9, 0.999],              # train_net.py build_optimizer: AdamW defaults
    "solver.base_lr": 1.0e-4,                            # Base-COCO-Panoptic SOLVER.BASE_LR
    "solver.ims_per_batch": 16,                          # Base-COCO-Panoptic SOLVER.IMS_PER_BATCH
    "solver.weight_decay": 0.05,                         # Base-COCO-Panoptic SOLVER.WEIGHT_DECAY
    "solver.weight_decay_norm": 0.0,                     # defaults.py SOLVER.WEIGHT_DECAY_NORM
    "solver.weight_decay_embed": 0.0,                    # config.py SOLVER.WEIGHT_DECAY_EMBED
    "solver.weight_decay_bias": None,                    # train_net.py: biases get WEIGHT_DECAY
    "solver.lr_multipliers": {"backbone": 0.1},          # Base-COCO-Panoptic SOLVER.BACKBONE_MULTIPLIER
    "solver.weight_decay_by_name": {"relative_position_bias_table": 0.0, "absolute_pos_embed": 0.0},  # train_net.py
    "train.clip_grad_norm": 0.01,                        # CLIP_GRADIENTS full_model, CLIP_VALUE 0.01, NORM_TYPE 2
    "train.amp": True,                                   # SOLVER.AMP.ENABLED
    "train.amp_dtype": "float16",                        # detectron2/engine/train_loop.py AMPTrainer precision
    "train.eval_period": 5000,                           # TEST.EVAL_PERIOD
    "train.checkpoint_period": 5000,                     # defaults.py SOLVER.CHECKPOINT_PERIOD
    "data.train.filter_empty": False,                    # panoptic records carry no 'annotations': none dropped
}
M2F_COCO_R50: dict[str, Any] = {
    **M2F_MODEL,
    "weights": "ResNet50_Weights.IMAGENET1K_V1",         # Base-COCO-Panoptic torchvision/R-50.pkl (same weights)
    "model.backbone.depth": 50,                          # Base-COCO-Panoptic RESNETS.DEPTH
    "model.backbone.norm": "frozen_bn",                  # defaults.py RESNETS.NORM (SyncBN commented out)
    "model.class_order": "things_first",
    "solver.max_iter": 368750,                           # Base-COCO-Panoptic SOLVER.MAX_ITER
    "solver.schedule.steps": [327778, 355092],           # Base-COCO-Panoptic SOLVER.STEPS
    "solver.schedule.gamma": 0.1,                        # defaults.py SOLVER.GAMMA
    "solver.schedule.warmup_iters": 10,                  # Base-COCO-Panoptic SOLVER.WARMUP_ITERS
    "solver.schedule.warmup_factor": 1.0,                # Base-COCO-Panoptic SOLVER.WARMUP_FACTOR
    "data.batch_size": 2,                                # 16 images on 8 GPUs
    # coco_panoptic_new_baseline_dataset_mapper.py build_transform_gen: RandomFlip, then ResizeScale
    # and FixedSizeCrop (the flip first, unlike Detectron2's LSJ recipe)
    "data.train.transforms.transforms.0.prob": 0.5,                  # INPUT.RANDOM_FLIP horizontal
    "data.train.transforms.transforms.1.output_size": [1024, 1024],  # INPUT.IMAGE_SIZE
    "data.train.transforms.transforms.1.min_scale": 0.1,             # INPUT.MIN_SCALE
    "data.train.transforms.transforms.1.max_scale": 2.0,             # INPUT.MAX_SCALE
    "data.train.transforms.transforms.1.pad_value": 128,             # T.FixedSizeCrop pad_value default
    "data.val.transforms.short_edge_lengths": [800],                 # defaults.py INPUT.MIN_SIZE_TEST
    "data.val.transforms.max_size": 1333,                            # defaults.py INPUT.MAX_SIZE_TEST
}
# configs/cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml and its
# Base-Cityscapes-PanopticSegmentation.yaml.
M2F_CITYSCAPES_R50: dict[str, Any] = {
    **M2F_MODEL,
    "weights": "ResNet50_Weights.IMAGENET1K_V1",         # Base-Cityscapes-Panoptic torchvision/R-50.pkl
    "model.backbone.depth": 50,
    "model.backbone.norm": "bn",                         # Base-Cityscapes-Panoptic RESNETS.NORM "SyncBN"
    "model.class_order": "semantic",                     # cityscapes_fine_panoptic: train-id order
    "solver.max_iter": 90000,                            # Base-Cityscapes-Panoptic SOLVER.MAX_ITER
    "solver.schedule._target_": "panfpn.engine.training.solver.WarmupPoly",  # LR_SCHEDULER_NAME WarmupPolyLR
    "solver.schedule.power": 0.9,                        # DeepLab config POLY_LR_POWER
    "solver.schedule.final_factor": 0.0,                 # DeepLab config POLY_LR_CONSTANT_ENDING
    "solver.schedule.warmup_iters": 0,                   # Base-Cityscapes-Panoptic SOLVER.WARMUP_ITERS
    "solver.schedule.warmup_factor": 1.0,                # Base-Cityscapes-Panoptic SOLVER.WARMUP_FACTOR
    "data.batch_size": 2,
    # mask_former_semantic_dataset_mapper.py from_config (the panoptic mapper's): ResizeShortestEdge,
    # RandomCrop_CategoryAreaConstraint, ColorAugSSDTransform, RandomFlip
    "data.train.transforms.transforms.0.short_edge_lengths": [int(x * 0.1 * 1024) for x in range(5, 21)],  # MIN_SIZE_TRAIN
    "data.train.transforms.transforms.0.sample_style": "choice",  # INPUT.MIN_SIZE_TRAIN_SAMPLING
    "data.train.transforms.transforms.0.max_size": 4096,   # INPUT.MAX_SIZE_TRAIN
    "data.train.transforms.transforms.1.height": 512,      # INPUT.CROP absolute SIZE (512, 1024); its
    "data.train.transforms.transforms.1.width": 1024,      # SINGLE_CATEGORY_MAX_AREA 1.0: a plain RandomCrop
    "data.train.transforms.transforms.2.brightness_delta": 32,    # INPUT.COLOR_AUG_SSD: ColorAugSSDTransform
    "data.train.transforms.transforms.2.contrast_low": 0.5,       # defaults (point_rend/color_augmentation.py)
    "data.train.transforms.transforms.2.contrast_high": 1.5,
    "data.train.transforms.transforms.2.saturation_low": 0.5,
    "data.train.transforms.transforms.2.saturation_high": 1.5,
    "data.train.transforms.transforms.2.hue_delta": 18,
    "data.train.transforms.transforms.3.prob": 0.5,        # INPUT.RANDOM_FLIP horizontal
    "data.val.transforms.short_edge_lengths": [1024],      # INPUT.MIN_SIZE_TEST
    "data.val.transforms.max_size": 2048,                  # INPUT.MAX_SIZE_TEST
}

# configs/*/panoptic-segmentation/swin/*.yaml MODEL.SWIN (mask2former/config.py for what they leave out).
SWIN_T = {"model.backbone.arch.embed_dim": 96, "model.backbone.arch.depths": [2, 2, 6, 2],
          "model.backbone.arch.num_heads": [3, 6, 12, 24], "model.backbone.arch.window_size": 7,
          "model.backbone.arch.stochastic_depth_prob": 0.3,  # SWIN.DROP_PATH_RATE
          "model.backbone.freeze_at": 0, "model.backbone.norm": "native"}
SWIN_S = {**SWIN_T, "model.backbone.arch.depths": [2, 2, 18, 2]}
SWIN_B_384 = {**SWIN_S, "model.backbone.arch.embed_dim": 128, "model.backbone.arch.num_heads": [4, 8, 16, 32],
              "model.backbone.arch.window_size": 12}
SWIN_L = {**SWIN_B_384, "model.backbone.arch.embed_dim": 192, "model.backbone.arch.num_heads": [6, 12, 24, 48],
          "model.predictor.num_queries": 200}        # swin_large_IN21k_384 MASK_FORMER.NUM_OBJECT_QUERIES


def _swin(base: dict[str, Any], arch: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``base`` with the ResNet-only keys dropped and the Swin architecture ``arch`` (+ ``extra``)."""
    out = {k: v for k, v in base.items() if k not in ("weights", "model.backbone.depth")}
    return {**out, **arch, **extra}


# No official Panoptic FPN Cityscapes config exists (Detectron2's Cityscapes configs are Mask R-CNN
# (shorter side "choice" of 800..1024, no crop), DeepLab and Panoptic-DeepLab, all "choice" sampling);
# cityscapes_r50 states the Panoptic FPN paper's recipe (Kirillov et al., CVPR 2019; not re-read
# here: its scale range 512..2048 is not asserted) and keeps the Detectron2 model defaults above,
# evaluated at the native 1024x2048.
CITYSCAPES_PANOPTIC_FPN: dict[str, Any] = {
    **{k: v for k, v in PANOPTIC_FPN_1X.items()
       if not k.startswith(("data.", "solver.max_iter", "solver.base_lr", "solver.ims_per_batch",
                            "solver.schedule.steps"))},
    "solver.base_lr": 0.01,                              # paper: lr 0.01
    "solver.ims_per_batch": 32,                          # paper: 32 images per minibatch
    "solver.max_iter": 65000,                            # paper: 65k iterations
    "solver.schedule.steps": [40000, 55000],             # paper: lr /10 at 40k and 55k
    "data.batch_size": 4,                                # 32 images on 8 GPUs
    "data.train.transforms.transforms.1.height": 512,    # paper: 512x1024 crops
    "data.train.transforms.transforms.1.width": 1024,
    "data.train.filter_empty": False,                    # as Base-Panoptic-FPN.yaml FILTER_EMPTY_ANNOTATIONS
    "data.val.transforms.short_edge_lengths": [1024],
    "data.val.transforms.max_size": 2048,
}

OFFICIAL: dict[str, dict[str, Any]] = {
    "cityscapes_r50": CITYSCAPES_PANOPTIC_FPN,
    "coco_r50_1x": PANOPTIC_FPN_1X,
    "coco_r50_3x": PANOPTIC_FPN_3X,
    "coco_r101_3x": PANOPTIC_FPN_R101_3X,
    "coco_r50_lsj_100ep": LSJ_100EP,
    "coco_r50_lsj_400ep": LSJ_400EP,
    "coco_mask2former_r50": M2F_COCO_R50,
    "coco_mask2former_swin_t": _swin(M2F_COCO_R50, SWIN_T),
    "coco_mask2former_swin_s": _swin(M2F_COCO_R50, SWIN_S),
    "coco_mask2former_swin_b_384": _swin(M2F_COCO_R50, SWIN_B_384),
    # maskformer2_swin_large_IN21k_384_bs16_100ep.yaml SOLVER.MAX_ITER / STEPS
    "coco_mask2former_swin_l": _swin(M2F_COCO_R50, SWIN_L, **{"solver.max_iter": 737500,
                                                              "solver.schedule.steps": [655556, 710184],
                                                              "data.batch_size": 1}),
    "cityscapes_mask2former_r50": M2F_CITYSCAPES_R50,
    "cityscapes_mask2former_swin_t": _swin(M2F_CITYSCAPES_R50, SWIN_T),
    "cityscapes_mask2former_swin_s": _swin(M2F_CITYSCAPES_R50, SWIN_S),
    "cityscapes_mask2former_swin_b_384": _swin(M2F_CITYSCAPES_R50, SWIN_B_384),
    "cityscapes_mask2former_swin_l": _swin(M2F_CITYSCAPES_R50, SWIN_L, **{"data.batch_size": 1}),
}

_MISSING = object()


def _value(cfg, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=_MISSING)
    if node is _MISSING:
        return _MISSING
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_preset_composes_to_the_official_values(preset: str) -> None:
    cfg = compose_config([f"experiment={preset}"])
    wrong = {key: (_value(cfg, key), want) for key, want in OFFICIAL[preset].items()
             if _value(cfg, key) != want}
    assert not wrong, f"experiment={preset}: key: (ours, official) " + repr(wrong)


def _train_transform_names(preset: str) -> list[str]:
    cfg = compose_config([f"experiment={preset}"])
    return [t["_target_"].rsplit(".", 1)[1] for t in cfg.data.train.transforms.transforms]


def test_lsj_train_transform_is_resize_scale_then_fixed_crop_then_flip() -> None:
    # 100ep_LSJ.py dataloader.train.mapper.augmentations: ResizeScale, FixedSizeCrop, RandomFlip.
    assert _train_transform_names("coco_r50_lsj_100ep") == ["LargeScaleJitter", "RandomHorizontalFlip"]


@pytest.mark.parametrize("preset", sorted(p for p in OFFICIAL if p.startswith("coco_mask2former")))
def test_mask2former_coco_flips_before_the_large_scale_jitter(preset: str) -> None:
    # coco_panoptic_new_baseline_dataset_mapper.py build_transform_gen: RandomFlip, ResizeScale,
    # FixedSizeCrop. The crop's offset is one draw for both axes (FixedSizeCrop), so flipping after it
    # would pair the offsets along the other diagonal of the room than the official flipped images.
    assert _train_transform_names(preset) == ["RandomHorizontalFlip", "LargeScaleJitter"]


@pytest.mark.parametrize("preset", sorted(p for p in OFFICIAL if p.startswith("cityscapes_mask2former")))
def test_mask2former_cityscapes_augments_in_the_official_mappers_order(preset: str) -> None:
    # mask_former_semantic_dataset_mapper.py from_config: ResizeShortestEdge,
    # RandomCrop_CategoryAreaConstraint, ColorAugSSDTransform (COLOR_AUG_SSD True), RandomFlip.
    assert _train_transform_names(preset) == ["ResizeShortestEdge", "RandomCrop", "ColorAugSSD",
                                              "RandomHorizontalFlip"]

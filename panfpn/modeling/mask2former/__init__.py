"""Mask2Former (Cheng et al., CVPR 2022): masked-attention mask transformer for panoptic, instance and
semantic segmentation, on the same backbones, data, engine and evaluator as Panoptic FPN.

Modules (one job each, DETR's matcher / criterion / postprocess split): ``backbone`` (a Panoptic
FPN backbone's body, C2..C5), ``ms_deform_attn`` (multi-scale deformable attention in pure PyTorch),
``pixel_decoder``, ``transformer_decoder``, ``points`` (point sampling), ``matcher``, ``criterion``,
``targets``, ``inference``, ``network`` (the export halves), ``model`` (:class:`Mask2Former`),
``official_weights`` (model-zoo names).
See docs/mask2former.md.
"""

from panfpn.modeling.mask2former.model import Mask2Former

__all__ = ["Mask2Former"]

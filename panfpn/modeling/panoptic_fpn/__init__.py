"""Panoptic FPN (Kirillov et al., 2019): what is this architecture's own, beside the shared parts in
``panfpn.modeling`` (backbones + FPN, the panoptic merge, weights, the zoo).

Read in this order: ``model.py`` (``PanopticFPN``: the pipeline and its output contract),
``network.py`` (normalisation, backbone, semantic head, RPN head -> raw tensors; what is exported,
``export.py``), ``semantic_head.py``, ``rpn.py``, ``roi_heads.py`` with ``box_head.py`` and
``mask_head.py`` (``roi_ops.py``: RoIAlign per FPN level, box coder; ``roi_align_sparse.py``: the
fast CPU RoIAlign), ``postprocess.py`` (proposals, RoI inference, mask pasting, merge).
``detectron2_import.py``: Detectron2 checkpoint names.
"""

from panfpn.modeling.panoptic_fpn.model import LOSS_KEYS, SIZE_DIVISIBILITY, PanopticFPN, normalize_images

__all__ = ["LOSS_KEYS", "PanopticFPN", "SIZE_DIVISIBILITY", "normalize_images"]

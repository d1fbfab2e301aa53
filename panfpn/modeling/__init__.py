"""Panoptic FPN model.

Read in this order: ``panoptic_fpn.py`` (the pipeline and its output contract), ``backbone.py``
(ResNet + FPN), ``semantic_head.py``, ``rpn.py``, ``roi_heads.py`` (sampling, chaining)
with ``box_head.py`` and ``mask_head.py`` (``roi_ops.py``: RoIAlign per FPN level, box coder; ``roi_align_sparse.py``: the fast CPU
RoIAlign),
``postprocess.py`` (back to original size) and ``merge.py`` (panoptic fusion).
``build.py``: ``build_model(cfg)``; ``zoo.py``: ``panoptic_fpn_r50(...)`` etc. without hydra;
``weights.py``: ``load_weights(model, source)``
(``detectron2_import.py``: Detectron2 checkpoint names and safe ``.pkl`` reading).
"""

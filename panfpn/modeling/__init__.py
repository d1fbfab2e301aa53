"""Models: what architectures share, and one package per architecture.

Shared (this folder): ``backbone.py`` (ResNet + FPN, P2-P6) and ``backbone_tv.py`` (any torchvision
backbone + FPN); the panoptic merge (``merge.py`` its public entry, ``merge_reference.py`` the
definition, ``merge_fused.py`` the batched kernel, ``merge_numpy.py`` the torch-free CPU kernel,
``merge_thresholds.py``, ``box_masks.py``, ``merge_predictions.py`` for other models' predictions);
``build.py`` (``build_model(cfg)``), ``zoo.py`` (``panoptic_fpn_r50(...)`` etc. without hydra),
``weights.py`` (``load_weights(model, source)``).

Architectures: ``panoptic_fpn/`` (semantic FPN head + Mask R-CNN heads, fused by the merge) and
``mask2former/`` (mask classification with a transformer decoder).
"""

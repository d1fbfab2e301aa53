"""The Cityscapes pixel-level scores' names, torch-free: the evaluator
(:mod:`panfpn.evaluation.cityscapes_pixel`) reports them, a training's ``train.objective``
(:mod:`panfpn.engine.training.job`, imported by the sweep summaries without torch) may name them."""

NAME = "cityscapes_sem_seg"  # the results section
SCORES = ("IoU", "iIoU", "IoU_sup", "iIoU_sup")  # the averages, in Detectron2's order

__all__ = ["NAME", "SCORES"]

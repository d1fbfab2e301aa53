"""eval_results.json-like metrics for the report, compare and browser tests (imported by test files)."""

from __future__ import annotations

from panfpn.evaluation.image_set import image_set_record


def fake_metrics(pq_by_cat: dict[int, float | None], *, images=range(8), fp: int = 1, miou: float = 0.4,
                 record: bool = True, gt: str | None = None) -> dict:
    """Per-class PQ as given (None: a category with no segments, TP = FP = FN = 0), fixed splits,
    mIoU, box/mask AP, ``num_images`` and (``record``) the image-set record of ``images`` (with a
    ground-truth digest when ``gt`` gives every image's segments text)."""
    per_class = {str(c): {"pq": v, "sq": min(1.0, v + 0.1), "rq": v / min(1.0, v + 0.1), "tp": 3, "fp": fp,
                          "fn": 2, "iou": 0.0} if v is not None else
                 {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0, "iou": 0.0}
                 for c, v in pq_by_cat.items()}
    split = {"pq": 0.5, "sq": 0.7, "rq": 0.6, "n": len(pq_by_cat)}
    out = {"panoptic": {"All": split, "Things": dict(split, n=2), "Stuff": dict(split, n=2), "per_class": per_class},
           "sem_seg": {"mIoU": miou}, "bbox": {"AP": 0.3, "AP50": 0.5, "AP75": 0.2},
           "segm": {"AP": 0.25, "AP50": 0.45, "AP75": 0.1}, "num_images": len(images)}
    if record:
        out["image_set"] = image_set_record(images, None if gt is None else [f"{i}\t8x8\t{gt}" for i in images])
    return out

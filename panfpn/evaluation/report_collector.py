"""The report's evaluator: what report.html shows beyond eval_results.json, collected image by image.

Per image: its PQ (scored alone with the dataset PQ's rules), its wrong-class matches, its counts
of predicted and ground-truth segments per category and of instances the panoptic merge dropped
for their score, and (``browse``) a ground truth | prediction overlay JPEG in
``report_images/`` with the categories it shows. The counts, the confusion of wrong-class
matches, the image list and the lowest-PQ images embedded in the page (each rank keeps its own
``k`` lowest with their overlays) are gathered from every rank in :meth:`ReportCollector.evaluate`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.evaluator import EvalImage, Evaluator
from panfpn.evaluation.rank_images import lowest_over_ranks
from panfpn.evaluation.worst_images import ImageScore, WorstImages, score_image
from panfpn.evaluation.writer import prediction_file_stem
from panfpn.utils.atomic import save_image_atomic
from panfpn.utils.dist import all_gather_objects, is_multiprocess
from panfpn.evaluation.visualize import category_color

BROWSE_DIR = "report_images"  # beside report.html: one overlay JPEG per image
BROWSE_MAX_WIDTH = 960  # pixels of a browsable overlay's two halves (ground truth | prediction)


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb[:3])


class ReportCollector(Evaluator):
    """report.html and categories.json in ``out_dir`` (:meth:`finish`); no results of its own.

    Args:
        k: the lowest-PQ images embedded in the page.
        title: the page's title. context: ``{label: text}`` shown at the top (checkpoint, data,
            model, ...; see :func:`panfpn.engine.eval_context.eval_context`), the eval time added.
        score_thresh: the merge's score threshold (instances below it are counted as dropped).
        browse: write every image's overlay to ``report_images/`` for the page's image browser.
    """

    def __init__(self, metadata: DatasetMetadata, out_dir: str | Path, *, k: int = 8,
                 title: str = "Panoptic evaluation", context: Mapping[str, str] | None = None,
                 score_thresh: float | None = None, browse: bool = True) -> None:
        self.metadata, self.out_dir, self.k, self.title = metadata, Path(out_dir), int(k), title
        self.context, self.score_thresh, self.browse = dict(context or {}), score_thresh, browse
        self.reset()

    def reset(self) -> None:
        self.worst = WorstImages(self.metadata.to_coco_categories(), k=self.k)
        self.counts: dict[int, list[int]] = {}  # category id -> [predicted, ground truth, dropped]
        self.confusion: Counter[tuple[int, int]] = Counter()  # (GT category, predicted category)
        self.images: list[dict] = []
        self.start, self.seconds = time.perf_counter(), None
        self.lowest: list[ImageScore] | None = None  # the k lowest over all ranks (evaluate)

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            self._count(img)
            score = score_image(img.image_id, img.gt_segments, img.pred_segments, img.pairs, self.worst.categories)
            if score is not None:
                self.confusion.update(score.wrong_class)
            if self.browse:
                self.images.append(self._browse_record(img, score))
            if score is not None:
                self.worst.offer(score, img.overlay)

    def _count(self, img: EvalImage) -> None:
        def add(cat: int, column: int) -> None:
            self.counts.setdefault(int(cat), [0, 0, 0])[column] += 1

        for seg in img.pred_segments:
            add(seg["category_id"], 0)
        for seg in img.gt_segments:
            if not seg.get("iscrowd", 0):
                add(seg["category_id"], 1)
        instances = img.output.get("instances")
        if self.score_thresh is not None and instances is not None:
            low = (instances["scores"] < self.score_thresh).cpu()
            for label in instances["labels"].cpu()[low].tolist():
                add(self.metadata.thing_ids[label], 2)

    def _browse_record(self, img: EvalImage, score: ImageScore | None) -> dict:
        name = f"{prediction_file_stem(img.image_id)}.jpg"
        (self.out_dir / BROWSE_DIR).mkdir(parents=True, exist_ok=True)
        save_image_atomic(self.out_dir / BROWSE_DIR / name, img.overlay(max_width=BROWSE_MAX_WIDTH), "JPEG", quality=85)
        cats = sorted({int(s["category_id"]) for s in [*img.gt_segments, *img.pred_segments]})
        legend = [[self.metadata.category(c).name, _hex(category_color(self.metadata.category(c)))] for c in cats]
        return {"id": str(img.image_id), "file": str(img.file_name), "pq": None if score is None else score.pq,
                "img": f"{BROWSE_DIR}/{name}", "legend": legend}

    def evaluate(self) -> dict[str, Any]:
        self.seconds = time.perf_counter() - self.start
        self.lowest = lowest_over_ranks(self.worst.worst(), self.k)  # every rank's, as one process keeps them
        if is_multiprocess():
            parts = all_gather_objects((self.counts, self.confusion, self.images))
            self.counts, self.confusion, self.images = {}, Counter(), []
            for counts, confusion, images in parts:
                for cat, row in counts.items():
                    mine = self.counts.setdefault(cat, [0, 0, 0])
                    self.counts[cat] = [a + b for a, b in zip(mine, row)]
                self.confusion.update(confusion)
                self.images += images
        return {}

    def finish(self, results: Mapping[str, Any]) -> None:
        import json

        from panfpn.evaluation.report import ReportExtras, write_report

        metrics = json.loads(json.dumps({k: v for k, v in results.items() if k != "overlays"}, default=str))
        context = {**self.context, "eval time": f"{self.seconds:.1f} s" if self.seconds is not None else "-"}
        extras = ReportExtras(context=context, counts=self.counts, confusion=dict(self.confusion),
                              images=self.images)
        lowest = self.worst.worst() if self.lowest is None else self.lowest
        write_report(self.out_dir, metrics, self.metadata, lowest, title=self.title, extras=extras)


__all__ = ["BROWSE_DIR", "ReportCollector"]

"""Which images an evaluation scored, recorded in ``eval_results.json`` as ``"image_set"`` so
that ``tools/compare_evals.py`` can refuse to compare evaluations of different image sets
(8 images against 16, an ``eval.max_images`` run against a full one).

The record is ``{"count": N, "sha256": hex digest, "recipe": RECIPE}``. The digest, reproducible
by any tool: the id of every scored image (repeats kept) as text (``str(id)``: an integer in
decimal, a string as it is), the texts sorted by code point, joined with one ``"\\n"`` between
them, encoded as UTF-8, SHA-256, lower-case hex. In Python::

    hashlib.sha256("\\n".join(sorted(str(i) for i in image_ids)).encode("utf-8")).hexdigest()

Integer 139 and string "139" give the same text: one dataset does not mix the two.

Two datasets can number their images alike (ids 1..N of a labelling tool's export, the synthetic
data with another seed), so the record also has ``gt_sha256`` (and ``gt_recipe``): the same recipe
over each scored image's ground truth as the text ``id<TAB>HxW<TAB>segments`` (the ground-truth
map's height and width; its segments as ``category_id:iscrowd:area``, sorted as text, joined by
one space) instead of its id. Equal ids with another ``gt_sha256``: other images or annotations.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

from panfpn.evaluation.evaluator import Evaluator
from panfpn.utils.dist import all_gather_objects

KEY = "image_set"  # the record's key in eval_results.json
RECIPE = "sha256 of the image ids as text, sorted, joined by newlines, UTF-8"
GT_RECIPE = ("sha256 of each scored image's ground truth as the text 'id<TAB>HxW<TAB>segments' (segments: "
             "category_id:iscrowd:area, sorted, joined by a space), sorted, joined by newlines, UTF-8")


def image_set_digest(image_ids: Iterable[Any]) -> str:
    """SHA-256 (hex) of the sorted image ids joined as text (the module doc's recipe)."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in image_ids)).encode("utf-8")).hexdigest()


def ground_truth_text(image_id: Any, height: int, width: int, segments: Iterable[Mapping[str, Any]]) -> str:
    """One image's ground truth as ``gt_sha256`` hashes it (the module doc's recipe)."""
    parts = sorted(f"{s.get('category_id')}:{int(bool(s.get('iscrowd', 0)))}:{s.get('area')}" for s in segments)
    return f"{image_id}\t{height}x{width}\t{' '.join(parts)}"


def image_set_record(image_ids: Iterable[Any], ground_truth: Iterable[str] | None = None) -> dict[str, Any]:
    """``{"count", "sha256", "recipe"}`` of the scored images, with ``gt_sha256`` and ``gt_recipe``
    when their :func:`ground_truth_text` are given."""
    ids = list(image_ids)
    record = {"count": len(ids), "sha256": image_set_digest(ids), "recipe": RECIPE}
    if ground_truth is not None:
        record.update(gt_sha256=image_set_digest(ground_truth), gt_recipe=GT_RECIPE)
    return record


class ScoredImages(Evaluator):
    """The evaluator behind ``eval_results.json``'s ``"image_set"``: the ids of every image the
    loop scored (each evaluator sees the same batches), gathered over all ranks."""

    def __init__(self) -> None:
        self.image_ids: list[Any] = []
        self.ground_truth: list[str] = []

    def reset(self) -> None:
        self.image_ids, self.ground_truth = [], []

    def process(self, batch: Mapping[str, Any], outputs: Sequence[Any]) -> None:
        for image in outputs:
            self.image_ids.append(image.image_id)
            height, width = image.gt_map.shape[-2:]
            self.ground_truth.append(ground_truth_text(image.image_id, int(height), int(width), image.gt_segments))

    def evaluate(self) -> dict[str, Any]:
        """``{"image_set": record}`` over every rank's images (a collective call)."""
        parts = all_gather_objects((self.image_ids, self.ground_truth))
        return {KEY: image_set_record([i for ids, _ in parts for i in ids], [t for _, gt in parts for t in gt])}

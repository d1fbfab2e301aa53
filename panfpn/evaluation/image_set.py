"""Which images an evaluation scored, recorded in ``eval_results.json`` as ``"image_set"`` so
that ``tools/compare_evals.py`` can refuse to compare evaluations of different image sets
(8 images against 16, an ``eval.max_images`` run against a full one).

The record is ``{"count": N, "sha256": hex digest, "recipe": RECIPE}``. The digest, reproducible
by any tool: the id of every scored image (repeats kept) as text (``str(id)``: an integer in
decimal, a string as it is), the texts sorted by code point, joined with one ``"\\n"`` between
them, encoded as UTF-8, SHA-256, lower-case hex. In Python::

    hashlib.sha256("\\n".join(sorted(str(i) for i in image_ids)).encode("utf-8")).hexdigest()

Integer 139 and string "139" give the same text: one dataset does not mix the two.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

from panfpn.evaluation.evaluator import Evaluator
from panfpn.utils.dist import all_gather_objects

KEY = "image_set"  # the record's key in eval_results.json
RECIPE = "sha256 of the image ids as text, sorted, joined by newlines, UTF-8"


def image_set_digest(image_ids: Iterable[Any]) -> str:
    """SHA-256 (hex) of the sorted image ids joined as text (the module doc's recipe)."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in image_ids)).encode("utf-8")).hexdigest()


def image_set_record(image_ids: Iterable[Any]) -> dict[str, Any]:
    """``{"count", "sha256", "recipe"}`` of the scored images."""
    ids = list(image_ids)
    return {"count": len(ids), "sha256": image_set_digest(ids), "recipe": RECIPE}


class ScoredImages(Evaluator):
    """The evaluator behind ``eval_results.json``'s ``"image_set"``: the ids of every image the
    loop scored (each evaluator sees the same batches), gathered over all ranks."""

    def __init__(self) -> None:
        self.image_ids: list[Any] = []

    def reset(self) -> None:
        self.image_ids = []

    def process(self, batch: Mapping[str, Any], outputs: Sequence[Any]) -> None:
        self.image_ids.extend(image.image_id for image in outputs)

    def evaluate(self) -> dict[str, Any]:
        """``{"image_set": record}`` over every rank's images (a collective call)."""
        return {KEY: image_set_record(i for part in all_gather_objects(self.image_ids) for i in part)}

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
import logging
from typing import Any, Iterable, Iterator

from panfpn.utils.dist import all_gather_objects

logger = logging.getLogger("panfpn")

KEY = "image_set"  # the record's key in eval_results.json
RECIPE = "sha256 of the image ids as text, sorted, joined by newlines, UTF-8"


def image_set_digest(image_ids: Iterable[Any]) -> str:
    """SHA-256 (hex) of the sorted image ids joined as text (the module doc's recipe)."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in image_ids)).encode("utf-8")).hexdigest()


def image_set_record(image_ids: Iterable[Any]) -> dict[str, Any]:
    """``{"count", "sha256", "recipe"}`` of the scored images."""
    ids = list(image_ids)
    return {"count": len(ids), "sha256": image_set_digest(ids), "recipe": RECIPE}


class ScoredImages:
    """An eval loader that notes the ``image_ids`` of every batch it yields (the eval loop
    scores every image of a batch it takes); everything else is the loader's."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.image_ids: list[Any] = []

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            self.image_ids.extend(batch["image_ids"])
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def record(self, num_scored: int) -> dict[str, Any]:
        """The record over every rank's images (a collective call: every rank calls it).
        ``num_scored``: the eval's image count; when the ids seen differ from it, the digest is
        null (unknown) rather than wrong."""
        ids = [i for part in all_gather_objects(self.image_ids) for i in part]
        if len(ids) != int(num_scored):
            logger.warning("the eval scored %d images but its loader yielded %d: eval_results.json "
                           "records no image-set digest", num_scored, len(ids))
            return {"count": int(num_scored), "sha256": None, "recipe": RECIPE}
        return image_set_record(ids)

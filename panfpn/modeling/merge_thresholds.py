"""The panoptic merge's rules as data, without torch: :class:`MergeThresholds` (re-exported by
:mod:`panfpn.modeling.merge`), importable by tools/merge.py's CPU path without torch's start-up."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MergeThresholds"]


@dataclass(frozen=True)
class MergeThresholds:
    """Rules of the panoptic merge as data (defaults: Detectron2's; see :meth:`textbook`).

    score_thresh: instances with a lower score are ignored.
    overlap_thresh: an instance whose already-claimed share of its mask exceeds this is dropped;
        None switches the overlap-ratio rule off entirely.
    stuff_area: a stuff label needs at least this many unclaimed pixels to become a segment
        (scale it with the image area for small images).
    thing_min_remaining_area: an instance needs at least this many REMAINING pixels (covered and
        not claimed by an earlier kept instance) when its turn comes; otherwise it is dropped.
    """

    score_thresh: float = 0.5
    overlap_thresh: float | None = 0.5
    stuff_area: int = 4096
    thing_min_remaining_area: int = 0

    def __post_init__(self) -> None:
        _check_thresholds(self.score_thresh, self.overlap_thresh, self.stuff_area,
                          self.thing_min_remaining_area)

    @classmethod
    def detectron2(cls) -> MergeThresholds:
        """Detectron2's panoptic combination: score 0.5, overlap ratio 0.5, stuff area 4096."""
        return cls(score_thresh=0.5, overlap_thresh=0.5, stuff_area=4096, thing_min_remaining_area=0)

    @classmethod
    def textbook(cls) -> MergeThresholds:
        """The two-network heuristic merge: score 0.5, no overlap ratio, an instance needs 64
        remaining pixels, every unclaimed non-thing pixel takes its semantic label (stuff area 0)."""
        return cls(score_thresh=0.5, overlap_thresh=None, stuff_area=0, thing_min_remaining_area=64)


def _check_thresholds(score_thresh: float, overlap_thresh: float | None, stuff_area: int,
                      thing_min_remaining_area: int) -> None:
    for name, value in (("score_thresh", score_thresh), ("overlap_thresh", overlap_thresh)):
        if name == "overlap_thresh" and value is None:
            continue  # no overlap-ratio rule
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"merge: {name} must be a number, got {value!r}")
    for name, value in (("stuff_area", stuff_area), ("thing_min_remaining_area", thing_min_remaining_area)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"merge: {name} must be an int >= 0, got {value!r}")

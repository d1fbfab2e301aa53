"""Category metadata: the one place that maps dataset category ids to the model's contiguous ids.

Datasets use their own (often non-contiguous) category ids; the model works in two contiguous
spaces: thing classes ``0..T-1`` (instance head) and semantic labels ``0..C-1`` (semantic head).
The semantic space is either ``"stuff_plus_thing"`` (COCO: stuff in ascending id order, then one
merged 'thing' label ``C-1``) or ``"all"`` (Cityscapes: every category in ascending id order).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

SemSegMode = Literal["stuff_plus_thing", "all"]
IGNORE_LABEL = 255


@dataclass(frozen=True)
class Category:
    """One dataset category as in a COCO-panoptic ``categories`` entry."""

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] = (0, 0, 0)
    supercategory: str = ""


@dataclass(frozen=True)
class DatasetMetadata:
    """Categories of a dataset plus the contiguous id spaces derived from them."""

    categories: tuple[Category, ...]
    sem_seg_mode: SemSegMode = "stuff_plus_thing"
    name: str = ""
    _by_id: dict[int, Category] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sem_seg_mode not in ("stuff_plus_thing", "all"):
            raise ValueError(
                f"sem_seg_mode must be 'stuff_plus_thing' or 'all', got {self.sem_seg_mode!r}"
            )
        by_id: dict[int, Category] = {}
        for cat in self.categories:
            if cat.id in by_id:
                raise ValueError(f"duplicate category id {cat.id} in metadata {self.name!r}")
            by_id[cat.id] = cat
        object.__setattr__(self, "categories", tuple(sorted(self.categories, key=lambda c: c.id)))
        object.__setattr__(self, "_by_id", by_id)

    @classmethod
    def from_coco_categories(
        cls, categories: Iterable[Mapping], *, sem_seg_mode: SemSegMode = "stuff_plus_thing",
        name: str = "",
    ) -> "DatasetMetadata":
        """Build from COCO-panoptic ``categories`` dicts (id, name, isthing, color).

        Ids must be integers >= 0: ``"1"``, ``1.5`` or ``-1`` is a ValueError, never converted (the
        label lookups index arrays by id); so is an ``isthing`` other than 0 or 1 (``"0"`` would
        otherwise be true).
        """
        categories = list(categories)
        for c in categories:
            missing = [key for key in ("id", "isthing") if not isinstance(c, Mapping) or key not in c]
            if missing:
                raise ValueError(f"category {c!r} of metadata {name!r} has no {' or '.join(missing)}: "
                                 "COCO-panoptic categories need id and isthing (a COCO instances JSON "
                                 "has no isthing; use the panoptic one, e.g. panoptic_val2017.json)")
            if not isinstance(c["id"], numbers.Integral) or isinstance(c["id"], bool) or c["id"] < 0:
                raise ValueError(f"category {c.get('name', '?')!r} of metadata {name!r} has id "
                                 f"{c['id']!r} ({type(c['id']).__name__}); ids must be integers >= 0")
            if not isinstance(c["isthing"], numbers.Real) or c["isthing"] not in (0, 1):
                raise ValueError(f"category {c.get('name', '?')!r} of metadata {name!r} has isthing "
                                 f"{c['isthing']!r}; it must be 0 or 1")
        cats = tuple(
            Category(
                id=int(c["id"]),
                name=str(c.get("name", c["id"])),
                isthing=bool(c["isthing"]),
                color=tuple(int(v) for v in c.get("color", (0, 0, 0))),  # type: ignore[arg-type]
                supercategory=str(c.get("supercategory", "")),
            )
            for c in categories
        )
        return cls(categories=cats, sem_seg_mode=sem_seg_mode, name=name)

    def to_coco_categories(self) -> list[dict]:
        """The categories as COCO-panoptic JSON dicts."""
        return [
            {"id": c.id, "name": c.name, "supercategory": c.supercategory,
             "isthing": int(c.isthing), "color": list(c.color)}
            for c in self.categories
        ]

    # ----- lookups --------------------------------------------------------------------------
    def category(self, category_id: int) -> Category:
        """The category of a dataset id; a KeyError naming the id and the metadata otherwise."""
        try:
            return self._by_id[category_id]
        except KeyError:
            raise KeyError(f"unknown category id {category_id} in metadata {self.name!r}") from None

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._by_id

    @property
    def thing_ids(self) -> list[int]:
        """Dataset ids of thing categories; index = contiguous thing label."""
        return [c.id for c in self.categories if c.isthing]

    @property
    def stuff_ids(self) -> list[int]:
        """Dataset ids of the stuff categories, in category order."""
        return [c.id for c in self.categories if not c.isthing]

    @property
    def num_thing_classes(self) -> int:
        """How many thing categories (the box / mask heads' classes)."""
        return len(self.thing_ids)

    @property
    def sem_label_to_category(self) -> list[int | None]:
        """Dataset category id of each semantic label; None for the merged 'thing' label."""
        if self.sem_seg_mode == "all":
            return [c.id for c in self.categories]
        return [*self.stuff_ids, None]

    @property
    def num_sem_classes(self) -> int:
        """How many semantic labels (stuff plus the merged thing label, or every category in ``all``)."""
        return len(self.sem_label_to_category)

    @property
    def thing_sem_labels(self) -> list[int]:
        """Semantic labels that mean 'thing' and are never filled as stuff by the merge."""
        if self.sem_seg_mode == "all":
            return [i for i, c in enumerate(self.categories) if c.isthing]
        return [self.num_sem_classes - 1]

    def thing_label(self, category_id: int) -> int:
        """Contiguous thing label of a thing category id."""
        cat = self.category(category_id)
        if not cat.isthing:
            raise ValueError(f"category {category_id} ({cat.name}) is stuff, not a thing")
        return self.thing_ids.index(category_id)

    def sem_label(self, category_id: int) -> int:
        """Semantic label of a category id (things map to the merged label in stuff_plus_thing)."""
        cat = self.category(category_id)
        if self.sem_seg_mode == "all":
            return [c.id for c in self.categories].index(category_id)
        if cat.isthing:
            return self.num_sem_classes - 1
        return self.stuff_ids.index(category_id)

    def sem_lut(self) -> dict[int, int]:
        """category id -> semantic label for every category (for vectorised remapping)."""
        return {c.id: self.sem_label(c.id) for c in self.categories}

    def segment_category_id(self, isthing: bool, category: int) -> int:
        """Dataset category id of a merged segment (contiguous thing label or semantic label)."""
        if isthing:
            return self.thing_ids[category]
        cat_id = self.sem_label_to_category[category]
        if cat_id is None:
            raise ValueError(f"semantic label {category} is the merged 'thing' label, not stuff")
        return cat_id

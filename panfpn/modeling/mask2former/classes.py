"""The mask-classification label space: one class per thing and per stuff category, mapped to and
from the project's contiguous thing labels and semantic labels (docs/interfaces.md).

``class_order="things_first"``: classes ``0..T-1`` are the thing labels, then the stuff semantic
labels in increasing order (COCO: Detectron2's contiguous order of the 133 panoptic categories,
category ids sorted, all things before all stuff). ``class_order="semantic"``: class k is semantic
label k (needs ``sem_seg_mode: all``, every category its own semantic label: Cityscapes, whose
Detectron2 order is the 19 train ids, 11 stuff then 8 things).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

ClassOrder = Literal["things_first", "semantic"]


@dataclass(frozen=True)
class ClassSpace:
    """Per class: ``isthing``, ``label`` (contiguous thing label, or semantic label for stuff) and
    ``sem_label`` (the semantic label its pixels take in ``sem_seg``)."""

    isthing: tuple[bool, ...]
    label: tuple[int, ...]
    sem_label: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.isthing)

    def thing_class(self, thing_label: int) -> int:
        """Class index of a contiguous thing label."""
        return self._index[(True, thing_label)]

    def stuff_class(self, sem_label: int) -> int | None:
        """Class index of a stuff semantic label, None for a label that stands for things."""
        return self._index.get((False, sem_label))

    @property
    def _index(self) -> dict[tuple[bool, int], int]:
        return {(t, lab): k for k, (t, lab) in enumerate(zip(self.isthing, self.label))}


def build_class_space(num_thing_classes: int, num_sem_classes: int, thing_sem_labels: Sequence[int],
                      class_order: ClassOrder = "things_first") -> ClassSpace:
    """The class space of a dataset's label counts (``data.num_thing_classes``, ...)."""
    things = [int(x) for x in thing_sem_labels]
    stuff = [s for s in range(num_sem_classes) if s not in things]
    # sem_seg_mode 'all' gives each thing label its own semantic label; stuff_plus_thing one merged label.
    per_thing = len(things) == num_thing_classes  # (one thing class: both modes are the same)
    thing_sem = things if per_thing else [things[0]] * num_thing_classes
    if class_order == "things_first":
        entries = [(True, t, thing_sem[t]) for t in range(num_thing_classes)] + [(False, s, s) for s in stuff]
    elif class_order == "semantic":
        if not per_thing:
            raise ValueError("model.class_order=semantic needs one semantic label per thing class "
                             f"(sem_seg_mode all); thing_sem_labels={things} for {num_thing_classes} things")
        entries = [(True, things.index(s), s) if s in things else (False, s, s) for s in range(num_sem_classes)]
    else:
        raise ValueError(f"model.class_order must be 'things_first' or 'semantic', got {class_order!r}")
    isthing, label, sem = zip(*entries) if entries else ((), (), ())
    return ClassSpace(tuple(isthing), tuple(label), tuple(sem))

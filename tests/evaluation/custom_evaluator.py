"""A user's own evaluator, added by config in tests (``eval.evaluators=[{_target_: custom_evaluator.ThingCount}]``)."""

from __future__ import annotations

from panfpn.evaluation.evaluator import Evaluator
from panfpn.utils.dist import all_reduce_sum

import torch


class ThingCount(Evaluator):
    """``{"<key>": {"images", "predicted_things"}}``: how many images and predicted thing segments."""

    def __init__(self, metadata, key: str = "thing_count") -> None:
        self.key = key
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(2, dtype=torch.int64)

    def process(self, batch, outputs) -> None:
        for img in outputs:
            self.counts += torch.tensor([1, sum(int(s["isthing"]) for s in img.pred_segments)])

    def evaluate(self) -> dict:
        images, things = all_reduce_sum(self.counts.clone()).tolist()
        return {self.key: {"images": images, "predicted_things": things}}

"""Losses and eval outputs of a tiny seeded PanopticFPN, for the before/after test of a refactor.

``python tests/modeling/model_reference.py`` writes :data:`REFERENCE` from the code on the path;
``tests/modeling/test_model_reference.py`` recomputes the same values and compares. The file was
written with the code before the model was split into a network and a postprocessor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modeling_helpers import compose_model_config, make_batch  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "assets" / "model_reference" / "small_seed0.pt"
OVERRIDES = ("model.merge.score_thresh=0.0", "model.roi_heads.box_head.test.score_thresh=0.0",
             "model.merge.stuff_area=8", "model.roi_heads.box_head.test.detections_per_image=10")


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """bool tensor -> packed bits (uint8), shape recorded separately."""
    return torch.from_numpy(np.packbits(mask.numpy().astype(np.uint8).ravel()))


def compute() -> dict:
    """Eval outputs of a freshly built model, then its training losses on one batch (1 thread, seeded)."""
    from panfpn.modeling.build import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in a fixed order: the values are reproducible bit for bit
    try:
        cfg = compose_model_config("panoptic_fpn_small", "synthetic", OVERRIDES)
        torch.manual_seed(0)
        model = build_model(cfg)
        d = cfg.data
        batch = make_batch([(64, 96), (60, 70)], [(64, 96), (70, 80)], num_things=d.num_thing_classes,
                           num_sem=d.num_sem_classes, seed=5)
        out: dict = {"state_dict_keys": list(model.state_dict())}
        with torch.no_grad():
            results = model.eval()(batch)
        out["eval"] = [_flatten(r) for r in results]
        torch.manual_seed(1)
        losses = model.train()(batch)
        out["losses"] = {k: v.detach().clone() for k, v in losses.items()}
        return out
    finally:
        torch.set_num_threads(threads)


def _flatten(result: dict) -> dict:
    id_map, segments = result["panoptic"]
    inst = result["instances"]
    return {"id_map": id_map.to(torch.int16), "segments": segments,
            "boxes": inst["boxes"], "scores": inst["scores"], "labels": inst["labels"],
            "masks_packed": _pack(inst["masks"]), "masks_shape": tuple(inst["masks"].shape),
            "sem_seg": result["sem_seg"].to(torch.uint8)}


if __name__ == "__main__":
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(compute(), REFERENCE)
    print(REFERENCE, REFERENCE.stat().st_size, "bytes")

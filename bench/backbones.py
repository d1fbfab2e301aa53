"""Training-step and inference time of each shipped backbone config relative to R50, and parameter counts.

Every model is built from its config (``model=<name> data=coco_panoptic``: 80 things, 53 stuff,
random weights) and timed on the same random batch; the models are interleaved round by round so
that machine load hits them alike, and each figure is the median over rounds divided by R50's
median from the same run.

    python bench/backbones.py --size 256 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "modeling")]

from modeling_helpers import compose_model_config, make_batch  # noqa: E402

from panfpn.modeling.build import build_model  # noqa: E402

CONFIGS = ["panoptic_fpn_r50", "panoptic_fpn_resnext101_32x8d", "panoptic_fpn_regnety_3_2gf",
           "panoptic_fpn_convnext_t", "panoptic_fpn_swin_t", "panoptic_fpn_mobilenet_v3_large"]


def _build(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights: timing only
        torch.manual_seed(0)
        return build_model(compose_model_config(name, "coco_panoptic"))


def _time_train(model: torch.nn.Module, batch: dict) -> float:
    model.train()
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    sum(model(batch).values()).backward()
    return time.perf_counter() - start


def _time_infer(model: torch.nn.Module, batch: dict) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model(batch)
    return time.perf_counter() - start


def _time_backbone(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Backbone + FPN forward alone: the same compute for every input, unlike the full inference,
    whose RoI heads' cost follows the number of (random-weight) detections."""
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model.backbone(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square image side (multiple of 32)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {name: _build(name) for name in CONFIGS}
    batch = make_batch([(args.size, args.size)], [(args.size, args.size)], num_things=80, num_sem=54)
    x = torch.randn(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": [], "bb": []} for n in CONFIGS}
    for name, model in models.items():  # warm-up, not timed
        _time_train(model, batch), _time_infer(model, batch), _time_backbone(model, x)
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name]["train"].append(_time_train(model, batch))
            times[name]["infer"].append(_time_infer(model, batch))
            times[name]["bb"].append(_time_backbone(model, x))
    ref = {k: statistics.median(v) for k, v in times[CONFIGS[0]].items()}
    print(f"{args.size}x{args.size}, batch 1, {args.threads} thread(s), {args.rounds} rounds, medians")
    print("| config | params backbone+FPN | params total | train step s | vs R50 | inference s | vs R50 "
          "| backbone+FPN forward s | vs R50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        tr, inf, bbt = (statistics.median(times[name][k]) for k in ("train", "infer", "bb"))
        bb = sum(p.numel() for p in model.backbone.parameters())
        total = sum(p.numel() for p in model.parameters())
        print(f"| `{name}` | {bb:,} | {total:,} | {tr:.2f} | {tr / ref['train']:.2f}x | {inf:.2f} | "
              f"{inf / ref['infer']:.2f}x | {bbt:.3f} | {bbt / ref['bb']:.2f}x |")


if __name__ == "__main__":
    main()

"""Speed of our sparse-matrix RoIAlign (the CPU path) vs torchvision's roi_align, same run.

Training-like load: FPN levels P2-P5 of a batch of images, the RoIs of a Mask R-CNN step
(512 sampled proposals per image for the 7x7 box pooler, 128 positives for the 14x14 mask
pooler), spread over levels with the FPN rule; forward + backward of both implementations
on the same channels-last features, alternated, median of ``--iters``. Checks that outputs
and gradients agree before timing.

    python bench/roi_align.py [--size 512 512] [--batch 2] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from panfpn.modeling.panoptic_fpn.roi_align_sparse import roi_align_sparse  # noqa: E402
from panfpn.modeling.panoptic_fpn.roi_ops import MultiLevelRoIAlign  # noqa: E402


def random_boxes(g: torch.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """Boxes with log-uniform sides from 8 px to the image size (proposal-like spread)."""
    side = torch.exp(torch.empty(n, 2).uniform_(2.0, float(torch.log(torch.tensor(max(h, w)))),
                                                 generator=g))
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - side / 2
    return torch.cat([xy, xy + side], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cuda: is cuSPARSE worth it on GPUs too?")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    h, w = args.size
    device = torch.device(args.device)
    feats = {f"p{lvl}": torch.randn(args.batch, args.channels, h >> lvl, w >> lvl, generator=g)
             .contiguous(memory_format=torch.channels_last).to(device) for lvl in range(2, 6)}
    loads = {"box 7x7": (7, 512), "mask 14x14": (14, 128)}
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{h}x{w}, {args.channels} channels; forward + backward, median of {args.iters}")
    total = {"torchvision": 0.0, "sparse": 0.0}
    for name, (size, per_image) in loads.items():
        pooler = MultiLevelRoIAlign(size)
        boxes = [random_boxes(g, per_image, h, w) for _ in range(args.batch)]
        rois = torch.cat([torch.cat([torch.full((per_image, 1), float(i)), b], 1)
                          for i, b in enumerate(boxes)]).to(device)
        level = pooler.level_of(rois)
        times: dict[str, list[float]] = {"torchvision": [], "sparse": []}
        grads = {}
        for it in range(args.iters + 1):
            for impl, fn in (("torchvision", roi_align), ("sparse", roi_align_sparse)):
                inputs = {k: v.detach().requires_grad_() for k, v in feats.items()}
                start = time.perf_counter()
                for i, lvl in enumerate(range(2, 6)):
                    sel = rois[level == i]
                    if len(sel):
                        out = fn(inputs[f"p{lvl}"], sel, size, spatial_scale=1 / 2**lvl,
                                 sampling_ratio=0, aligned=True)
                        out.backward(torch.ones_like(out))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if it:
                    times[impl].append(time.perf_counter() - start)
                else:
                    grads[impl] = [inputs[f"p{lvl}"].grad for lvl in range(2, 6)]
        for a, b in zip(grads["torchvision"], grads["sparse"]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in total:
            total[k] += med[k]
        counts = torch.bincount(level, minlength=4).tolist()
        print(f"{name:11s} RoIs per level P2-P5 {counts}: torchvision {1000 * med['torchvision']:.0f} ms, "
              f"sparse {1000 * med['sparse']:.0f} ms, speed-up {med['torchvision'] / med['sparse']:.2f}x")
    print(f"{'both':11s} torchvision {1000 * total['torchvision']:.0f} ms, sparse "
          f"{1000 * total['sparse']:.0f} ms, speed-up {total['torchvision'] / total['sparse']:.2f}x")


if __name__ == "__main__":
    main()

"""Fused panoptic merge vs its sequential definition, on a realistic COCO-sized output.

    python bench/merge.py                 # CPU, one thread
    python bench/merge.py --device cuda   # GPU

Inputs: 800x1216 image, 100 detections (scores uniform in [0.05, 1], like a detector's output after
its 0.05 score cut), masks pasted from 28x28 soft blobs into boxes of varied size (sqrt-area 16..400
pixels), a third of them jittered duplicates of an earlier one; a 54-label semantic map (53 stuff
labels, all present, plus the merged 'thing' label 53 over the confident instances).

The reference is the merge's definition, ``panfpn.modeling.merge_reference.merge_panoptic_reference``:
a per-instance torch loop in the style of Detectron2's combination (per instance: threshold, area,
overlap with the claimed pixels, masked assignment; per stuff label: region, area, assignment),
reading a few scalars back per instance. Both are checked to agree exactly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from panfpn.modeling.merge import merge_panoptic
from panfpn.modeling.merge_reference import merge_panoptic_reference


def make_inputs(height: int, width: int, num_instances: int, num_sem: int, seed: int,
                device: str) -> tuple[torch.Tensor, ...]:
    """mask_probs [N, H, W], scores [N], labels [N], sem_labels [H, W]; thing label = num_sem - 1."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.zeros(num_instances, height, width)
    boxes = []
    for i in range(num_instances):
        if i > 0 and torch.rand(1, generator=g) < 0.33:  # duplicate detection of an earlier object
            y0, x0, bh, bw = boxes[int(torch.randint(0, i, (1,), generator=g))]
            y0 = max(0, y0 + int(torch.randint(-8, 9, (1,), generator=g)))
            x0 = max(0, x0 + int(torch.randint(-8, 9, (1,), generator=g)))
        else:
            side = float(torch.exp(torch.empty(1).uniform_(2.77, 5.99, generator=g)))  # 16..400
            aspect = float(torch.exp(torch.empty(1).uniform_(-0.7, 0.7, generator=g)))
            bh = max(2, min(height, int(side * aspect ** 0.5)))
            bw = max(2, min(width, int(side / aspect ** 0.5)))
            y0 = int(torch.randint(0, height - bh + 1, (1,), generator=g))
            x0 = int(torch.randint(0, width - bw + 1, (1,), generator=g))
        bh, bw = min(bh, height - y0), min(bw, width - x0)
        boxes.append((y0, x0, bh, bw))
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
        wobble = 0.25 * torch.randn(1, 1, 4, 4, generator=g)
        wobble = F.interpolate(wobble, size=(28, 28), mode="bilinear", align_corners=False)[0, 0]
        logits = 6 * (1 - (yy ** 2 + xx ** 2) + wobble)
        blob = torch.sigmoid(logits)[None, None]
        probs[i, y0:y0 + bh, x0:x0 + bw] = F.interpolate(blob, size=(bh, bw), mode="bilinear",
                                                         align_corners=False)[0, 0]
    scores = torch.empty(num_instances).uniform_(0.05, 1.0, generator=g)
    labels = torch.randint(0, 80, (num_instances,), generator=g)
    # Voronoi-like stuff layout: a coarse grid of labels (every stuff label present), upsampled.
    coarse = torch.randint(0, num_sem - 1, (20, 30), generator=g)
    coarse.view(-1)[: num_sem - 1] = torch.arange(num_sem - 1)
    coarse = coarse.view(-1)[torch.randperm(coarse.numel(), generator=g)].view(20, 30)
    sem = F.interpolate(coarse[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
    confident = (probs[scores > 0.4] >= 0.5).any(0)
    sem[confident] = num_sem - 1
    return tuple(t.to(device) for t in (probs, scores, labels, sem))


def timed_pair(fn_a, fn_b, repeats: int, device: str) -> tuple[float, float, object, object]:
    """Median wall times in ms of two functions, alternated call by call so that both see the same
    machine load (after one warm-up call each), and their last results."""
    out_a, out_b = fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
            if fn is fn_a:
                out_a = out
            else:
                out_b = out
    return statistics.median(times_a), statistics.median(times_b), out_a, out_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    num_sem = 54
    kwargs = dict(thing_sem_labels=[num_sem - 1], score_thresh=0.5, overlap_thresh=0.5, stuff_area=4096)
    ratios = []
    for seed in range(args.seeds):
        inputs = make_inputs(args.height, args.width, args.instances, num_sem, seed, args.device)
        t_ref, t_fused, ref, fused = timed_pair(
            lambda: merge_panoptic_reference(*inputs, **kwargs), lambda: merge_panoptic(*inputs, **kwargs),
            args.repeats, args.device,
        )
        if not (torch.equal(ref[0], fused[0]) and ref[1] == fused[1]):
            raise SystemExit(f"seed {seed}: fused merge and reference disagree")
        things = sum(s["isthing"] for s in ref[1])
        ratios.append(t_ref / t_fused)
        print(f"seed {seed}: {things} things + {len(ref[1]) - things} stuff segments | "
              f"sequential {t_ref:8.2f} ms | fused {t_fused:8.2f} ms | speed-up {t_ref / t_fused:5.1f}x")
    print(f"{args.device} ({args.threads} thread(s)), {args.height}x{args.width}, "
          f"{args.instances} instances, {num_sem} semantic labels: "
          f"median speed-up {statistics.median(ratios):.1f}x (identical outputs)")


if __name__ == "__main__":
    main()

"""Cost of resizing a uint8 image as Detectron2 does (Pillow BILINEAR, panfpn's
``transforms.resize_image``) vs torchvision's antialiased uint8 resize, same run.

The test and training transforms resize in the DataLoader workers, where torch runs one thread
(``--threads 1``, the default); ``--threads N`` shows the main process's case. Interleaved rounds,
median of each; the ratio is Pillow's time over torchvision's.

    python bench/resize.py [--size 480 640] [--to 800 1067] [--threads 1] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from panfpn.data.transforms import resize_image  # noqa: E402


def per_call_ms(fn, calls: int) -> float:
    """Mean milliseconds of ``calls`` calls of ``fn``."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    ap.add_argument("--to", type=int, nargs=2, default=[800, 1067], metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=10, help="calls per round and contender")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = torch.randint(0, 256, (3, *args.size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out_h, out_w = args.to
    contenders = {
        "pillow (panfpn, Detectron2's bytes)": lambda: resize_image(image, out_h, out_w),
        "torchvision antialias": lambda: TF.resize(image, [out_h, out_w], interpolation=InterpolationMode.BILINEAR,
                                                   antialias=True),
    }
    for fn in contenders.values():
        fn()  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(per_call_ms(fn, args.calls))
    print(f"{args.size[0]}x{args.size[1]} -> {out_h}x{out_w}, torch threads {args.threads}, "
          f"{args.rounds} rounds x {args.calls} calls, median ms per image:")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"  {name:38s} {ms:8.2f} ms")
    pillow, tv = medians.values()
    ratios = sorted(p / t for p, t in zip(*times.values()))
    print(f"  pillow / torchvision: {pillow / tv:.2f} (per-round {ratios[0]:.2f}..{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()

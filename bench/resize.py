"""Cost of resizing a uint8 image as Detectron2 does (Pillow BILINEAR, panfpn's
``transforms.resize_image``) vs torchvision's antialiased uint8 resize, same run.

The test and training transforms resize in the DataLoader workers, where torch runs one thread
(``--threads 1``, the default); ``--threads N`` shows the main process's case. Interleaved rounds,
median of each; the ratio is Pillow's time over torchvision's.

``--onnx``: the exported graph's resize instead (panfpn/deploy/resize.py ``resize_uint8``, traced to
ONNX with dynamic sizes as the pipeline exports it, run in onnxruntime CPU with ``--threads``
threads): Pillow < 13's one pass order (horizontal first) vs Pillow >= 13's size-dependent order,
same run; the ratio is the second over the first. ``--onnx --memory``: instead of timing, each
order's peak resident memory for one run in a fresh process (onnxruntime and numpy only): the peak
RSS (``VmHWM``) less the peak before the run, per input pixel.

    python bench/resize.py [--size 480 640] [--to 800 1067] [--threads 1] [--rounds 9]
    python bench/resize.py --onnx [--size 1000 37] [--to 800 30] [--rounds 3]
    python bench/resize.py --onnx --memory --size 4096 4096 --to 128 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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


# One onnxruntime run in a fresh process: argv = model, H, W, out H, out W, threads; prints the MiB
# its peak RSS grew by
_PEAK_CHILD = """
import sys
from pathlib import Path
import numpy as np, onnxruntime as ort
def status(key):  # MiB; VmHWM, not ru_maxrss: that keeps the forking parent's peak across exec
    return next(int(v.split()[1]) for v in Path("/proc/self/status").read_text().splitlines() if v.startswith(key)) / 1024
path, h, w, oh, ow, threads = sys.argv[1], *map(int, sys.argv[2:])
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = threads
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
image = np.random.default_rng(0).integers(0, 256, (3, h, w), dtype=np.uint8)
before = status("VmHWM:")
session.run(None, {"image": image, "size": np.array([oh, ow])})
print(status("VmHWM:") - before)
"""


def onnx_peaks(paths: dict, size: list[int], out_h: int, out_w: int, threads: int) -> None:
    """Per pass order: the run's peak RSS increase (MiB and bytes per input pixel), a fresh process each."""
    import subprocess

    print(f"{size[0]}x{size[1]} -> {out_h}x{out_w}, onnxruntime CPU {threads} thread(s), one run each:")
    for name, path in paths.items():
        argv = [str(path), *map(str, (*size, out_h, out_w, threads))]
        mib = float(subprocess.run([sys.executable, "-c", _PEAK_CHILD, *argv], capture_output=True, text=True,
                                   check=True).stdout.split()[-1])
        print(f"  {name:38s} peak RSS +{mib:7.0f} MiB ({mib * 2**20 / (size[0] * size[1]):5.1f} bytes per input pixel)")


def onnx_contenders(image: torch.Tensor, out_h: int, out_w: int, threads: int, folder: Path) -> dict:
    """One onnxruntime call per pass order of the in-graph resize, sizes as graph inputs (the
    session runner per name; each file's path in ``folder`` is ``<order>.onnx``)."""
    import warnings

    import onnxruntime as ort

    from panfpn.deploy.resize import HORIZONTAL_FIRST, PILLOW13, resize_uint8, size_of

    class Resize(torch.nn.Module):
        def __init__(self, order: str):
            super().__init__()
            self.order = order

        def forward(self, image: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
            size_of(image, 1)  # the traced sizes stay dynamic (size_of); the output's come from `size`
            return resize_uint8(image, size[0], size[1], self.order)

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    feed = {"image": image.numpy(), "size": torch.tensor([out_h, out_w]).numpy()}
    contenders = {}
    for name, order in (("onnx horizontal first (Pillow < 13)", HORIZONTAL_FIRST),
                        ("onnx Pillow >= 13 order", PILLOW13)):
        path = folder / f"{order}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Resize(order), (image, torch.tensor([out_h, out_w])), str(path), dynamo=False,
                              opset_version=17, input_names=["image", "size"],
                              dynamic_axes={"image": {1: "h", 2: "w"}})
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        contenders[name] = lambda session=session: session.run(None, feed)
    return contenders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    ap.add_argument("--to", type=int, nargs=2, default=[800, 1067], metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=10, help="calls per round and contender")
    ap.add_argument("--onnx", action="store_true", help="time the exported graph's resize (both pass orders)")
    ap.add_argument("--memory", action="store_true", help="with --onnx: peak RSS of one run instead of times")
    args = ap.parse_args()
    if args.memory and not args.onnx:
        ap.error("--memory measures the exported resize: add --onnx")
    torch.set_num_threads(args.threads)
    image = torch.randint(0, 256, (3, *args.size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out_h, out_w = args.to
    contenders = {
        "pillow (panfpn, Detectron2's bytes)": lambda: resize_image(image, out_h, out_w),
        "torchvision antialias": lambda: TF.resize(image, [out_h, out_w], interpolation=InterpolationMode.BILINEAR,
                                                   antialias=True),
    }
    folder = tempfile.TemporaryDirectory()
    if args.onnx:
        contenders = onnx_contenders(image, out_h, out_w, args.threads, Path(folder.name))
        if args.memory:
            from panfpn.deploy.resize import HORIZONTAL_FIRST, PILLOW13

            names = dict(zip(contenders, (HORIZONTAL_FIRST, PILLOW13)))
            onnx_peaks({n: Path(folder.name) / f"{o}.onnx" for n, o in names.items()}, args.size, out_h, out_w,
                       args.threads)
            folder.cleanup()
            return
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
    first, second = medians.values()  # onnx: the ratio is the second over the first (the extra order's cost)
    top, bottom, label = ((second, first, "Pillow >= 13 / horizontal first") if args.onnx
                          else (first, second, "pillow / torchvision"))
    ratios = sorted((b / a if args.onnx else a / b) for a, b in zip(*times.values()))
    print(f"  {label}: {top / bottom:.2f} (per-round {ratios[0]:.2f}..{ratios[-1]:.2f})")
    folder.cleanup()


if __name__ == "__main__":
    main()

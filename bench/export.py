"""Exported network (torch.export program, onnxruntime CPU) vs the eager network, same input.

    python bench/export.py                          # small model, 512x512, 1 thread
    python bench/export.py --model panoptic_fpn_r50 --data coco_panoptic --size 800 1216

Times the network part only (backbone + FPN + semantic head + RPN head: what modeling/export.py
exports) and the whole pipeline (network + eager remainder) for each backend, with random weights
in eval mode; prints medians and ratios to eager measured in this run, plus the largest absolute
difference of the raw outputs. Backends alternate per repetition so all see the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from panfpn.modeling.build import build_model
from panfpn.modeling.panoptic_fpn.export import (as_network, export_onnx,
                                    export_program, max_abs_diffs, run_exported)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "modeling"))
from modeling_helpers import compose_model_config, make_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panoptic_fpn_small")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = compose_model_config(args.model, args.data, ("model.backbone.norm=bn",))
        model = build_model(cfg).eval()
    import onnxruntime as ort

    h, w = args.size
    net = model.network
    t0 = time.perf_counter()
    program = export_program(net, height=h, width=w)
    t_export = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        path = export_onnx(net, Path(tmp) / "net.onnx", height=h, width=w)
        t_onnx = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    print(f"{args.model} {h}x{w}, {args.threads} thread(s); export: torch.export {t_export:.1f} s, "
          f"onnx {t_onnx:.1f} s")

    d = cfg.data
    batch = make_batch([(h, w)], [(h, w)], num_things=d.num_thing_classes, num_sem=d.num_sem_classes)
    x = net.preprocess(batch["images"], batch["image_sizes"]).tensors
    backends = {"eager": net, "torch_export": as_network(program), "onnxruntime": as_network(session)}
    with torch.no_grad():
        want = net(x)
        scale = max(float(t.abs().max()) for t in want)
        for name in ("torch_export", "onnxruntime"):
            diff = max(max_abs_diffs(backends[name](x), want).values())
            print(f"  {name:13s} raw outputs max abs diff vs eager: {diff:.2e} "
                  f"(largest output magnitude {scale:.2e})")
        times = {k: {"network": [], "pipeline": []} for k in backends}
        for rep in range(args.reps + 1):
            for name, fn in backends.items():
                t0 = time.perf_counter()
                fn(x)
                t1 = time.perf_counter()
                if name == "eager":
                    model(batch)
                else:
                    run_exported(fn, model, batch)
                t2 = time.perf_counter()
                if rep:  # the first repetition warms up
                    times[name]["network"].append(t1 - t0)
                    times[name]["pipeline"].append(t2 - t1)
    ref = {k: statistics.median(v) for k, v in times["eager"].items()}
    for name, t in times.items():
        net_t, pipe_t = statistics.median(t["network"]), statistics.median(t["pipeline"])
        print(f"  {name:13s} network {1000 * net_t:8.1f} ms ({ref['network'] / net_t:4.2f}x eager)   "
              f"pipeline {1000 * pipe_t:8.1f} ms ({ref['pipeline'] / pipe_t:4.2f}x eager)")


if __name__ == "__main__":
    main()

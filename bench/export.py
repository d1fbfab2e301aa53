"""Exported network (torch.export program, onnxruntime CPU) vs the eager network, same input; and
the whole exported pipeline (``--scope pipeline``: one ONNX graph, image in, panoptic result out).

    python bench/export.py                          # small model, 512x512, 1 thread
    python bench/export.py --model panoptic_fpn_r50 --data coco_panoptic --size 800 1216
    python bench/export.py --scope pipeline --model panoptic_fpn_r50 --data coco_panoptic \
        --size 800 1216 --threads 2 --reps 3       # onnxruntime CPU vs eager CPU, per image
    python bench/export.py --scope pipeline ... --profile 2   # and onnxruntime's time per op type
    python bench/export.py --scope pipeline ... --device cuda   # eager CUDA; onnxruntime's CUDA and
                                                    # TensorRT providers where installed
    python bench/export.py --scope pipeline --memory 4096 4096 4000 6000   # peak RSS per input size

Times the network part only (backbone + FPN + semantic head + RPN head: what modeling/export.py
exports) and the whole pipeline (network + eager remainder) for each backend, with random weights
in eval mode; prints medians and ratios to eager measured in this run, plus the largest absolute
difference of the raw outputs. Backends alternate per repetition so all see the same machine load;
the pipeline scope also prints each runner's process CPU time (on a machine shared with other jobs
the 1-thread CPU ratio is steadier than the wall-time one).

``--memory H W [H W ...]``: instead of timing, the exported pipeline's peak resident memory in
onnxruntime CPU per input size (random uint8 image), each size in a fresh process that imports only
onnxruntime and numpy: peak RSS (``VmHWM``), the RSS with the session loaded before the run, and
their difference per input pixel (what the run itself costs).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # config_helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "modeling"))
from modeling_helpers import compose_model_config, make_batch  # noqa: E402
from pipeline_helpers import COCO_IMAGES as COCO_PHOTOS  # noqa: E402  (the COCO sample photos the tests use)


def spread_heads(model: torch.nn.Module, run) -> None:
    """Re-draw the class, mask and semantic predictors (seeded) so that their logits have a spread
    of a trained model's on this input (std 2, 4 and 4), measured by one eager ``run()``: with their
    init every mask probability is 0.5 +- 1e-3, and a wider fixed std saturates R50's class scores
    at 1.0 (60 distinct values among 100 detections), so float rounding alone reorders near-ties."""
    layers = {"class": (model.roi_heads.box_head.cls_score, 2.0),
              "mask": (model.roi_heads.mask_head.predictor, 4.0),
              "semantic": (model.semantic_head.predictor, 4.0)}
    rms: dict[str, float] = {}

    def measure(key: str):
        def hook(module, inputs, output) -> None:  # returns None: the output stays as it is
            rms.setdefault(key, float(inputs[0].pow(2).mean().sqrt()))
        return hook

    hooks = [layer.register_forward_hook(measure(k)) for k, (layer, _) in layers.items()]
    with torch.no_grad():
        run()
    for hook in hooks:
        hook.remove()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, (layer, target) in layers.items():
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * target / (rms[k] * fan_in ** 0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scope", choices=("network", "pipeline"), default="network")
    parser.add_argument("--model", default="panoptic_fpn_small")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="pipeline scope: the eager model's device")
    parser.add_argument("--heads", choices=("informative", "random"), default="informative",
                        help="pipeline scope: class, mask and semantic predictors re-drawn with a wider "
                             "spread (varied scores and masks, not near-ties) or left at their init")
    parser.add_argument("--photos", nargs="*", default=[str(p) for p in COCO_PHOTOS],
                        help="pipeline scope: images also predicted by both and compared (segments, "
                             "pixels, PQ of exported vs eager); default: the COCO sample photos")
    parser.add_argument("--memory", type=int, nargs="+", default=None, metavar="H W",
                        help="pipeline scope: peak RSS of one onnxruntime run per input size (pairs H W)")
    parser.add_argument("--memory-child", nargs=4, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=int, default=0, metavar="RUNS",
                        help="pipeline scope: also profile RUNS onnxruntime runs (SessionOptions.enable_profiling) "
                             "and print each op type's share of the node time")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    if args.memory is not None and (len(args.memory) % 2 or args.scope != "pipeline"):
        parser.error("--memory takes pairs H W, with --scope pipeline")
    torch.set_num_threads(args.threads)
    if args.scope == "pipeline":
        bench_pipeline(args)
        return
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


def _providers(device: str) -> list[list[str]]:
    """onnxruntime provider lists to time: the CPU on the CPU; CUDA and TensorRT where installed
    (none without onnxruntime: then only the eager model is timed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: timing the eager model only")
        return []

    if device == "cpu":
        return [["CPUExecutionProvider"]]
    available = ort.get_available_providers()
    gpu = [[p, "CPUExecutionProvider"] for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
           if p in available]
    if not gpu:
        print(f"onnxruntime {ort.__version__} has no CUDA/TensorRT provider (providers: {', '.join(available)}; "
              "the GPU build is the onnxruntime-gpu package): timing the eager model only")
    return gpu


def _session(path: Path, providers: list[str], threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if profile_prefix is not None:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), opts, providers=providers)


def print_profile(path: Path, providers: list[str], threads: int, image: torch.Tensor, runs: int, tmp: Path) -> None:
    """``runs`` profiled onnxruntime runs (after one warm-up): each op type's share of the summed
    node time, the largest first (what onnxruntime's own profiler attributes, not wall time)."""
    import json
    from collections import Counter

    from panfpn.deploy.pipeline import INPUT_NAME

    session = _session(path, providers, threads, profile_prefix=str(tmp / "ort_profile"))
    for _ in range(runs + 1):
        session.run(None, {INPUT_NAME: image.numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("name") == "model_run"][1:]  # skip the warm-up
    start = min(e["ts"] for e in runs_seen)
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    wall = sum(e["dur"] for e in runs_seen) / len(runs_seen)
    top = ", ".join(f"{op} {100 * t / total:.1f} %" for op, t in per_op.most_common(8))
    print(f"  onnxruntime profile, {runs} run(s), {wall / 1e3:.1f} ms per run, node time by op type: {top}")


def _eager_runner(model, transform, image: torch.Tensor, device: torch.device):
    """What tools/predict.py does per image (test resize, collate, ``model.eval()``) -> the id map."""
    from panfpn.data.collate import collate_panoptic

    h, w = image.shape[:2]

    def run() -> torch.Tensor:
        chw, _ = transform(image.permute(2, 0, 1), torch.zeros((h, w), dtype=torch.uint8))
        sample = {"image": chw, "image_id": 0, "file_name": "x", "orig_size": (h, w),
                  "instances": {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long),
                                "masks": torch.zeros((0, *chw.shape[1:]), dtype=torch.uint8)},
                  "sem_seg": torch.zeros(chw.shape[1:], dtype=torch.long)}
        out = model(collate_panoptic([sample]))[0]["panoptic"][0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out.cpu()
    return run


def bench_pipeline(args: argparse.Namespace) -> None:
    """Per image: the exported pipeline in onnxruntime vs eager ``model.eval()`` (test resize,
    collate, model) on the same uint8 image, random weights, every detection kept (score
    thresholds 0: the merge loop runs all ``detections_per_image`` slots: the worst case)."""
    from hydra.utils import instantiate

    from panfpn.deploy.export import build_pipeline, export_pipeline_onnx
    from panfpn.deploy.pipeline import INPUT_NAME
    from panfpn.engine.job_setup import build_metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = compose_model_config(args.model, args.data, (
            "model.backbone.norm=bn", "model.roi_heads.box_head.test.score_thresh=0.0",
            "model.merge.score_thresh=0.0"))
        torch.manual_seed(0)
        model = build_model(cfg).eval()
    transform = instantiate(cfg.data.val.transforms)
    if args.memory is not None:
        memory_peaks(model, build_metadata(cfg), transform, list(zip(args.memory[::2], args.memory[1::2])),
                     args.threads)
        return
    h, w = args.size
    image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    if args.heads == "informative":
        spread_heads(model, _eager_runner(model, transform, image, torch.device("cpu")))
    metadata = build_metadata(cfg)
    pipeline = build_pipeline(model, metadata, transform)
    providers = _providers(args.device)
    sessions, note = {}, "no onnxruntime provider for this device: not exported"
    if providers:  # no export when only the eager model can be timed (the GPU step's time limit)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = export_pipeline_onnx(pipeline, Path(tmp) / "pipeline.onnx", metadata=metadata)
            note = f"export {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e6:.0f} MB"
            sessions = {f"onnxruntime {p[0].replace('ExecutionProvider', '')}": _session(path, p, args.threads)
                        for p in providers}
            if args.profile:
                print_profile(path, providers[0], args.threads, image, args.profile, Path(tmp))
            if args.photos:
                compare_on_photos(model, metadata, transform, next(iter(sessions.values())),
                                  [Path(p) for p in args.photos], args.device, Path(tmp))
    device = torch.device(args.device)
    runners = {f"eager {device.type}": _eager_runner(model.to(device), transform, image, device)}
    for name, session in sessions.items():
        runners[name] = lambda s=session: torch.from_numpy(s.run(["panoptic"], {INPUT_NAME: image.numpy()})[0])
    print(f"{args.model} pipeline {h}x{w}, {args.threads} thread(s), device {args.device}; {note}; "
          f"{pipeline.max_detections} detection slots; {args.heads} heads")
    times: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}  # process CPU time: steadier than wall under load
    maps = {}
    with torch.no_grad():
        for rep in range(args.reps + 1):
            for name, run in runners.items():  # alternate: every runner sees the same load
                t0, c0 = time.perf_counter(), time.process_time()
                maps[name] = run()
                if rep:  # the first repetition warms up
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
    ref_name = f"eager {device.type}"
    ref, ref_cpu = statistics.median(times[ref_name]), statistics.median(cpu[ref_name])
    for name, t in times.items():
        agree = float((maps[name] == maps[ref_name]).float().mean())
        wall, used = statistics.median(t), statistics.median(cpu[name])
        print(f"  {name:24s} {1000 * wall:9.1f} ms/image ({ref / wall:4.2f}x {ref_name}; CPU {1000 * used:.0f} ms, "
              f"{ref_cpu / used:4.2f}x); id map pixels equal to eager: {100 * agree:.4f} %")


def memory_child(path: str, height: str, width: str, threads: str) -> None:
    """One onnxruntime run of the pipeline at ``height x width`` in this process: prints the RSS
    (MiB) with the session loaded and the peak after the run (``VmHWM``; ``ru_maxrss`` would keep
    the forking parent's peak across exec), as JSON."""
    import json

    import numpy as np
    import onnxruntime as ort

    def status(key: str) -> float:
        return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(key)) / 1024

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, (int(height), int(width), 3), dtype=np.uint8)
    loaded = status("VmRSS:")
    t0 = time.perf_counter()
    session.run(None, {session.get_inputs()[0].name: image})
    seconds = time.perf_counter() - t0
    print(json.dumps({"loaded_mib": loaded, "peak_mib": status("VmHWM:"), "seconds": seconds}))


def memory_peaks(model, metadata, transform, sizes: list[tuple[int, int]], threads: int) -> None:
    """Export the pipeline once, then one fresh process per size (:func:`memory_child`): its peak RSS."""
    import json
    import subprocess

    from panfpn.deploy.export import build_pipeline, export_pipeline_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_pipeline_onnx(build_pipeline(model, metadata, transform), Path(tmp) / "pipeline.onnx",
                                    metadata=metadata)
        print(f"pipeline exported ({path.stat().st_size / 1e6:.0f} MB); onnxruntime CPU, {threads} thread(s)")
        print(f"  {'input':>11s} {'peak RSS MiB':>13s} {'loaded MiB':>11s} {'run bytes/pixel':>16s} {'s':>6s}")
        for h, w in sizes:
            cmd = [sys.executable, __file__, "--memory-child", str(path), str(h), str(w), str(threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  {h:>5d}x{w:<5d} failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            per_pixel = (r["peak_mib"] - r["loaded_mib"]) * 2**20 / (h * w)
            print(f"  {h:>5d}x{w:<5d} {r['peak_mib']:13.0f} {r['loaded_mib']:11.0f} {per_pixel:16.1f} "
                  f"{r['seconds']:6.1f}", flush=True)


def compare_on_photos(model, metadata, transform, session, photos: list[Path], device: str, tmp: Path) -> None:
    """The exported file through the standalone runner vs ``predict_images`` (eager, batch 1) on
    ``photos``: segments, id-map pixels, and PQ of the exported output with eager as ground truth."""
    import json

    import numpy as np
    from PIL import Image

    from panfpn.deploy.onnx_runner import predict_files
    from panfpn.engine.predict_run import predict_images
    from panfpn.evaluation.pq import pq_compute

    predict_images(model, photos, metadata, tmp / "eager", transforms=transform, device=device, batch_size=1,
                   overlay=False, write_threads=0, progress=False)
    predict_files(session, photos, tmp / "onnx")
    eager, onnx = (json.loads((tmp / d / "panoptic.json").read_text())["annotations"] for d in ("eager", "onnx"))
    for e, o in zip(eager, onnx, strict=True):
        same = [(s["id"], s["category_id"]) for s in e["segments_info"]] == \
            [(s["id"], s["category_id"]) for s in o["segments_info"]]
        maps = [np.asarray(Image.open(tmp / d / "panoptic" / e["file_name"]), dtype=np.int64) for d in ("eager", "onnx")]
        scores = [s["score"] for s in e["segments_info"] if "score" in s]
        gap = float(np.diff(sorted(scores)).min()) if len(scores) > 1 else float("inf")
        spread = (f"thing scores {min(scores):.3f}..{max(scores):.3f}, closest two {gap:.1e} apart (a gap "
                  "under ~1e-5 can swap order under another runtime's float rounding)") if scores else "no thing segment"
        print(f"  {e['file_name']}: {len(e['segments_info'])} segments ({spread}); same segments: {same}; "
              f"id map pixels equal: {100 * float((maps[0] == maps[1]).mean()):.4f} %")
    pq = pq_compute(tmp / "eager" / "panoptic.json", tmp / "onnx" / "panoptic.json", workers=1)
    print(f"  PQ of the exported output, eager as ground truth: {100 * pq['All']['pq']:.3f}")


if __name__ == "__main__":
    main()

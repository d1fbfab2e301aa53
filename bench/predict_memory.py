"""Peak memory of inference on a 24 MP photo (6000x4000) with Panoptic FPN R50-FPN on CPU.

The model returns every output at the photo's original size; this measures what that costs.
Each case runs in its own subprocess and reports its peak resident set size (``ru_maxrss``):

  reference     the forward with outputs at the network's input size (800x1200): model, input,
                features, heads, merge at 960k pixels; what the photo costs beyond this is the
                cost of the original size
  model_24mp    the same forward with outputs at 4000x6000 (postprocess + merge at 24 MP), instance
                masks kept inside their boxes (``box_instance_masks()``, as tools/predict.py runs it)
  model_24mp_dense  the same with dense bool [100, 4000, 6000] instance masks (the default eval
                output; 2.3 GiB of them alone)
  predict_24mp  tools/predict.py's loop on a 24 MP JPEG: decode, resize (800/1333), model,
                panoptic PNG + JSON, overlay JPEG, semantic PNG
  eval_24mp     the forward as tools/eval.py runs it (masks in their boxes) + COCO AP's encoding of
                every instance mask, each made at full size when it is encoded
  eval_24mp_dense  the same from the dense [100, 4000, 6000] masks (how eval ran before)

R50 with COCO's class counts (80 things, 54 semantic labels), random weights (the memory does not
depend on the values). Random weights give no detection above the 0.05 box threshold; ``--stress``
sets the box and merge score thresholds to 0, so 100 detections are pasted at 24 MP and all 100
go through the merge (the worst case the default limits allow).

    python bench/predict_memory.py [--stress] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("reference", "model_24mp", "model_24mp_dense", "predict_24mp", "eval_24mp", "eval_24mp_dense")
PHOTO = (4000, 6000)  # H, W
INPUT = (800, 1200)   # ResizeShortestEdge(800, max_size=1333) of a 4000x6000 photo


def _model(stress: bool):
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from panfpn.modeling.build import build_model

    overrides = ["model=panoptic_fpn_r50", "data=coco_panoptic", "output_dir=/tmp/unused"]
    if stress:
        overrides += ["model.roi_heads.box_head.test.score_thresh=0.0", "model.merge.score_thresh=0.0"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"),
                               version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights: irrelevant for memory
        model = build_model(cfg).eval()
    from panfpn.data.builtin_meta import coco_panoptic_metadata
    return model, coco_panoptic_metadata()


def _batch(orig_size):
    import torch
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, *INPUT), dtype=torch.uint8, generator=g)
    return {"images": image, "image_sizes": [INPUT], "orig_sizes": [orig_size],
            "image_ids": ["photo"], "file_names": ["photo.jpg"]}


def run_case(case: str, stress: bool, threads: int) -> dict:
    """Run one case in this process; returns peak RSS (MiB), seconds and detection counts."""
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    model, meta = _model(stress)
    start = time.perf_counter()
    info: dict = {"parameters": sum(p.numel() for p in model.parameters())}
    with torch.inference_mode():
        if case in ("reference", "model_24mp", "model_24mp_dense"):
            import contextlib
            from panfpn.modeling.panoptic_fpn.postprocess import box_instance_masks
            boxed = box_instance_masks() if case == "model_24mp" else contextlib.nullcontext()
            with boxed:
                out = model(_batch(INPUT if case == "reference" else PHOTO))[0]
            info.update({"detections": int(out["instances"]["scores"].numel()),
                         "segments": len(out["panoptic"][1]), "size": list(out["sem_seg"].shape)})
        elif case in ("eval_24mp", "eval_24mp_dense"):
            import contextlib

            from panfpn.evaluation.evaluators import MasksOneByOne
            from panfpn.evaluation.coco_ap import COCOAPEvaluator
            from panfpn.modeling.panoptic_fpn.postprocess import box_instance_masks

            dense = case == "eval_24mp_dense"
            with contextlib.nullcontext() if dense else box_instance_masks():
                out = model(_batch(PHOTO))[0]
            inst = out["instances"]
            ap = COCOAPEvaluator(meta.to_coco_categories())
            ap.update("photo", inst["boxes"], inst["scores"],
                      torch.as_tensor(meta.thing_ids)[inst["labels"]],
                      inst["masks"] if dense else MasksOneByOne(inst["masks"]))
            info.update({"detections": int(inst["scores"].numel()), "encoded": len(ap.dets),
                         "size": list(out["sem_seg"].shape)})
        else:
            from panfpn.data.image_files import list_image_files
            from panfpn.data.transforms import ResizeShortestEdge
            from panfpn.engine.predict_run import predict_images

            with tempfile.TemporaryDirectory() as tmp:
                rng = np.random.default_rng(0)
                small = rng.integers(0, 256, (PHOTO[0] // 16, PHOTO[1] // 16, 3), dtype=np.uint8)
                photo = Image.fromarray(small).resize(PHOTO[::-1], Image.BILINEAR)
                photo.save(Path(tmp) / "photo.jpg", quality=90)
                del photo, small
                start = time.perf_counter()
                import inspect
                extra = ({"semantic": True} if "semantic" in inspect.signature(predict_images).parameters
                         else {})  # also runs on code from before semantic PNGs (for before/after)
                result = predict_images(model, list_image_files(Path(tmp) / "photo.jpg"), meta,
                                        Path(tmp) / "out", transforms=ResizeShortestEdge(800, max_size=1333),
                                        batch_size=1, progress=False, **extra)
                info["semantic_png"] = bool(extra)
                data = json.loads((Path(tmp) / "out" / "panoptic.json").read_text())
                ann = data["annotations"][0]
                info.update({"segments": len(ann["segments_info"]), "predicted": result["predicted"],
                             "size": [data["images"][0]["height"], data["images"][0]["width"]]})
    info["seconds"] = time.perf_counter() - start
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stress", action="store_true", help="100 detections through paste and merge")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.stress, args.threads)))
        return
    results = {}
    for case in args.cases:
        cmd = [sys.executable, __file__, "--child", case, "--threads", str(args.threads)]
        proc = subprocess.run(cmd + (["--stress"] if args.stress else []), capture_output=True, text=True)
        if proc.returncode != 0:
            results[case] = {"error": proc.stderr.strip().splitlines()[-1:] or [f"rc {proc.returncode}"]}
        else:
            results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(case, json.dumps(results[case]), flush=True)
    ref = results.get("reference", {}).get("peak_rss_mib")
    print(f"\n{'case':18s}{'peak RSS MiB':>14s}{'vs reference':>14s}{'seconds':>10s}")
    for case, r in results.items():
        if "peak_rss_mib" in r:
            ratio = f"{r['peak_rss_mib'] / ref:.2f}x" if ref else "-"
            print(f"{case:18s}{r['peak_rss_mib']:14.0f}{ratio:>14s}{r['seconds']:10.1f}")


if __name__ == "__main__":
    main()

"""Mask2Former R50 vs Panoptic FPN R50: parameters, training step and inference time at the same
input size, measured in the same run (interleaved, medians; the ratio is Mask2Former / Panoptic FPN).

Both models are built from their configs (model=mask2former_r50 / panoptic_fpn_r50, COCO class
counts: 133 classes / 80 things + 54 semantic labels) with random weights. Panoptic FPN runs with
every score threshold at 0 (``--full-load``, default) so that its RoI heads, mask pasting and merge
carry 100 detections, as a trained model does; Mask2Former's cost does not depend on its scores
(100 queries always; its panoptic thresholds only filter the final segments). Training: forward +
backward + AdamW step on the same batch of random images with 5 box-shaped instances each.

    python bench/mask2former.py                      # CPU: 1 image 512x512, 3 timed iterations
    python bench/mask2former.py --device cuda --size 1024 1024 --batch 2 --iters 10
"""

from __future__ import annotations

import statistics
import sys
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import make_data, parse_timing_args, time_interleaved  # noqa: E402  (bench/model.py: the same batch, options, timing)

from panfpn.modeling.build import build_model  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
FULL_LOAD = {"panoptic_fpn_r50": ["model.roi_heads.box_head.test.score_thresh=0.0", "model.merge.score_thresh=0.0"]}


def build(name: str, full_load: bool) -> torch.nn.Module:
    overrides = [f"model={name}", "data=coco_panoptic", "output_dir=unused", *(FULL_LOAD.get(name, []) if full_load else [])]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights: fine for timing
        return build_model(cfg)


def main() -> None:
    args = parse_timing_args(__doc__, batch=1)
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {"mask2former_r50": build("mask2former_r50", args.full_load).to(device),
              "panoptic_fpn_r50": build("panoptic_fpn_r50", args.full_load).to(device)}
    batch, _, _ = make_data(args.batch, tuple(args.size), device)
    optims = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
              for k, m in models.items()}

    def train_step(name: str) -> None:
        model, opt = models[name].train(), optims[name]
        losses = model(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    def infer(name: str) -> None:
        with torch.inference_mode():
            models[name].eval()(batch)

    times = time_interleaved({"train": train_step, "infer": infer}, list(models), args, device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch} "
          f"size={args.size[0]}x{args.size[1]} iters={args.iters} full_load={args.full_load}")
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    print("params   " + "  ".join(f"{n} {v / 1e6:.2f}M" for n, v in params.items())
          + f"  |  ratio {params['mask2former_r50'] / params['panoptic_fpn_r50']:.2f}")
    for mode, unit, per in (("train", "s/iter", 1), ("infer", "s/image", args.batch)):
        med = {name: statistics.median(times[(mode, name)]) / per for name in models}
        print(f"{mode:5s} {unit:8s} " + "  ".join(f"{n} {v:.3f}" for n, v in med.items())
              + f"  |  ratio {med['mask2former_r50'] / med['panoptic_fpn_r50']:.2f}")


if __name__ == "__main__":
    main()

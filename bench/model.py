"""Speed of our Panoptic FPN R50 vs torchvision's Mask R-CNN R50-FPN, measured in the same run.

Reports training seconds per iteration (forward + backward + SGD step) and inference seconds per
image (including mask pasting and, for us, the semantic head and the panoptic merge), and the
ratio ours / torchvision (target: <= 1, i.e. the full panoptic model no slower than Mask R-CNN
alone). Runs alternate between the models and the median is reported, which keeps the
comparison fair on a shared, noisy machine.

Two torchvision references:
  tv-default  maskrcnn_resnet50_fpn(weights=None, weights_backbone=None): without pretrained
              weights torchvision trains every layer and uses trainable BatchNorm;
  tv-frozen   the same Mask R-CNN with frozen BN and stem + res2 frozen, like our default.

Random weights give no detection above 0.05, which would skip the mask head, the pasting and
the merge; ``--full-load`` (default on) sets every score threshold to 0 on both models so each
image carries 100 detections through all of them.

    python bench/model.py                      # CPU: 2 images 512x512, 3 timed iterations
    python bench/model.py --device cuda --size 800 1216 --iters 20
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision
from hydra import compose, initialize_config_dir
from pathlib import Path
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from panfpn.modeling.build import build_model

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def build_ours(full_load: bool) -> torch.nn.Module:
    overrides = ["model=panoptic_fpn_r50", "data=coco_panoptic", "output_dir=unused"]
    if full_load:
        overrides += ["model.roi_heads.box_head.test.score_thresh=0.0", "model.merge.score_thresh=0.0"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights: fine for timing
        return build_model(cfg)


def build_tv(frozen: bool, size: tuple[int, int], full_load: bool) -> torch.nn.Module:
    # min/max size = our input size, so torchvision's transform does not rescale the images.
    kwargs = dict(min_size=min(size), max_size=max(size), box_score_thresh=0.0 if full_load else 0.05)
    if not frozen:
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    return MaskRCNN(backbone, num_classes=91, **kwargs)


def make_data(batch: int, size: tuple[int, int], device: torch.device, seed: int = 0):
    """Random images with 5 box-shaped instances each, in both models' input formats."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
    instances, tv_targets = [], []
    for _ in range(batch):
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(5, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1).floor()
        masks = torch.zeros(5, h, w, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        labels = torch.randint(0, 80, (5,), generator=g)
        instances.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
        tv_targets.append({"boxes": boxes.to(device), "labels": (labels + 1).to(device),
                           "masks": masks.to(device)})
    ours = {"images": images.to(device), "image_sizes": [(h, w)] * batch, "orig_sizes": [(h, w)] * batch,
            "instances": instances, "sem_seg": torch.randint(0, 54, (batch, h, w), generator=g).to(device)}
    tv_images = [im.to(device).float() / 255 for im in images]
    return ours, tv_images, tv_targets


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def parse_timing_args(doc: str, batch: int) -> argparse.Namespace:
    """The command line of the model timing benches (this one, bench/mask2former.py); sets
    ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per model and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-full-load", dest="full_load", action="store_false")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def time_interleaved(modes: dict, names: list[str], args: argparse.Namespace,
                     device: torch.device) -> dict[tuple[str, str], list[float]]:
    """Seconds of ``modes[mode](name)`` per (mode, name) after ``args.warmup`` untimed rounds,
    ``args.iters`` rounds, the models interleaved so that machine load drifts hit every model alike."""
    times: dict[tuple[str, str], list[float]] = {}
    for mode, fn in modes.items():
        for it in range(args.warmup + args.iters):
            for name in names:
                t = timed(lambda: fn(name), device)
                if it >= args.warmup:
                    times.setdefault((mode, name), []).append(t)
    return times


def main() -> None:
    args = parse_timing_args(__doc__, batch=2)
    device = torch.device(args.device)
    size = tuple(args.size)
    torch.manual_seed(0)
    models = {"ours": build_ours(args.full_load).to(device),
              "tv-default": build_tv(False, size, args.full_load).to(device),
              "tv-frozen": build_tv(True, size, args.full_load).to(device)}
    ours_batch, tv_images, tv_targets = make_data(args.batch, size, device)
    optims = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
              for k, m in models.items()}

    def train_step(name):
        model, opt = models[name], optims[name]
        model.train()
        losses = model(ours_batch) if name == "ours" else model(tv_images, tv_targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    def infer(name):
        model = models[name].eval()
        with torch.inference_mode():
            model(ours_batch) if name == "ours" else model(tv_images)

    times = time_interleaved({"train": train_step, "infer": infer}, list(models), args, device)

    print(f"device={device} torch={torch.__version__} torchvision={torchvision.__version__} "
          f"threads={torch.get_num_threads()} batch={args.batch} size={size[0]}x{size[1]} "
          f"iters={args.iters} full_load={args.full_load}")
    for mode, unit, per in (("train", "s/iter", 1), ("infer", "s/image", args.batch)):
        med = {name: statistics.median(times[(mode, name)]) / per for name in models}
        cells = "  ".join(f"{name} {v:.3f}" for name, v in med.items())
        ratios = "  ".join(f"ours/{name} {med['ours'] / med[name]:.2f}" for name in models if name != "ours")
        print(f"{mode:5s} {unit:8s} {cells}  |  {ratios}")


if __name__ == "__main__":
    main()

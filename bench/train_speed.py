"""Training speed of the R50 COCO recipe through the real engine, against the bare model step.

Runs ``panfpn.engine.train_run.train_from_config`` (data loading, augmentation seeding, forward, backward,
SGD step, logging, checkpoint at the end) with the ``coco_r50_1x`` model and solver on synthetic
images of the requested size, and, in the same run, the bare step (forward + backward + SGD on
one pre-collated batch) as the reference. Prints s/iter, images/s and the ratio engine / bare
(the engine's overhead). The COCO recipe's frozen BN has no pretrained statistics here, so a
non-finite step is skipped rather than stopping the timing.

    python bench/train_speed.py                                   # CPU, 2 images 512x512
    python bench/train_speed.py --device cuda --size 800 1333 --batch 2 --iters 20 --amp
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from panfpn.data.collate import collate_panoptic
from panfpn.engine.job_setup import move_batch
from panfpn.engine.train_run import train_from_config
from panfpn.modeling.build import build_model

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def make_config(args, run_dir: Path):
    h, w = args.size
    overrides = [
        "experiment=coco_r50_1x", "data=synthetic", "weights=null",
        f"data.train.height={h}", f"data.train.width={w}", "data.train.transforms=null",
        f"data.train.num_images={max(8, args.batch * 4)}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}", f"device={args.device}",
        f"solver.max_iter={args.iters + args.warmup}", "solver.base_lr=0.001",
        f"solver.ims_per_batch={args.batch}", "solver.schedule.steps=[]",
        f"train.log_period={args.iters + args.warmup}", "train.eval_period=-1",
        "train.checkpoint_period=1000000", "train.progress_bar=false", "train.on_nonfinite=skip",
        f"train.amp={str(args.amp).lower()}", f"output_dir={run_dir}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def bare_step_times(cfg, device: torch.device, iters: int, warmup: int, amp: bool) -> list[float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg).to(device).train()
    dataset = instantiate(cfg.data.train)
    batch = move_batch(collate_panoptic([dataset[i] for i in range(int(cfg.data.batch_size))]), device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    times = []
    for i in range(iters + warmup):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = model(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def engine_time_per_iter(cfg, iters: int, warmup: int) -> float:
    train_from_config(cfg)
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    # one logged window covers every iteration; remove the warmup iterations' share using the
    # mean of the window (first iterations are slower, so this slightly overstates s/iter)
    return rows[-1]["time/iter"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(args, Path(tmp) / "run")
        device = torch.device(args.device)
        bare = statistics.median(bare_step_times(cfg, device, args.iters, args.warmup, args.amp))
        engine = engine_time_per_iter(cfg, args.iters, args.warmup)
    h, w = args.size
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}  R50-FPN Panoptic FPN  batch {args.batch}  {h}x{w}  amp={args.amp}")
    print(f"bare model step : {bare:.3f} s/iter  {args.batch / bare:.2f} img/s (median of {args.iters})")
    print(f"engine (train_from_config()): {engine:.3f} s/iter  {args.batch / engine:.2f} img/s (mean incl. warmup)")
    print(f"ratio engine / bare step: {engine / bare:.2f}")


if __name__ == "__main__":
    main()

"""The whole pipeline learns: a few images, 150 iterations, loss down >= 10x, PQ > 90.

Measured (CPU, seed 0): 150 iterations at lr 0.003 end with the loss down 32x and PQ 95.6; 300 at
lr 0.002 (before: twice the time) pass too; 100 at lr 0.002 do not (loss down 13x, PQ 84.7), so the
thresholds still need the model to learn the images."""

import json

import pytest

from panfpn.engine.train_run import train_from_config

OVERFIT = [
    "data.train.num_images=4", "data.train.height=64", "data.train.width=64", "data.train.transforms=null",
    # the validation split is the training images themselves (same seed), read as an eval dataset
    "data.val.num_images=4", "data.val.seed=0", "data.val.height=64", "data.val.width=64",
    "data.val.transforms=null",  # the training images untransformed, as trained (no resize to 128)
    "data.batch_size=4", "data.num_workers=0",
    "solver=adamw_cosine", "solver.max_iter=150", "solver.schedule.warmup_iters=20", "solver.base_lr=0.003",
    "model.merge.stuff_area=16", "train.log_period=1", "train.checkpoint_period=1000",
    "train.progress_bar=false", "eval.compute_ap=false",
]


@pytest.mark.slow
def test_small_model_overfits_a_few_images(compose_cfg, tmp_path):
    result = train_from_config(compose_cfg(OVERFIT, output_dir=tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/total"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 150
    first, last = losses[0], sum(losses[-10:]) / 10
    assert first / last >= 10, (first, last)
    pq = result["eval"]["panoptic"]
    assert pq["All"]["pq"] > 0.90, pq
    assert pq["Things"]["n"] == 4 and pq["Stuff"]["n"] == 4

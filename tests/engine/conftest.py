"""Compose the project's hydra config with tiny CPU overrides, as the tools would."""

from pathlib import Path

import pytest

from config_helpers import compose_config

# Small enough to train a few iterations in seconds on one CPU thread.
TINY = [
    "data.train.num_images=8", "data.train.height=64", "data.train.width=64",
    "data.train.transforms.transforms.0.short_edge_lengths=[64]",
    "data.train.transforms.transforms.0.max_size=128",
    "data.val.num_images=3", "data.val.height=64", "data.val.width=64",
    "data.batch_size=2", "data.num_workers=0",
    "solver=synthetic_sgd", "solver.max_iter=4", "solver.schedule.steps=[3]", "solver.schedule.warmup_iters=2",
    "train.log_period=1", "train.checkpoint_period=2", "train.progress_bar=false",
    "eval.max_images=2",
]


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """model_final.pth of one tiny training (TINY, no evaluation), trained once per session: read it only."""
    from panfpn.engine.train_run import train_from_config

    run_dir = tmp_path_factory.mktemp("tiny_train")
    train_from_config(compose_config([*TINY, "train.eval_period=-1"], output_dir=run_dir))
    return run_dir / "model_final.pth"


@pytest.fixture
def tiny_args():
    return list(TINY)


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides, run_dir=None):
        return compose_config([*TINY, *overrides], output_dir=run_dir or tmp_path / "run")
    return make

"""Evaluate a checkpoint: `python tools/eval.py weights=path/to/model.pth [data=... data.root=...]`.

A panfpn checkpoint brings its own model, labels and test transform (command-line `model.*`
overrides win; `model_from_checkpoint=false` uses the config's); see panfpn/engine/inference_model.py.
"""

import hydra
from omegaconf import DictConfig

from panfpn.engine.eval_run import evaluate_from_config


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate_from_config(cfg)


if __name__ == "__main__":
    main()

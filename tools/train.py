"""Train Panoptic FPN: `python tools/train.py [experiment=...] [key=value ...]` (torchrun for DDP)."""

import hydra
from omegaconf import DictConfig

from panfpn.engine.trainer import train


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = train(cfg)
    if result["eval"] is not None:
        from panfpn.engine.evaluator import format_results

        print(format_results(result["eval"]))


if __name__ == "__main__":
    main()

"""Train Panoptic FPN: `python tools/train.py [experiment=...] [key=value ...]` (torchrun for DDP).

Exit status: 0 when training ran to solver.max_iter; 128 + signal (SIGTERM 143, SIGINT 130) when a
signal stopped it after saving a checkpoint (continue with resume=true); 1 on an error.
"""

import sys

import hydra
from omegaconf import DictConfig

from panfpn.engine.train_run import train_from_config


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = train_from_config(cfg)
    if result["interrupted"]:
        print(f"training interrupted by signal {result['signal']} at iteration {result['iteration']}; "
              f"checkpoint {result['checkpoint']} (continue with resume=true)", file=sys.stderr)
        sys.exit(128 + int(result["signal"]))
    if result["eval"] is not None:
        from panfpn.engine.eval_loop import format_results

        print(format_results(result["eval"]))


if __name__ == "__main__":
    main()

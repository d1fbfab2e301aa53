"""Merge saved predictions of two networks into COCO panoptic:
`python tools/merge.py merge.semantic_dir=sem/ merge.instances_json=instances.json merge.images_json=panoptic_val.json`.

Semantic label PNGs (dataset category ids; or `merge.semantic_json=`, a COCO semantic results JSON)
+ a COCO results JSON with RLE masks and scores -> COCO-panoptic PNGs + JSON
(`merge.rules=textbook|detectron2`, single fields overridden by `merge.score_thresh=` ...;
`merge.workers=`, `device=`); `merge.eval_gt_json=` also scores the result with our PQ. See panfpn/engine/merge_run.py and docs/merge.md.

Start-up: on the CPU nothing imports torch. With `merge.output_dir=` given and only `key=value`
overrides (no `hydra.*` key, no flag), the config is read once and the log goes to the console
only: no run directory (`.hydra/`, `merge.log`) is made, and the merge starts ~0.3 s sooner
(`@hydra.main` composes the config twice and sets up the run directory; bench/RESULTS.md). When
those overrides are all `merge.*` / `device` keys, config.yaml alone is read
(panfpn/engine/merge_tool/plain_config.py), else the config is composed with hydra's compose API.
Any other command line runs through `@hydra.main` as before. A config error (ConfigError: a bad
key, a typed key it never reads such as `eval.batch_size=`, an input file it cannot use, a refused
output folder) prints its message and exits 2.
"""

import logging
import sys
from pathlib import Path

from panfpn.utils.stop_signals import stop_signals

STOP = stop_signals("tools/merge.py")  # first: SIGTERM / SIGINT exit 143 / 130 with a message (docs/training.md)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from panfpn.engine.config.misspelt import refuse_misspelt_keys  # noqa: E402
from panfpn.engine.merge_run import SKIPPED_FILE, merge_from_config  # noqa: E402
from panfpn.engine.merge_tool.plain_config import plain_merge_config  # noqa: E402
from panfpn.engine.merge_tool.unread import refuse_unread_keys  # noqa: E402
from panfpn.engine.tool_errors import error_line  # noqa: E402
from panfpn.utils.errors import ConfigError  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    merge_or_exit(cfg, list(HydraConfig.get().overrides.task))


def merge_or_exit(cfg: DictConfig, overrides: list[str]) -> None:
    """The merge job; a ConfigError (an input or setting to change, a typed key it never reads in
    ``overrides``): its message, exit 2; no image merged although there were inputs (every one
    skipped): the count, exit 1."""
    try:
        with STOP:
            refuse_unread_keys(overrides)  # e.g. eval.batch_size=8: another tool's key
            summary = merge_from_config(cfg)
    except ConfigError as err:
        print(error_line("merge", err), file=sys.stderr)
        sys.exit(2)
    if summary["merged"] == 0 and summary["skipped"]:
        print(f"tools/merge.py: no image merged: {len(summary['skipped'])} skipped, the reasons in "
              f"{Path(summary['json']).parent / SKIPPED_FILE}", file=sys.stderr)
        sys.exit(1)


def plain_overrides(argv: list[str]) -> bool:
    """Whether ``argv`` is only ``key=value`` config overrides, one of them a non-empty
    ``merge.output_dir`` (so the job never needs hydra's run directory)."""
    if any(a.startswith("-") or "=" not in a or a.lstrip("+~").startswith("hydra") for a in argv):
        return False
    out = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] == "merge.output_dir"]
    return bool(out) and out[-1] not in ("", "null", "None")


def compose_and_merge(argv: list[str]) -> None:
    """The job of :func:`main` on the config read once from ``argv`` (config.yaml alone when only
    merge.* / device keys are overridden, else composed), logging to the console in hydra's format."""
    from hydra import compose, initialize_config_dir

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    cfg = plain_merge_config(CONFIG_DIR, argv)
    if cfg is None:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=argv)
    merge_or_exit(cfg, argv)


if __name__ == "__main__":
    refuse_misspelt_keys("merge", sys.argv[1:])  # merge.wrkers=2: one line, exit 2, not hydra's block or traceback
    if plain_overrides(sys.argv[1:]):
        compose_and_merge(sys.argv[1:])
    else:
        main()

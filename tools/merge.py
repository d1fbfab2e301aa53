"""Merge saved predictions of two networks into COCO panoptic:
`python tools/merge.py merge.semantic_dir=sem/ merge.instances_json=instances.json merge.images_json=panoptic_val.json`.

Semantic label PNGs (dataset category ids; or `merge.semantic_json=`, a COCO semantic results JSON)
+ a COCO results JSON with RLE masks and scores -> COCO-panoptic PNGs + JSON
(`merge.rules=textbook|detectron2`, single fields overridden by `merge.score_thresh=` ...;
`merge.workers=`, `device=`); `merge.eval_gt_json=` also scores the result with our PQ. See panfpn/engine/merge_run.py and docs/merge.md.
"""

import hydra
from omegaconf import DictConfig

from panfpn.engine.merge_run import merge_from_config


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    merge_from_config(cfg)


if __name__ == "__main__":
    main()

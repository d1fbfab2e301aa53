"""Export a model: `python tools/export.py weights=model.pth [export.scope=pipeline|network]`.

Default (`export.scope=pipeline`): the whole pipeline, decoded uint8 image in, panoptic result out,
as one ONNX graph `<export.output or run dir/model>.onnx` (+ `.json`), run by
panfpn/deploy/onnx_runner.py without panfpn or torch (docs/deployment.md; Panoptic FPN and
Mask2Former; `export.merge` picks Panoptic FPN's merge rules). `export.scope=network`: the network
only (`.onnx` / `.pt2`, `export.format`; Panoptic FPN and Mask2Former), run with the eager remainder
(panfpn/modeling/panoptic_fpn/export.py). A panfpn checkpoint brings its own model config
(see panfpn/engine/inference_model.py). A config error (ConfigError) prints its message and exits 2.
"""

import sys

import hydra
from omegaconf import DictConfig

from panfpn.engine.export_run import export_from_config
from panfpn.utils.errors import ConfigError


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        export_from_config(cfg)
    except ConfigError as err:  # a config to change (e.g. export.merge for Mask2Former): the message, exit 2
        print(f"tools/export.py: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

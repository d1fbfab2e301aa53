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

from panfpn.utils.stop_signals import stop_signals

STOP = stop_signals("tools/export.py")  # first: SIGTERM / SIGINT exit 143 / 130 with a message (docs/training.md)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from panfpn.engine.export_run import export_from_config  # noqa: E402
from panfpn.utils.errors import ConfigError  # noqa: E402


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        with STOP:
            export_from_config(cfg)
    except ConfigError as err:  # a config to change (e.g. export.merge for Mask2Former): the message, exit 2
        print(f"tools/export.py: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Export a model: `python tools/export.py weights=model.pth [export.scope=pipeline|network]`.

Default (`export.scope=pipeline`): the whole pipeline, decoded uint8 image in, panoptic result out,
as one ONNX graph `<export.output or run dir/model>.onnx` (+ `.json`), run by
panfpn/deploy/onnx_runner.py without panfpn or torch (docs/deployment.md; `export.merge` picks the
merge rules). `export.scope=network`: the network only (`.onnx` / `.pt2`, `export.format`), run with
the eager remainder (panfpn/modeling/panoptic_fpn/export.py). A panfpn checkpoint brings its own model config
(see panfpn/engine/inference_model.py).
"""

import hydra
from omegaconf import DictConfig

from panfpn.engine.export_run import export_from_config


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    export_from_config(cfg)


if __name__ == "__main__":
    main()

"""Export the network: `python tools/export.py weights=model.pth [export.format=onnx|torch_export|both]`.

Writes `<export.output or run dir/model>.onnx` / `.pt2` / `.json`; see panfpn/engine/export_run.py
and panfpn/modeling/panoptic_fpn/export.py (what is exported, and how to run it with the eager remainder).
A panfpn checkpoint brings its own model config (see panfpn/engine/inference_model.py).
"""

import hydra
from omegaconf import DictConfig

from panfpn.engine.export_run import export_from_config


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    export_from_config(cfg)


if __name__ == "__main__":
    main()

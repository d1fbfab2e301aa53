"""Export a model: `python tools/export.py weights=model.pth [export.scope=pipeline|network]`.

Default (`export.scope=pipeline`): the whole pipeline, decoded uint8 image in, panoptic result out,
as one ONNX graph `<export.output or run dir/model>.onnx` (+ `.json`), run by
panfpn/deploy/onnx_runner.py without panfpn or torch (docs/deployment.md; Panoptic FPN and
Mask2Former; `export.merge` picks Panoptic FPN's merge rules). `export.scope=network`: the network
only (`.onnx` / `.pt2`, `export.format`; Panoptic FPN and Mask2Former), run with the eager remainder
(panfpn/modeling/panoptic_fpn/export.py). A panfpn checkpoint brings its own model config
(see panfpn/engine/inference_model.py). A known input error (ConfigError, WeightsError, a missing
file: panfpn/engine/tool_errors.py) prints `tools/export.py: <message>` and exits 2.
"""

from panfpn.utils.stop_signals import stop_signals

STOP = stop_signals("tools/export.py")  # first: SIGTERM / SIGINT exit 143 / 130 with a message (docs/training.md)

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from panfpn.engine.export_run import export_from_config  # noqa: E402
from panfpn.engine.config.misspelt import refuse_misspelt_keys  # noqa: E402
from panfpn.engine.record_overrides import force_recorded_model_keys  # noqa: E402
from panfpn.engine.tool_errors import input_errors_exit_2  # noqa: E402


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
@input_errors_exit_2("export")  # a config to change (export.merge for Mask2Former), a missing file: exit 2
def main(cfg: DictConfig) -> None:
    with STOP:
        export_from_config(cfg)


if __name__ == "__main__":
    refuse_misspelt_keys("export", sys.argv[1:])  # solver.max_itr=3: one line, exit 2, not hydra's block
    # model.* keys of the checkpoint's recorded model that the config's model lacks (a Mask2Former
    # checkpoint under the default Panoptic FPN config): as ++ overrides (panfpn/engine/record_overrides.py)
    sys.argv[1:] = force_recorded_model_keys(sys.argv[1:])
    main()

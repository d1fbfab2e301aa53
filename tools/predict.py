"""Predict on image files: `python tools/predict.py weights=model.pth predict.input=path/to/images`.

The input is an image file, a folder or a glob; results (panoptic PNGs + JSON, overlays) go to
`predict.output_dir` (default: the run dir). A panfpn checkpoint brings its own model, labels and
test transform (see panfpn/engine/inference_model.py). See panfpn/engine/predict_run.py.
"""

from panfpn.utils.stop_signals import stop_signals

STOP = stop_signals("tools/predict.py")  # first: SIGTERM / SIGINT exit 143 / 130 with a message (docs/training.md)

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from panfpn.engine.config.misspelt import refuse_misspelt_keys  # noqa: E402
from panfpn.engine.predict_run import nothing_predicted, predict_from_config  # noqa: E402
from panfpn.engine.record_overrides import force_recorded_model_keys  # noqa: E402
from panfpn.engine.tool_errors import input_errors_exit_2  # noqa: E402


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
@input_errors_exit_2("predict")  # a known input error: one line, exit 2 (panfpn/engine/tool_errors.py)
def main(cfg: DictConfig) -> None:
    with STOP:
        summary = predict_from_config(cfg)
    failed_all = nothing_predicted(summary)
    if failed_all:  # every input unreadable: not a success (as tools/merge.py's "no image merged")
        print(f"tools/predict.py: {failed_all}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    refuse_misspelt_keys("predict", sys.argv[1:])  # solver.max_itr=3: one line, exit 2, not hydra's block
    # model.* keys of the checkpoint's recorded model that the config's model lacks (a Mask2Former
    # checkpoint under the default Panoptic FPN config): as ++ overrides (panfpn/engine/record_overrides.py)
    sys.argv[1:] = force_recorded_model_keys(sys.argv[1:])
    main()

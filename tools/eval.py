"""Evaluate a checkpoint: `python tools/eval.py weights=path/to/model.pth [data=... data.root=...]`.

A panfpn checkpoint brings its own model, labels and test transform (command-line `model.*`
overrides win; `model_from_checkpoint=false` uses the config's); see panfpn/engine/inference_model.py.
"""

from panfpn.utils.stop_signals import stop_signals

STOP = stop_signals("tools/eval.py")  # first: SIGTERM / SIGINT exit 143 / 130 with a message (docs/training.md)

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from panfpn.engine.eval_run import evaluate_from_config  # noqa: E402
from panfpn.engine.config.misspelt import refuse_misspelt_keys  # noqa: E402
from panfpn.engine.record_overrides import force_recorded_model_keys  # noqa: E402
from panfpn.engine.tool_errors import input_errors_exit_2  # noqa: E402


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
@input_errors_exit_2("eval")  # a known input error: one line, exit 2 (panfpn/engine/tool_errors.py)
def main(cfg: DictConfig) -> None:
    with STOP:
        evaluate_from_config(cfg)


if __name__ == "__main__":
    refuse_misspelt_keys("eval", sys.argv[1:])  # solver.max_itr=3: one line, exit 2, not hydra's block
    # model.* keys of the checkpoint's recorded model that the config's model lacks (a Mask2Former
    # checkpoint under the default Panoptic FPN config): as ++ overrides (panfpn/engine/record_overrides.py)
    sys.argv[1:] = force_recorded_model_keys(sys.argv[1:])
    main()

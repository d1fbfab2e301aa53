"""A Mask2Former checkpoint's own model keys set on the command line of the tools, under the default
(Panoptic FPN) config: docs/checkpoints.md says explicit ``model.*`` overrides win over the record.
Before panfpn/engine/record_overrides.py hydra refused ``model.inference.object_mask_threshold=0.0``
(``Key 'inference' is not in struct``) before the tool ran."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from config_helpers import compose_config
from process_helpers import run as run_in_group

from panfpn.engine.job_setup import build_metadata
from panfpn.engine.model_spec import describe_model
from panfpn.engine.record_overrides import force_recorded_model_keys
from panfpn.modeling.build import build_model

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.matcher.num_points=64", "model.predictor.num_queries=4", "model.predictor.dec_layers=1",
         "model.pixel_decoder.num_layers=1"]


def _mask2former_checkpoint(path: Path) -> Path:
    """A checkpoint as training writes its model part: weights + the model record."""
    cfg = compose_config(["experiment=synthetic_mask2former", *SMALL], output_dir=path.parent / "run")
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), **describe_model(cfg, build_metadata(cfg), model)}, path)
    return path


def test_recorded_keys_become_forced_overrides_and_nothing_else(tmp_path):
    ckpt = _mask2former_checkpoint(tmp_path / "m2f.pth")
    args = [f"weights={ckpt}", "model.inference.object_mask_threshold=0.3", "model.inference.object_mask_thresh=0.3",
            "+model.inference.topk_instances=5", "data.val.num_images=2", "-m"]
    assert force_recorded_model_keys(args) == [
        args[0], "++model.inference.object_mask_threshold=0.3", *args[2:]]  # a typo stays hydra's error
    for extra in ("model=mask2former_small", "model_from_checkpoint=false"):  # the config's model is built
        assert force_recorded_model_keys([*args, extra]) == [*args, extra]
    detectron2 = tmp_path / "model_final.pkl"
    detectron2.write_bytes(b"not read")
    assert force_recorded_model_keys([f"weights={detectron2}", args[1]]) == [f"weights={detectron2}", args[1]]
    other = _mask2former_checkpoint(tmp_path / "other.pth")  # a multirun over checkpoints: each has the key
    swept = [f"weights={ckpt},{other}", "model.inference.overlap_threshold=0.1,0.2", "-m"]
    assert force_recorded_model_keys(swept) == [swept[0], "++" + swept[1], "-m"]
    assert force_recorded_model_keys([f"weights={ckpt},{detectron2}", swept[1]]) == [f"weights={ckpt},{detectron2}", swept[1]]


def test_predict_takes_a_mask2former_checkpoints_threshold_under_the_default_config(tmp_path):
    ckpt = _mask2former_checkpoint(tmp_path / "m2f.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "pred"
    cmd = [sys.executable, str(ROOT / "tools" / "predict.py"), f"weights={ckpt}", f"predict.input={tmp_path / 'a.png'}",
           f"predict.output_dir={out}", "device=cpu", "model.inference.object_mask_threshold=0.0",
           "model.inference.overlap_threshold=0.0", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = run_in_group(cmd, timeout=120, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert "model.inference.object_mask_threshold: checkpoint 0.8, used 0.0" in log
    segments = json.loads((out / "panoptic.json").read_text())["annotations"][0]["segments_info"]
    assert segments, "thresholds 0: the image has segments (the recorded 0.8 would keep none of 4 random queries)"


def test_a_normalisation_override_that_the_checkpoint_replaces_is_refused(tmp_path):
    """``model.pixel_mean=[0,0,0]`` with a checkpoint: the checkpoint's pixel_mean buffer is loaded over
    it. Before, the log said 'model.pixel_mean: checkpoint [123.675, ...], used [0, 0, 0]' and the outputs
    were those of the recorded mean; now a ConfigError names the key. The recorded value itself is fine."""
    import pytest

    from panfpn.engine.inference_model import build_inference_model
    from panfpn.utils.errors import ConfigError

    ckpt = _mask2former_checkpoint(tmp_path / "m2f.pth")
    for value, refused in (("[0,0,0]", True), ("[123.675,116.28,103.53]", False)):
        override = f"model.pixel_mean={value}"
        cfg = compose_config([f"weights={ckpt}", override], output_dir=tmp_path / "eval")
        if refused:
            with pytest.raises(ConfigError, match=r"model\.pixel_mean=\[0\.0, 0\.0, 0\.0\] is not used: the weights .*m2f\.pth"):
                build_inference_model(cfg, [override])
        else:
            built = build_inference_model(cfg, [override])
            assert torch.allclose(built.model.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))


def test_the_config_models_key_on_another_models_checkpoint_is_a_config_error(tmp_path):
    """``model.merge.score_thresh=0.3`` (Panoptic FPN's, docs/checkpoints.md's example) with a Mask2Former
    checkpoint under the default config: hydra takes it (the config's model has it), the record took it
    too and Mask2Former's constructor failed (TypeError 'unexpected keyword argument merge', exit 1).
    Now a ConfigError names the key and both models; the same key of the record's model still works."""
    import pytest

    from panfpn.engine.inference_model import build_inference_model
    from panfpn.utils.errors import ConfigError

    ckpt = _mask2former_checkpoint(tmp_path / "m2f.pth")
    cfg = compose_config([f"weights={ckpt}", "model.merge.score_thresh=0.3"], output_dir=tmp_path / "eval")
    with pytest.raises(ConfigError, match=r"model\.merge\.score_thresh=0\.3: model\.merge is a key of the config's "
                                          r"model \(.*PanopticFPN\), not of the model recorded in .*Mask2Former"):
        build_inference_model(cfg, ["model.merge.score_thresh=0.3"])
    cfg = compose_config([f"weights={ckpt}", "++model.inference.topk_instances=7"], output_dir=tmp_path / "eval")
    assert build_inference_model(cfg, ["++model.inference.topk_instances=7"]).model.inference_config.topk_instances == 7


def test_training_refuses_a_normalisation_override_that_its_weights_replace(tiny_cfg, tmp_path, monkeypatch):
    """tools/train.py weights=<checkpoint> model.pixel_mean=[0,0,0]: the checkpoint's pixel_mean buffer
    was loaded over the override and training ran with the recorded mean, a log note only. Now the
    job stops before its first step naming the key; the recorded value itself is accepted."""
    import pytest

    from panfpn.engine import train_run
    from panfpn.engine.train_run import train_from_config
    from panfpn.utils.errors import ConfigError

    first = tmp_path / "first"
    train_from_config(tiny_cfg("solver.max_iter=1", "solver.schedule.steps=[]", "train.eval_period=-1",
                               run_dir=first))
    ckpt = first / "model_final.pth"
    for value, refused in (("[0,0,0]", True), ("[123.675,116.28,103.53]", False)):
        override = f"model.pixel_mean={value}"
        monkeypatch.setattr(train_run, "command_line_overrides", lambda o=override: [f"weights={ckpt}", o])
        run_dir = tmp_path / ("refused" if refused else "accepted")
        cfg = tiny_cfg(f"weights={ckpt}", override, "solver.max_iter=1", "solver.schedule.steps=[]",
                       "train.eval_period=-1", run_dir=run_dir)
        if refused:
            with pytest.raises(ConfigError, match=r"model\.pixel_mean=\[0\.0, 0\.0, 0\.0\] is not used: the weights"):
                train_from_config(cfg)
            assert not (run_dir / "model_final.pth").exists()
        else:
            train_from_config(cfg)
            assert (run_dir / "model_final.pth").is_file()


def test_a_model_key_with_an_exported_pipeline_gets_the_tools_refusal_not_hydras(tmp_path):
    """``tools/predict.py weights=model.onnx predict.backend=onnxruntime model.inference.object_mask_threshold=0.5``
    (a Mask2Former graph's key, under the default Panoptic FPN config): before, hydra's ``Key 'inference' is
    not in struct`` (exit 1). Now the tool's own refusal names the key as typed: the graph fixed it at export."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read: the override is refused first")
    key = "model.inference.object_mask_threshold=0.5"
    assert force_recorded_model_keys([f"weights={onnx}", key, "model.merge.score_thresh=0.1", "device=cpu"]) == [
        f"weights={onnx}", "++" + key, "++model.merge.score_thresh=0.1", "device=cpu"]
    cmd = [sys.executable, str(ROOT / "tools" / "predict.py"), f"weights={onnx}", "predict.backend=onnxruntime",
           f"predict.input={tmp_path}", f"predict.output_dir={tmp_path / 'pred'}", key,
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = run_in_group(cmd, timeout=120, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not in struct" not in proc.stderr
    assert f"fixed by tools/export.py: {key} would have no effect" in proc.stderr.splitlines()[-1]

"""Every engine key (train, eval, solver, data, predict, export) is checked for type and range before
any work, with one message naming it."""

import re

import pytest

from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.train_run import train_from_config

# (override, key, what the message must say it wants, the value as the message shows it)
BAD = [
    ("solver.max_iter=abc", "solver.max_iter", "an integer >= 1", "'abc' (str)"),
    ("solver.max_iter=2.5", "solver.max_iter", "an integer >= 1", "2.5 (float)"),
    ("solver.max_iter=true", "solver.max_iter", "an integer >= 1", "True (bool)"),
    ("solver.max_iter=0", "solver.max_iter", "an integer >= 1", "0 (int)"),
    ("data.batch_size=-1", "data.batch_size", "an integer >= 1", "-1 (int)"),
    ("data.num_workers=-1", "data.num_workers", "an integer >= 0", "-1 (int)"),
    ("train.checkpoint_period=0", "train.checkpoint_period", "an integer >= 1", "0 (int)"),
    ("train.log_period=0", "train.log_period", "an integer >= 1", "0 (int)"),
    ("train.eval_period=-2", "train.eval_period", "an integer >= -1", "-2 (int)"),
    ("train.eval_period=1.5", "train.eval_period", "an integer >= -1", "1.5 (float)"),
    ("resume=maybe", "resume", "a boolean (true/false)", "'maybe' (str)"),
    ("resume=1", "resume", "a boolean (true/false)", "1 (int)"),
    ("seed=1.5", "seed", "an integer", "1.5 (float)"),
    ("train.amp=yes", "train.amp", "a boolean (true/false)", "'yes' (str)"),
    ("train.progress_bar=0", "train.progress_bar", "a boolean (true/false) or 'auto'", "0 (int)"),
    ("eval.progress_bar=yes", "eval.progress_bar", "a boolean (true/false) or 'auto'", "'yes' (str)"),
    ("train.objective_direction=up", "train.objective_direction", "one of ['maximize', 'minimize']", "'up' (str)"),
    ("train.clip_grad_norm=0", "train.clip_grad_norm", "null or a finite number > 0", "0 (int)"),
    ("train.clip_grad_norm=abc", "train.clip_grad_norm", "null or a finite number > 0", "'abc' (str)"),
    ("train.num_vis_images=-1", "train.num_vis_images", "an integer >= 0", "-1 (int)"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints", "null or an integer >= 1", "0 (int)"),
    ("train.max_consecutive_nonfinite=0", "train.max_consecutive_nonfinite", "an integer >= 1", "0 (int)"),
    ("train.max_skipped_fraction=1.5", "train.max_skipped_fraction",
     "null or a finite number >= 0 and <= 1", "1.5 (float)"),
    ("train.on_nonfinite=ignore", "train.on_nonfinite", "one of ['raise', 'skip']", "'ignore' (str)"),
    ("train.amp_dtype=fp8", "train.amp_dtype", "one of ['bfloat16', 'float16']", "'fp8' (str)"),
    ("eval.max_images=0", "eval.max_images", "null or an integer >= 1", "0 (int)"),
    ("eval.save_predictions=maybe", "eval.save_predictions", "a boolean (true/false)", "'maybe' (str)"),
    ("eval.compute_ap=2", "eval.compute_ap", "a boolean (true/false)", "2 (int)"),
    ("eval.batch_size=0", "eval.batch_size", "an integer >= 1", "0 (int)"),
    ("eval.save_overlays=-1", "eval.save_overlays", "an integer >= 0", "-1 (int)"),
    ("solver.base_lr=0", "solver.base_lr", "a finite number > 0", "0 (int)"),
    ("solver.base_lr=abc", "solver.base_lr", "a finite number > 0", "'abc' (str)"),
    ("solver.base_lr=nan", "solver.base_lr", "a finite number > 0", "nan (float)"),
    ("solver.ims_per_batch=0", "solver.ims_per_batch", "an integer >= 1", "0 (int)"),
    ("solver.weight_decay=-0.1", "solver.weight_decay", "a finite number >= 0", "-0.1 (float)"),
    ("data.skip_bad_images=maybe", "data.skip_bad_images", "a boolean (true/false)", "'maybe' (str)"),
    # the tools' keys (predict, export) and run-wide ones
    ("predict.batch_size=0", "predict.batch_size", "an integer >= 1", "0 (int)"),
    ("predict.num_workers=-1", "predict.num_workers", "an integer >= 0", "-1 (int)"),
    ("predict.num_workers=1.5", "predict.num_workers", "an integer >= 0", "1.5 (float)"),
    ("predict.write_threads=-1", "predict.write_threads", "an integer >= 0", "-1 (int)"),
    ("predict.overwrite=maybe", "predict.overwrite", "a boolean (true/false)", "'maybe' (str)"),
    ("predict.overlay=1", "predict.overlay", "a boolean (true/false)", "1 (int)"),
    ("predict.overlay_alpha=1.5", "predict.overlay_alpha", "a finite number >= 0 and <= 1", "1.5 (float)"),
    ("predict.overlay_format=gif", "predict.overlay_format", "one of ['jpg', 'png']", "'gif' (str)"),
    ("predict.recursive=yes", "predict.recursive", "a boolean (true/false)", "'yes' (str)"),
    ("predict.json_every=0", "predict.json_every", "an integer >= 1", "0 (int)"),
    ("predict.semantic=2", "predict.semantic", "a boolean (true/false)", "2 (int)"),
    ("predict.image_id='[a-z]+'", "predict.image_id",
     "one of ['auto', 'stem', 'cityscapes', 'coco_int'] or a regular expression with a group (the id), "
     "e.g. '(.+)_leftImg8bit'", "'[a-z]+' (str)"),
    ("predict.input=[]", "predict.input", "null or a path or glob, or a non-empty list of them", "[] (list)"),
    ("export.format=tflite", "export.format", "one of ['both', 'onnx', 'torch_export']", "'tflite' (str)"),
    ("export.height=100", "export.height", "an integer >= 96 and <= 4096, a multiple of 32", "100 (int)"),
    ("export.width=64", "export.width", "an integer >= 96 and <= 4096, a multiple of 32", "64 (int)"),
    ("export.opset=16", "export.opset", "an integer >= 17", "16 (int)"),
    ("export.dynamic=maybe", "export.dynamic", "a boolean (true/false)", "'maybe' (str)"),
    ("export.verify=0", "export.verify", "a boolean (true/false)", "0 (int)"),
    ("device=tpu", "device", "'auto', 'cpu', 'cuda' or 'cuda:<index>'", "'tpu' (str)"),
    ("eval.save_semantic=maybe", "eval.save_semantic", "a boolean (true/false)", "'maybe' (str)"),
    ("weights_partial=maybe", "weights_partial", "a boolean (true/false)", "'maybe' (str)"),
]


@pytest.mark.parametrize("override,key,wants,shown", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_config_error_naming_key_and_value(compose_cfg, tmp_path, override, key, wants, shown):
    cfg = compose_cfg([override], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == f"config key '{key}' must be {wants}, got {shown}"


@pytest.mark.parametrize("override", [
    "train.clip_grad_norm=1", "train.clip_grad_norm=0.5", "train.keep_checkpoints=2", "eval.max_images=3",
    "train.eval_period=-1", "solver.base_lr=1", "solver.weight_decay=0", "train.max_skipped_fraction=null",
    "data.skip_bad_images=true", "seed=-3", "resume=true",
])
def test_good_values_pass(compose_cfg, tmp_path, override):
    validate_config(compose_cfg([override], output_dir=tmp_path))


def test_a_missing_engine_key_is_named(compose_cfg, tmp_path):
    cfg = compose_cfg(["~train.log_period"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape("config key 'train.log_period' is missing")):
        validate_config(cfg)


@pytest.mark.parametrize("override", ["solver.max_iter=2.5", "train.checkpoint_period=0", "resume=maybe"])
def test_train_refuses_before_any_work(tiny_cfg, tmp_path, override):
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0])):
        train_from_config(tiny_cfg(override))
    assert not (tmp_path / "run").exists()  # no run dir, no log, no checkpoint

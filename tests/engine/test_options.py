"""The predict and export options go through the one config table: bad values and unknown keys
name the key, the defaults come from configs/config.yaml only, and the jobs check the whole config."""

import dataclasses
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.export_run import ExportOptions, export_from_config
from panfpn.engine.predict_run import PredictOptions, predict_from_config, predict_options

YAML = Path(__file__).resolve().parents[2] / "configs" / "config.yaml"

@pytest.mark.parametrize("override,message", [
    ("++predict.overlay_fromat=png", "unknown config key 'predict.overlay_fromat'; did you mean 'overlay_format'?"),
    ("++export.opsett=18", "unknown config key 'export.opsett'; did you mean 'opset'?"),
])
def test_unknown_key_gives_did_you_mean(compose_cfg, tmp_path, override, message):
    cfg = compose_cfg([override, "predict.input=x.jpg"], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == message
    section = override[2:].split(".")[0]
    with pytest.raises(ConfigError, match=re.escape(message)):  # the job's own reader: the same message
        predict_options(cfg) if section == "predict" else ExportOptions.from_config(cfg)


@pytest.mark.parametrize("good,bad", [
    ("predict.image_id='(?P<id>.+)_photo'", "predict.image_id='.+_photo'"),  # a regex needs its group
    ("predict.input=[a.jpg,b/]", "predict.input=[a.jpg,'']"),
    ("predict.overlay_alpha=1", "predict.overlay_alpha=1.01"),
    ("export.height=96", "export.height=64"),
    ("export.width=4096", "export.width=4128"),
    ("device=cuda:1", "device=cuda:x"),
])
def test_the_boundary_between_good_and_bad_values(compose_cfg, tmp_path, good, bad):
    validate_config(compose_cfg([good], output_dir=tmp_path))
    with pytest.raises(ConfigError, match=re.escape(f"config key '{bad.split('=')[0]}' must be")):
        validate_config(compose_cfg([bad], output_dir=tmp_path))


def test_options_have_no_defaults_of_their_own_and_take_the_yamls_values(compose_cfg, tmp_path):
    for cls in (PredictOptions, ExportOptions):
        defaults = {f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        assert defaults == set(), f"{cls.__name__} duplicates configs/config.yaml defaults: {defaults}"
    yaml = OmegaConf.load(YAML)
    cfg = compose_cfg(["predict.input=x.jpg"], output_dir=tmp_path)
    expected = dict(OmegaConf.to_container(yaml.predict), input="x.jpg")
    assert dataclasses.asdict(predict_options(cfg)) == expected
    assert dataclasses.asdict(ExportOptions.from_config(cfg)) == OmegaConf.to_container(yaml.export)


@pytest.mark.parametrize("key", ["predict.num_workers", "export.opset"])
def test_a_key_missing_from_the_section_is_an_error_not_a_hidden_default(compose_cfg, tmp_path, key):
    cfg = compose_cfg([f"~{key}", "predict.input=x.jpg"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}' is missing")):
        validate_config(cfg)
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}' is missing")):
        predict_options(cfg) if key.startswith("predict") else ExportOptions.from_config(cfg)


def test_a_config_without_predict_or_export_sections_still_validates(compose_cfg, tmp_path):
    cfg = compose_cfg(["~predict", "~export"], output_dir=tmp_path)
    validate_config(cfg)  # a training config need not carry the tools' sections
    with pytest.raises(ConfigError, match="config section 'predict' is missing"):
        predict_options(cfg)


def test_predict_job_checks_the_whole_config(tiny_cfg, tmp_path):
    # before any work: the export section's bad value is reported, not just predict's own keys
    cfg = tiny_cfg("predict.input=x.jpg", "export.format=tflite", "weights=model.pth")
    with pytest.raises(ConfigError, match="config key 'export.format'.*'tflite'"):
        predict_from_config(cfg)


@pytest.mark.parametrize("override,match", [
    ("predict.overlay_format=gif", "config key 'predict.overlay_format'.*'gif'"),
    ("device=tpu", "config key 'device'.*'tpu'"),
])
def test_export_job_checks_the_whole_config(tiny_cfg, tmp_path, override, match):
    cfg = tiny_cfg(override, f"export.output={tmp_path / 'net'}")
    with pytest.raises(ConfigError, match=match):
        export_from_config(cfg)
    assert not (tmp_path / "net.json").exists()

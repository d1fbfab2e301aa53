"""Transform parameters of the data configs are checked before anything is built, naming the key."""

from pathlib import Path

import pytest
import torch

from config_helpers import compose_config
from panfpn.data.transforms import check_data_transforms
from panfpn.utils.errors import ConfigError

DATA_CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "data").glob("*.yaml"))


@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_every_shipped_data_config_has_valid_transforms(data):
    check_data_transforms(compose_config([f"data={data}"]))


@pytest.mark.parametrize("overrides,message", [
    (["+data.train.transforms.transforms.0.short_edge_length=[64]"],
     "config key 'data.train.transforms.transforms.0.short_edge_length': ResizeShortestEdge has no parameter "
     "'short_edge_length'; did you mean 'short_edge_lengths'?"),
    (["data.val.transforms._target_=panfpn.data.transforms.ResizeShortestEdg"],
     "did you mean 'panfpn.data.transforms.ResizeShortestEdge'?"),
    (["data.train.transforms.transforms.1.prob=3"],
     "config key 'data.train.transforms.transforms.1': flip prob must be in [0, 1], got 3"),
    (["experiment=coco_r50_lsj_100ep", "data.train.transforms.transforms.0.min_scale=3"],
     "config key 'data.train.transforms.transforms.0': LSJ scales must satisfy 0 < min_scale <= max_scale"),
])
def test_bad_transform_keys_and_values_name_the_config_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_data_transforms(compose_config(overrides))
    assert message in str(err.value)


def test_training_refuses_a_misspelt_transform_before_building_the_model(tmp_path, monkeypatch):
    from panfpn.engine import train_run

    monkeypatch.setattr(train_run, "build_model", lambda cfg: pytest.fail("the model was built first"))
    cfg = compose_config(["+data.train.transforms.transforms.1.probability=0.3"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="RandomHorizontalFlip has no parameter 'probability'"):
        train_run.train_from_config(cfg)


@pytest.mark.parametrize("job", ["eval", "predict"])
def test_eval_and_predict_refuse_a_misspelt_test_transform_before_building_the_model(tmp_path, monkeypatch, job):
    import panfpn.engine.inference_model as im
    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.engine.predict_run import predict_from_config

    monkeypatch.setattr(im, "instantiate_model", lambda cfg: pytest.fail("the model was built first"))
    weights = tmp_path / "unused.pth"  # a file (a missing one is reported before anything else)
    torch.save({"a": torch.zeros(1)}, weights)
    cfg = compose_config(["data.val.transforms._target_=panfpn.data.transforms.ResizeShortestEdg",
                          f"weights={weights}", f"predict.input={tmp_path}"], output_dir=tmp_path)
    run = evaluate_from_config if job == "eval" else predict_from_config
    with pytest.raises(ConfigError, match=r"data\.val\.transforms.*did you mean 'panfpn.data.transforms.ResizeShortestEdge'"):
        run(cfg, overrides=[])

"""One check that a model config (a config's, a checkpoint's recorded one) fits a dataset's
categories: panfpn.modeling.build.check_labels_fit (it replaced data.build.check_metadata_matches
and engine.model_spec.check_labels_fit_model)."""

import re

import pytest
from config_helpers import compose_config
from omegaconf import OmegaConf

from panfpn.data.builtin_meta import coco_panoptic_metadata
from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine.config import ConfigError
from panfpn.engine.job_setup import build_metadata
from panfpn.modeling.build import check_labels_fit
from panfpn.modeling.zoo import counts_metadata, model_config


def _model(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(list(overrides), output_dir="unused").model, resolve=True)


def test_a_fitting_model_passes_and_each_label_key_is_named():
    model = _model()
    check_labels_fit(model, synthetic_metadata(), "of data.metadata")
    check_labels_fit(OmegaConf.create(model), synthetic_metadata(), "of data.metadata")  # a DictConfig too
    for key, value, wants in [("semantic_head", {"num_classes": 4}, 5),
                              ("roi_heads", {"box_head": {"num_classes": 3}}, 4),
                              ("thing_sem_labels", [0], [4])]:
        bad = OmegaConf.to_container(OmegaConf.merge(model, {key: value}))
        with pytest.raises(ConfigError, match=r"model\.(semantic_head|roi_heads\.box_head|thing_sem_labels)"
                                              rf".* but the label metadata of the checkpoint \('synthetic'\) gives {re.escape(str(wants))}"):
            check_labels_fit(bad, synthetic_metadata(), "of the checkpoint")


def test_a_hand_set_count_fails_when_the_metadata_is_built():
    """The data.* counts derive from the categories; one set by hand stops the job."""
    cfg = compose_config(["data.num_sem_classes=4"], output_dir="unused")
    with pytest.raises(ConfigError, match=re.escape("data.num_sem_classes is 4 but the label "
                                                    "metadata of data.metadata ('synthetic') gives 5")):
        build_metadata(cfg)
    cfg = compose_config(["data.thing_sem_labels=[3]"], output_dir="unused")
    with pytest.raises(ConfigError, match=re.escape("data.thing_sem_labels is [3] but")):
        build_metadata(cfg)
    # a model with other head sizes (fine-tuning) is the model's business: trained as configured
    assert build_metadata(compose_config(["model.roi_heads.mask_head.num_classes=6"], output_dir="unused")
                          ).num_thing_classes == 4


def test_other_architectures_keys_are_not_checked():
    check_labels_fit({"_target_": "my.Net", "backbone": {"depth": 50}}, coco_panoptic_metadata(), "here")


def test_the_zoo_derives_counts_through_metadata():
    meta = counts_metadata(2, 3, "all", [0, 3])
    assert (meta.num_thing_classes, meta.num_sem_classes, meta.thing_sem_labels) == (2, 5, [0, 3])
    check_labels_fit(OmegaConf.to_container(model_config("panoptic_fpn_small", 80, 53).model, resolve=True),
                     coco_panoptic_metadata(), "of the zoo")


def test_an_old_checkpoint_with_literal_counts_still_reads(tmp_path):
    """Checkpoints from before the record kept their training config, with the counts as literals
    in data (as the data yamls had them); its model node still resolves and fits the dataset."""
    import torch

    from panfpn.engine.model_spec import read_model_record

    full = compose_config([], output_dir="unused")
    old = OmegaConf.to_container(full, resolve=False)
    old["data"].update(num_thing_classes=4, num_sem_classes=5, thing_sem_labels=[4])
    del old["output_dir"]
    torch.save({"model": {}, "config": OmegaConf.to_yaml(OmegaConf.create(old))}, tmp_path / "old.pth")
    record = read_model_record(tmp_path / "old.pth")
    assert record is not None and record.metadata is None
    assert record.model_config["semantic_head"]["num_classes"] == 5
    check_labels_fit(record.model_config, synthetic_metadata(), "of data.metadata")


def test_a_users_data_yaml_with_literal_counts_still_composes():
    """A copied data yaml of the old style states the counts: they win over the derived ones and
    are checked against its categories."""
    good = compose_config(["data.num_thing_classes=4", "data.num_sem_classes=5", "data.thing_sem_labels=[4]"],
                          output_dir="unused")
    assert build_metadata(good).num_sem_classes == 5 and good.model.semantic_head.num_classes == 5

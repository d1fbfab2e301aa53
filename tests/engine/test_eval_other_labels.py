"""tools/eval.py on a dataset with other categories than the checkpoint's: the error says which data it trained on."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from panfpn.data.metadata import Category, DatasetMetadata
from panfpn.engine.config import ConfigError
from panfpn.engine.model_spec import check_dataset_labels

COCO_LIKE = DatasetMetadata((Category(1, "person", True), Category(184, "tree-merged", False)), name="panoptic_train")
SYNTHETIC = DatasetMetadata((Category(3, "disc", True), Category(101, "grass", False)), name="synthetic")


def test_the_error_names_the_training_data_from_the_run_folders_config(tmp_path):
    # The README's `tools/eval.py weights=outputs/run/model_final.pth` on a checkpoint trained with
    # data=coco_panoptic_folder composes the default data (synthetic): the error said "evaluate on the
    # dataset it was trained for" without saying which; the run folder's config.yaml knows.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  name: coco_panoptic_folder\n  root: /data/mine\nseed: 0\n")
    cfg = OmegaConf.create({"weights": str(run / "model_final.pth")})
    with pytest.raises(ConfigError) as err:
        check_dataset_labels(COCO_LIKE, SYNTHETIC, cfg)
    assert str(err.value).endswith(f"evaluate on the dataset it was trained for (data=coco_panoptic_folder "
                                   f"data.root=/data/mine, as in {run / 'config.yaml'})")


@pytest.mark.parametrize("config", [None, "- a list\n", "data: [unclosed\n"])
def test_without_a_readable_training_config_the_error_is_as_before(tmp_path, config):
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
    cfg = OmegaConf.create({"weights": str(tmp_path / "model.pth")})
    with pytest.raises(ConfigError) as err:
        check_dataset_labels(COCO_LIKE, SYNTHETIC, cfg)
    assert str(err.value).endswith("evaluate on the dataset it was trained for")


def test_a_cityscapes_model_names_the_ids_it_was_trained_with(tmp_path):
    # A Cityscapes model trained with label ids evaluated with data.metadata.use_train_id=true: the
    # hint said "data=cityscapes_panoptic data.root=..." (what the user had given) without the key
    # that differs.
    from panfpn.data.builtin_meta import cityscapes_panoptic_metadata

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  name: cityscapes_panoptic\n  root: /data/cs\n"
                                     "  metadata:\n    use_train_id: false\n")
    cfg = OmegaConf.create({"weights": str(run / "model_final.pth")})
    with pytest.raises(ConfigError) as err:
        check_dataset_labels(cityscapes_panoptic_metadata(False), cityscapes_panoptic_metadata(True), cfg)
    assert str(err.value).endswith("evaluate on the dataset it was trained for (data=cityscapes_panoptic "
                                   f"data.root=/data/cs data.metadata.use_train_id=false, as in {run / 'config.yaml'})")

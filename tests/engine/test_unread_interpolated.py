"""A training-only key that only training-only keys interpolate is still called ignored by eval,
predict and export (README: "training-only keys given to eval, predict or export are logged as
ignored"): ``solver.schedule.max_iter: ${solver.max_iter}`` does not make tools/eval.py read
``solver.max_iter``, the key most often shared by a train and an eval command line."""

import pytest

from config_helpers import compose_config
from panfpn.engine.config.unread import unread_overrides


@pytest.mark.parametrize("tool", ["eval", "predict", "export"])
def test_solver_max_iter_is_ignored_although_the_schedule_interpolates_it(tool, tmp_path):
    overrides = ["solver.max_iter=5", "solver.base_lr=0.1"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    assert cfg.solver.schedule.max_iter == 5  # read through ${solver.max_iter}, by training only
    refused, ignored = unread_overrides(tool, overrides, cfg)
    assert refused == [] and ignored == [("solver.max_iter=5", "solver.max_iter"),
                                         ("solver.base_lr=0.1", "solver.base_lr")]


def test_a_key_that_a_read_key_interpolates_is_still_read(tmp_path):
    # data.metadata.json_file (read by eval) is ${data.train.json_file}: that override is eval's too
    overrides = ["data=coco_panoptic_folder", f"data.root={tmp_path}", f"data.train.json_file={tmp_path}/a.json",
                 "solver.max_iter=5"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    _, ignored = unread_overrides("eval", overrides, cfg)
    assert ignored == [("solver.max_iter=5", "solver.max_iter")]


def test_a_key_read_through_a_chain_of_interpolations_is_read(tmp_path):
    # eval reads data.metadata.json_file -> ${data.train.json_file} -> ${data.train.root}: the
    # categories come from data.train.root's folder, so that override is eval's (it was logged as
    # ignored when only the read keys' own interpolations counted)
    overrides = ["data=coco_panoptic_folder", f"data.root={tmp_path}", "data.train.json_file=${data.train.root}/a.json",
                 f"data.train.root={tmp_path}/train", "solver.max_iter=5"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    for tool in ("eval", "predict", "export"):
        refused, ignored = unread_overrides(tool, overrides, cfg)
        assert refused == [] and ignored == [("solver.max_iter=5", "solver.max_iter")], (tool, ignored)

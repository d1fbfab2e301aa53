"""eval, predict and export rebuild the model a checkpoint records (model config, labels, test
transform), so a checkpoint trained with a non-default model needs only weights=...; command-line
model overrides still win and every difference from the record is listed; weights_partial=true is
the fine-tuning path."""

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from config_helpers import compose_config
from hydra.utils import instantiate
from PIL import Image

from panfpn.engine.config import ConfigError
from panfpn.engine.eval_run import evaluate_from_config
from panfpn.engine.export_run import export_from_config
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.predict_run import predict_from_config
from panfpn.engine.train_run import train_from_config
from panfpn.modeling.build import build_model
from panfpn.modeling.panoptic_fpn.export import as_network, example_input, max_abs_diffs
from panfpn.modeling.weights import WeightsError
from process_helpers import run as run_in_group

_spec = importlib.util.spec_from_file_location("engine_conftest", Path(__file__).with_name("conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
TINY = _conftest.TINY
ROOT = Path(__file__).resolve().parents[2]

# The trained model differs from the default model=panoptic_fpn_small in shapes (widths), in
# settings without tensors (merge thresholds) and in its test transform (64 px instead of 128 px).
TRAINED_MODEL = [
    "model.backbone.out_channels=32", "model.semantic_head.conv_channels=32",
    "model.roi_heads.mask_head.conv_dim=32", "model.roi_heads.box_head.fc_dim=128",
    "model.merge.score_thresh=0.0", "model.merge.stuff_area=1",
    "data.val.transforms.short_edge_lengths=[64]", "data.val.transforms.max_size=128",
]
# TINY with AdamW and 40 iterations: enough for a PQ above 0 on the 3 validation images (~10 s).
TRAIN = [*(o for o in TINY if not o.startswith("solver")), "solver=synthetic_cpu", "solver.max_iter=40",
         "solver.schedule.warmup_iters=5", "data.train.num_images=16", "train.eval_period=-1",
         "train.checkpoint_period=40"]
EVAL = [*TINY, "eval.max_images=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("train")
    train_from_config(compose_config([*TRAIN, *TRAINED_MODEL], output_dir=run))
    return run / "model_final.pth"


@pytest.fixture(scope="module")
def reference_metrics(trained, tmp_path_factory):
    """Evaluated with the training's own config: the numbers every other way must give."""
    cfg = compose_config([*EVAL, *TRAINED_MODEL, f"weights={trained}"], output_dir=tmp_path_factory.mktemp("ref"))
    metrics = evaluate_from_config(cfg)
    assert metrics["panoptic"]["All"]["pq"] > 0, "the tiny training must learn something for this test to mean anything"
    return metrics


def _same_metrics(got, want):
    for split in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            assert got["panoptic"][split][key] == pytest.approx(want["panoptic"][split][key], abs=1e-12), (split, key)
    assert got["sem_seg"]["mIoU"] == pytest.approx(want["sem_seg"]["mIoU"], abs=1e-12)


def test_eval_under_the_default_config_gives_the_trained_models_numbers(trained, reference_metrics, tmp_path, caplog):
    cfg = compose_config([*EVAL, f"weights={trained}"], output_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="panfpn"):
        metrics = evaluate_from_config(cfg)
    _same_metrics(metrics, reference_metrics)
    text = caplog.text
    assert "model from" in text and "model.backbone.out_channels" in text  # the ignored config model is named
    assert "differs from the one recorded" not in text  # nothing differs from the record


def test_legacy_checkpoint_uses_its_training_config(trained, reference_metrics, tmp_path):
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    for key in ("model_config", "metadata", "test_transform"):
        del ckpt[key]
    assert "${" in ckpt["config"]  # unresolved, as older checkpoints stored it
    torch.save(ckpt, tmp_path / "old.pth")
    cfg = compose_config([*EVAL, f"weights={tmp_path / 'old.pth'}"], output_dir=tmp_path / "e")
    metrics = evaluate_from_config(cfg)
    _same_metrics(metrics, reference_metrics)


def test_overrides_win_and_differences_are_listed(trained, tmp_path, caplog):
    overrides = ["model.merge.score_thresh=0.3", "model.roi_heads.box_head.test.detections_per_image=7"]
    cfg = compose_config([*EVAL, f"weights={trained}", *overrides], output_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="panfpn"):
        built = build_inference_model(cfg, overrides)
    assert built.model.merge_thresholds.score_thresh == 0.3
    assert built.model.roi_heads.box_head.test.detections_per_image == 7
    assert not any(m.training for m in built.model.modules())  # an inference model: in eval mode
    assert built.model.backbone.out_channels == 32 and built.model.merge_thresholds.stuff_area == 1
    listed = [r.getMessage().strip() for r in caplog.records if r.getMessage().startswith("  ")]
    assert listed == ["model.merge.score_thresh: checkpoint 0.0, used 0.3",
                      "model.roi_heads.box_head.test.detections_per_image: checkpoint 50, used 7"]
    assert built.test_transform["short_edge_lengths"] == [64]
    # The note on the config's own model names the keys it does not take, not the overridden
    # ones, which are used (before: "differs in 7 key(s) (..., model.merge.score_thresh, ...), not used").
    note = next(r.getMessage() for r in caplog.records if "the config's own model differs" in r.getMessage())
    assert "model.merge.score_thresh" not in note and "detections_per_image" not in note
    assert "model.backbone.out_channels" in note

    # Without the overrides (a Python caller passing none) the recorded model is used as it is.
    plain = build_inference_model(cfg, [])
    assert plain.model.merge_thresholds.score_thresh == 0.0


def test_transform_override_and_model_group_override(trained, tmp_path, caplog):
    resize = "data.val.transforms.short_edge_lengths=[96]"
    cfg = compose_config([*EVAL, f"weights={trained}", resize], output_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="panfpn"):
        built = build_inference_model(cfg, [resize])
    assert built.test_transform["short_edge_lengths"] == [96]
    assert instantiate(built.cfg.data.val).transforms.lengths == [96]  # what eval builds its dataset with
    assert "data.val.transforms: checkpoint" in caplog.text
    recorded = build_inference_model(cfg, [])
    assert recorded.test_transform["short_edge_lengths"] == [64]
    assert instantiate(recorded.cfg.data.val).transforms.lengths == [64]

    # model=<name> on the command line takes the config's model whole: here not the trained one.
    group = compose_config([*EVAL, f"weights={trained}", "model=panoptic_fpn_small"], output_dir=tmp_path)
    with pytest.raises(WeightsError, match="with another shape"):
        build_inference_model(group, ["model=panoptic_fpn_small"])


def test_model_from_checkpoint_false_lists_the_differences_then_refuses(trained, tmp_path, caplog):
    cfg = compose_config([*EVAL, f"weights={trained}", "model_from_checkpoint=false"], output_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="panfpn"), pytest.raises(WeightsError) as err:
        evaluate_from_config(cfg)
    assert "with another shape" in str(err.value) and "backbone.fpn" in str(err.value)
    assert "model.backbone.out_channels: checkpoint 32, used 64" in caplog.text
    assert "data.val.transforms: checkpoint" in caplog.text


def test_eval_refuses_a_dataset_with_other_labels(trained, tmp_path):
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    ckpt["metadata"]["categories"][0]["id"] = 999
    torch.save(ckpt, tmp_path / "other_labels.pth")
    cfg = compose_config([*EVAL, f"weights={tmp_path / 'other_labels.pth'}"], output_dir=tmp_path / "e")
    with pytest.raises(ConfigError, match="predicts the categories"):
        evaluate_from_config(cfg)


def test_eval_command_line_reads_hydra_overrides(trained, tmp_path):
    run = tmp_path / "cli"
    data = [o for o in TINY if o.startswith(("data.val", "data.num_workers", "data.batch_size"))]
    cmd = [sys.executable, str(ROOT / "tools" / "eval.py"), f"weights={trained}", *data, "eval.max_images=null",
           "eval.compute_ap=false", "model.merge.score_thresh=0.3", "device=cpu", f"hydra.run.dir={run}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = run_in_group(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model.merge.score_thresh: checkpoint 0.0, used 0.3" in done.stderr
    assert "model.backbone.out_channels: checkpoint" not in done.stderr  # the default group is not used
    assert json.loads((run / "eval_results.json").read_text())["panoptic"]["All"]["n"] == 8


def _val_images(folder, n=2):
    folder.mkdir()
    val = instantiate(compose_config(EVAL, output_dir=folder).data.val)
    for i in range(n):
        Image.fromarray(val[i]["image"].permute(1, 2, 0).numpy()).save(folder / f"val{i}.png")
    return folder


def _predict(weights, folder, out, extra=()):
    cfg = compose_config([*TINY, *extra, f"weights={weights}", f"predict.input={folder}", f"predict.output_dir={out}",
                          "predict.overlay=false", "predict.num_workers=0", "predict.write_threads=0"], output_dir=out)
    predict_from_config(cfg)
    return json.loads((out / "panoptic.json").read_text())


def test_predict_under_the_default_config_gives_the_trained_models_output(trained, tmp_path):
    folder = _val_images(tmp_path / "in")
    want = _predict(trained, folder, tmp_path / "ref", TRAINED_MODEL)
    got = _predict(trained, folder, tmp_path / "default")
    assert got["annotations"] == want["annotations"]
    assert sum(len(a["segments_info"]) for a in want["annotations"]) > 0
    for ann in want["annotations"]:
        a = np.asarray(Image.open(tmp_path / "ref" / "panoptic" / ann["file_name"]))
        b = np.asarray(Image.open(tmp_path / "default" / "panoptic" / ann["file_name"]))
        assert np.array_equal(a, b), ann["file_name"]


def test_export_under_the_default_config_exports_the_trained_model(trained, tmp_path):
    stem = tmp_path / "net"
    cfg = compose_config([*TINY, f"weights={trained}", "device=cpu", "export.scope=network",  # the network's .pt2
                          "export.format=torch_export", f"export.output={stem}", "export.height=96",
                          "export.width=128"], output_dir=tmp_path)
    summary = export_from_config(cfg)
    program = torch.export.load(summary["files"]["torch_export"])
    reference = build_model(compose_config([*TINY, *TRAINED_MODEL, f"weights={trained}"], output_dir=tmp_path)).eval()
    x = example_input(128, 160, batch_size=1)
    with torch.no_grad():
        want = reference.network(x)
        diffs = max_abs_diffs(as_network(program)(x), want)
    assert max(diffs.values()) <= 1e-4, diffs
    assert want[0].shape[1] == 32  # the trained FPN width, not the default 64


def test_fine_tuning_with_other_class_counts_needs_weights_partial(trained, tmp_path, caplog):
    # Weights of a model with 6 thing classes (as trained on another dataset) into the 4-class data's model.
    six = [*TRAIN, *TRAINED_MODEL, "model.roi_heads.box_head.num_classes=6", "model.roi_heads.mask_head.num_classes=6"]
    source = tmp_path / "six_classes.pth"
    torch.save({"model": build_model(compose_config(six, output_dir=tmp_path / "six")).state_dict()}, source)
    other = [*TRAIN, *TRAINED_MODEL, f"weights={source}", "solver.max_iter=2", "train.checkpoint_period=2"]
    with pytest.raises(WeightsError, match="weights_partial=true"):
        build_model(compose_config(other, output_dir=tmp_path / "strict"))
    with caplog.at_level(logging.INFO, logger="panfpn"):
        result = train_from_config(compose_config([*other, "weights_partial=true"], output_dir=tmp_path / "partial"))
    assert result["iteration"] == 2
    assert "shape mismatch: roi_heads.box_head.cls_score.weight model [5, 128] vs file [7, 128]" in caplog.text
    assert "partial load (weights_partial=true)" in caplog.text
    tuned = torch.load(tmp_path / "partial" / "model_final.pth", weights_only=True)
    assert tuned["model"]["roi_heads.box_head.cls_score.weight"].shape[0] == 5


def test_training_refuses_model_class_counts_other_than_the_data_s(tmp_path):
    """A box head with fewer classes than the data's thing classes trained without a word (its
    targets out of range of its classes), one with more failed at the first evaluation, after
    the training; both are now refused at the start, naming the key."""
    for n in (3, 5):
        cfg = compose_config([*TRAIN, f"model.roi_heads.box_head.num_classes={n}", "solver.max_iter=1"],
                             output_dir=tmp_path / str(n))
        with pytest.raises(ConfigError, match=rf"model.roi_heads.box_head.num_classes is {n} but the label "
                                              r"metadata of data.metadata \('synthetic'\) gives 4"):
            train_from_config(cfg)
        assert not list((tmp_path / str(n)).glob("*.pth"))

"""predict.cityscapes_instances: tools/predict.py writes cityscapesScripts' instance-level files
(``<city>_<seq>_<frame>_pred.txt`` + ``masks/``) for a test-set submission. Scored by the official
evalInstanceLevelSemanticLabeling on a tiny createPanopticImgs set, they give the AP tools/eval.py's
cityscapes_ap gives for the same model and images, and are the very files eval writes. Before,
predict wrote no such files (the key did not exist: every test here failed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from panfpn.data.build import cityscapes_panoptic_dataset
from panfpn.data.builtin_meta import cityscapes_panoptic_metadata
from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import list_image_files
from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine.config import ConfigError
from panfpn.engine.eval_loop import evaluate
from panfpn.engine.predict_run import predict_from_config, predict_images
from panfpn.evaluation.cityscapes_ap import CityscapesAP
from panfpn.evaluation.prediction_folder import without_own_outputs

pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
pytest.importorskip("cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")
from cityscapes_layout import write_cityscapes_root  # noqa: E402
# tests/evaluation's cases: frames whose instances exercise every rule of the script, its runner
from evaluation.test_cityscapes_ap import (FixedInstances, cityscapes_root, frames,  # noqa: E402,F401 (a fixture)
                                          official_instance_ap)

FRAMES = sorted(frames())


class FramesModel(FixedInstances):
    """:class:`FixedInstances` keyed by predict's batch ids (the file stems, ``<frame>_leftImg8bit``),
    and semantic labels: car everywhere."""

    def forward(self, batch):
        outputs = super().forward({**batch, "image_ids": [i.removesuffix("_leftImg8bit") for i in batch["image_ids"]]})
        car = self.meta.sem_label(next(c.id for c in self.meta.categories if c.name == "car"))
        for out, (h, w) in zip(outputs, batch["orig_sizes"]):
            out["sem_seg"] = torch.full((int(h), int(w)), car, dtype=torch.int64)
        return outputs


def _images(root: Path) -> list[Path]:
    return list_image_files(root / "leftImg8bit" / "val", recursive=True)


def _predict(root: Path, out: Path, metadata, **kw) -> dict:
    kw = {"overlay": False, "progress": False, "batch_size": 2, "cityscapes_instances": True, **kw}
    return predict_images(FramesModel(metadata), _images(root), metadata, out, **kw)


def _folder(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("use_train_id", [False, True])
def test_official_script_scores_predicts_files_as_evals_cityscapes_ap(cityscapes_root, tmp_path, monkeypatch,
                                                                       use_train_id):
    ds = cityscapes_panoptic_dataset(cityscapes_root, "val", use_train_id=use_train_id, is_train=False)
    summary = _predict(cityscapes_root, tmp_path / "pred", ds.metadata, semantic=True)
    assert summary["predicted"] == [f"{f}_leftImg8bit" for f in FRAMES]
    for frame in FRAMES:  # predict.semantic: label ids (car 26), also from train ids (car 13)
        sem = np.asarray(Image.open(tmp_path / "pred" / "semantic" / f"{frame}_leftImg8bit.png"))
        assert np.unique(sem).tolist() == [26]
    ours = tmp_path / "pred" / "cityscapes_instances"
    assert sorted(p.name for p in ours.glob("*.txt")) == [f"{f}_pred.txt" for f in FRAMES]

    eval_dir = tmp_path / "eval"
    metrics = evaluate(FixedInstances(ds.metadata), DataLoader(ds, batch_size=2, collate_fn=collate_panoptic),
                       ds.metadata, [CityscapesAP(ds.metadata, eval_dir)], device=torch.device("cpu"),
                       progress=False)["cityscapes_ap"]
    assert _folder(ours) == _folder(eval_dir)  # eval's files, byte for byte (label ids also from train ids)
    official = official_instance_ap(cityscapes_root, ours, tmp_path, monkeypatch)
    assert official["allAp"] == pytest.approx(metrics["AP"], abs=1e-9)
    assert official["allAp50%"] == pytest.approx(metrics["AP50"], abs=1e-9)
    assert 0 < metrics["AP"] < metrics["AP50"] < 1  # neither trivial nor perfect (tests/evaluation's cases)
    names = {c.id: c.name for c in ds.metadata.categories}
    for cat, result in metrics["per_class"].items():
        if result is not None:
            assert official["classes"][names[cat]]["ap"] == pytest.approx(result["AP"], abs=1e-9), names[cat]


ARCHITECTURES = {  # the small model of each architecture, detections of any score kept (random weights)
    "panoptic_fpn": ("experiment=cityscapes_r50", "model=panoptic_fpn_small", "model.merge.score_thresh=0.0",
                     "model.roi_heads.box_head.test.score_thresh=0.0",
                     "model.roi_heads.box_head.test.detections_per_image=5"),
    "mask2former": ("experiment=cityscapes_mask2former_r50", "model=mask2former_small",
                    "model.inference.topk_instances=5"),
}


def _cityscapes_config(root: Path, out: Path, architecture: str):
    """tools/eval.py's and tools/predict.py's config on ``root`` (32 px test size, CPU)."""
    from config_helpers import compose_config

    def cfg(*extra, weights="null"):
        return compose_config([*ARCHITECTURES[architecture], f"data.root={root}", f"weights={weights}",
                               "data.val.transforms.short_edge_lengths=[32]", "data.val.transforms.max_size=64",
                               "data.num_workers=0", "eval.report=false", "device=cpu", *extra], output_dir=out)
    return cfg


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_tools_predict_and_tools_eval_write_the_same_files_for_a_checkpoint(tmp_path, monkeypatch, architecture):
    """The user's commands (docs/cityscapes.md): tools/eval.py with eval.save_predictions on val and
    tools/predict.py with predict.cityscapes_instances on the leftImg8bit images, same checkpoint
    (random weights: AP 0 here; the AP cases are the test above): the same instance files (Panoptic
    FPN's masks kept in their boxes, Mask2Former's dense), semantic PNGs with the same label ids,
    and the official script's AP on predict's folder is eval's cityscapes_ap."""
    from panfpn.engine.eval_run import evaluate_from_config
    from panfpn.modeling.build import build_model

    cs_frames = ("frankfurt_000000_000294", "lindau_000001_000019")
    root = write_cityscapes_root(tmp_path / "cs", cs_frames)
    cfg = _cityscapes_config(root, tmp_path / "cs_eval", architecture)
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg()).state_dict()}, weights)
    metrics = evaluate_from_config(cfg("eval.save_predictions=true", "eval.save_semantic=true", weights=weights))
    out = tmp_path / "cs_pred"
    summary = predict_from_config(cfg(f"++predict.input={root / 'leftImg8bit' / 'val'}", "predict.recursive=true",
                                      f"++predict.output_dir={out}", "predict.cityscapes_instances=true",
                                      "predict.semantic=true", "predict.overlay=false", "predict.progress_bar=false",
                                      weights=weights))
    assert len(summary["predicted"]) == 2
    ours = _folder(out / "cityscapes_instances")
    assert ours == _folder(tmp_path / "cs_eval" / "predictions" / "cityscapes_instances")
    assert sum(k.startswith("masks/") for k in ours) >= 4  # instances were written
    for frame in cs_frames:  # label ids (car 26), not train ids, in both
        sem = np.asarray(Image.open(out / "semantic" / f"{frame}_leftImg8bit.png"))
        assert np.array_equal(sem, np.asarray(Image.open(tmp_path / "cs_eval" / "semantic" / f"{frame}.png")))
        assert set(np.unique(sem).tolist()) <= {c.id for c in cityscapes_panoptic_metadata().categories}
    official = official_instance_ap(root, out / "cityscapes_instances", tmp_path, monkeypatch)
    assert official["allAp"] == pytest.approx(metrics["cityscapes_ap"]["AP"], abs=1e-9)


def test_an_image_counts_as_done_only_with_its_text_file(cityscapes_root, tmp_path):
    meta = cityscapes_panoptic_metadata()
    out = tmp_path / "pred"
    # an earlier run without the option: every image listed, none has instance files -> all redone
    assert len(_predict(cityscapes_root, out, meta, cityscapes_instances=False)["predicted"]) == 3
    assert len(_predict(cityscapes_root, out, meta)["predicted"]) == 3
    full = _folder(out / "cityscapes_instances")
    # kill-style partial: masks written, the text file (written last) not -> redone; the others skipped
    first, second = FRAMES[0], FRAMES[1]
    (out / "cityscapes_instances" / f"{first}_pred.txt").unlink()
    stale = out / "cityscapes_instances" / "masks" / f"{first}_99.png"  # of an earlier, different result
    stale.write_bytes(b"old")
    kept = out / "cityscapes_instances" / "masks" / f"{second}_99.png"  # a done image's files are not touched
    kept.write_bytes(b"old")
    again = _predict(cityscapes_root, out, meta)
    assert again["predicted"] == [f"{first}_leftImg8bit"] and len(again["skipped"]) == 2
    assert not stale.exists() and kept.exists()
    kept.unlink()
    assert _folder(out / "cityscapes_instances") == full
    # predict.overwrite redoes all, also the text files
    assert len(_predict(cityscapes_root, out, meta, overwrite=True)["predicted"]) == 3
    assert _folder(out / "cityscapes_instances") == full


def test_output_folder_inside_the_input_folder_is_not_read_back(cityscapes_root, tmp_path):
    import shutil

    inp = tmp_path / "leftImg8bit"
    shutil.copytree(cityscapes_root / "leftImg8bit", inp)
    out = inp / "val" / "preds"
    for run in range(2):  # the second run would read masks/<frame>_<k>.png as (badly named) inputs
        paths = without_own_outputs(list_image_files(inp, recursive=True), out)  # as predict_from_config
        summary = predict_images(FramesModel(cityscapes_panoptic_metadata()), paths, cityscapes_panoptic_metadata(),
                                 out, overlay=False, progress=False, cityscapes_instances=True)
        assert summary["num_inputs"] == 3 and len(summary["skipped"]) == 3 * run
    assert any((out / "cityscapes_instances" / "masks").iterdir())


def test_refused_for_labels_that_are_not_cityscapes(cityscapes_root, tmp_path):
    with pytest.raises(ConfigError, match=r"^config key 'predict.cityscapes_instances': .*Cityscapes' 8 instance"):
        _predict(cityscapes_root, tmp_path / "pred", synthetic_metadata())
    assert not (tmp_path / "pred" / "cityscapes_instances").exists()


def test_refused_for_files_not_named_as_cityscapes_images_or_of_one_frame(cityscapes_root, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    meta = cityscapes_panoptic_metadata()
    with pytest.raises(ConfigError, match=r"predict.cityscapes_instances.*photo.png is not named as a Cityscapes"):
        predict_images(FramesModel(meta), [photo], meta, tmp_path / "pred", progress=False, cityscapes_instances=True)
    frame = _images(cityscapes_root)[0]
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / frame.name  # the same frame twice: the script refuses two text files of one frame
    copy.write_bytes(frame.read_bytes())
    with pytest.raises(ConfigError, match=r"predict.cityscapes_instances.*are both frame 'frankfurt_000000_000294'"):
        predict_images(FramesModel(meta), [frame, copy], meta, tmp_path / "pred", progress=False,
                       cityscapes_instances=True)


def test_a_model_without_instances_is_named(cityscapes_root, tmp_path):
    class NoInstances(FramesModel):
        def forward(self, batch):
            return [{k: v for k, v in out.items() if k != "instances"} for out in super().forward(batch)]

    with pytest.raises(ConfigError, match=r"predict.cityscapes_instances.*config key 'model'.*no 'instances'"):
        predict_images(NoInstances(cityscapes_panoptic_metadata()), _images(cityscapes_root),
                       cityscapes_panoptic_metadata(), tmp_path / "pred", progress=False, overlay=False,
                       cityscapes_instances=True)


def _weights(folder: Path) -> Path:
    """A checkpoint file (its weights are never read: the refusals come first)."""
    torch.save({"model": {}}, folder / "model.pth")
    return folder / "model.pth"


def test_tools_predict_refuses_before_the_model_is_built(cityscapes_root, tmp_path, monkeypatch):
    """The default (synthetic) labels, then a photo not named as Cityscapes: each one line naming the key,
    before the model is built (exit 2: the subprocess run below)."""
    import panfpn.engine.inference_model as inference_model
    from config_helpers import compose_config

    def built(*_a, **_k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(inference_model, "instantiate_model", built)
    images = cityscapes_root / "leftImg8bit" / "val"
    base = ["model=panoptic_fpn_small", f"weights={_weights(tmp_path)}", "predict.recursive=true",
            "predict.cityscapes_instances=true",
            f"++predict.output_dir={tmp_path / 'out'}", "device=cpu"]
    with pytest.raises(ConfigError, match=r"'predict.cityscapes_instances': .*thing categories"):
        predict_from_config(compose_config([*base, f"++predict.input={images}"], output_dir=tmp_path / "run"))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    with pytest.raises(ConfigError, match=r"'predict.cityscapes_instances': .*photo.png is not named"):
        predict_from_config(compose_config(["experiment=cityscapes_r50", *base, f"++predict.input=[{images},{photo}]"],
                                           output_dir=tmp_path / "run"))


def test_tools_predict_refusal_is_one_line_and_exit_2(cityscapes_root, tmp_path):
    from process_helpers import run as run_in_group

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run_in_group([sys.executable, str(root / "tools/predict.py"), "model=panoptic_fpn_small",
                         f"weights={_weights(tmp_path)}",
                         f"predict.input={cityscapes_root / 'leftImg8bit' / 'val'}", "predict.recursive=true",
                         "predict.cityscapes_instances=true", f"predict.output_dir={tmp_path / 'out'}", "device=cpu",
                         f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tools/predict.py: config key 'predict.cityscapes_instances': "), proc.stderr[-3000:]


def test_onnx_backend_refuses_naming_the_key(tmp_path):
    """The exported pipeline outputs the instances' boxes, scores and labels, no masks."""
    from types import SimpleNamespace

    from panfpn.engine.predict_onnx import predict_onnx

    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"")  # refused before it is opened
    opts = SimpleNamespace(semantic=False, cityscapes_instances=True, overlay=False)
    with pytest.raises(ConfigError, match=r"^config key 'predict.cityscapes_instances': predict.backend=onnxruntime"):
        predict_onnx(str(weights), [], tmp_path / "out", opts, overrides=[])
    assert not (tmp_path / "out").exists()


def test_the_done_marker_is_listed_and_mask_names_parse(tmp_path):
    """PredictionTargets.files names the text file (the resume check), and only masks of the images
    redone are removed (``<id>_<k>.png``; ``frankfurt_000000_000294_1`` is no image id of another)."""
    from panfpn.evaluation.prediction_folder import prepare_targets

    ids = {"a_leftImg8bit": "frankfurt_000000_000294", "b_leftImg8bit": "frankfurt_000000_000295"}
    targets = prepare_targets(tmp_path, cityscapes_panoptic_metadata(), overlay=False, overlay_format="jpg",
                              overlay_alpha=0.5, semantic=False, cityscapes_ids=ids)
    assert targets.files("a_leftImg8bit")[-1] == tmp_path / "cityscapes_instances" / "frankfurt_000000_000294_pred.txt"
    masks = tmp_path / "cityscapes_instances" / "masks"
    masks.mkdir(parents=True)
    for name in ("frankfurt_000000_000294_0.png", "frankfurt_000000_000294_12.png", "frankfurt_000000_000295_0.png",
                 "frankfurt_000000_000294_x.png"):
        (masks / name).write_bytes(b"")
    assert targets.instances.remove_earlier(["a_leftImg8bit"]) == 2
    assert sorted(p.name for p in masks.iterdir()) == ["frankfurt_000000_000294_x.png", "frankfurt_000000_000295_0.png"]


def test_a_run_without_the_option_redoing_images_warns_of_their_earlier_instance_files(cityscapes_root, tmp_path,
                                                                                         caplog):
    """predict.overwrite=true (another checkpoint, say) without predict.cityscapes_instances redoes the
    panoptic and semantic files but leaves cityscapes_instances/ as the earlier run wrote it: said, so
    that the folder is not submitted as one model's. Before, nothing was said."""
    meta = cityscapes_panoptic_metadata()
    out = tmp_path / "pred"
    _predict(cityscapes_root, out, meta)
    before = _folder(out / "cityscapes_instances")
    with caplog.at_level("WARNING", logger="panfpn"):
        assert len(_predict(cityscapes_root, out, meta, cityscapes_instances=False)["skipped"]) == 3
    assert "redone now without" not in caplog.text  # nothing redone: the files still match the listed images
    with caplog.at_level("WARNING", logger="panfpn"):
        _predict(cityscapes_root, out, meta, cityscapes_instances=False, overwrite=True)
    assert (f"{out / 'cityscapes_instances'} holds the instance files of 3 image(s) redone now without "
            f"predict.cityscapes_instances ({FRAMES[0]}_pred.txt, ...): an earlier run's") in caplog.text
    assert _folder(out / "cityscapes_instances") == before  # kept: this run was not asked for them

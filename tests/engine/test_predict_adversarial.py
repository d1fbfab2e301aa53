"""Odd inputs to tools/predict.py (both backends) and the standalone ONNX runner: what a user asks for
vs what they get. Each test failed before its fix (named in the test's comment)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from config_helpers import compose_config
from PIL import Image

from panfpn.data.image_files import list_image_files, output_stems
from panfpn.data.synthetic import synthetic_metadata
from panfpn.engine.config import ConfigError
from panfpn.engine.predict_run import predict_from_config, predict_images

from test_predict_outputs import StripesModel, _assert_json_lists_exactly_the_files

MODEL = ("model=panoptic_fpn_small", "model.roi_heads.box_head.test.score_thresh=0.0",
         "model.roi_heads.box_head.test.detections_per_image=4")


def _rgb(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random small model's checkpoint and its exported ONNX pipeline (~2 s)."""
    pytest.importorskip("onnxruntime")
    from hydra.utils import instantiate

    from panfpn.deploy.export import build_pipeline, export_pipeline_onnx
    from panfpn.modeling.build import build_model

    cfg = compose_config(MODEL, output_dir=tmp_path_factory.mktemp("run"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    folder = tmp_path_factory.mktemp("weights")
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    pipeline = build_pipeline(model, synthetic_metadata(), instantiate(cfg.data.val.transforms))
    export_pipeline_onnx(pipeline, folder / "model.onnx", metadata=synthetic_metadata())
    return folder / "model.pth", folder / "model.onnx"


def _predict(weights, inp, out, *extra):
    backend = "onnxruntime" if str(weights).endswith(".onnx") else "torch"
    cfg = compose_config([*MODEL, f"weights={weights}", f"++predict.input={inp}", f"++predict.output_dir={out}",
                          f"predict.backend={backend}", "predict.progress_bar=false", "predict.batch_size=1",
                          "predict.overlay=false", "device=cpu", *extra], output_dir=out.parent / "run")
    return predict_from_config(cfg)


def test_a_path_name_equal_to_another_inputs_stem_gets_its_own_file(tmp_path):
    # Before: a.jpg and a.png became a_jpg / a_png, and a_jpg.png kept a_jpg: two images, one PNG
    # (predict stopped with "prediction PNG a_jpg.png written twice" after writing it once).
    assert output_stems([Path("/d/a.jpg"), Path("/d/a.png"), Path("/d/a_jpg.png")]) == ["a_jpg~2", "a_png", "a_jpg"]
    stems = output_stems([Path("/d/x/a.jpg"), Path("/d/y/a.jpg"), Path("/d/x__a.jpg"), Path("/d/z/x__a.jpg")])
    assert len(set(stems)) == 4
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for k, name in enumerate(["a.jpg", "a.png", "a_jpg.png"]):
        Image.fromarray(_rgb(12, 16 + k)).save(inp / name)
    result = predict_images(StripesModel(), list_image_files(inp), synthetic_metadata(), out, progress=False)
    assert len(result["predicted"]) == 3
    data = _assert_json_lists_exactly_the_files(out, expected_count=3)
    widths = {Path(i["path"]).name: i["width"] for i in data["images"]}
    assert widths == {"a.jpg": 16, "a.png": 17, "a_jpg.png": 18}


def test_names_differing_only_in_case_get_distinct_outputs():
    # Before: x/A.jpg and y/a.jpg wrote A.png and a.png: one file on macOS / Windows file systems.
    stems = output_stems([Path("/d/x/A.jpg"), Path("/d/y/a.jpg"), Path("/d/b.jpg")])
    assert len({s.casefold() for s in stems}) == 3 and stems[2] == "b"

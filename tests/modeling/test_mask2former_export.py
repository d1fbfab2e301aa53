"""Mask2Former's network half exports (torch.export, ONNX) at one fixed size and matches the eager
network; postprocessor(network(preprocess(batch))) is exactly model.eval()(batch)."""

import warnings

import pytest
import torch

from panfpn.modeling.build import build_model
from panfpn.modeling.mask2former.network import OUTPUT_NAMES
from panfpn.modeling.panoptic_fpn.export import (as_network, export_onnx, export_program, max_abs_diffs,
                                                 output_names, run_exported)

from modeling_helpers import compose_model_config, make_batch

SIZE = (96, 128)  # the smallest export size (MIN_SIZE); the export is static: this size, batch 1
RAW_ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(compose_model_config("mask2former_small")).eval()
    # Zero thresholds so that random weights still give segments to compare.
    m.inference_config = type(m.inference_config)(object_mask_threshold=0.0, overlap_threshold=0.0,
                                                  topk_instances=10)
    return m


def _batch(sizes, orig_sizes):
    return make_batch(sizes, orig_sizes, num_things=4, num_sem=5, seed=3)


@pytest.fixture(scope="module")
def program(model):
    return export_program(model.network, height=SIZE[0], width=SIZE[1], dynamic=False)


@pytest.fixture(scope="module")
def onnx_session(model, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "m2f.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        export_onnx(model.network, path, height=SIZE[0], width=SIZE[1], dynamic=False)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_equal_results(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert torch.equal(g["panoptic"][0], e["panoptic"][0])
        assert g["panoptic"][1] == e["panoptic"][1]
        assert torch.equal(g["sem_seg"], e["sem_seg"])
        assert g["instances"].keys() == e["instances"].keys()
        for k in e["instances"]:
            assert torch.equal(g["instances"][k], e["instances"][k]), k


def test_halves_equal_eval_exactly(model):
    batch = _batch([(96, 128), (80, 100)], [(96, 128), (120, 150)])
    with torch.no_grad():
        expected = model(batch)
        images = model.network.preprocess(batch["images"], batch["image_sizes"])
        outputs = model.network(images.tensors)
        got = model.postprocessor(outputs, images.image_sizes, batch["orig_sizes"])
    assert output_names(model.network) == OUTPUT_NAMES == ("pred_logits", "pred_masks")
    q = model.predictor.query_feat.num_embeddings
    assert outputs[0].shape == (2, q, model.space.num_classes + 1)
    assert outputs[1].shape == (2, q, 96 // 4, 128 // 4)
    assert any(len(r["panoptic"][1]) for r in expected)  # parity means something
    _assert_equal_results(got, expected)


def test_halves_add_no_state_and_follow_mode(model):
    keys = set(model.state_dict())
    assert model.network is model.network and model.postprocessor is model.postprocessor
    assert set(model.state_dict()) == keys
    model.train()
    assert model.network.training and model.postprocessor.training
    model.eval()
    assert not model.network.training and not model.postprocessor.training


@pytest.mark.parametrize("fmt", ["torch_export", "onnx"])
def test_exported_network_matches_eager(model, program, onnx_session, fmt):
    runner = as_network(program if fmt == "torch_export" else onnx_session)
    torch.manual_seed(1)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        want = model.network(x)
        diffs = max_abs_diffs(runner(x), want, OUTPUT_NAMES)
    assert set(diffs) == set(OUTPUT_NAMES)
    assert max(diffs.values()) <= RAW_ATOL, diffs
    # The model's own preprocessing and postprocessor around the exported graph: same segments.
    batch = _batch([(90, 120)], [(180, 240)])
    with torch.no_grad():
        expected = model(batch)
    got = run_exported(program if fmt == "torch_export" else onnx_session, model, batch)
    g_segs, e_segs = got[0]["panoptic"][1], expected[0]["panoptic"][1]
    assert e_segs and len(g_segs) == len(e_segs)
    for g, e in zip(g_segs, e_segs):
        assert (g["id"], g["isthing"], g["category"]) == (e["id"], e["isthing"], e["category"])
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)
    # A pixel whose two best queries tie within float rounding may flip: allow 0.1 %.
    assert (got[0]["panoptic"][0] == expected[0]["panoptic"][0]).float().mean() > 0.999


def test_dynamic_export_is_refused(model):
    with pytest.raises(ValueError, match="export.dynamic=false"):
        export_program(model.network, height=SIZE[0], width=SIZE[1], dynamic=True)


def test_export_from_config_network_scope(model, tmp_path):
    # tools/export.py export.scope=network on a Mask2Former checkpoint: the default dynamic=true
    # falls back to the fixed size (with a warning); both files are written and verified.
    from panfpn.engine.export_run import export_from_config

    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    stem = tmp_path / "out" / "m2f"
    cfg = compose_model_config("mask2former_small", overrides=(
        f"weights={weights}", f"output_dir={tmp_path}", f"++export.output={stem}", "export.scope=network",
        f"++export.height={SIZE[0]}", f"++export.width={SIZE[1]}", "device=cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = export_from_config(cfg)
    assert set(summary["files"]) == {"onnx", "torch_export"}
    assert summary["outputs"] == list(OUTPUT_NAMES) and summary["input"]["dynamic"] is False
    for diffs in summary["max_abs_diff"].values():
        assert list(diffs) == list(OUTPUT_NAMES) and max(diffs.values()) <= RAW_ATOL
    assert stem.with_suffix(".json").is_file()
    program = torch.export.load(summary["files"]["torch_export"])
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        assert max(max_abs_diffs(as_network(program)(x), model.network(x), OUTPUT_NAMES).values()) <= RAW_ATOL

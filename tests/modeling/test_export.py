"""Export of the network (torch.export, ONNX) and the eager remainder, against the eager model."""

import dataclasses
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from panfpn.modeling.build import build_model
from panfpn.modeling.panoptic_fpn.export import (MIN_SIZE, OUTPUT_NAMES, as_network, export_onnx, export_program,
                                    run_exported)

from modeling_helpers import check_panoptic, compose_model_config, make_batch

# Zero thresholds so that random weights still give detections, thing segments and stuff.
EVAL_ALL = ("model.merge.score_thresh=0.0", "model.roi_heads.box_head.test.score_thresh=0.0",
            "model.merge.stuff_area=8", "model.roi_heads.box_head.test.detections_per_image=20")
TRACE_SIZE = (128, 160)  # the traced shape; the checks run other shapes through the dynamic graph
RAW_ATOL = 1e-4


@pytest.fixture(scope="module")
def setup():
    cfg = compose_model_config("panoptic_fpn_small", "synthetic", EVAL_ALL)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    d = cfg.data
    # Padded to 96x128; the second image is smaller than the padding and upscaled on output.
    batch = make_batch([(96, 128), (80, 100)], [(96, 128), (120, 150)], num_things=d.num_thing_classes,
                       num_sem=d.num_sem_classes, seed=3)
    with torch.no_grad():
        expected = model(batch)
    return model, cfg, batch, expected


@pytest.fixture(scope="module")
def program(setup):
    model = setup[0]
    return export_program(model.network, height=TRACE_SIZE[0], width=TRACE_SIZE[1])


@pytest.fixture(scope="module")
def onnx_session(setup, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        export_onnx(setup[0].network, path, height=TRACE_SIZE[0], width=TRACE_SIZE[1])
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _network_input(model, batch):
    return model.network.preprocess(batch["images"], batch["image_sizes"]).tensors


def _assert_same_results(got, expected):
    """Identical panoptic partitions and segment lists; instances equal up to float rounding."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert torch.equal(g["panoptic"][0], e["panoptic"][0])
        g_segs, e_segs = g["panoptic"][1], e["panoptic"][1]
        assert [{**s, "score": None} for s in g_segs] == [{**s, "score": None} for s in e_segs]
        assert [s["score"] for s in g_segs] == pytest.approx([s["score"] for s in e_segs], abs=1e-4)
        assert torch.equal(g["sem_seg"], e["sem_seg"])
        assert torch.equal(g["instances"]["labels"], e["instances"]["labels"])
        assert torch.equal(g["instances"]["masks"], e["instances"]["masks"])
        torch.testing.assert_close(g["instances"]["boxes"], e["instances"]["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(g["instances"]["scores"], e["instances"]["scores"], atol=1e-4, rtol=0)


def test_outputs_are_non_trivial(setup):
    # Parity below means something only if the merge has things and stuff to place.
    model, cfg, batch, expected = setup
    d = cfg.data
    for result, size in zip(expected, batch["orig_sizes"]):
        check_panoptic(result, size, num_things=d.num_thing_classes, num_sem=d.num_sem_classes,
                       thing_sem_labels=list(OmegaConf.to_container(d.thing_sem_labels)))
        segments = result["panoptic"][1]
        assert any(s["isthing"] for s in segments) and any(not s["isthing"] for s in segments)


def test_eager_split_equals_model_exactly(setup):
    # The cut itself changes nothing: eager network + postprocessor == model.eval(), bit for bit.
    model, _, batch, expected = setup
    got = run_exported(model.network, model, batch)
    for g, e in zip(got, expected):
        assert torch.equal(g["panoptic"][0], e["panoptic"][0])
        assert g["panoptic"][1] == e["panoptic"][1]
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(g["instances"][key], e["instances"][key]), key


@pytest.mark.parametrize("backend", ["torch_export", "onnx"])
def test_exported_network_matches_eager(backend, setup, request):
    model, _, batch, expected = setup
    network = request.getfixturevalue("program" if backend == "torch_export" else "onnx_session")
    x = _network_input(model, batch)
    assert tuple(x.shape[-2:]) != TRACE_SIZE  # the dynamic H/W really is exercised
    with torch.no_grad():
        want = model.network(x)
        got = as_network(network)(x)
    assert len(got) == len(want) == len(OUTPUT_NAMES)
    for name, g, w in zip(OUTPUT_NAMES, got, want):
        assert g.shape == w.shape, name
        diff = (g - w).abs().max().item()
        assert diff <= RAW_ATOL, f"{backend} {name}: max abs diff {diff:.2e}"
    _assert_same_results(run_exported(network, model, batch), expected)


def test_dynamic_batch_and_size(setup, program):
    # One image of another size through the same program: dynamic batch, H and W.
    model, cfg, _, _ = setup
    d = cfg.data
    batch = make_batch([(160, 96)], [(160, 96)], num_things=d.num_thing_classes,
                       num_sem=d.num_sem_classes, seed=4)
    with torch.no_grad():
        expected = model(batch)
    _assert_same_results(run_exported(program, model, batch), expected)


def test_bad_inputs_are_refused(setup, program, tmp_path):
    model, cfg, _, _ = setup
    d = cfg.data
    small = make_batch([(64, 64)], [(64, 64)], num_things=d.num_thing_classes, num_sem=d.num_sem_classes)
    with pytest.raises(ValueError, match=f"at least {MIN_SIZE}"):
        run_exported(program, model, small)
    with pytest.raises(ValueError, match="multiple of 32"):
        export_program(model.network, height=100, width=128)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model.network, tmp_path / "x.onnx", height=96, width=96, opset=13)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            export_program(model.network, height=96, width=96)
        with pytest.raises(ValueError, match="eval"):
            run_exported(program, model, small)
    finally:
        model.eval()


def test_export_from_config_round_trip(setup, tmp_path, monkeypatch):
    # tools/export.py's function: files from a checkpoint, reloaded and run with the eager remainder
    # rebuilt from the same config + weights, give the checkpoint's eager results. Its own check
    # (max_abs_diff) runs the files it wrote, as a user loads them, not the graphs in memory.
    from panfpn.engine.config import ConfigError
    from panfpn.engine.export_run import export_from_config

    loaded = []
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda path, *a, **k: loaded.append(str(path)) or real_load(path, *a, **k))

    model, _, batch, expected = setup
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    stem = tmp_path / "out" / "net"
    overrides = (*EVAL_ALL, f"weights={weights}", f"output_dir={tmp_path}", f"++export.output={stem}",
                 "export.scope=network",
                 f"++export.height={TRACE_SIZE[0]}", f"++export.width={TRACE_SIZE[1]}", "device=cpu")
    cfg = compose_model_config("panoptic_fpn_small", "synthetic", overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = export_from_config(cfg)
    assert set(summary["files"]) == {"onnx", "torch_export"}
    assert set(summary["max_abs_diff"]) == {"onnx", "torch_export"}
    for diffs in summary["max_abs_diff"].values():
        assert list(diffs) == list(OUTPUT_NAMES) and max(diffs.values()) <= RAW_ATOL
    assert stem.with_suffix(".json").is_file()
    assert loaded == [summary["files"]["torch_export"]]

    rebuilt = build_model(cfg).eval()
    program = torch.export.load(summary["files"]["torch_export"])
    _assert_same_results(run_exported(program, rebuilt, batch), expected)

    bad = compose_model_config("panoptic_fpn_small", "synthetic", (*overrides, "++export.formatt=onnx"))
    with pytest.raises(ConfigError, match="export.formatt"):
        export_from_config(bad)


def test_network_and_postprocessor_are_the_models_own_state(setup, program):
    # Two views over one model: no module, buffer or setting is copied, so a change to the model
    # after export reaches the exported pipeline.
    model, _, batch, expected = setup
    net, post = model.network, model.postprocessor
    assert net.backbone is model.backbone and net.semantic_head is model.semantic_head
    assert net.rpn_head is model.rpn.head and post.rpn is model.rpn and post.roi_heads is model.roi_heads
    assert net.pixel_mean is model.pixel_mean and net.pixel_std is model.pixel_std
    assert post.merge_thresholds is model.merge_thresholds and post.thing_sem_labels is model.thing_sem_labels
    saved = model.merge_thresholds
    model.merge_thresholds = dataclasses.replace(saved, stuff_area=10**9)  # no stuff segment survives
    try:
        with torch.no_grad():
            want = model(batch)
        got = run_exported(program, model, batch)
    finally:
        model.merge_thresholds = saved
    assert not any(not s["isthing"] for r in want for s in r["panoptic"][1])
    assert any(not s["isthing"] for r in expected for s in r["panoptic"][1])
    _assert_same_results(got, want)

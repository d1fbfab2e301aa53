"""Mask2Former's network half exports (torch.export, ONNX) with dynamic batch, height and width and
matches the eager network at sizes other than the traced one; postprocessor(network(preprocess(batch)))
is exactly model.eval()(batch); the pipeline scope refuses a model that has no pipeline naming
export.scope=network (Mask2Former's pipeline: test_mask2former_pipeline_export.py)."""

import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from panfpn.modeling.build import build_model
from panfpn.modeling.mask2former.network import OUTPUT_NAMES
from panfpn.modeling.panoptic_fpn.export import (as_network, export_onnx, export_program, max_abs_diffs,
                                                 output_names, run_exported)

from modeling_helpers import compose_model_config, make_batch
from process_helpers import run as run_in_group

SIZE = (96, 128)  # the traced size (batch 2); MIN_SIZE is 96
# (batch, height, width, seed of the random input) the exported graphs are checked at: the traced
# size, its transpose, a taller non-square size with another batch size. Seeds chosen for MARGIN.
CHECK_INPUTS = [(1, *SIZE, 27), (1, 128, 96, 6), (2, 160, 96, 13)]
ATOL = {"torch_export": 1e-5, "onnx": 1e-4}
RAW_ATOL = 1e-4
# The decoder thresholds mask probabilities at 0.5 into attention masks: a pixel nearer to 0.5 than
# the exported graph's rounding (~1e-6) may flip, which moves the outputs by ~1e-3 (eager itself
# does under 1e-6 input noise). Random weights put many pixels near 0.5, so the inputs compared
# keep every such probability at least MARGIN away (checked by _mask_margin).
MARGIN = 2e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(compose_model_config("mask2former_small")).eval()
    # Zero thresholds so that random weights still give segments to compare.
    m.inference_config = type(m.inference_config)(object_mask_threshold=0.0, overlap_threshold=0.0,
                                                  topk_instances=10)
    return m


def _batch(sizes, orig_sizes, seed=3):
    return make_batch(sizes, orig_sizes, num_things=4, num_sem=5, seed=seed)


def _mask_margin(model, images, monkeypatch):
    """Smallest distance to 0.5 of the mask probabilities the decoder thresholds into attention
    masks (every prediction but the final one, whose attention mask is not used)."""
    predict, margins = model.predictor.predict, []

    def recording(queries, mask_features, attn_size):
        logits, mask, attn_mask = predict(queries, mask_features, attn_size)
        small = F.interpolate(mask, size=attn_size, mode="bilinear", align_corners=False)
        margins.append(float((small.sigmoid() - 0.5).abs().min()))
        return logits, mask, attn_mask

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(model.predictor, "predict", recording)
        model.network(images)
    return min(margins[:-1])


@pytest.fixture(scope="module")
def program(model):
    return export_program(model.network, height=SIZE[0], width=SIZE[1], dynamic=True)


@pytest.fixture(scope="module")
def onnx_session(model, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "m2f.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        export_onnx(model.network, path, height=SIZE[0], width=SIZE[1], dynamic=True)
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
def test_exported_network_matches_eager(model, request, monkeypatch, fmt):
    # One graph traced at 2x3x96x128 runs other batch sizes and other (non-square) sizes.
    exported = request.getfixturevalue("program" if fmt == "torch_export" else "onnx_session")
    runner = as_network(exported)
    for *shape, seed in CHECK_INPUTS:
        x = torch.randn(shape[0], 3, *shape[1:], generator=torch.Generator().manual_seed(seed))
        assert _mask_margin(model, x, monkeypatch) >= MARGIN
        with torch.no_grad():
            want = model.network(x)
            got = runner(x)
            diffs = max_abs_diffs(got, want, OUTPUT_NAMES)
        assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
        assert want[1].shape[-2:] == (shape[1] // 4, shape[2] // 4)
        assert set(diffs) == set(OUTPUT_NAMES)
        assert max(diffs.values()) <= ATOL[fmt], (shape, diffs)
    # The model's own preprocessing and postprocessor around the exported graph: same segments,
    # on a padded size that is not the traced one.
    batch = _batch([(120, 90)], [(240, 180)], seed=11)
    assert _mask_margin(model, model.network.preprocess(batch["images"], batch["image_sizes"]).tensors,
                        monkeypatch) >= MARGIN
    with torch.no_grad():
        expected = model(batch)
    got = run_exported(exported, model, batch)
    g_segs, e_segs = got[0]["panoptic"][1], expected[0]["panoptic"][1]
    assert e_segs and len(g_segs) == len(e_segs)
    for g, e in zip(g_segs, e_segs):
        assert (g["id"], g["isthing"], g["category"]) == (e["id"], e["isthing"], e["category"])
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)
    # A pixel whose two best queries tie within float rounding may flip: allow 0.1 %.
    assert (got[0]["panoptic"][0] == expected[0]["panoptic"][0]).float().mean() > 0.999


def test_onnx_axes_are_symbolic(onnx_session):
    # batch, height and width are named axes of the ONNX graph, not numbers
    (inp,) = onnx_session.get_inputs()
    assert inp.shape == ["batch", 3, "height", "width"]
    shapes = {o.name: o.shape for o in onnx_session.get_outputs()}
    assert shapes["pred_logits"][0] == "batch" and shapes["pred_masks"][0] == "batch"
    assert all(isinstance(d, str) for d in shapes["pred_masks"][2:]), shapes


@pytest.mark.slow  # two dynamic exports: ~15-30 s on 2 shared cores
def test_export_from_config_network_scope(model, tmp_path, monkeypatch):
    # tools/export.py export.scope=network on a Mask2Former checkpoint: dynamic (the default); both
    # files are written and verified at another size (128x96, batch 1).
    from panfpn.engine.export_run import export_from_config
    from panfpn.modeling.panoptic_fpn import export as ex

    # The random inputs of the export (trace, verification) from a seed whose 128x96 input keeps
    # MARGIN (CHECK_INPUTS[1]), so that the ONNX check cannot meet a flipped attention-mask pixel.
    example_input, seed = ex.example_input, CHECK_INPUTS[1][-1]
    verify = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(seed))
    assert _mask_margin(model, verify, monkeypatch) >= MARGIN

    shapes = []

    def seeded_input(height, width, **kwargs):
        shapes.append(tuple(example_input(height, width, **kwargs).shape))  # its size checks
        return torch.randn(shapes[-1], generator=torch.Generator().manual_seed(seed))

    monkeypatch.setattr(ex, "example_input", seeded_input)
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
    assert shapes == [(2, 3, *SIZE), (2, 3, *SIZE), tuple(verify.shape)]  # traced twice, verified once
    assert summary["outputs"] == list(OUTPUT_NAMES) and summary["input"]["dynamic"] is True
    for diffs in summary["max_abs_diff"].values():
        assert list(diffs) == list(OUTPUT_NAMES) and max(diffs.values()) <= RAW_ATOL
    assert stem.with_suffix(".json").is_file()
    program = torch.export.load(summary["files"]["torch_export"])
    x = torch.randn(2, 3, 96, 160)  # the saved program at a third size and batch 2
    with torch.no_grad():
        diffs = max_abs_diffs(as_network(program)(x), model.network(x), OUTPUT_NAMES)
    assert max(diffs.values()) <= ATOL["torch_export"], diffs


def test_pipeline_scope_refuses_a_model_without_pipeline():
    # The default export.scope=pipeline exists for Panoptic FPN and Mask2Former: any other model gets a
    # clear ConfigError naming export.scope=network (checked before anything is exported).
    from panfpn.engine.export_pipeline import check_pipeline_model
    from panfpn.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export\.scope=network") as err:
        check_pipeline_model(torch.nn.Identity(), "model.pth")
    assert "Identity" in str(err.value) and "model.pth" in str(err.value)


def test_export_tool_prints_the_config_error(tmp_path):
    # tools/export.py on Mask2Former with Panoptic FPN merge rules (export.merge): the message on
    # stderr and exit status 2, no traceback, no file written.
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "tools" / "export.py"), "model=mask2former_small", "data=synthetic",
           "device=cpu", "export.merge=textbook", f"output_dir={tmp_path}",
           f"++export.output={tmp_path / 'out' / 'm2f'}", "hydra.run.dir=" + str(tmp_path / "hydra")]
    proc = run_in_group(cmd, timeout=120, capture_output=True, text=True, cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert "export.merge" in proc.stderr and "Mask2Former" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()

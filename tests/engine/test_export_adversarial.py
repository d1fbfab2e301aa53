"""Odd requests to tools/export.py and odd files to the standalone ONNX runner: what a user asks for vs
what they get. Each test failed before its fix (named in the test's comment)."""

import contextlib
import json
import logging
import warnings
from typing import Iterator

import pytest
import torch
from config_helpers import compose_config
from hydra.utils import instantiate

from panfpn.data.synthetic import synthetic_metadata
from panfpn.deploy import onnx_runner
from panfpn.deploy.export import FORMAT, METADATA_KEY, build_pipeline, pipeline_metadata
from panfpn.engine.export_run import export_from_config
from panfpn.utils.errors import ConfigError
from panfpn.modeling.build import build_model
from panfpn.modeling.weights import WeightsError

MODEL = ("model=panoptic_fpn_small", "model.roi_heads.box_head.test.score_thresh=0.25",
         "model.roi_heads.box_head.test.nms_thresh=0.4", "model.roi_heads.box_head.test.detections_per_image=4")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small model (random, seeded), its config and its weights file."""
    cfg = compose_config(MODEL, output_dir=tmp_path_factory.mktemp("run"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    return model, cfg, weights


def _export(tmp_path, *extra):
    cfg = compose_config([*MODEL, "device=cpu", "export.verify=false", *extra], output_dir=tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_from_config(cfg, [])


def test_output_stem_with_a_dot_keeps_its_name(small, tmp_path):
    # Before: export.output=out/panfpn.v2 wrote out/panfpn.onnx and out/panfpn.json (with_suffix
    # replaced ".v2"), and out/model_0.5 wrote out/model_0.onnx: documented as "(.onnx/.pt2/.json added)".
    pytest.importorskip("onnx")
    summary = _export(tmp_path, f"weights={small[2]}", "export.scope=network", "export.format=onnx",
                      "export.height=96", "export.width=96", f"export.output={tmp_path / 'out' / 'panfpn.v2'}")
    assert summary["files"]["onnx"] == str(tmp_path / "out" / "panfpn.v2.onnx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["panfpn.v2.json", "panfpn.v2.onnx"]


def test_output_given_with_an_export_extension_or_as_a_folder(tmp_path):
    # A stem given with one of the written extensions stays as before (model.onnx -> model.onnx +
    # model.json); a folder (existing, or ending in a separator) gets <folder>/model.* instead of
    # <folder>.onnx beside it (before: export.output=deploy/ wrote deploy.onnx next to the folder).
    from panfpn.engine.export_pipeline import output_stem, output_file

    assert output_file(output_stem(str(tmp_path / "m.onnx"), tmp_path), ".json") == tmp_path / "m.json"
    assert output_file(output_stem(str(tmp_path / "m.v2"), tmp_path), ".onnx") == tmp_path / "m.v2.onnx"
    (tmp_path / "deploy").mkdir()
    assert output_stem(str(tmp_path / "deploy"), tmp_path) == tmp_path / "deploy" / "model"
    assert output_stem(str(tmp_path / "new") + "/", tmp_path) == tmp_path / "new" / "model"
    assert output_stem(None, tmp_path / "run") == tmp_path / "run" / "model"


def test_network_scope_refuses_weights_that_leave_heads_random(small, tmp_path):
    # Before: export.scope=network with weights_partial=true (here: a checkpoint without the semantic
    # head) logged a warning and wrote a network whose semantic head was random; the pipeline scope
    # and the eager remainder (build_inference_model) refuse the same weights.
    model, _, _ = small
    partial = tmp_path / "partial.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items() if not k.startswith("semantic_head")}},
               partial)
    # the message names export too (it said "eval and predict need every tensor" to tools/export.py)
    with pytest.raises(WeightsError, match="semantic_head.*eval, predict and export need every tensor"):
        _export(tmp_path, f"weights={partial}", "weights_partial=true", "export.scope=network",
                "export.format=onnx", f"export.output={tmp_path / 'net'}")
    assert not list(tmp_path.glob("net*"))


def test_metadata_records_the_detection_thresholds_baked_into_the_graph(small):
    # Before: the box head's test score / NMS thresholds (e.g. a command-line
    # model.roi_heads.box_head.test.score_thresh=0.25) were constants in the graph but absent from
    # its metadata and JSON: nothing told what an exported file drops below which score.
    model, cfg, _ = small
    pipeline = build_pipeline(model, synthetic_metadata(), instantiate(cfg.data.val.transforms))
    meta = pipeline_metadata(pipeline, synthetic_metadata())
    assert meta["detection"] == {"score_thresh": 0.25, "nms_thresh": 0.4, "detections_per_image": 4}
    assert meta["max_detections"] == 4


def _onnx_file(path, metadata=None):
    """A trivial ONNX graph (uint8 image in, identity out), with ``metadata`` as the panfpn entry."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["panoptic"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, [None, None, 3])],
                              [helper.make_tensor_value_info("panoptic", TensorProto.UINT8, [None, None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("metadata, message", [
    (None, "no 'panfpn' metadata"),
    ({"format": "something-else", "version": 1, "categories": []}, "not a panfpn pipeline export"),
    ({"format": FORMAT, "version": 99, "categories": []}, "version 99"),
])
def test_runner_refuses_an_onnx_file_of_another_kind_without_a_traceback(tmp_path, capsys, metadata, message):
    # Before: a network-scope export (no metadata) stopped the runner's command line with a Python
    # traceback; a file whose metadata was of another format or a newer version ran anyway and
    # failed later on a missing output, or wrote results read with the wrong meaning.
    pytest.importorskip("onnxruntime")
    from PIL import Image

    model = _onnx_file(tmp_path / "other.onnx", metadata)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 6)).save(image)
    with pytest.raises(SystemExit) as exit_info:
        onnx_runner.main([str(model), str(image), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert onnx_runner.FORMAT == FORMAT  # the standalone runner's copy (it imports no panfpn)


def test_a_test_resize_the_graph_cannot_reproduce_is_a_config_error(small):
    # Before: a multi-length test resize (data.val.transforms.short_edge_lengths=[64,96] on the
    # command line) raised a plain ValueError: tools/export.py, which prints ConfigErrors and exits 2,
    # showed a traceback; the message did not name the key as a config key.
    from panfpn.data.transforms import ResizeShortestEdge
    from panfpn.utils.errors import ConfigError

    model, _, _ = small
    with pytest.raises(ConfigError, match="config key 'data.val.transforms'"):
        build_pipeline(model, synthetic_metadata(), ResizeShortestEdge([64, 96], 128))


@contextlib.contextmanager
def _panfpn_warnings() -> Iterator[list[logging.LogRecord]]:
    """The warnings logged to the "panfpn" logger inside the block (it does not propagate to
    pytest's handler once the tool set it up, so caplog misses them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("panfpn")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("scope, extra, message", [
    ("pipeline", ("export.dynamic=false", "export.height=96", "export.width=96"),
     "export.dynamic=false is not used by export.scope=pipeline"),
    ("network", ("export.merge=detectron2", "export.height=96", "export.width=96"),
     "export.merge=detectron2 is not used by export.scope=network"),
])
def test_options_the_scope_does_not_use_are_named(small, tmp_path, scope, extra, message):
    # Before: export.dynamic=false export.height=96 export.width=96 with the default pipeline scope
    # wrote a graph taking any size, and export.merge=detectron2 with the network scope left the
    # (eager) merge on the model's rules, both without a word: each option is the other scope's.
    pytest.importorskip("onnx")
    with _panfpn_warnings() as records:
        summary = _export(tmp_path, f"weights={small[2]}", "export.format=onnx", f"export.scope={scope}", *extra,
                          f"export.output={tmp_path / 'p'}")
    assert summary["files"] == {"onnx": str(tmp_path / "p.onnx")}
    assert any(message in r.getMessage() for r in records)


@pytest.mark.parametrize("typed, message", [
    (["export.height=512"], "export.height=512 is not used by export.scope=pipeline"),
    (["export.height=800", "export.width=640"], "export.height=800 and export.width=640 are not used"),
    ([], None),
])
def test_a_traced_size_typed_for_the_pipeline_scope_is_named(typed, message):
    # Before: export.height=512 (or export.width) typed with the default pipeline scope was ignored
    # without a word unless export.dynamic=false was typed too: the pipeline graph takes any size.
    from types import SimpleNamespace

    from panfpn.engine.export_pipeline import warn_unused_options

    with _panfpn_warnings() as records:
        warn_unused_options(SimpleNamespace(scope="pipeline", dynamic=True, merge="model"), typed)
        warn_unused_options(SimpleNamespace(scope="network", dynamic=True, merge="model"), typed)  # used there
    messages = [r.getMessage() for r in records]
    assert messages == ([] if message is None else [messages[0]]), messages
    assert message is None or message in messages[0], messages


def test_an_output_folder_that_cannot_be_written_is_refused_before_exporting(small, tmp_path, monkeypatch):
    # Before: export.output under a file (or in a read-only folder) built and traced the model, then
    # failed with an AtomicWriteError traceback (exit 1) when writing the file.
    import panfpn.engine.export_run as export_run

    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr(export_run, "build_inference_model", lambda *a: pytest.fail("built before the check"))
    monkeypatch.setattr(export_run, "export_pipeline_from_config", lambda *a: pytest.fail("exported before the check"))
    with pytest.raises(ConfigError, match="'export.output': .*taken is a file"):
        _export(tmp_path, f"weights={small[2]}", f"export.output={tmp_path / 'taken' / 'model'}")


def test_merge_overrides_that_fixed_merge_rules_would_ignore_are_refused(small, tmp_path):
    # Before: export.merge=detectron2 with model.merge.score_thresh=0.2 baked Detectron2's 0.5 into
    # the graph (and its metadata) without a word: the threshold asked for was silently dropped.
    overrides = ["export.merge=detectron2", "model.merge.score_thresh=0.2"]
    cfg = compose_config([*MODEL, f"weights={small[2]}", "device=cpu", "export.verify=false",
                          "export.format=onnx", f"export.output={tmp_path / 'm'}", *overrides],
                         output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="model.merge.score_thresh=0.2 would have no effect"):
        export_from_config(cfg, overrides)
    assert not list(tmp_path.glob("m.*"))


def test_a_refused_merge_override_is_named_as_typed():
    # Before: tools/export.py, which passes a checkpoint's model.* keys to hydra as ++ overrides,
    # answered `export.merge=textbook model.merge.score_thresh=0.3` with "so ++model.merge.score_thresh=0.3
    # would have no effect": a form the user never typed.
    from panfpn.engine.export_pipeline import refuse_unused_merge_overrides

    with pytest.raises(ConfigError, match=r"so model\.merge\.score_thresh=0\.3 would have no effect"):
        refuse_unused_merge_overrides("textbook", ["export.merge=textbook", "++model.merge.score_thresh=0.3"])


def test_a_written_file_that_disagrees_with_eager_is_a_warning(small, caplog):
    # Before: the export's own check logged "segments DIFFER" (or 60 % equal pixels) at INFO,
    # like a passing check: a broken file was reported as quietly as a good one.
    import numpy as np

    from panfpn.deploy.pipeline import OUTPUT_NAMES
    from panfpn.engine.export_pipeline import _check

    model, cfg, _ = small
    pipeline = build_pipeline(model, synthetic_metadata(), instantiate(cfg.data.val.transforms))
    image = torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = [t.numpy() for t in pipeline(image)]
    broken = [o + 1 if n == "panoptic" else o for n, o in zip(OUTPUT_NAMES, want)]
    with caplog.at_level(logging.INFO, logger="panfpn"), torch.no_grad():
        assert _check(pipeline, lambda img: want, image, "onnx")["pixel_agreement"] == 1.0
        assert _check(pipeline, lambda img: broken, image, "onnx")["pixel_agreement"] == 0.0
    levels = [r.levelname for r in caplog.records if "vs eager pipeline" in r.getMessage()]
    assert levels == ["INFO", "WARNING"]

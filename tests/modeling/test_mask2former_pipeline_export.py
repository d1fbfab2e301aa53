"""The whole Mask2Former pipeline (image in, panoptic result out) exported to ONNX and .pt2, against
eager ``model.eval()``.

The small model with random weights, made informative: a per-query bias on the class head (+8 on one
random class per query, some of them 'no object') and a per-query offset on the mask embedding
(distinct masks), both inside the exported graph. Images: synthetic scenes of two aspect ratios
(64x96 landscape, 112x80 portrait; the test resize scales them to 128 x 192 and 179 x 128, the
latter padded to 192 x 160, so the crop matters). The module itself equals the eager model
exactly; the ONNX graph gives the same segments, instances and semantic labels, and (measured)
every id-map pixel equal; instance scores differ by ~1e-6 (onnxruntime's sums of mask
probabilities, in another order). A pixel may only differ where two queries' score x probability
tie within float rounding (or a probability is within rounding of 0.5), hence the 99.99 % bound.
"""

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torch import nn

from panfpn.data.collate import collate_panoptic
from panfpn.data.image_files import ImageFileDataset
from panfpn.data.image_io import read_image
from panfpn.data.synthetic import generate_dataset, synthetic_metadata
from panfpn.deploy.export import build_pipeline, export_pipeline_onnx
from panfpn.deploy.mask2former_pipeline import Mask2FormerPipeline
from panfpn.deploy.pipeline import OUTPUT_NAMES
from panfpn.evaluation.label_mapping import model_segments_to_dataset
from panfpn.modeling.build import build_model
from panfpn.modeling.mask2former.inference import InferenceConfig

from modeling_helpers import compose_model_config
from pipeline_helpers import exported_segments

ort = pytest.importorskip("onnxruntime")

SIZES = ((64, 96), (112, 80))  # (height, width) of the synthetic images: landscape, portrait
# The official object-mask threshold; a lower overlap threshold than the official 0.8 so that the
# random masks, which overlap a lot, leave segments (the ratio test is the same code either way).
HEAD_SEED = 5  # its images have stuff queries of one class merged (5 -> 3 and 6 -> 3 segments)
MASK_SCALE, MASK_BIAS = 4.0, -4.0  # sharp masks over ~15 % of the image each
INFERENCE = InferenceConfig(object_mask_threshold=0.8, overlap_threshold=0.5, topk_instances=30)


class PerQueryOffset(nn.Module):
    """A head plus a fixed per-query offset ``[Q, C]``: informative random outputs, exported with the graph."""

    def __init__(self, head: nn.Module, offset: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + self.offset


class CenteredMaskFeatures(nn.Module):
    """The pixel decoder with its mask features centred per channel over the image and channel 0 set
    to 1: each query's mask logit is a random linear pattern plus its own bias (offset channel 0)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.conv_dim = decoder.conv_dim

    def forward(self, features):
        mask_features, scales = self.decoder(features)
        centred = mask_features - mask_features.mean((2, 3), keepdim=True)
        centred = centred / (centred.pow(2).mean((1, 2, 3), keepdim=True).sqrt() + 1e-6)
        return torch.cat([torch.ones_like(centred[:, :1]), centred[:, 1:]], dim=1), scales


def informative_model(inference: InferenceConfig = INFERENCE):
    """mask2former_small with random weights, a confident class per query and distinct masks."""
    cfg = compose_model_config("mask2former_small")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    p = model.predictor
    q, k1 = p.query_feat.num_embeddings, p.class_embed.out_features
    g = torch.Generator().manual_seed(HEAD_SEED)
    bias = torch.zeros(q, k1)
    bias[torch.arange(q), torch.randint(0, k1, (q,), generator=g)] = 8.0  # k1 - 1: no object
    p.class_embed = PerQueryOffset(p.class_embed, bias)
    width = p.mask_embed.layers[-1].out_features
    offset = MASK_SCALE / width ** 0.5 * torch.randn(q, width, generator=g)  # logits of std ~MASK_SCALE
    offset[:, 0] = MASK_BIAS
    p.mask_embed = PerQueryOffset(p.mask_embed, offset)
    model.pixel_decoder = CenteredMaskFeatures(model.pixel_decoder)
    model.network.pixel_decoder = model.pixel_decoder  # the network half is built once
    model.inference_config = inference
    return model, cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, cfg = informative_model()
    metadata, transform = synthetic_metadata(), instantiate(cfg.data.val.transforms)
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate(SIZES):
        images = generate_dataset(root / f"s{i}", num_images=1, seed=i + 1, height=h, width=w) / "images"
        paths.append(shutil.copy(next(images.glob("*.jpg")), root / f"img{i}.jpg"))
    return model, metadata, transform, paths


@pytest.fixture(scope="module")
def onnx_file(setup, tmp_path_factory):
    model, metadata, transform, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_pipeline_onnx(build_pipeline(model, metadata, transform),
                                    tmp_path_factory.mktemp("onnx") / "m2f.onnx", metadata=metadata)


@torch.no_grad()
def eager_results(model, transform, paths, metadata):
    """Per image: ``model.eval()``'s id map, segments (dataset ids, areas) and instances / semantic labels."""
    out = []
    for sample in ImageFileDataset(paths, transforms=transform, keep_original=False):
        result = model(collate_panoptic([sample]))[0]
        id_map, segs = result["panoptic"]
        inst = result["instances"]
        out.append({
            "panoptic": id_map.numpy(),
            "segments": [{**s, "area": seg["area"]} for s, seg in zip(model_segments_to_dataset(segs, metadata), segs)],
            "boxes": inst["boxes"].numpy(), "scores": inst["scores"].numpy(),
            "labels": np.array([metadata.thing_ids[i] for i in inst["labels"].tolist()], dtype=np.int64),
            "sem_seg": result["sem_seg"].numpy()})
    return out


def _compare(outputs: dict, want: dict, *, exact: bool) -> None:
    """Exported outputs (numpy, by name) against one eager result."""
    got_map, got_segs = outputs["panoptic"], exported_segments(outputs)
    assert got_map.shape == want["panoptic"].shape and got_map.dtype == np.int32
    strip = lambda segs: [{k: v for k, v in s.items() if k not in ("score", "area")} for s in segs]  # noqa: E731
    assert strip(got_segs) == strip(want["segments"])
    assert [s.get("score") for s in got_segs] == pytest.approx([s.get("score") for s in want["segments"]], abs=1e-5)
    n = int(outputs["num_instances"])
    assert n == len(want["scores"]) <= outputs["scores"].shape[0]
    # the rows after the valid ones: top-k stuff pairs, score and label -1
    assert (outputs["scores"][n:] == -1).all() and (outputs["labels"][n:] == -1).all()
    outputs = {**outputs, **{k: outputs[k][:n] for k in ("boxes", "scores", "labels")}}
    np.testing.assert_array_equal(outputs["labels"], want["labels"])
    if exact:
        assert np.array_equal(got_map, want["panoptic"])
        assert [s["area"] for s in got_segs] == [s["area"] for s in want["segments"]]
        assert [s.get("score") for s in got_segs] == [s.get("score") for s in want["segments"]]
        np.testing.assert_array_equal(outputs["scores"], want["scores"])
        np.testing.assert_array_equal(outputs["boxes"], want["boxes"])
        np.testing.assert_array_equal(outputs["sem_seg"], want["sem_seg"])
        return
    differing = int((got_map != want["panoptic"]).sum())
    assert 1 - differing / got_map.size >= 0.9999
    assert all(abs(g["area"] - w["area"]) <= differing for g, w in zip(got_segs, want["segments"]))
    np.testing.assert_allclose(outputs["scores"], want["scores"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(outputs["boxes"], want["boxes"])  # integer pixel boxes
    assert (outputs["sem_seg"] == want["sem_seg"]).mean() >= 0.9999


def _informative(results) -> None:
    """The comparison means something: thing and stuff segments, both sizes, several semantic labels."""
    segs = [s for r in results for s in r["segments"]]
    assert any(s["isthing"] for s in segs) and any(not s["isthing"] for s in segs)
    assert len({r["panoptic"].shape for r in results}) == len(SIZES)
    assert all(len(np.unique(r["sem_seg"])) >= 2 for r in results)


def test_pipeline_module_equals_model(setup, monkeypatch):
    # The module itself (eager torch, before export): model.eval()'s outputs bit for bit.
    from panfpn.deploy import mask2former_pipeline as m2f_pipeline

    model, metadata, transform, paths = setup
    pipeline = build_pipeline(model, metadata, transform)
    assert isinstance(pipeline, Mask2FormerPipeline)
    want = eager_results(model, transform, paths, metadata)
    _informative(want)
    merged = []  # per image: (valid stuff queries, stuff segments they make)
    segment_ids = m2f_pipeline.segment_ids

    def recording(valid, isthing, labels):
        seg_of_query, new, new_id = segment_ids(valid, isthing, labels)
        merged.append((int((valid & ~isthing).sum()), int((new & ~isthing).sum())))
        return seg_of_query, new, new_id

    monkeypatch.setattr(m2f_pipeline, "segment_ids", recording)
    for path, w in zip(paths, want):
        with torch.no_grad():
            out = pipeline(torch.from_numpy(read_image(path)))
        _compare({n: t.numpy() for n, t in zip(OUTPUT_NAMES, out)}, w, exact=True)
    assert any(queries > segments for queries, segments in merged), merged  # stuff of one class merged


def test_onnx_pipeline_matches_eager(setup, onnx_file):
    import onnx

    model, metadata, transform, paths = setup
    graph = onnx.load(str(onnx_file)).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # standard ops only
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for path, want in zip(paths, eager_results(model, transform, paths, metadata)):
        _compare(dict(zip(OUTPUT_NAMES, session.run(None, {"image": read_image(path)}))), want, exact=False)


@pytest.mark.parametrize("threshold, overlap", [(1.0, 0.5), (0.8, 1.0)])
def test_nothing_kept_gives_the_empty_partition(setup, tmp_path, threshold, overlap):
    # Edge cases of the static rules: no query passes object_mask_threshold (scores never exceed
    # 1.0): the graph's id map is all void with no segment, as eager's, while instances and semantic
    # labels are still given; and overlap_threshold 1.0, which keeps only queries that win every
    # pixel of their own mask (the ratio test at its edge, in float64 on both sides).
    import dataclasses

    _, metadata, transform, paths = setup
    model, _ = informative_model(dataclasses.replace(INFERENCE, object_mask_threshold=threshold,
                                                      overlap_threshold=overlap))
    want = eager_results(model, transform, paths[:1], metadata)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_pipeline_onnx(build_pipeline(model, metadata, transform), tmp_path / "m.onnx",
                                    metadata=metadata)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip(OUTPUT_NAMES, session.run(None, {"image": read_image(paths[0])})))
    if threshold == 1.0:
        assert want["segments"] == [] and not want["panoptic"].any()
        assert int(outputs["num_segments"]) == 0 and not outputs["panoptic"].any()
    _compare(outputs, want, exact=False)
    assert len(want["scores"]) > 0


def test_segment_ids_follow_kept_query_order():
    # Stuff queries of one class share the first one's segment; dropped queries get none.
    from panfpn.deploy.mask2former_pipeline import segment_ids

    valid = torch.tensor([True, True, False, True, True, True])
    isthing = torch.tensor([False, True, False, False, True, False])
    labels = torch.tensor([5, 1, 5, 5, 1, 6])
    seg_of_query, new, new_id = segment_ids(valid, isthing, labels)
    assert seg_of_query.tolist() == [1, 2, 0, 1, 3, 4]
    assert new.tolist() == [True, True, False, False, True, True]
    assert new_id.tolist() == [1, 2, 0, 0, 3, 4]


@pytest.mark.slow  # ~160 s on 2 shared cores: export ~80 s, torch.export.load ~65 s (sympy)
def test_torch_export_program_matches_eager(setup, tmp_path):
    # The pipeline as a .pt2 that torch.export.load runs: the eager model's outputs (measured:
    # bit-identical id maps, instances and semantic labels).
    from panfpn.deploy.torch_export import export_pipeline_program

    model, metadata, transform, paths = setup
    path = export_pipeline_program(build_pipeline(model, metadata, transform), tmp_path / "m2f.pt2")
    program = torch.export.load(str(path)).module()
    for p, want in zip(paths, eager_results(model, transform, paths, metadata)):
        with torch.no_grad():
            out = program(torch.from_numpy(read_image(p)))
        _compare({n: t.numpy() for n, t in zip(OUTPUT_NAMES, out)}, want, exact=False)


def test_standalone_runner_matches_predict(setup, onnx_file, tmp_path):
    # onnx_runner.py copied next to the .onnx file and run where torch and panfpn cannot be imported
    # writes the PNGs + JSON that tools/predict.py writes with the eager model (stuff segments
    # without a score, as eager); predict.backend=onnxruntime writes the same files.
    from panfpn.deploy import onnx_runner
    from panfpn.engine.predict_run import predict_from_config, predict_images

    from test_pipeline_export import _BLOCKED_RUN

    model, metadata, transform, paths = setup
    runner = shutil.copy(onnx_runner.__file__, tmp_path / "onnx_runner.py")
    cmd = [sys.executable, "-c", _BLOCKED_RUN, str(runner), str(onnx_file), *map(str, paths),
           "--out", str(tmp_path / "onnx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    predict_images(model, paths, metadata, tmp_path / "eager", transforms=transform, overlay=False,
                   batch_size=1, write_threads=0, progress=False)
    got = json.loads((tmp_path / "onnx" / "panoptic.json").read_text())
    want = json.loads((tmp_path / "eager" / "panoptic.json").read_text())
    assert got["images"] == want["images"] and got["categories"] == want["categories"]
    for g, w in zip(got["annotations"], want["annotations"], strict=True):
        assert w["segments_info"] and any("score" not in s for s in w["segments_info"])  # stuff: no score
        assert [{**s, "score": None} for s in g["segments_info"]] == [{**s, "score": None} for s in w["segments_info"]]
        assert [s.get("score") for s in g["segments_info"]] == pytest.approx(
            [s.get("score") for s in w["segments_info"]], abs=1e-5)
        g_ids, w_ids = (np.asarray(Image.open(tmp_path / d / "panoptic" / g["file_name"]), dtype=np.int64)
                        for d in ("onnx", "eager"))
        assert (g_ids == w_ids).mean() >= 0.9999

    cfg = compose_model_config("mask2former_small", "synthetic", (
        f"weights={onnx_file}", "predict.backend=onnxruntime", "predict.overlay=false",
        f"predict.input=[{','.join(map(str, paths))}]", f"predict.output_dir={tmp_path / 'tool'}",
        f"output_dir={tmp_path / 'run'}"))
    summary = predict_from_config(cfg)
    assert len(summary["predicted"]) == len(paths) and not summary["failed"]
    assert json.loads((tmp_path / "tool" / "panoptic.json").read_text()) == got


def _tool_config(tmp_path, *overrides):
    return compose_model_config("mask2former_small", "synthetic", (
        f"output_dir={tmp_path}", f"export.output={tmp_path / 'out' / 'm2f'}", "device=cpu", *overrides))


def test_export_tool_writes_mask2former_pipeline(tmp_path):
    # tools/export.py with a Mask2Former checkpoint and the default scope: the whole pipeline as one
    # ONNX file (its metadata names the model and thresholds), checked by the tool against eager.
    # Before: a ConfigError telling to use export.scope=network.
    from panfpn.deploy.onnx_runner import model_metadata
    from panfpn.engine.export_run import export_from_config

    torch.manual_seed(0)
    model = build_model(compose_model_config("mask2former_small"))
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg = _tool_config(tmp_path, f"weights={weights}", "export.format=onnx",
                       "model.inference.object_mask_threshold=0.0", "model.inference.overlap_threshold=0.0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = export_from_config(cfg)
    assert summary["scope"] == "pipeline" and set(summary["files"]) == {"onnx"}
    assert summary["outputs"] == list(OUTPUT_NAMES)
    assert json.loads((tmp_path / "out" / "m2f.json").read_text()) == summary
    for check in summary["verify"]["onnx"].values():
        assert check["same_segments"] and check["pixel_agreement"] >= 0.9999
    meta = model_metadata(ort.InferenceSession(summary["files"]["onnx"], providers=["CPUExecutionProvider"]))
    assert meta["model"] == "mask2former" and meta["merge"] is None
    assert meta["mask_classification"]["object_mask_threshold"] == 0.0
    assert meta["categories"] == synthetic_metadata().to_coco_categories()


def test_export_tool_refuses_merge_rules_for_mask2former(tmp_path):
    # export.merge picks Panoptic FPN's merge rules; Mask2Former has none: a ConfigError naming the
    # key, before any file is written.
    from panfpn.engine.export_run import export_from_config
    from panfpn.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export\.merge"):
        export_from_config(_tool_config(tmp_path, "export.merge=textbook"))
    assert not (tmp_path / "out").exists()

"""The whole pipeline (image in, panoptic result out) exported to ONNX, against eager ``model.eval()``.

A tiny trained model on two synthetic val images (the test resize is the identity) and the two
COCO sample photos (resized in the graph), both merge rule sets. The exported graph must give the
same segments, >= 99.99 % of the id-map pixels and PQ >= 99.9 against the eager model as ground
truth. The resize in the graph is bit-exact (deploy/resize.py); what differs is float rounding of
onnxruntime's kernels vs PyTorch's (convolutions, RoIAlign, the semantic logits' bilinear Resize:
~1e-7 relative). Measured: 1 pixel of 230400 differs, on the COCO photo 000000439180 (sem label 1
vs 0 at (209, 346), where the two upsampled logits are 0.0346486 and 0.0346493: a tie within 7e-7),
which moves 1 pixel between two stuff segments' areas; everything else is identical.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from panfpn.data.image_io import read_image
from panfpn.deploy.export import build_pipeline, export_pipeline_onnx
from panfpn.deploy.pipeline import OUTPUT_NAMES
from panfpn.modeling.merge import MergeThresholds

from pipeline_helpers import RULES, eager_results, exported_segments, pq_against, sample_images, tiny_trained_model

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, cfg, metadata, transform = tiny_trained_model()
    paths = sample_images(tmp_path_factory.mktemp("images"))
    return model, metadata, transform, paths


@pytest.fixture(scope="module")
def onnx_files(setup, tmp_path_factory):
    """Rule set name -> exported ONNX file, each exported once per module."""
    model, metadata, transform, _ = setup
    files = {}

    def get(name):
        if name not in files:
            pipeline = build_pipeline(model, metadata, transform, merge=RULES[name])
            files[name] = export_pipeline_onnx(pipeline, tmp_path_factory.mktemp("onnx") / f"{name}.onnx",
                                               metadata=metadata)
        return files[name]
    return get


@pytest.fixture(scope="module", params=sorted(RULES))
def exported(request, onnx_files):
    return request.param, ort.InferenceSession(str(onnx_files(request.param)), providers=["CPUExecutionProvider"])


def _compare(got, want, metadata, tmp_path):
    """Same segments, >= 99.99 % equal pixels, PQ >= 99.9 (eager as ground truth); an area may
    differ only by pixels that differ (float ties, see the module docstring)."""
    for (g_map, g_segs), (w_map, w_segs) in zip(got, want):
        assert g_map.shape == w_map.shape
        assert (g_map == w_map).mean() >= 0.9999
        strip = lambda segs: [{k: v for k, v in s.items() if k not in ("score", "area")} for s in segs]  # noqa: E731
        assert strip(g_segs) == strip(w_segs)
        assert [s.get("score") for s in g_segs] == pytest.approx([s.get("score") for s in w_segs], abs=1e-4)
        differing = int((g_map != w_map).sum())
        assert all(abs(g["area"] - w["area"]) <= differing for g, w in zip(g_segs, w_segs))
    assert any(s["isthing"] for _, segs in want for s in segs)  # the merge had things to place
    assert any(not s["isthing"] for _, segs in want for s in segs)
    assert pq_against(want, got, metadata, tmp_path) >= 99.9


def test_pipeline_module_equals_model(setup, tmp_path):
    # The module itself (before export) gives model.eval()'s id maps and segments, resize included;
    # scores to float rounding (torchvision's RoIAlign here, the eager CPU path's sparse kernel).
    model, metadata, transform, paths = setup
    for name, rules in RULES.items():
        pipeline = build_pipeline(model, metadata, transform, merge=rules)
        with torch.no_grad():
            outs = [pipeline(torch.from_numpy(read_image(p))) for p in paths]
        got = [(o[0].numpy(), exported_segments({n: t.numpy() for n, t in zip(OUTPUT_NAMES, o)})) for o in outs]
        want = eager_results(model, transform, paths, rules, metadata)
        for (g_map, g_segs), (w_map, w_segs) in zip(got, want):
            assert np.array_equal(g_map, w_map), name
            assert [{**s, "score": None} for s in g_segs] == [{**s, "score": None} for s in w_segs], name
            assert [s.get("score") for s in g_segs] == pytest.approx([s.get("score") for s in w_segs], abs=1e-6)


def _check_against_eager(outputs: list[dict], model, transform, paths, rules, metadata, tmp_path) -> None:
    """An exported pipeline's outputs per image (name -> array) against eager ``model.eval()``: the
    instances (rows, labels; scores and boxes to float rounding), the semantic labels, and
    :func:`_compare` on the panoptic results."""
    want, instances = eager_results(model, transform, paths, rules, metadata, with_instances=True)
    got = []
    for out, inst in zip(outputs, instances, strict=True):
        got.append((out["panoptic"], exported_segments(out)))
        n = int(out["num_instances"])  # K rows, the first n valid, the rest padding
        assert n == len(inst["scores"]) and (out["labels"][n:] == -1).all() and (out["scores"][n:] < 0).all()
        np.testing.assert_array_equal(out["labels"][:n], inst["labels"])
        np.testing.assert_allclose(out["scores"][:n], inst["scores"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out["boxes"][:n], inst["boxes"], atol=1e-2, rtol=0)
        assert (out["sem_seg"] == inst["sem_seg"]).mean() >= 0.9999
    assert len({w_map.shape for w_map, _ in want}) >= 2 and max(w_map.shape[0] for w_map, _ in want) > 128
    _compare(got, want, metadata, tmp_path)


def test_onnx_pipeline_matches_eager(setup, exported, tmp_path):
    model, metadata, transform, paths = setup
    name, session = exported
    outputs = [dict(zip(OUTPUT_NAMES, session.run(None, {"image": read_image(p)}))) for p in paths]
    _check_against_eager(outputs, model, transform, paths, RULES[name], metadata, tmp_path)


def _node_output_shapes(onnx_file, image, tmp_path) -> list[tuple[str, list[int]]]:
    """(op type, output shape) of every node output of one onnxruntime CPU run of ``image``, from
    its profiler."""
    import json
    from pathlib import Path

    opts = ort.SessionOptions()
    opts.enable_profiling, opts.profile_file_prefix = True, str(tmp_path / "profile")
    session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    session.run(None, {"image": image})
    events = json.loads(Path(session.end_profiling()).read_text())
    return [(e["args"]["op_name"], shape) for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
            for out in e["args"].get("output_type_shape", []) for shape in out.values()]


def test_onnx_pipeline_has_no_per_instance_image(setup, onnx_files, tmp_path):
    # The graph pastes and merges inside the boxes: no tensor holds K image-sized planes (the full-size
    # [K, H0, W0] masks and their int64 cast made onnxruntime slower than eager; bench/RESULTS.md).
    # Every node's output shapes, from onnxruntime's profiler, on the largest sample photo.
    import math

    model, _, _, paths = setup
    image = max((read_image(p) for p in paths), key=lambda a: a.size)
    shapes = [shape for _, shape in _node_output_shapes(onnx_files("textbook"), image, tmp_path)]
    assert [1, *image.shape[:2]] in shapes or [*image.shape[:2]] in shapes  # the profile names image sizes
    k = model.roi_heads.box_head.test.detections_per_image
    planes = [s for s in shapes if s[-2:] == list(image.shape[:2]) and math.prod(s[:-2]) >= k]
    assert not planes, f"image-sized tensors with >= {k} planes: {planes[:3]}"


def test_onnx_pipeline_holds_one_full_size_copy_of_the_semantic_logits(setup, onnx_files, tmp_path):
    # On a large image the semantic logits resized to the input's size ([1, S, H0, W0] float32, 4 S
    # bytes per pixel) are the pipeline's largest tensor. Before, the graph took [0] of them (an
    # onnxruntime Gather: a second full copy) and then argmax; now argmax, then [0] of the labels
    # (COCO's 54 labels at 2048x2048: 543 -> 324 bytes per input pixel, bench/RESULTS.md session 15).
    import math

    model, _, _, paths = setup
    image = max((read_image(p) for p in paths), key=lambda a: a.size)
    labels = model.semantic_head.predictor.out_channels
    logits = [(op, shape) for op, shape in _node_output_shapes(onnx_files("textbook"), image, tmp_path)
              if shape[-2:] == list(image.shape[:2]) and math.prod(shape[:-2]) == labels]
    assert len(logits) == 1, logits  # the bilinear Resize's output only


def test_onnx_pipeline_coco_label_space(tmp_path):
    # COCO panoptic's real label space (80 things, 53 stuff, ids 1..200 with gaps) in an exported
    # graph: the category ids of segments and detections are COCO's ids, from COCO's own category
    # file (a thing's contiguous label is its rank among the thing ids, a stuff's semantic label its
    # rank among the stuff ids, as panopticapi's and Detectron2's loaders number them), isthing is
    # COCO's, and the output equals eager model.eval() (a randomly initialised tiny model with
    # spread scores) as in the other ONNX tests. Measured: 1 and 2 id-map pixels differ (of 273280
    # and 230400), each where the two best upsampled semantic logits (~10) are within 7e-6 (float
    # rounding of onnxruntime's Resize vs PyTorch's interpolate), moving those pixels between stuff
    # segments; segments, ids and categories are otherwise identical.
    import json

    from panfpn.data.collate import collate_panoptic
    from panfpn.data.image_files import ImageFileDataset
    from panfpn.deploy.onnx_runner import model_metadata

    from pipeline_helpers import COCO_CATEGORIES, COCO_IMAGES, coco_label_space_model

    categories = json.loads(COCO_CATEGORIES.read_text())
    thing_ids = sorted(c["id"] for c in categories if c["isthing"])
    stuff_ids = sorted(c["id"] for c in categories if not c["isthing"])
    isthing = {c["id"]: bool(c["isthing"]) for c in categories}
    assert (len(thing_ids), len(stuff_ids), max(isthing)) == (80, 53, 200)
    model, metadata, transform = coco_label_space_model()
    rules = RULES["detectron2"]
    path = export_pipeline_onnx(build_pipeline(model, metadata, transform, merge=rules), tmp_path / "coco.onnx",
                                metadata=metadata)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = model_metadata(session)
    assert [(c["id"], bool(c["isthing"])) for c in meta["categories"]] == [(c["id"], bool(c["isthing"]))
                                                                          for c in categories]
    outputs = [dict(zip(OUTPUT_NAMES, session.run(None, {"image": read_image(p)}))) for p in COCO_IMAGES]
    saved = model.merge_thresholds
    model.merge_thresholds = rules
    try:
        with torch.no_grad():
            raw = [model(collate_panoptic([sample]))[0]
                   for sample in ImageFileDataset(COCO_IMAGES, transforms=transform, keep_original=False)]
    finally:
        model.merge_thresholds = saved
    for out, result in zip(outputs, raw, strict=True):
        want = [(s["id"], (thing_ids if s["isthing"] else stuff_ids)[s["category"]], int(s["isthing"]))
                for s in result["panoptic"][1]]
        got = exported_segments(out)
        assert [(s["id"], s["category_id"], s["isthing"]) for s in got] == want
        assert all(isthing[s["category_id"]] == bool(s["isthing"]) for s in got)
        n = int(out["num_instances"])
        assert out["labels"][:n].tolist() == [thing_ids[label] for label in result["instances"]["labels"].tolist()]
    ids = [s["category_id"] for out in outputs for s in exported_segments(out)]
    things = {c for out in outputs for c in out["labels"][: int(out["num_instances"])].tolist()}
    # informative: several thing classes, thing ids past a gap (id != label + 1), stuff ids past 91
    assert len(things) >= 3 and any(c > thing_ids.index(c) + 1 for c in things)
    assert sum(1 for c in ids if not isthing[c]) >= 10 and any(isthing[c] for c in ids) and max(ids) > 180
    _check_against_eager(outputs, model, transform, COCO_IMAGES, rules, metadata, tmp_path)


# Run in a fresh interpreter where torch, torchvision and panfpn cannot be imported.
_BLOCKED_RUN = """
import runpy, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "panfpn"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
runner = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(runner, run_name="__main__")
"""


def test_standalone_runner_matches_predict(setup, onnx_files, tmp_path):
    # A new user with onnxruntime, numpy and Pillow only: the runner copied next to the .onnx file,
    # run without torch or panfpn, writes the PNGs + JSON that tools/predict.py writes with the
    # eager model (same segments; PQ of runner vs predict as ground truth >= 99.9).
    import json
    import shutil
    import subprocess
    import sys

    from panfpn.deploy import onnx_runner
    from panfpn.engine.predict_run import predict_images
    from panfpn.evaluation.pq import pq_compute

    model, metadata, transform, paths = setup
    runner = shutil.copy(onnx_runner.__file__, tmp_path / "onnx_runner.py")
    cmd = [sys.executable, "-c", _BLOCKED_RUN, str(runner), str(onnx_files("detectron2")),
           *map(str, paths), "--out", str(tmp_path / "onnx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    saved = model.merge_thresholds
    model.merge_thresholds = RULES["detectron2"]
    try:
        # batch 1, as the graph: in a batch, padding to the largest image changes the results a little
        predict_images(model, paths, metadata, tmp_path / "eager", transforms=transform, overlay=False,
                       batch_size=1, write_threads=0, progress=False)
    finally:
        model.merge_thresholds = saved
    got = json.loads((tmp_path / "onnx" / "panoptic.json").read_text())
    want = json.loads((tmp_path / "eager" / "panoptic.json").read_text())
    assert got["images"] == want["images"] and got["categories"] == want["categories"]
    for g, w in zip(got["annotations"], want["annotations"], strict=True):
        assert (g["image_id"], g["file_name"]) == (w["image_id"], w["file_name"])
        fields = ("id", "category_id", "iscrowd")
        assert [[s[f] for f in fields] for s in g["segments_info"]] == [[s[f] for f in fields] for s in w["segments_info"]]
        assert [s.get("score") for s in g["segments_info"]] == pytest.approx(
            [s.get("score") for s in w["segments_info"]], abs=1e-4)
        g_ids, w_ids = (np.asarray(Image.open(tmp_path / d / "panoptic" / g["file_name"]), dtype=np.int64)
                        for d in ("onnx", "eager"))
        assert (g_ids == w_ids).mean() >= 0.9999
    pq = pq_compute(tmp_path / "eager" / "panoptic.json", tmp_path / "onnx" / "panoptic.json", workers=1)
    assert 100 * pq["All"]["pq"] >= 99.9

    # tools/predict.py predict.backend=onnxruntime runs the same code: the same files.
    from panfpn.engine.predict_run import predict_from_config
    from modeling_helpers import compose_model_config

    cfg = compose_model_config("panoptic_fpn_small", "synthetic", (
        f"weights={onnx_files('detectron2')}", "predict.backend=onnxruntime", "predict.overlay=false",
        f"predict.input=[{','.join(map(str, paths))}]", f"predict.output_dir={tmp_path / 'tool'}",
        f"output_dir={tmp_path / 'run'}"))
    summary = predict_from_config(cfg)
    assert summary["predicted"] == [p.stem for p in paths] and not summary["failed"]
    assert json.loads((tmp_path / "tool" / "panoptic.json").read_text()) == got
    for ann in got["annotations"]:
        assert (tmp_path / "tool" / "panoptic" / ann["file_name"]).read_bytes() == \
            (tmp_path / "onnx" / "panoptic" / ann["file_name"]).read_bytes()


def test_export_tool_writes_pipeline_by_default(setup, tmp_path):
    # tools/export.py's job with the default scope: one ONNX file of the whole pipeline from a
    # checkpoint, its metadata (categories, resize, rules) and its own check against eager.
    import json
    import warnings

    from panfpn.engine.config import ConfigError
    from panfpn.engine.export_run import export_from_config
    from panfpn.deploy.onnx_runner import model_metadata
    from panfpn.deploy.resize import installed_pass_order

    from modeling_helpers import compose_model_config
    from pipeline_helpers import OVERRIDES

    model, metadata, _, _ = setup
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    stem = tmp_path / "out" / "model"
    overrides = (*OVERRIDES, f"weights={weights}", f"output_dir={tmp_path}", f"export.output={stem}",
                 "export.merge=textbook", "export.format=onnx", "device=cpu")
    cfg = compose_model_config("panoptic_fpn_small", "synthetic", overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = export_from_config(cfg)
    assert summary["scope"] == "pipeline" and set(summary["files"]) == {"onnx"}
    assert json.loads(stem.with_suffix(".json").read_text()) == summary
    for check in summary["verify"]["onnx"].values():
        assert check["same_segments"] and check["pixel_agreement"] >= 0.9999
    meta = model_metadata(ort.InferenceSession(summary["files"]["onnx"], providers=["CPUExecutionProvider"]))
    assert meta["categories"] == metadata.to_coco_categories()
    assert meta["resize"] == [128, 320] and meta["merge"]["overlap_thresh"] is None  # textbook rules
    assert meta["resize_pass_order"] == installed_pass_order()  # the rule the graph's resize follows
    bad = compose_model_config("panoptic_fpn_small", "synthetic", (*overrides, "export.merge=textbok"))
    with pytest.raises(ConfigError, match="export.merge"):
        export_from_config(bad)


def test_no_detection_left(setup):
    # Every detection below the box head's threshold: the padded merge still runs (stuff only), as
    # the eager model does (a bug found while exporting: padding was built from the first mask).
    model, metadata, transform, paths = setup
    box_head = model.roi_heads.box_head
    saved = box_head.test
    box_head.test = dataclasses.replace(saved, score_thresh=0.999)
    try:
        pipeline = build_pipeline(model, metadata, transform, merge=RULES["textbook"])
        with torch.no_grad():
            out = dict(zip(OUTPUT_NAMES, pipeline(torch.from_numpy(read_image(paths[0])))))
        want = eager_results(model, transform, paths[:1], RULES["textbook"], metadata)[0]
    finally:
        box_head.test = saved
    assert int(out["num_instances"]) == 0 and (out["labels"] == -1).all()
    got = exported_segments({k: v.numpy() for k, v in out.items()})
    assert got == want[1] and got and not any(s["isthing"] for s in got)
    assert np.array_equal(out["panoptic"].numpy(), want[0])


def test_resize_is_bit_exact(tmp_path):
    # The in-graph resize gives the eager transform's bytes (Pillow's BILINEAR, as Detectron2), eager
    # and in onnxruntime, on downscales (several taps; 640 -> 228 needs a tap count that integer
    # truncation got wrong once), upscales and the identity. (1000, 37) and (400, 150) are shrunk
    # vertical pass first by Pillow >= 13 (resize.pillow_runs_vertical_first); the graph holds
    # both orders, the one its sizes select on all rows, the other on none (before: horizontal
    # first, ~1/3 of their bytes 1 off).
    import warnings

    from panfpn.data.transforms import resize_pair, shortest_edge_size as eager_size
    from panfpn.deploy.resize import resize_uint8, shortest_edge_size, size_of

    class Resize(torch.nn.Module):
        def forward(self, image):
            h, w = shortest_edge_size(size_of(image, 1), size_of(image, 2), 128, 320)
            return resize_uint8(image, h, w)

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
              for h, w in ((360, 640), (333, 500), (100, 90), (128, 128), (1000, 37), (400, 150))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Resize(), (images[0],), str(tmp_path / "resize.onnx"), dynamo=False, opset_version=17,
                          input_names=["image"], dynamic_axes={"image": {1: "h", 2: "w"}})
    session = ort.InferenceSession(str(tmp_path / "resize.onnx"), providers=["CPUExecutionProvider"])
    for image in images:
        size = eager_size(*image.shape[1:], 128, 320)
        want = resize_pair(image, torch.zeros(image.shape[1:]), *size)[0].numpy()
        assert np.array_equal(Resize()(image).numpy(), want), image.shape
        assert np.array_equal(session.run(None, {"image": image.numpy()})[0], want), image.shape


def test_exported_program_resize_is_bit_exact():
    # torch.export of the pipeline's preprocessing (shortest-edge resize to (128, 320), identity
    # normalisation, padding) with dynamic sizes over the .pt2's range: no guard narrows the range
    # (the pass order is row counts computed from the sizes, not a Python branch), and the program gives
    # Pillow's bytes on a portrait shrunk vertical pass first, a landscape and an upscale.
    import warnings

    from panfpn.data.transforms import resize_pair, shortest_edge_size as eager_size
    from panfpn.deploy.pipeline import preprocess_image
    from panfpn.deploy.torch_export import MAX_SIDE, MIN_SIDE

    class Preprocess(torch.nn.Module):
        def forward(self, image):
            return preprocess_image(image, (128, 320), torch.zeros(3, 1, 1), torch.ones(3, 1, 1))[0]

    dims = {0: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
            1: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on unbacked sizes
        program = torch.export.export(Preprocess(), (torch.zeros(120, 160, 3, dtype=torch.uint8),),
                                      dynamic_shapes={"image": dims}, strict=False)
    ranges = [(int(r.lower), int(r.upper)) for s, r in program.range_constraints.items() if not str(s).startswith("u")]
    assert ranges == [(MIN_SIDE, MAX_SIDE)] * 2
    g = torch.Generator().manual_seed(0)
    for h, w in ((1000, 37), (360, 640), (50, 40)):
        image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
        size = eager_size(h, w, 128, 320)
        want = resize_pair(image.permute(2, 0, 1), torch.zeros(h, w), *size)[0].numpy()
        got = program.module()(image)[0, :, :size[0], :size[1]]
        assert np.array_equal(got.numpy(), want), (h, w)


def test_exported_resize_does_one_pass_orders_work():
    # The program selects Pillow >= 13's pass order from the sizes without a guard; the order it does
    # not take runs on 0 rows (deploy/resize.py), so the program computes about what a program
    # with one fixed order computes, on a portrait resized vertical pass first and on a landscape.
    # Counted: elements of every op's outputs while the program runs. Before, both orders ran in
    # full and torch.where picked one: 1.81x the single order's elements on the portrait (onnxruntime:
    # ~2x the time, bench/resize.py --onnx); now 1.00x / 1.07x (the row selection and the concatenation).
    import warnings

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from panfpn.deploy.pipeline import preprocess_image
    from panfpn.deploy.resize import HORIZONTAL_FIRST, PILLOW13
    from panfpn.deploy.torch_export import MAX_SIDE, MIN_SIDE

    class Preprocess(torch.nn.Module):
        def __init__(self, order: str):
            super().__init__()
            self.order = order

        def forward(self, image):
            return preprocess_image(image, (128, 320), torch.zeros(3, 1, 1), torch.ones(3, 1, 1),
                                    resize_order=self.order)[0]

    class Work(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    dims = {0: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
            1: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
    programs = {}
    for order in (HORIZONTAL_FIRST, PILLOW13):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's notes on unbacked sizes
            programs[order] = torch.export.export(Preprocess(order), (torch.zeros(120, 160, 3, dtype=torch.uint8),),
                                                  dynamic_shapes={"image": dims}, strict=False).module()
    g = torch.Generator().manual_seed(0)
    for h, w in ((1000, 37), (360, 640)):
        image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
        work = {}
        for order, program in programs.items():
            with Work() as counted:
                program(image)
            work[order] = counted.elements
        assert work[PILLOW13] <= 1.1 * work[HORIZONTAL_FIRST], ((h, w), work)


class _SizedResize(torch.nn.Module):
    """The in-graph resize to a size given as a graph input (int64 ``[2]``), sizes traced dynamic."""

    def forward(self, image, size):
        from panfpn.deploy.resize import resize_uint8, size_of

        size_of(image, 1)  # the image's sizes stay dynamic in the trace
        return resize_uint8(image, size[0], size[1])


def _export_sized_resize(path):
    """``_SizedResize`` traced to ONNX with a dynamic image size -> an onnxruntime CPU session."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_SizedResize(), (torch.zeros(3, 60, 50, dtype=torch.uint8), torch.tensor([30, 20])),
                          str(path), dynamo=False, opset_version=17, input_names=["image", "size"],
                          dynamic_axes={"image": {1: "h", 2: "w"}})
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_resize_gathers_bytes_one_channel_at_a_time(tmp_path):
    # The resize's memory on a large image is its gathered taps (about 2 per input pixel and pass on
    # a downscale, 3 per output pixel on an upscale). Before: every channel gathered at once in
    # float64 and multiplied (a float64 Gather of the image in the ONNX graph; the largest tensor 51
    # bytes per input pixel here, 72 per output pixel upscaled; onnxruntime's peak 155 bytes per
    # input pixel at 4096x4096: bench/RESULTS.md, session 15). Now: bytes gathered one channel at a
    # time, widened to float64 and summed by a MatMul (float64: the integer product is missing on
    # CUDA): no float64 Gather, the largest tensor at most 26 bytes per pixel (input or output, the
    # larger).
    import onnx
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from panfpn.deploy.resize import resize_uint8

    class Largest(TorchDispatchMode):
        nbytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes = [t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.nbytes = max([self.nbytes, *sizes])
            return out

    image = torch.randint(0, 256, (3, 512, 512), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for size in ((64, 64), (400, 96), (800, 800)):  # down (both orders), up
        with Largest() as largest:
            resize_uint8(image, *size)
        pixels = max(512 * 512, size[0] * size[1])  # an upscale gathers per output pixel
        assert largest.nbytes <= 26 * pixels, (size, largest.nbytes / pixels)
    _export_sized_resize(tmp_path / "resize.onnx")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "resize.onnx"))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    sums = {n.output[0] for n in graph.node if n.op_type == "MatMul"}
    gathered = {types.get(n.output[0]) for n in graph.node if n.op_type == "Gather" and n.input[0] not in sums}
    assert onnx.TensorProto.DOUBLE not in gathered and onnx.TensorProto.UINT8 in gathered
    assert {types.get(n.output[0]) for n in graph.node if n.op_type == "MatMul"} == {onnx.TensorProto.DOUBLE}


@pytest.mark.parametrize("fill", ["255", "stripes", "noise"])
def test_resize_extreme_scales_equal_pillow(fill, tmp_path):
    # the sums at their largest: 2000 -> 1 sums ~4000 taps (each weight rounded, the row's sum a
    # little off 2**22) of 255s; 3 -> 1000 upscales. Eager and onnxruntime give Pillow's bytes.
    image = torch.full((3, 2000, 2000), 255, dtype=torch.uint8)
    if fill == "stripes":
        image[:, :, ::2] = 0
    elif fill == "noise":
        image = torch.randint(0, 256, image.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    from panfpn.deploy.resize import resize_uint8

    session = _export_sized_resize(tmp_path / "resize.onnx")
    for src, size in (((2000, 2000), (1, 1)), ((2000, 2000), (2, 3)), ((2000, 7), (1, 1000)),
                      ((3, 3), (1000, 1000)), ((3, 2000), (1000, 1))):
        x = image[:, :src[0], :src[1]].contiguous()
        want = np.stack([np.asarray(Image.fromarray(c).resize(size[::-1], Image.BILINEAR)) for c in x.numpy()])
        assert np.array_equal(resize_uint8(x, *size).numpy(), want), (src, size)
        assert np.array_equal(session.run(None, {"image": x.numpy(), "size": np.array(size)})[0], want), (src, size)

# Run in `python -I` from a folder outside the repository, with panfpn blocked (an editable install
# would otherwise put it on the path): a user's process without panfpn.
_RUN_PT2 = """
import sys
sys.modules["panfpn"] = None  # any import of panfpn raises ImportError
import numpy as np, torch, torchvision
for path, inputs, result in zip(*[iter(sys.argv[1:])] * 3):  # (program, images, outputs) triples
    program = torch.export.load(path).module()
    data = np.load(inputs)
    out = {}
    for i in range(int(data["count"])):
        with torch.no_grad():
            for j, t in enumerate(program(torch.from_numpy(data[f"image{i}"]))):
                out[f"{i}_{j}"] = t.numpy()
    np.savez(result, **out)
"""


def _export_program_with_tool(model, tmp_path, rules: MergeThresholds) -> str:
    """tools/export.py with ``export.format=torch_export export.merge=model`` on a checkpoint of
    ``model`` whose config sets the model's merge rules to ``rules``; checks its summary and its own
    verification of the written file, returns the .pt2 path."""
    import warnings

    from panfpn.engine.export_run import export_from_config

    from modeling_helpers import compose_model_config
    from pipeline_helpers import OVERRIDES

    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    rule_overrides = [f"model.merge.{k}={'null' if v is None else v}" for k, v in dataclasses.asdict(rules).items()]
    cfg = compose_model_config("panoptic_fpn_small", "synthetic", (
        *OVERRIDES, *rule_overrides, f"weights={weights}", f"output_dir={tmp_path}",
        f"export.output={tmp_path / 'out' / 'model'}", "export.merge=model", "export.format=torch_export",
        "device=cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = export_from_config(cfg)
    assert set(summary["files"]) == {"torch_export"} and summary["files"]["torch_export"].endswith(".pt2")
    assert summary["pipeline"]["merge"] == dataclasses.asdict(rules)  # the model's own rules, in the graph
    for check in summary["verify"]["torch_export"].values():
        assert check["same_segments"] and check["pixel_agreement"] == 1.0
    return summary["files"]["torch_export"]


@pytest.mark.slow
def test_torch_export_programs_match_eager(setup, tmp_path):
    # The pipeline as .pt2 programs, one per merge rule set: Detectron2's (export_pipeline_program)
    # and the model's own rules set to the textbook ones (tools/export.py export.merge=model), plus
    # one with no detection left. torch.export.load runs them in a process without panfpn on the
    # synthetic images, the COCO photos, a 24x640 strip (resized to 12x320: P5 one cell high), a
    # 6x9 corner and the strip turned upright (640x24 -> 320x12: resized vertical pass first by
    # Pillow >= 13, which the program selects from the sizes).
    # Each output equals the eager pipeline module's (floats within 1e-4), and against eager
    # model.eval() the checks of the ONNX test hold (same segments, >= 99.99 % pixels, PQ >= 99.9);
    # measured: every id map and segment list identical (the .pt2 runs PyTorch's own kernels), scores
    # within ~1e-6 (torchvision's RoIAlign vs the eager CPU path's sparse kernel).
    # Before: the strip failed a guard on the P5 size ("Guard failed: torch.sym_max(1, 1 + ..."), the
    # corner was below the program's 16 px minimum side, and
    # each program took ~35 s to export and ~50 s to load on 2 shared cores (now ~12 s and ~10 s:
    # the resized size is a fresh symbol, deploy/resize.py unbacked_size).
    import os
    import subprocess
    import sys

    from panfpn.deploy.torch_export import export_pipeline_program

    from pipeline_helpers import edge_images

    model, metadata, transform, paths = setup
    paths = [*paths, *edge_images(tmp_path)]
    paths.append(tmp_path / "upright.png")
    Image.open(paths[-3]).transpose(Image.Transpose.TRANSPOSE).save(paths[-1])
    images = [read_image(p) for p in paths]
    assert [im.shape[:2] for im in images[-3:]] == [(24, 640), (6, 9), (640, 24)]
    detectron2 = build_pipeline(model, metadata, transform, merge=RULES["detectron2"])
    programs = {"detectron2": export_pipeline_program(detectron2, tmp_path / "detectron2.pt2"),
                "textbook": _export_program_with_tool(model, tmp_path, RULES["textbook"])}
    want = {}
    with torch.no_grad():
        for name, rules in RULES.items():
            pipeline = build_pipeline(model, metadata, transform, merge=rules)
            want[name] = [pipeline(torch.from_numpy(im)) for im in images]
        box_head = model.roi_heads.box_head
        saved = box_head.test
        box_head.test = dataclasses.replace(saved, score_thresh=0.999)
        try:
            empty = build_pipeline(model, metadata, transform, merge=MergeThresholds.detectron2())
            programs["empty"] = export_pipeline_program(empty, tmp_path / "empty.pt2")
            want["empty"] = [empty(torch.from_numpy(im)) for im in images]
        finally:
            box_head.test = saved
    assert all(int(w[OUTPUT_NAMES.index("num_instances")]) > 0 for name in RULES for w in want[name])
    assert all(int(w[OUTPUT_NAMES.index("num_instances")]) == 0 for w in want["empty"])

    np.savez(tmp_path / "in.npz", count=len(images), **{f"image{i}": im for i, im in enumerate(images)})
    args = []
    for name, program in programs.items():
        args += [str(program), str(tmp_path / "in.npz"), str(tmp_path / f"out_{name}.npz")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", _RUN_PT2, *args], cwd=tmp_path, env=env, check=True,
                   timeout=300, start_new_session=True)
    for name, expected in want.items():
        got = np.load(tmp_path / f"out_{name}.npz")
        outputs = [{n: got[f"{i}_{j}"] for j, n in enumerate(OUTPUT_NAMES)} for i in range(len(expected))]
        for i, (out, eager) in enumerate(zip(outputs, expected)):
            for n, w in zip(OUTPUT_NAMES, eager):
                if w.dtype == torch.float32:
                    np.testing.assert_allclose(out[n], w.numpy(), atol=1e-4, err_msg=f"{name} image {i} {n}")
                else:
                    assert np.array_equal(out[n], w.numpy()), f"{name} image {i} {n}"
        if name in RULES:
            (tmp_path / name).mkdir()
            _check_against_eager(outputs, model, transform, paths, RULES[name], metadata, tmp_path / name)

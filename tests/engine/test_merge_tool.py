"""tools/merge.py: semantic label PNGs + a COCO results JSON (RLE, as pycocotools writes it) ->
COCO-panoptic PNG + JSON equal to a sequential merge written in the tests; bad inputs skipped."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import panfpn
from merge_helpers import coco_rle, rgb_to_ids, semantic_entries, sequential_merge
from process_helpers import run as run_in_group

ROOT = Path(__file__).resolve().parents[2]
THINGS, STUFF = [3, 7], [1, 5]
CATEGORIES = [{"id": i, "name": f"c{i}", "isthing": int(i in THINGS), "color": [i, 2 * i, 3 * i]}
              for i in sorted(THINGS + STUFF)]
H, W = 24, 20


def _image_predictions(seed):
    g = torch.Generator().manual_seed(seed)
    sem = torch.tensor([1, 5, 3, 7, 0])[torch.randint(0, 5, (H // 4, W // 4), generator=g)]
    sem = sem.repeat_interleave(4, 0).repeat_interleave(4, 1)
    n = 6
    masks = torch.zeros(n, H, W, dtype=torch.bool)
    for i in range(n):
        y0, x0 = torch.randint(0, H - 4, (1,), generator=g).item(), torch.randint(0, W - 4, (1,), generator=g).item()
        masks[i, y0:y0 + torch.randint(3, 14, (1,), generator=g).item(),
              x0:x0 + torch.randint(3, 14, (1,), generator=g).item()] = True
    scores = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6, 0.4], dtype=torch.float64)
    labels = torch.tensor(THINGS)[torch.randint(0, 2, (n,), generator=g)]
    return sem, masks, scores, labels


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}  # as COCO results JSON holds it


def _write_panoptic_png(path: Path, id_map: np.ndarray) -> None:
    """COCO-panoptic convention: id = R + 256 G + 256^2 B."""
    rgb = np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def _inputs(tmp_path: Path):
    sem_dir = tmp_path / "sem"
    sem_dir.mkdir()
    images, results, expected = [], [], {}
    for k in range(4):
        sem, masks, scores, labels = _image_predictions(k)
        images.append({"id": 100 + k, "file_name": f"img{k}.jpg", "height": H, "width": W})
        if k != 2:  # image 102: no semantic PNG
            Image.fromarray(sem.numpy().astype(np.uint8), mode="L").save(sem_dir / f"img{k}.png")
        for m, s, c in zip(masks.numpy(), scores.tolist(), labels.tolist()):
            rle = _rle(m if k != 3 else m[:, :-1])  # image 103: RLE of the wrong size
            results.append({"image_id": 100 + k, "category_id": c, "segmentation": rle, "score": s})
        expected[100 + k] = sequential_merge(sem, masks, scores, labels,
                                             panfpn.MergeThresholds.textbook(), STUFF)
    results.append({"image_id": 999, "category_id": 3, "segmentation": _rle(np.ones((H, W), bool)),
                    "score": 0.9})
    (tmp_path / "instances.json").write_text(json.dumps(results))
    (tmp_path / "images.json").write_text(json.dumps({"images": images, "categories": CATEGORIES,
                                                      "annotations": []}))
    return images, expected


def _ground_truth(tmp_path: Path, images, expected) -> Path:
    """GT for the two good images, equal to the expected merge (so PQ is 100 iff the tool's
    output matches it segment for segment)."""
    (tmp_path / "gt").mkdir()
    anns = []
    for img in images[:2]:
        id_map, segs = expected[img["id"]]
        _write_panoptic_png(tmp_path / "gt" / f"img{img['id']}.png", id_map.numpy().astype(np.int64))
        anns.append({"image_id": img["id"], "file_name": f"img{img['id']}.png", "segments_info": [
            {"id": s[0], "category_id": s[2], "area": s[4], "iscrowd": 0, "bbox": [0, 0, 1, 1]}
            for s in segs]})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images[:2], "annotations": anns, "categories": CATEGORIES}))
    return path


def test_merge_tool_equals_sequential_merge_and_skips_bad_inputs(tmp_path):
    images, expected = _inputs(tmp_path)
    gt_json = _ground_truth(tmp_path, images, expected)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run_in_group(
        [sys.executable, str(ROOT / "tools/merge.py"), "device=cpu", f"hydra.run.dir={tmp_path / 'run'}",
         f"merge.semantic_dir={tmp_path / 'sem'}", f"merge.instances_json={tmp_path / 'instances.json'}",
         f"merge.images_json={tmp_path / 'images.json'}", f"merge.output_dir={out}",
         f"merge.eval_gt_json={gt_json}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = json.loads((out / "panoptic_merged.json").read_text())
    assert sorted(a["image_id"] for a in pred["annotations"]) == [100, 101]
    painted = 0
    for ann in pred["annotations"]:
        want_map, want_segs = expected[ann["image_id"]]
        rgb = np.asarray(Image.open(out / "panoptic_merged" / ann["file_name"])).astype(np.int64)
        id_map = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        assert np.array_equal(id_map, want_map.numpy())
        got = [(s["id"], s["category_id"] in THINGS, s["category_id"], s.get("score"), s["area"])
               for s in ann["segments_info"]]
        assert got == want_segs
        painted += len(got)
    assert painted >= 4
    skipped = json.loads((out / "merge_skipped.json").read_text())
    assert set(skipped) == {"102", "103", "999"}
    assert "missing" in skipped["102"] and "RLE size" in skipped["103"]
    assert "PQ 100.00" in proc.stderr + proc.stdout


def test_merge_tool_names_missing_inputs(compose_cfg, tmp_path):
    from panfpn.engine.config import ConfigError
    from panfpn.engine.merge_run import merge_from_config

    cfg = compose_cfg(["merge.semantic_dir=x"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="merge.instances_json"):
        merge_from_config(cfg)
    with pytest.raises(ConfigError, match="merge.rules"):
        merge_from_config(compose_cfg(["merge.rules=fancy"], output_dir=tmp_path))


def _tool_inputs(tmp_path: Path) -> list[str]:
    return [f"merge.semantic_dir={tmp_path / 'sem'}", f"merge.instances_json={tmp_path / 'instances.json'}",
            f"merge.images_json={tmp_path / 'images.json'}", "device=cpu"]


def _listing_image_102(gt_json: Path, images) -> Path:
    """``gt_json`` with an annotation for image 102 too, which the merge skips (no semantic PNG)."""
    gt = json.loads(gt_json.read_text())
    (gt_json.parent / "gt" / "img102.png").write_bytes((gt_json.parent / "gt" / "img100.png").read_bytes())
    gt["annotations"].append({**gt["annotations"][0], "image_id": 102, "file_name": "img102.png"})
    gt_json.write_text(json.dumps({**gt, "images": images[:3]}))
    return gt_json


def test_a_ground_truth_listing_a_skipped_image_is_one_line_and_exit_2(tmp_path):
    # Before: merge.eval_gt_json listing an image the merge skipped (docs/merge.md: it must not) ended
    # tools/merge.py with a PQInputError traceback, exit 1; one without its PNG folder beside it with a
    # FileNotFoundError traceback; one that does not exist with a JSONFileNotFoundError traceback, after
    # merging. Now: one line naming the key, exit 2; the skip named and the merged output kept in the
    # first case, nothing merged in the last.
    images, expected = _inputs(tmp_path)
    gt_json = _listing_image_102(_ground_truth(tmp_path, images, expected), images)
    gt = json.loads(gt_json.read_text())
    (tmp_path / "no_pngs.json").write_text(json.dumps(gt))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    last = {}
    for gt_path, out in ((gt_json, tmp_path / "out"), (tmp_path / "no_pngs.json", tmp_path / "out1"),
                         (tmp_path / "missing.json", tmp_path / "out2")):
        proc = run_in_group([sys.executable, str(ROOT / "tools/merge.py"), *_tool_inputs(tmp_path),
                             f"merge.output_dir={out}", f"merge.eval_gt_json={gt_path}"],
                            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last[out.name] = proc.stderr.strip().splitlines()[-1]
        assert last[out.name].startswith(f"tools/merge.py: config key 'merge.eval_gt_json': {gt_path}"), last
    assert "image 102" in last["out"] and "merge_skipped.json" in last["out"], last
    assert (tmp_path / "out" / "panoptic_merged.json").is_file()  # the merge itself is kept
    assert "PNG folder not found" in last["out1"], last
    assert "is not a file" in last["out2"] and not (tmp_path / "out2").exists(), last  # refused before merging


def test_merge_from_config_names_the_skipped_images_a_ground_truth_lists(compose_cfg, tmp_path):
    from panfpn.engine.config import ConfigError
    from panfpn.engine.merge_run import merge_from_config

    images, expected = _inputs(tmp_path)
    gt_json = _listing_image_102(_ground_truth(tmp_path, images, expected), images)
    cfg = compose_cfg([*_tool_inputs(tmp_path), f"merge.eval_gt_json={gt_json}",
                       "merge.workers=0"], output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"'merge.eval_gt_json': .*image 102.*skipped 3 image.*merge_skipped.json"):
        merge_from_config(cfg)
    assert sorted(a["image_id"] for a in json.loads(
        (tmp_path / "out" / "panoptic_merged.json").read_text())["annotations"]) == [100, 101]


def test_rule_overrides_from_the_command_line_are_used_and_recorded(compose_cfg, tmp_path):
    from panfpn.engine.merge_run import merge_from_config

    _inputs(tmp_path)
    overrides = {"score_thresh": 0.65, "overlap_thresh": None, "stuff_area": 20}
    out = tmp_path / "out"
    cfg = compose_cfg([*_tool_inputs(tmp_path), "merge.rules=detectron2", "merge.score_thresh=0.65",
                       "merge.overlap_thresh=none", "merge.stuff_area=20", "merge.workers=0"],
                      output_dir=out)
    summary = merge_from_config(cfg)
    rules = panfpn.MergeThresholds(score_thresh=0.65, overlap_thresh=None, stuff_area=20,
                                   thing_min_remaining_area=0)
    pred = {a["image_id"]: a for a in json.loads((out / "panoptic_merged.json").read_text())["annotations"]}
    assert sorted(pred) == [100, 101]
    differs = 0
    for image_id, ann in pred.items():
        sem, masks, scores, labels = _image_predictions(image_id - 100)
        want_map, want_segs = sequential_merge(sem, masks, scores, labels, rules, STUFF)
        assert np.array_equal(rgb_to_ids(out / "panoptic_merged" / ann["file_name"]), want_map.numpy())
        assert [(s["id"], s["category_id"], s["area"]) for s in ann["segments_info"]] == \
            [(s[0], s[2], s[4]) for s in want_segs]
        preset = sequential_merge(sem, masks, scores, labels, panfpn.MergeThresholds.detectron2(), STUFF)
        differs += not torch.equal(preset[0], want_map)
    assert differs  # the overrides matter on these inputs
    record = json.loads((out / "merge_rules.json").read_text())
    assert record == {"rules": dataclasses.asdict(rules), "preset": "detectron2", "overrides": overrides}
    assert summary["rules"] == record
    # null switches the overlap rule off too; an unset key keeps the preset's value
    cfg = compose_cfg([*_tool_inputs(tmp_path), "merge.rules=textbook", "merge.overlap_thresh=null",
                       "merge.thing_min_remaining_area=3"], output_dir=tmp_path / "out2")
    assert merge_from_config(cfg)["rules"]["rules"] == dataclasses.asdict(dataclasses.replace(
        panfpn.MergeThresholds.textbook(), thing_min_remaining_area=3))


@pytest.mark.parametrize("override", ["merge.score_thresh=abc", "merge.score_thresh=null",
                                      "merge.overlap_thresh=-0.5", "merge.overlap_thresh=nan",
                                      "merge.stuff_area=1.5", "merge.thing_min_remaining_area=-1",
                                      "merge.workers=-1", "merge.workers=two", "merge.threads=-1"])
def test_bad_rule_values_name_the_key(compose_cfg, tmp_path, override):
    from panfpn.engine.config import ConfigError
    from panfpn.engine.merge_run import merge_from_config

    key = override.split("=")[0]
    cfg = compose_cfg([*_tool_inputs(tmp_path), override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}' must be "):
        merge_from_config(cfg)


def _semantic_json(tmp_path: Path, images, edit=None) -> Path:
    """The semantic PNGs of _inputs as panopticapi's semantic results JSON (one RLE per category
    present, thing categories included; 0 = unlabeled is no category); ``edit(entries)`` may change it."""
    entries = []
    for k, img in enumerate(images):
        sem = _image_predictions(k)[0].numpy()
        entries += semantic_entries(img["id"], sem, skip_ids={0})
    entries.append({"image_id": 555, "category_id": 1, "segmentation": coco_rle(np.ones((H, W), bool))})
    if edit is not None:
        edit(entries)
    path = tmp_path / "semantic.json"
    path.write_text(json.dumps(entries))
    return path


def _outputs(out: Path) -> tuple[dict, dict, dict[str, bytes]]:
    return (json.loads((out / "panoptic_merged.json").read_text()),
            json.loads((out / "merge_skipped.json").read_text()),
            {p.name: p.read_bytes() for p in sorted((out / "panoptic_merged").iterdir())})


def _run(compose_cfg, tmp_path, out, *overrides):
    from panfpn.engine.merge_run import merge_from_config

    return merge_from_config(compose_cfg([*_tool_inputs(tmp_path), *overrides], output_dir=out))


def test_semantic_json_gives_the_label_png_result(compose_cfg, tmp_path):
    images, _ = _inputs(tmp_path)
    sem_json = _semantic_json(tmp_path, images)
    _run(compose_cfg, tmp_path, tmp_path / "png", "merge.workers=0")
    _run(compose_cfg, tmp_path, tmp_path / "json", "merge.workers=0", "merge.semantic_dir=null",
         f"merge.semantic_json={sem_json}")
    png_json, png_skipped, png_files = _outputs(tmp_path / "png")
    json_json, json_skipped, json_files = _outputs(tmp_path / "json")
    # image 102 has no PNG but has entries in the JSON
    assert [a["image_id"] for a in json_json["annotations"]] == [100, 101, 102]
    assert json_json["annotations"][:2] == png_json["annotations"] and len(png_files) == 2
    assert png_json["images"] == json_json["images"][:2]
    assert {k: json_files[k] for k in png_files} == png_files
    assert set(png_skipped) == {"102", "103", "999"} and set(json_skipped) == {"103", "555", "999"}
    assert "semantic.json: results for image 555" in json_skipped["555"]


def _bad_semantic_cases():
    def overlap(entries):  # image 100: a stuff entry grows over another stuff entry's pixels
        first = next(e for e in entries if e["image_id"] == 100 and e["category_id"] == 1)
        first["segmentation"] = coco_rle(np.ones((H, W), bool))

    def duplicate(entries):
        entries.append(dict(next(e for e in entries if e["image_id"] == 100 and e["category_id"] == 5)))

    def unknown(entries):
        entries.append({"image_id": 100, "category_id": 42, "segmentation": coco_rle(np.zeros((H, W), bool))})

    def missing(entries):
        entries[:] = [e for e in entries if e["image_id"] != 100]

    def wrong_size(entries):
        next(e for e in entries if e["image_id"] == 100 and e["category_id"] == 5)["segmentation"] = \
            coco_rle(np.zeros((H, W + 1), bool))

    return [(overlap, r"semantic entry \d+ \(category 5\) overlaps entry \d+ \(category 1\)"),
            (duplicate, r"semantic entries \d+ and \d+ are both of category 5"),
            (unknown, r"category_id 42, not a category"), (missing, "has no semantic entry"),
            (wrong_size, r"RLE size \[24, 21\] is not the image's \[24, 20\]")]


@pytest.mark.parametrize("edit, message", _bad_semantic_cases(),
                         ids=["overlap", "duplicate", "unknown", "missing", "wrong_size"])
def test_bad_semantic_json_entries_skip_the_image(compose_cfg, tmp_path, edit, message):
    images, _ = _inputs(tmp_path)
    sem_json = _semantic_json(tmp_path, images, edit)
    summary = _run(compose_cfg, tmp_path, tmp_path / "out", "merge.workers=0", "merge.semantic_dir=null",
                   f"merge.semantic_json={sem_json}")
    assert re.search(message, summary["skipped"]["100"]), summary["skipped"]["100"]
    assert summary["skipped"]["100"].startswith(f"{sem_json}: image 100")
    assert summary["merged"] == 2  # 101 and 102 (103: a misfit instance RLE)


@pytest.mark.parametrize("given", [(), ("merge.semantic_json=s.json",)], ids=["neither", "both"])
def test_exactly_one_semantic_source(compose_cfg, tmp_path, given):
    from panfpn.engine.config import ConfigError

    drop = ["merge.semantic_dir=null"] if not given else []
    with pytest.raises(ConfigError, match="exactly one of config keys 'merge.semantic_dir'"):
        _run(compose_cfg, tmp_path, tmp_path / "out", *drop, *given)


@pytest.mark.parametrize("semantic", ["png", "json"])
def test_workers_give_identical_output(compose_cfg, tmp_path, semantic):
    """Worker processes (on the CPU they merge and write whole images) and merge threads change
    nothing: same files, same order, same skip list."""
    images, _ = _inputs(tmp_path)
    source = [] if semantic == "png" else ["merge.semantic_dir=null",
                                           f"merge.semantic_json={_semantic_json(tmp_path, images)}"]
    one = _run(compose_cfg, tmp_path, tmp_path / "w0", "merge.workers=0", "merge.threads=0", *source)
    threads = _run(compose_cfg, tmp_path, tmp_path / "t2", "merge.workers=0", "merge.threads=2", *source)
    two = _run(compose_cfg, tmp_path, tmp_path / "w2", "merge.workers=2", "merge.threads=2", *source)
    assert _outputs(tmp_path / "w0") == _outputs(tmp_path / "w2") == _outputs(tmp_path / "t2")
    assert list(one["skipped"]) == list(two["skipped"]) == list(threads["skipped"])
    assert one["merged"] == two["merged"] == threads["merged"] >= 2
    assert [a["image_id"] for a in _outputs(tmp_path / "w2")[0]["annotations"]] == \
        sorted(a["image_id"] for a in _outputs(tmp_path / "w2")[0]["annotations"])


def test_inputs_below_the_score_threshold_are_checked_but_not_decoded():
    """Only instances that can become segments are decoded (inside their boxes); every result
    still needs a well-formed RLE of the image's size."""
    from panfpn.data.metadata import DatasetMetadata
    from panfpn.data.merge_inputs import MergeInputs

    metadata = DatasetMetadata.from_coco_categories(
        [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}], name="cats")
    image = {"id": 7, "file_name": "x.jpg", "height": 6, "width": 8}
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:7] = True
    good = {"category_id": 1, "segmentation": _rle(mask)}
    wrong_size = {"category_id": 1, "segmentation": _rle(np.ones((5, 8), bool))}
    entries = {7: [{"category_id": 2, "segmentation": _rle(np.ones((6, 8), bool))}]}

    def read(results, thresh=0.5):
        data = MergeInputs([image], {7: results}, metadata, semantic_by_image=entries, score_thresh=thresh)
        return data[0]

    item = read([{**good, "score": 0.9}, {**good, "score": 0.1}])
    assert item["error"] is None and item["scores"].tolist() == [0.9] and item["origins"] == [(1, 2)]
    assert item["crops"][0].shape == (3, 5) and item["crops"][0].all()
    assert "RLE size" in read([{**good, "score": 0.9}, {**wrong_size, "score": 0.1}])["error"]
    assert read([{**good, "score": 0.1}])["crops"] == []
    assert len(read([{**good, "score": 0.1}], thresh=float("-inf"))["crops"]) == 1


@pytest.mark.parametrize("counts", ["\x7f\x7f", "zz", "0000", "123", "", "1", "0Q", "o"])
@pytest.mark.parametrize("score", [0.9, 0.1])
def test_broken_rle_skips_the_image_instead_of_decoding_garbage(counts, score):
    """pycocotools decodes a broken counts string to garbage (e.g. 1767 pixels set in a 6x8
    mask) without an error; the run lengths are checked against the image first."""
    from panfpn.data.merge_inputs import BadInput, checked_rle

    with pytest.raises(BadInput, match=r"image 7: result 0: RLE cannot be decoded"):
        checked_rle({"size": [6, 8], "counts": counts}, (6, 8), "image 7: result 0")
    with pytest.raises(BadInput, match=r"RLE cannot be decoded"):
        checked_rle({"size": [6, 8], "counts": [10, -2, 40]}, (6, 8), "image 7: result 0")
    with pytest.raises(BadInput, match=r"RLE cannot be decoded"):
        checked_rle({"size": [6, 8], "counts": [10, 2]}, (6, 8), "image 7: result 0")


@pytest.mark.parametrize("size", [(1, 1), (6, 8), (37, 91), (2000, 3000)])
def test_compressed_runs_equal_the_masks_run_lengths(size):
    """Run lengths read from pycocotools' own compressed strings equal the column-major runs of
    the encoded mask (runs up to 6e6 pixels: 5-character groups; negative differences)."""
    from panfpn.data.merge_inputs import compressed_runs

    rng = np.random.default_rng(size[0])
    masks = [rng.random(size) < p for p in (0.02, 0.5, 0.98)]
    full = np.zeros(size, dtype=bool)
    full[size[0] // 3:, size[1] // 2:] = True
    for mask in [*masks, full, np.zeros(size, bool), np.ones(size, bool)]:
        flat = mask.T.ravel()
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs = np.diff(np.r_[0, change, flat.size])
        expected = np.r_[0, runs] if flat[0] else runs
        counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        assert np.array_equal(compressed_runs(counts), expected)


@pytest.mark.parametrize("clash", [[5, 5], [1, "000000000001"]])
def test_images_writing_one_png_are_refused_before_any_write(compose_cfg, tmp_path, clash):
    """A repeated image id, or two ids with one file stem, would overwrite a PNG (worker processes
    cannot see each other's names): refused up front, naming the ids."""
    from panfpn.engine.config import ConfigError

    _inputs(tmp_path)
    data = json.loads((tmp_path / "images.json").read_text())
    data["images"][0]["id"], data["images"][1]["id"] = clash
    (tmp_path / "images.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"images \[.*\] would all write 000000000\d+\.png"):
        _run(compose_cfg, tmp_path, tmp_path / "out", "merge.workers=2")
    assert not list((tmp_path / "out").glob("**/*.png"))


def test_an_instances_json_as_images_json_is_a_clear_error(compose_cfg, tmp_path):
    """COCO's instances_val2017.json has images and categories but no 'isthing': a ConfigError
    naming the file and what is missing, not a KeyError."""
    from panfpn.engine.config import ConfigError

    _inputs(tmp_path)
    data = json.loads((tmp_path / "images.json").read_text())
    for cat in data["categories"]:
        del cat["isthing"]
    (tmp_path / "images.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"merge.images_json .*images.json: .* has no isthing.*panoptic"):
        _run(compose_cfg, tmp_path, tmp_path / "out")


def test_detectron2_sem_seg_predictions_json_gives_the_label_png_result(compose_cfg, tmp_path):
    """Detectron2's SemSegEvaluator writes sem_seg_predictions.json: entries keyed by the input
    image's path ("file_name"), one RLE per label present, its merged 'things' class as category 0.
    The tool reads it as it is and gives the label-PNG result."""
    images, _ = _inputs(tmp_path)
    entries = []
    for k, img in enumerate(images):
        sem = _image_predictions(k)[0].numpy()  # 0 = no stuff (Detectron2: the 'things' class)
        for entry in semantic_entries(img["id"], sem):
            del entry["image_id"]
            entries.append({"file_name": f"datasets/coco/val2017/{img['file_name']}", **entry})
    assert any(e["category_id"] == 0 for e in entries)
    path = tmp_path / "sem_seg_predictions.json"
    path.write_text(json.dumps(entries))
    _run(compose_cfg, tmp_path, tmp_path / "png", "merge.workers=0")
    _run(compose_cfg, tmp_path, tmp_path / "d2", "merge.workers=0", "merge.semantic_dir=null",
         f"merge.semantic_json={path}")
    png_json, _, png_files = _outputs(tmp_path / "png")
    d2_json, d2_skipped, d2_files = _outputs(tmp_path / "d2")
    assert d2_json["annotations"][:2] == png_json["annotations"] and len(png_files) == 2
    assert {k: d2_files[k] for k in png_files} == png_files and set(d2_skipped) == {"103", "999"}
    data = json.loads((tmp_path / "images.json").read_text())
    data["images"][1]["file_name"] = "other/img0.jpg"  # two images with the stem img0
    (tmp_path / "images.json").write_text(json.dumps(data))
    from panfpn.engine.config import ConfigError

    with pytest.raises(ConfigError, match=r"could be any of images \[100, 101\]"):
        _run(compose_cfg, tmp_path, tmp_path / "d2b", "merge.semantic_dir=null", f"merge.semantic_json={path}")


def test_image_ids_of_another_type_are_an_error_not_images_without_instances(compose_cfg, tmp_path):
    """Results with image_id "100" for image 100 would leave every image without its instances
    (merged from the semantic map alone, exit 0): refused, naming both forms."""
    from panfpn.engine.config import ConfigError

    _inputs(tmp_path)
    results = json.loads((tmp_path / "instances.json").read_text())
    for r in results:
        r["image_id"] = str(r["image_id"])
    (tmp_path / "instances.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match=r"image_id '100' \(str\) is 100 \(int\)"):
        _run(compose_cfg, tmp_path, tmp_path / "out")


@pytest.mark.parametrize("edit", [lambda im: im.pop("height"), lambda im: im.update(width="640"),
                                  lambda im: im.update(width=0), lambda im: im.pop("file_name")])
def test_an_image_entry_without_its_size_names_it(compose_cfg, tmp_path, edit):
    from panfpn.engine.config import ConfigError

    _inputs(tmp_path)
    data = json.loads((tmp_path / "images.json").read_text())
    edit(data["images"][2])
    (tmp_path / "images.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"images\[2\] = .* needs an id, a file_name and integer height"):
        _run(compose_cfg, tmp_path, tmp_path / "out", "merge.workers=2")


@pytest.mark.parametrize("setting", [True, False])
def test_progress_bar_is_switchable_and_the_summary_line_stays(compose_cfg, tmp_path, capfd, caplog, setting):
    """merge.progress_bar: the bar only when asked (auto: on a terminal); the summary line always."""
    _inputs(tmp_path)
    with caplog.at_level("INFO"):
        _run(compose_cfg, tmp_path, tmp_path / "out", f"merge.progress_bar={str(setting).lower()}")
    assert ("merge: 100%" in capfd.readouterr().err) == setting
    assert any(r.getMessage().startswith("merged ") for r in caplog.records)

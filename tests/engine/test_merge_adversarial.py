"""tools/merge.py on adversarial inputs written in COCO's / panopticapi's convention (pycocotools
RLE, COCO results JSON, panopticapi's semantic results JSON), found by running both tools on them:
values Python's JSON reader accepts but that are no image id, score or category id, and categories
the merge would silently misread (isthing "0", a negative or huge id), end as a clear error or a
recorded skip, never as a traceback or a merge different from panopticapi's. The expected results
are written here, so these run without panopticapi (not on PyPI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from merge_helpers import coco_rle, semantic_entries
from panfpn.engine.config import ConfigError
from panfpn.engine.merge_run import merge_files
from panfpn.modeling.merge_thresholds import MergeThresholds

THINGS, STUFF = [1, 3], [100, 120]
CATEGORIES = [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS), "color": [c, 0, 0]}
              for c in THINGS + STUFF]
H, W = 8, 10


def _box(y0: int, y1: int, x0: int, x1: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _write(root: Path, images: list[dict], instances: list[dict], semantic: list[dict]) -> dict[str, Path]:
    paths = {name: root / f"{name}.json" for name in ("images", "instances", "semantic")}
    paths["images"].write_text(json.dumps({"images": images, "categories": CATEGORIES, "annotations": []}))
    paths["instances"].write_text(json.dumps(instances))
    paths["semantic"].write_text(json.dumps(semantic))
    return paths


def _merge(paths: dict[str, Path], out: Path) -> dict:
    return merge_files(None, paths["instances"], paths["images"], out, semantic_json=paths["semantic"],
                       rules=MergeThresholds(0.5, 0.5, 4, 0), device="cpu", workers=0, progress=False)


def _two_images(**edit) -> tuple[list[dict], list[dict], list[dict]]:
    """Images 1 and 2 (stuff halves, two instances each); ``edit`` replaces fields of image 1's
    first instance."""
    images = [{"id": i, "file_name": f"im{i}.jpg", "height": H, "width": W} for i in (1, 2)]
    halves = np.where(np.arange(W) < W // 2, 100, 120)[None].repeat(H, 0)
    semantic = [e for i in (1, 2) for e in semantic_entries(i, halves)]
    instances = [{"image_id": i, "category_id": c, "segmentation": coco_rle(m), "score": s}
                 for i in (1, 2) for c, m, s in ((1, _box(1, 5, 1, 6), 0.9), (3, _box(3, 8, 4, 9), 0.8))]
    instances[0].update(edit)
    return images, instances, semantic


@pytest.mark.parametrize("edit, message", [
    ({"score": 10 ** 400}, "image 1: instance result 0 has no finite numeric score"),
    ({"category_id": 10 ** 20}, "image 1: instance result 0 has category_id 100000000000000000000, not"),
], ids=["score-beyond-float", "category-beyond-int64"])
def test_integers_beyond_the_number_types_skip_their_image(tmp_path, edit, message):
    """JSON integers beyond float64 / int64 (Python reads them as exact ints) raised OverflowError
    out of the merge (a traceback) instead of skipping the image like any other bad value."""
    summary = _merge(_write(tmp_path, *_two_images(**edit)), tmp_path / "out")
    assert message in summary["skipped"]["1"], summary["skipped"]
    assert summary["merged"] == 1 and set(summary["skipped"]) == {"1"}


@pytest.mark.parametrize("source", ["instances", "semantic"])
@pytest.mark.parametrize("bad_id", [[1], {"id": 1}], ids=["list", "object"])
def test_a_result_whose_image_id_is_no_id_is_a_clear_error(tmp_path, source, bad_id):
    """A results entry with a list or object as image_id raised TypeError (unhashable) from the
    grouping by image; now a ConfigError naming the file and the entry."""
    images, instances, semantic = _two_images()
    entries = instances if source == "instances" else semantic
    entries.insert(2, dict(entries[0], image_id=bad_id))
    paths = _write(tmp_path, images, instances, semantic)
    with pytest.raises(ConfigError, match=re.escape(f"{paths[source]}: result 2 has image_id {bad_id!r}, "
                                                    "not an image id (a number or a string)")):
        _merge(paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_id", [[1], None, True, float("nan")], ids=["list", "null", "bool", "nan"])
def test_an_image_whose_id_is_no_id_is_a_clear_error(tmp_path, bad_id):
    """images JSON ids must be numbers or strings: a list raised TypeError (unhashable); null,
    true or NaN were taken as ids (results without image_id would match null, NaN matches no
    result)."""
    images, instances, semantic = _two_images()
    images[1]["id"] = bad_id
    paths = _write(tmp_path, images, instances, semantic)
    with pytest.raises(ConfigError, match=r"images\[1\] = .* needs an id, .* \(an id: a number or a string\)"):
        _merge(paths, tmp_path / "out")


@pytest.mark.parametrize("plain", [True, False], ids=["plain-overrides", "hydra-main"])
def test_the_command_line_reports_a_config_error_without_a_traceback(tmp_path, plain):
    """tools/merge.py let every ConfigError (a bad input file, an image id of another type, a
    refused output folder) out as a Python traceback; like tools/export.py it now prints the
    message and exits 2, on both of its start-up paths."""
    import os
    import sys

    from process_helpers import run

    root = Path(__file__).resolve().parents[2]
    images, instances, semantic = _two_images()
    instances.append(dict(instances[0], image_id="1"))  # "1" for image 1
    paths = _write(tmp_path, images, instances, semantic)
    args = [f"merge.semantic_json={paths['semantic']}", f"merge.instances_json={paths['instances']}",
            f"merge.images_json={paths['images']}", "device=cpu", "merge.workers=0"]
    args += [f"merge.output_dir={tmp_path / 'out'}"] if plain else [f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run([sys.executable, str(root / "tools/merge.py"), *args], env=env, capture_output=True,
               text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"tools/merge.py: merge.instances_json {paths['instances']}: image_id '1' (str) is 1 (int) in "
        f"{paths['images']}; the ids must be of the same type (1 such id(s))")


@pytest.mark.parametrize("isthing", ["0", 2, None], ids=["string", "two", "null"])
def test_an_isthing_flag_other_than_0_or_1_is_refused(tmp_path, isthing):
    """COCO's isthing is 0 or 1. "0" (and 2) were read as true: every stuff category became a
    thing, so the merge silently dropped all stuff (panopticapi tests ``isthing == 1`` and keeps
    it); null was read as false. Now a ConfigError naming the category."""
    images, instances, semantic = _two_images()
    paths = _write(tmp_path, images, instances, semantic)
    data = json.loads(paths["images"].read_text())
    data["categories"][2]["isthing"] = isthing  # c100, a stuff category
    paths["images"].write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=re.escape(f"category 'c100' of metadata '{paths['images']}' has "
                                                    f"isthing {isthing!r}; it must be 0 or 1")):
        _merge(paths, tmp_path / "out")


def test_a_negative_category_id_is_refused(tmp_path):
    """A stuff category with id -1 shared the merge's id lookup slot of 'no semantic entry here'
    (and ids below -1 wrapped around the lookup table): pixels no semantic entry covers became
    that stuff category, silently (panopticapi paints it only where its entry is). COCO ids are
    >= 0; a negative one is now a ConfigError naming the category."""
    images, instances, semantic = _two_images()
    paths = _write(tmp_path, images, instances, semantic)
    data = json.loads(paths["images"].read_text())
    data["categories"].append({"id": -1, "name": "minus", "isthing": 0, "color": [9, 9, 9]})
    paths["images"].write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=re.escape(f"category 'minus' of metadata '{paths['images']}' has id "
                                                    "-1 (int); ids must be integers >= 0")):
        _merge(paths, tmp_path / "out")


def test_a_category_id_too_large_for_the_label_lookup_is_a_clear_error(tmp_path):
    """The merge maps category ids to labels through a table indexed by id: a category id of
    10**13 (panopticapi takes any id) raised MemoryError (9 TiB) on every image as a traceback,
    and ids around 10**10 would allocate tens of GB per image. Now refused up front, naming it."""
    images, instances, semantic = _two_images(category_id=10 ** 13)
    paths = _write(tmp_path, images, instances, semantic)
    data = json.loads(paths["images"].read_text())
    data["categories"].append({"id": 10 ** 13, "name": "huge", "isthing": 1, "color": [9, 9, 9]})
    paths["images"].write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=re.escape(f"merge.images_json {paths['images']}: category 'huge' has "
                                                    "id 10000000000000; the merge takes ids up to 1048575")):
        _merge(paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_image_skipped_is_exit_1_not_success(tmp_path):
    """A semantic JSON of another split: no image has its semantic entries, so every image is
    skipped and nothing is merged. The tool said so only in merge_skipped.json and exited 0."""
    import os
    import sys

    from process_helpers import run

    root = Path(__file__).resolve().parents[2]
    images, instances, semantic = _two_images()
    semantic = [dict(e, image_id=e["image_id"] + 10) for e in semantic]  # images 11 and 12
    paths = _write(tmp_path, images, instances, semantic)
    out = tmp_path / "out"
    args = [f"merge.semantic_json={paths['semantic']}", f"merge.instances_json={paths['instances']}",
            f"merge.images_json={paths['images']}", "device=cpu", "merge.workers=0",
            f"merge.output_dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run([sys.executable, str(root / "tools/merge.py"), *args], env=env, capture_output=True,
               text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    skipped_file = out / "merge_skipped.json"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"tools/merge.py: no image merged: 4 skipped, the reasons in {skipped_file}")
    skipped = json.loads(skipped_file.read_text())
    assert {"1", "2"} <= set(skipped), skipped

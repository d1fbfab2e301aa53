"""Synthetic generator -> PanopticDataset -> targets, pixel for pixel."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from panfpn.data.dataset import PanopticDataset
from panfpn.data.metadata import IGNORE_LABEL
from panfpn.data.panoptic_io import read_id_png
from panfpn.data.synthetic import ensure_synthetic, generate_dataset, synthetic_metadata


def _dataset(root: Path, **kw) -> PanopticDataset:
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic",
                           metadata=synthetic_metadata(), **kw)


def test_layout_and_json_consistent_with_pngs(synthetic_root, synthetic_spec):
    num_images, _ = synthetic_spec
    data = json.loads((synthetic_root / "panoptic.json").read_text())
    assert len(data["images"]) == len(data["annotations"]) == num_images
    cat_ids = sorted(c["id"] for c in data["categories"])
    assert cat_ids != list(range(min(cat_ids), min(cat_ids) + len(cat_ids)))  # non-contiguous
    assert {c["isthing"] for c in data["categories"]} == {0, 1}
    for ann in data["annotations"]:
        id_map = read_id_png(synthetic_root / "panoptic" / ann["file_name"])
        segs = ann["segments_info"]
        ids = np.array([s["id"] for s in segs])
        for s in segs:
            ys, xs = np.nonzero(id_map == s["id"])
            assert s["area"] == ys.size
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        present = set(np.unique(id_map).tolist()) - {0}
        assert present == set(ids.tolist())
        assert all(s["category_id"] in cat_ids for s in segs)


def test_scene_statistics(synthetic_root, synthetic_spec):
    """Things per image, crowd share, void and multi-channel ids are as documented."""
    num_images, _ = synthetic_spec
    data = json.loads((synthetic_root / "panoptic.json").read_text())
    meta = synthetic_metadata()
    n_crowd_images = n_void_images = 0
    big_ids = False
    for ann in data["annotations"]:
        things = [s for s in ann["segments_info"] if meta.category(s["category_id"]).isthing]
        assert 1 <= len(things) <= 7
        n_crowd_images += any(s["iscrowd"] for s in things)
        id_map = read_id_png(synthetic_root / "panoptic" / ann["file_name"])
        n_void_images += bool((id_map == 0).any())
        big_ids |= bool((id_map >= 65536).any())
    assert 1 <= n_crowd_images <= num_images // 2
    assert n_void_images >= 5
    assert big_ids  # ids use the blue channel too


def test_round_trip_targets_match_png(synthetic_root):
    meta = synthetic_metadata()
    ds = _dataset(synthetic_root, is_train=False)
    lut = meta.sem_lut()
    seen_crowd = 0
    for i in range(len(ds)):
        s = ds[i]
        id_map = s["gt_panoptic"]
        assert s["image"].shape == (3, 128, 128) and s["image"].dtype == torch.uint8
        assert s["orig_size"] == (128, 128)
        segs = {seg["id"]: seg for seg in s["segments_info"]}
        # Semantic map: every pixel is its segment's semantic label, void is 255.
        expected = torch.full_like(id_map, IGNORE_LABEL, dtype=torch.int64)
        for sid, seg in segs.items():
            expected[id_map == sid] = lut[seg["category_id"]]
        assert torch.equal(s["sem_seg"], expected)
        assert bool((s["sem_seg"][id_map == 0] == IGNORE_LABEL).all())
        # Instances: masks equal the PNG's non-crowd thing segments, in JSON order; crowd regions
        # are no instance (their pixels keep their label in the semantic map, checked above).
        things = [seg for seg in s["segments_info"] if meta.category(seg["category_id"]).isthing]
        want = [seg for seg in things if not seg["iscrowd"]]
        got = s["instances"]
        assert len(got["labels"]) == len(want)
        for k, seg in enumerate(want):
            assert torch.equal(got["masks"][k].bool(), id_map == seg["id"])
            assert got["labels"][k] == meta.thing_label(seg["category_id"])
            x, y, w, h = seg["bbox"]
            assert got["boxes"][k].tolist() == [x, y, x + w, y + h]
        seen_crowd += len(things) - len(want)
    assert seen_crowd >= 1


def test_deterministic_per_seed(tmp_path, synthetic_root, synthetic_spec):
    num_images, seed = synthetic_spec
    a = generate_dataset(tmp_path / "a", num_images, seed)
    b = generate_dataset(tmp_path / "b", 5, seed + 1)
    assert filecmp.cmp(a / "panoptic.json", synthetic_root / "panoptic.json", shallow=False)
    for sub in ("images", "panoptic"):
        files = sorted(p.name for p in (a / sub).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(a / sub, synthetic_root / sub, files, shallow=False)
        assert not mismatch and not errors and len(match) == num_images
    name = "000001.png"
    assert not filecmp.cmp(b / "panoptic" / name, a / "panoptic" / name, shallow=False)


def test_ensure_synthetic_caches(tmp_path):
    root = ensure_synthetic("train", 3, 11, 64, 96, cache_dir=tmp_path)
    stamp = (root / "panoptic.json").stat().st_mtime_ns
    again = ensure_synthetic("train", 3, 11, 64, 96, cache_dir=tmp_path)
    assert again == root and (root / "panoptic.json").stat().st_mtime_ns == stamp
    assert ensure_synthetic("val", 3, 12, 64, 96, cache_dir=tmp_path) != root
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    ds = _dataset(root)
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 64, 96)


def test_rejects_tiny_images(tmp_path):
    with pytest.raises(ValueError, match="32x32"):
        generate_dataset(tmp_path / "x", 1, 0, height=16, width=16)


def test_ground_truth_against_itself_is_perfect_pq(synthetic_root):
    """The official evaluator (hotcoco's panopticapi port) accepts the data: PQ = 1 everywhere."""
    panoptic = pytest.importorskip("hotcoco.panoptic")
    gt = synthetic_root / "panoptic.json"
    res = panoptic.pq_compute(str(gt), str(gt), gt_folder=str(synthetic_root / "panoptic"),
                              pred_folder=str(synthetic_root / "panoptic"))
    assert res["All"]["pq"] == pytest.approx(1.0)
    assert res["All"]["n"] == 8
    assert all(v["pq"] == pytest.approx(1.0) for v in res["per_class"].values())


def test_command_line_writes_dataset(tmp_path, capsys):
    from panfpn.data.synthetic import main
    main(["--out", str(tmp_path / "cli"), "--num-images", "2", "--seed", "3", "--height", "48",
          "--width", "64"])
    assert "wrote 2 images" in capsys.readouterr().out
    ds = _dataset(tmp_path / "cli")
    assert len(ds) == 2 and ds[1]["image"].shape == (3, 48, 64)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_command_line_refuses_a_folder_holding_a_dataset(tmp_path, capsys):
    """Today a second run overwrote the first dataset's panoptic.json and images."""
    from panfpn.data.synthetic import main
    out = tmp_path / "mine"
    generate_dataset(out, 3, 0, height=48, width=48)
    before = _snapshot(out)
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), "--num-images", "2", "--seed", "5", "--height", "48", "--width", "48"])
    assert e.value.code == 2
    assert f"{out} already holds a dataset (panoptic.json, images/ (3 files)" in capsys.readouterr().err
    assert _snapshot(out) == before
    main(["--out", str(out), "--num-images", "2", "--seed", "5", "--height", "48", "--width", "48",
          "--overwrite"])
    assert len(_dataset(out)) == 2 and sorted(p.name for p in (out / "images").iterdir()) == [
        "000001.jpg", "000002.jpg"]  # the third image of the old dataset is gone too


@pytest.mark.parametrize("leftover", ["panoptic.json", "images/a.jpg", "panoptic/a.png"])
def test_generate_dataset_refuses_any_part_of_a_dataset(tmp_path, leftover):
    out = tmp_path / "x"
    (out / leftover).parent.mkdir(parents=True, exist_ok=True)
    (out / leftover).write_text("keep me")
    with pytest.raises(FileExistsError, match=r"already holds a dataset.*overwrite"):
        generate_dataset(out, 1, 0, height=32, width=32)
    assert (out / leftover).read_text() == "keep me"
    (tmp_path / "empty" / "images").mkdir(parents=True)  # an empty folder is no dataset
    assert len(_dataset(generate_dataset(tmp_path / "empty", 1, 0, height=32, width=32))) == 1

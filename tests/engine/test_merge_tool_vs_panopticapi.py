"""tools/merge.py against COCO's own tools, on noisy generated predictions of a generated
COCO-panoptic ground truth (PNGs written here in COCO's RGB convention, not by our writer):

- the PQ the tool prints (merge.eval_gt_json) equals hotcoco's and panopticapi's on its output;
- with Detectron2's rules (panopticapi's combine rules) its segments equal, as a partition with
  categories, those of panopticapi's combine script on the same predictions (semantic input as
  panopticapi's semantic results JSON; ours read it as label PNGs and as merge.semantic_json).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from merge_helpers import coco_rle, rgb_to_ids, same_partition, semantic_entries

THINGS, STUFF = [1, 3, 8], [100, 120, 130]
CATEGORIES = [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS), "supercategory": "x",
               "color": [c, 255 - c, (7 * c) % 256]} for c in THINGS + STUFF]
H, W = 36, 48
N_IMAGES = 6
STUFF_AREA = 30  # Detectron2's 4096 would leave no stuff on 36x48 images


def _ground_truth(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Stuff bands, thing rectangles on top (some crowd), a void patch; segment ids spread over
    all three colour channels."""
    gt = np.zeros((H, W), np.int64)
    cats: dict[int, int] = {}
    ids = iter(rng.choice(np.arange(1, 1 << 24), size=20, replace=False).tolist())
    cuts = sorted(rng.choice(np.arange(8, W - 8), size=2, replace=False).tolist())
    for cat, (x0, x1) in zip(rng.permutation(STUFF).tolist(), zip([0, *cuts], [*cuts, W])):
        seg = next(ids)
        gt[:, x0:x1], cats[seg] = seg, cat
    for _ in range(int(rng.integers(3, 6))):
        y, x = int(rng.integers(0, H - 8)), int(rng.integers(0, W - 8))
        seg = next(ids)
        gt[y:y + int(rng.integers(6, 16)), x:x + int(rng.integers(6, 16))], cats[seg] = seg, int(rng.choice(THINGS))
    y, x = int(rng.integers(0, H - 4)), int(rng.integers(0, W - 4))
    gt[y:y + 4, x:x + 5] = 0
    segments = [{"id": s, "category_id": cats[s], "area": int((gt == s).sum()), "bbox": [0, 0, 1, 1],
                 "iscrowd": int(cats[s] in THINGS and rng.random() < 0.25)}
                for s in np.unique(gt).tolist() if s]
    return gt, segments


def _predictions(rng: np.random.Generator, gt: np.ndarray, segments: list[dict]):
    """A noisy semantic label map (dataset ids, 0 = unlabeled) and instances (shifted, missed,
    relabelled, duplicated and invented masks; an empty one) with distinct scores."""
    cat_of = {s["id"]: s["category_id"] for s in segments}
    sem = np.vectorize(lambda s: cat_of.get(s, 0))(gt)
    for _ in range(3):  # blocks of the wrong stuff, of a thing category and unlabeled
        y, x = int(rng.integers(0, H - 6)), int(rng.integers(0, W - 6))
        sem[y:y + int(rng.integers(3, 10)), x:x + int(rng.integers(3, 10))] = int(rng.choice(STUFF + [3, 0]))
    masks, labels = [], []
    for s in segments:
        if s["category_id"] not in THINGS or rng.random() < 0.15:
            continue
        mask = np.roll(gt == s["id"], (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), (0, 1))
        label = s["category_id"] if rng.random() < 0.85 else int(rng.choice(THINGS))
        masks.append(mask), labels.append(label)
        if rng.random() < 0.4:  # a duplicate, mostly covered by the first
            masks.append(np.roll(mask, 1, 1)), labels.append(label)
    for _ in range(2):
        mask = np.zeros((H, W), bool)
        y, x = int(rng.integers(0, H - 5)), int(rng.integers(0, W - 5))
        mask[y:y + int(rng.integers(3, 12)), x:x + int(rng.integers(3, 12))] = True
        masks.append(mask), labels.append(int(rng.choice(THINGS)))
    masks.append(np.zeros((H, W), bool)), labels.append(THINGS[0])
    scores = rng.choice(np.linspace(0.2, 0.99, 80), size=len(masks), replace=False)  # distinct
    return sem, masks, [float(s) for s in scores], labels


def write_case(root: Path, seed: int) -> dict[str, Path]:
    """Ground truth (gt.json + gt/*.png), semantic PNGs, semantic and instance results JSONs."""
    rng = np.random.default_rng(seed)
    for d in ("gt", "sem"):
        (root / d).mkdir(parents=True)
    images, annotations, instances, semantic = [], [], [], []
    for k in range(N_IMAGES):
        image_id = 10 + k
        gt, segments = _ground_truth(rng)
        rgb = np.stack([gt % 256, gt // 256 % 256, gt // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "gt" / f"im{k}.png")
        images.append({"id": image_id, "file_name": f"im{k}.jpg", "height": H, "width": W})
        annotations.append({"image_id": image_id, "file_name": f"im{k}.png", "segments_info": segments})
        sem, masks, scores, labels = _predictions(rng, gt, segments)
        Image.fromarray(sem.astype(np.uint8), mode="L").save(root / "sem" / f"im{k}.png")
        semantic += semantic_entries(image_id, sem, skip_ids={0})
        instances += [{"image_id": image_id, "category_id": c, "segmentation": coco_rle(m), "score": s}
                      for m, s, c in zip(masks, scores, labels)]
    paths = {name: root / f"{name}.json" for name in ("gt", "instances", "semantic", "categories")}
    paths["gt"].write_text(json.dumps({"images": images, "annotations": annotations,
                                       "categories": CATEGORIES}))
    paths["instances"].write_text(json.dumps(instances))
    paths["semantic"].write_text(json.dumps(semantic))
    paths["categories"].write_text(json.dumps(CATEGORIES))
    paths["sem_dir"] = root / "sem"
    return paths


def run_tool(compose_cfg, case: dict[str, Path], out: Path, *overrides: str) -> dict:
    from panfpn.engine.merge_run import merge_from_config

    cfg = compose_cfg(["device=cpu", "merge.workers=0", f"merge.instances_json={case['instances']}",
                       f"merge.images_json={case['gt']}", f"merge.semantic_dir={case['sem_dir']}",
                       *overrides], output_dir=out)
    return merge_from_config(cfg)


D2_RULES = ["merge.rules=detectron2", f"merge.stuff_area={STUFF_AREA}"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The tool run with merge.eval_gt_json on the generated case: (case, summary)."""
    from config_helpers import compose_config

    root = tmp_path_factory.mktemp("pq")
    case = write_case(root, 0)
    summary = run_tool(compose_config, case, root / "out", *D2_RULES, f"merge.eval_gt_json={case['gt']}")
    return case, summary


def _assert_close(ours: dict, theirs: dict, *, per_class_counts: bool) -> None:
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == theirs[split]["n"], split
        for m in ("pq", "sq", "rq"):
            assert abs(ours[split][m] - theirs[split][m]) <= 1e-9, (split, m, ours[split][m], theirs[split][m])
    for cat, mine in ours["per_class"].items():
        other = theirs["per_class"][cat]
        if per_class_counts:
            assert [mine[k] for k in ("tp", "fp", "fn")] == [other[k] for k in ("tp", "fp", "fn")], cat
        if mine["tp"] + mine["fp"] + mine["fn"]:
            for m in ("pq", "sq", "rq"):
                assert abs(mine[m] - other[m]) <= 1e-9, (cat, m)


def test_the_case_is_not_trivial(scored):
    case, summary = scored
    pq = summary["pq"]
    assert summary["merged"] == N_IMAGES and not summary["skipped"]
    assert 0.2 < pq["All"]["pq"] < 0.9 and 0.1 < pq["Things"]["pq"] < 0.95 and 0.1 < pq["Stuff"]["pq"] < 0.95
    gt = json.loads(case["gt"].read_text())
    assert sum(s["iscrowd"] for a in gt["annotations"] for s in a["segments_info"]) >= 2
    assert all(pq["per_class"][c]["tp"] + pq["per_class"][c]["fn"] for c in THINGS + STUFF)


def test_tool_pq_equals_hotcoco(scored):
    hotcoco_panoptic = pytest.importorskip("hotcoco.panoptic")
    case, summary = scored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = hotcoco_panoptic.PanopticEval(str(case["gt"]), summary["json"])
        ev.evaluate()
        theirs = ev.results()
    _assert_close(summary["pq"], theirs, per_class_counts=True)


def test_tool_pq_equals_panopticapi(scored):
    evaluation = pytest.importorskip("panopticapi.evaluation",
                                     reason="COCO's panopticapi is not installed (not on PyPI)")
    case, summary = scored
    theirs = evaluation.pq_compute(str(case["gt"]), summary["json"])
    _assert_close(summary["pq"], theirs, per_class_counts=False)


def test_detectron2_rules_partition_equals_panopticapi_combine(compose_cfg, tmp_path):
    combine = pytest.importorskip("panopticapi.combine_semantic_and_instance_predictions",
                                  reason="COCO's panopticapi is not installed (not on PyPI)")
    case = write_case(tmp_path, 1)
    theirs_json = tmp_path / "panopticapi.json"
    combine.combine_predictions(str(case["semantic"]), str(case["instances"]), str(case["gt"]),
                                str(case["categories"]), str(tmp_path / "panopticapi"), str(theirs_json),
                                0.5, 0.5, STUFF_AREA)
    theirs = {a["image_id"]: a for a in json.loads(theirs_json.read_text())["annotations"]}
    for source in ("png", "json"):
        extra = [] if source == "png" else ["merge.semantic_dir=null", f"merge.semantic_json={case['semantic']}"]
        out = tmp_path / source
        summary = run_tool(compose_cfg, case, out, *D2_RULES, *extra)
        assert summary["merged"] == N_IMAGES and not summary["skipped"]
        ours = json.loads(Path(summary["json"]).read_text())["annotations"]
        kinds = {"thing": 0, "stuff": 0}
        for ann in ours:
            other = theirs[ann["image_id"]]
            ids_a = rgb_to_ids(out / "panoptic_merged" / ann["file_name"])
            ids_b = rgb_to_ids(tmp_path / "panopticapi" / other["file_name"])
            cats_a = {s["id"]: s["category_id"] for s in ann["segments_info"]}
            cats_b = {s["id"]: s["category_id"] for s in other["segments_info"]}
            assert same_partition(ids_a, cats_a, ids_b, cats_b), (source, ann["image_id"])
            for c in cats_a.values():
                kinds["thing" if c in THINGS else "stuff"] += 1
        assert kinds["thing"] >= 10 and kinds["stuff"] >= 10, kinds

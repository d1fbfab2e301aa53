"""A sequential panoptic merge on dataset category ids, written for the tests independently of
panfpn's (its definition is panfpn.modeling.merge_reference): importable as ``merge_helpers``."""

from __future__ import annotations

import torch


def sequential_merge(sem_ids, probs, scores, cat_ids, rules, stuff_ids):
    """The merge on dataset ids, one instance and one stuff id at a time: instances by descending
    score (ties: input order) claim their unclaimed pixels unless dropped; then each stuff id,
    ascending, takes its unclaimed pixels if there are at least max(stuff_area, 1)."""
    id_map = torch.zeros(sem_ids.shape, dtype=torch.int32)
    segs = []
    score_list = scores.tolist()
    order = sorted((i for i, s in enumerate(score_list) if s >= rules.score_thresh),
                   key=lambda i: (-score_list[i], i))
    for i in order:
        mask = probs[i] >= 0.5
        free = mask & (id_map == 0)
        area, n_free = int(mask.sum()), int(free.sum())
        if area == 0 or n_free == 0 or n_free < rules.thing_min_remaining_area:
            continue
        if rules.overlap_thresh is not None and (area - n_free) / area > rules.overlap_thresh:
            continue
        id_map[free] = len(segs) + 1
        segs.append((len(segs) + 1, True, int(cat_ids[i]), score_list[i], n_free))
    for cat in sorted(stuff_ids):
        region = (sem_ids == cat) & (id_map == 0)
        if int(region.sum()) >= max(rules.stuff_area, 1):
            id_map[region] = len(segs) + 1
            segs.append((len(segs) + 1, False, cat, None, int(region.sum())))
    return id_map, segs


# ------------------------------------------------------------------------------------------------
# tools/merge.py inputs and outputs, written in the formats other tools use (pycocotools RLE in a
# COCO results JSON; COCO-panoptic PNG ids as R + 256 G + 256^2 B)


def coco_rle(mask) -> dict:
    """A bool [H, W] mask as a COCO results JSON holds it (pycocotools RLE, counts as a string)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def semantic_entries(image_id, sem_ids, skip_ids=()) -> list[dict]:
    """One image's label map as a COCO semantic results JSON's entries: one RLE per category id
    present (panopticapi's panoptic2semantic_segmentation format), except ``skip_ids``."""
    import numpy as np

    sem = np.asarray(sem_ids)
    return [{"image_id": image_id, "category_id": int(c), "segmentation": coco_rle(sem == c)}
            for c in np.unique(sem).tolist() if c not in skip_ids]


def rgb_to_ids(path):
    """A COCO-panoptic PNG's segment ids (R + 256 G + 256^2 B) as int64 [H, W]."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(path)).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def same_partition(ids_a, cats_a: dict, ids_b, cats_b: dict) -> bool:
    """Two id maps describe the same segments with the same categories per pixel (ids may differ;
    0 is void in both)."""
    import numpy as np

    a, b = np.asarray(ids_a).ravel(), np.asarray(ids_b).ravel()
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a.tolist(), b.tolist()) if x}
    if len(pairs) != len({p[0] for p in pairs}) or len(pairs) != len({p[1] for p in pairs}):
        return False
    return all(cats_a[x] == cats_b[y] for x, y in pairs)


def write_tiny_merge_inputs(root, image_ids, shift_masks: bool = False) -> list[str]:
    """tools/merge.py's three inputs for 6x8 images ``image_ids`` under ``root`` (semantic PNGs of
    stuff category 2, one thing of category 1 per image: a 3x4 box, moved right by the image id with
    ``shift_masks``); returns the ``merge.*`` overrides that name them."""
    import json

    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    cats = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    images = [{"id": k, "file_name": f"{k}.jpg", "height": 6, "width": 8} for k in image_ids]
    (root / "sem").mkdir(parents=True)
    results = []
    for k in image_ids:
        Image.fromarray(np.full((6, 8), 2, np.uint8)).save(root / "sem" / f"{k}.png")
        mask = np.zeros((6, 8), np.uint8)
        left = k if shift_masks else 1
        mask[1:4, left:left + 4] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        results.append({"image_id": k, "category_id": 1, "score": 0.9,
                        "segmentation": {"size": [6, 8], "counts": rle["counts"].decode()}})
    (root / "images.json").write_text(json.dumps({"images": images, "categories": cats}))
    (root / "instances.json").write_text(json.dumps(results))
    return [f"merge.semantic_dir={root / 'sem'}", f"merge.instances_json={root / 'instances.json'}",
            f"merge.images_json={root / 'images.json'}"]

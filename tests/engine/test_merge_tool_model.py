"""With Detectron2's rules and the model's stuff area, tools/merge.py on predictions saved from our
own model (semantic label PNGs as eval writes them; instances as a Detectron2/torchvision user
writes a COCO results JSON: pycocotools RLE of the binary masks at image size, float scores,
dataset category ids) gives exactly the model's own panoptic output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))

from merge_helpers import coco_rle, rgb_to_ids  # noqa: E402
from modeling_helpers import compose_model_config, make_batch  # noqa: E402

STUFF_AREA = 16
SIZES = [(64, 96), (72, 80), (96, 64)]
ORIG_SIZES = [(64, 96), (90, 100), (96, 64)]  # the second is resized back to its original size


def _model():
    """The small model with random weights, nudged so that its output is worth merging: class
    scores around 0.5-0.9 (some below 0.5, many overlapping masks) and a semantic argmax that
    varies over the image (each class's logit standardised on the test batch)."""
    from panfpn.modeling.build import build_model

    cfg = compose_model_config("panoptic_fpn_small", "synthetic", (
        f"model.merge.stuff_area={STUFF_AREA}", "model.roi_heads.box_head.test.detections_per_image=40"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        cls = model.roi_heads.box_head.cls_score
        cls.weight.mul_(8)
        cls.bias.copy_(torch.tensor([1.0, 0.5, 0.0, 0.0, 1.5]))  # the last is background
    return model


def _batch():
    batch = make_batch(SIZES, ORIG_SIZES, num_things=4, num_sem=5, seed=3)
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (len(SIZES), 3, 4, 4), generator=g, dtype=torch.uint8)
    hp, wp = batch["images"].shape[2:]
    images = blocks.repeat_interleave(32, 2).repeat_interleave(32, 3)[..., :hp, :wp].int()
    batch["images"] = (images + torch.randint(-20, 21, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return batch


@torch.no_grad()
def _standardise_semantic_logits(model, batch) -> None:
    pred = model.semantic_head.predictor
    seen = []
    hook = pred.register_forward_hook(lambda module, args, out: seen.append(out))
    model(batch)
    hook.remove()
    mean, std = seen[0].mean((0, 2, 3)), seen[0].std((0, 2, 3))
    pred.weight.div_(std[:, None, None, None])
    pred.bias.sub_(mean).div_(std)


def _save_predictions(root: Path, results, metadata) -> None:
    """What a user of our eval + a Detectron2-style instance model would save."""
    from panfpn.evaluation.writer import SemanticPredictionWriter

    semantic = SemanticPredictionWriter(root / "semantic", metadata)
    images, instances = [], []
    for image_id, (result, (h, w)) in enumerate(zip(results, ORIG_SIZES), start=1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": h, "width": w})
        semantic.add(image_id, result["sem_seg"])
        inst = result["instances"]
        for mask, score, label in zip(inst["masks"].numpy(), inst["scores"].tolist(), inst["labels"].tolist()):
            instances.append({"image_id": image_id, "category_id": metadata.thing_ids[label],
                              "segmentation": coco_rle(mask), "score": float(score)})
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "images.json").write_text(json.dumps({"images": images,
                                                  "categories": metadata.to_coco_categories()}))


def test_tool_reproduces_the_models_panoptic_output(compose_cfg, tmp_path):
    from panfpn.data.synthetic import synthetic_metadata
    from panfpn.engine.merge_run import merge_from_config
    from panfpn.evaluation.label_mapping import model_segments_to_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batch = _model(), _batch()
        _standardise_semantic_logits(model, batch)
        results = model(batch)
    finally:
        torch.set_num_threads(threads)
    metadata = synthetic_metadata()
    import panfpn

    assert model.merge_thresholds == panfpn.MergeThresholds(stuff_area=STUFF_AREA)  # Detectron2's rules
    for result in results:  # the case is worth testing: things kept, dropped and ignored; stuff
        segments = result["panoptic"][1]
        scores = result["instances"]["scores"]
        assert sum(s["isthing"] for s in segments) >= 3 and sum(not s["isthing"] for s in segments) >= 2
        assert sum(s["isthing"] for s in segments) < int((scores >= 0.5).sum())  # some dropped
    assert any(bool((r["instances"]["scores"] < 0.5).any()) for r in results)
    _save_predictions(tmp_path, results, metadata)
    out = tmp_path / "merged"
    summary = merge_from_config(compose_cfg([
        "device=cpu", "merge.workers=0", "merge.rules=detectron2", f"merge.stuff_area={STUFF_AREA}",
        f"merge.semantic_dir={tmp_path / 'semantic'}", f"merge.instances_json={tmp_path / 'instances.json'}",
        f"merge.images_json={tmp_path / 'images.json'}"], output_dir=out))
    assert summary["merged"] == len(results) and not summary["skipped"]
    merged = json.loads(Path(summary["json"]).read_text())["annotations"]
    for ann, result in zip(merged, results):
        id_map, segments = result["panoptic"]
        assert np.array_equal(rgb_to_ids(out / "panoptic_merged" / ann["file_name"]), id_map.numpy())
        want = [(s["id"], s["category_id"], s.get("score")) for s in model_segments_to_dataset(segments, metadata)]
        assert [(s["id"], s["category_id"], s.get("score")) for s in ann["segments_info"]] == want

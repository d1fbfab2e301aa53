"""Large-scale jitter: fixed output size, aligned targets, void padding, scale range, seeding,
inside PanopticDataset, and the LSJ experiment presets."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from panfpn.data.dataset import PanopticDataset
from panfpn.data.metadata import DatasetMetadata
from panfpn.data.synthetic import synthetic_metadata
from panfpn.data.targets import masks_to_boxes, panoptic_targets
from panfpn.data.transforms import Compose, LargeScaleJitter, RandomHorizontalFlip, resize_nearest, scaled_size
from panfpn.engine.config import validate_config

META = DatasetMetadata.from_coco_categories([
    {"id": 5, "name": "box", "isthing": 1},
    {"id": 40, "name": "ground", "isthing": 0},
])
GROUND, BOX = 1000, 70000
SEGMENTS = [{"id": GROUND, "category_id": 40, "iscrowd": 0}, {"id": BOX, "category_id": 5, "iscrowd": 0}]


def _scene(h: int = 60, w: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """A red box (rows 10..29, cols 20..49) with id BOX on grey ground with id GROUND."""
    image = torch.full((3, h, w), 128, dtype=torch.uint8)
    id_map = torch.full((h, w), GROUND, dtype=torch.int32)
    image[:, 10:30, 20:50] = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]
    id_map[10:30, 20:50] = BOX
    return image, id_map


def _box(id_map: torch.Tensor) -> list[float]:
    t = panoptic_targets(id_map, SEGMENTS, META)
    return t["instances"]["boxes"][0].tolist()


@pytest.mark.parametrize("shape", [(60, 80), (80, 60), (7, 300), (300, 7), (1, 1)])
def test_output_is_always_exactly_output_size(shape):
    torch.manual_seed(0)
    t = LargeScaleJitter(output_size=(48, 64), min_scale=0.1, max_scale=2.0)
    for _ in range(20):
        image, id_map = t(*_scene(*shape))
        assert image.shape == (3, 48, 64) and id_map.shape == (48, 64)
        assert image.dtype == torch.uint8 and id_map.dtype == torch.int32


def test_fixed_scale_without_crop_scales_box_exactly():
    # 60x80 into 120x160 at scale 1: factor min(120/60, 160/80) = 2, no crop and no padding.
    image, id_map = LargeScaleJitter((120, 160), 1.0, 1.0)(*_scene())
    assert _box(id_map) == [40, 20, 100, 60]
    red = (image[0] > 200) & (image[1] < 60) & (image[2] < 60)
    assert masks_to_boxes(red[None])[0].tolist() == [40, 20, 100, 60]  # the image moved with the ids


def test_padding_is_void_and_ignored_by_targets():
    # scale 0.5 of 120x160 fits 60x80 unchanged; the rest is padding.
    image0, id_map0 = _scene()
    image, id_map = LargeScaleJitter((120, 160), 0.5, 0.5)(image0, id_map0)
    assert torch.equal(id_map[:60, :80], id_map0) and torch.equal(image[:, :60, :80], image0)
    assert (id_map[60:] == 0).all() and (id_map[:, 80:] == 0).all()
    assert (image[:, 60:] == 128).all() and (image[:, :, 80:] == 128).all()  # Detectron2's FixedSizeCrop grey
    t = panoptic_targets(id_map, SEGMENTS, META)
    assert (t["sem_seg"][60:] == 255).all() and (t["sem_seg"][:, 80:] == 255).all()
    assert t["instances"]["masks"][:, 60:].sum() == 0 and _box(id_map) == [20, 10, 50, 30]
    padded = LargeScaleJitter((120, 160), 0.5, 0.5, pad_value=114)(image0, id_map0)
    assert (padded[0][:, 60:] == 114).all() and (padded[1][60:] == 0).all()


def test_crop_is_an_exact_window_of_the_scaled_map():
    # Every pixel has its own id, so the output locates the crop: at scale 2 the 30x40 map becomes
    # 120x160 (factor 4) and the 60x80 output must be one window of the 4x nearest-resized map.
    src = torch.arange(1, 30 * 40 + 1, dtype=torch.int32).reshape(30, 40)
    big = resize_nearest(src, 120, 160)
    image = torch.zeros(3, 30, 40, dtype=torch.uint8)
    torch.manual_seed(3)
    t = LargeScaleJitter((60, 80), 2.0, 2.0)
    offsets = set()
    for _ in range(10):
        _, out = t(image, src)
        r0, c0 = divmod(int(out[0, 0]) - 1, 40)
        hits = [(y, x) for y in range(4 * r0, 4 * r0 + 4) for x in range(4 * c0, 4 * c0 + 4)
                if y + 60 <= 120 and x + 80 <= 160 and torch.equal(out, big[y:y + 60, x:x + 80])]
        assert len(hits) >= 1
        offsets.add(hits[0])
    assert len(offsets) > 3  # the crop position is random


def test_ids_are_never_blended_and_boxes_follow_the_red_pixels():
    torch.manual_seed(1)
    t = LargeScaleJitter((64, 64), 0.1, 2.0)
    for _ in range(40):
        image, id_map = t(*_scene())
        assert set(torch.unique(id_map).tolist()) <= {GROUND, BOX, 0}
        if (id_map == BOX).sum() > 16:  # the box survived the crop: red pixels match its mask
            red = (image[0] > 200) & (image[1] < 60) & (image[2] < 60)
            assert (red & (id_map != BOX)).sum() <= (id_map == BOX).sum() * 0.25
            assert (red & (id_map == BOX)).sum() >= (id_map == BOX).sum() * 0.5


@pytest.mark.parametrize("lo,hi", [(0.1, 2.0), (0.5, 0.8)])
def test_scale_range_is_respected(lo, hi):
    # A 50x100 ground image into 100x100: factor = scale, visible rows = round(50 * scale) (the
    # crop never cuts rows below scale 2), so the rows of non-void ids measure the drawn scale.
    image = torch.full((3, 50, 100), 9, dtype=torch.uint8)
    id_map = torch.full((50, 100), GROUND, dtype=torch.int32)
    torch.manual_seed(0)
    t = LargeScaleJitter((100, 100), lo, hi)
    rows = [int((t(image, id_map)[1] != 0).any(1).sum()) for _ in range(300)]
    assert min(rows) >= round(50 * lo) and max(rows) <= round(50 * hi)
    span = 50 * (hi - lo)
    assert min(rows) < 50 * lo + 0.1 * span and max(rows) > 50 * hi - 0.1 * span


def test_deterministic_under_manual_seed():
    t = Compose([LargeScaleJitter((64, 64), 0.1, 2.0), RandomHorizontalFlip(0.5)])
    torch.manual_seed(11)
    a = [t(*_scene()) for _ in range(6)]
    torch.manual_seed(11)
    b = [t(*_scene()) for _ in range(6)]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert len({tuple(x[1].flatten().tolist()) for x in a}) > 1


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="min_scale=0.0"):
        LargeScaleJitter((64, 64), 0.0, 1.0)
    with pytest.raises(ValueError, match="max_scale=0.5"):
        LargeScaleJitter((64, 64), 1.0, 0.5)
    with pytest.raises(ValueError, match="output_size"):
        LargeScaleJitter((64, 0))
    with pytest.raises(ValueError, match="same size"):
        LargeScaleJitter((64, 64))(*_scene()[:1], _scene()[1][:-1])


def test_inside_panoptic_dataset(synthetic_root):
    args = (synthetic_root / "panoptic.json", synthetic_root / "images", synthetic_root / "panoptic")
    plain = PanopticDataset(*args, metadata=synthetic_metadata())
    h, w = plain[0]["image"].shape[1:]
    # Scale 0.5 of (2h + 8, 2w) fits the h x w image unchanged (factor min((h + 4) / h, 1) = 1);
    # everything below and right of it is void padding.
    lsj = PanopticDataset(*args, metadata=synthetic_metadata(),
                          transforms=Compose([LargeScaleJitter((2 * h + 8, 2 * w), 0.5, 0.5)]))
    for i in range(3):
        a, b = plain[i], lsj[i]
        assert b["image"].shape == (3, 2 * h + 8, 2 * w) and b["sem_seg"].shape == (2 * h + 8, 2 * w)
        assert torch.equal(b["image"][:, :h, :w], a["image"]) and (b["image"][:, h:] == 128).all()
        assert torch.equal(b["sem_seg"][:h, :w], a["sem_seg"]) and (b["sem_seg"][h:] == 255).all()
        assert torch.equal(b["instances"]["boxes"], a["instances"]["boxes"])
        assert b["instances"]["masks"].shape[1:] == (2 * h + 8, 2 * w)
    torch.manual_seed(0)
    jit = PanopticDataset(*args, metadata=synthetic_metadata(),
                          transforms=Compose([LargeScaleJitter((64, 96), 0.1, 2.0), RandomHorizontalFlip()]))
    for i in range(6):
        s = jit[i]
        assert s["image"].shape == (3, 64, 96) and s["sem_seg"].shape == (64, 96)
        masks = s["instances"]["masks"]
        assert masks.shape[1:] == (64, 96) and masks.flatten(1).any(1).all()


# (iterations, lr steps, warmup iterations) of Detectron2's new_baselines R50-FPN 100ep/400ep LSJ.
LSJ_PRESETS = {"coco_r50_lsj_100ep": (184375, [163889, 177546], 500),
               "coco_r50_lsj_400ep": (737500, [655556, 710184], 2000)}


@pytest.mark.parametrize("name", LSJ_PRESETS)
def test_lsj_preset_composes_validates_and_jitters_to_its_size(name, tmp_path, compose_cfg):
    cfg = compose_cfg([f"experiment={name}"], output_dir=tmp_path)
    validate_config(cfg)
    OmegaConf.resolve(cfg)
    max_iter, steps, warmup = LSJ_PRESETS[name]
    s = cfg.solver
    assert (s.base_lr, s.ims_per_batch, s.weight_decay, s.max_iter) == (0.1, 64, 4.0e-5, max_iter)
    assert list(s.schedule.steps) == steps and s.schedule.warmup_iters == warmup
    assert instantiate(s.schedule)(max_iter - 1) == pytest.approx(0.01)
    assert cfg.weights is None and cfg.model.backbone.norm == "bn" and cfg.model.backbone.freeze_at == 0
    assert cfg.model.backbone.depth == 50
    transforms = instantiate(cfg.data.train.transforms)
    assert isinstance(transforms.transforms[0], LargeScaleJitter)
    torch.manual_seed(0)
    for shape in [(427, 640), (640, 480), (128, 128)]:
        image, id_map = _scene(*shape)
        out_image, out_ids = transforms(image, id_map)
        assert out_image.shape == (3, 1024, 1024) and out_ids.shape == (1024, 1024)


def _detectron2_resize_scale(h, w, target_h, target_w, scale):
    """Detectron2's ResizeScale._get_resize output size, step by step: the target scaled, the
    smaller ratio, the input times it, np.round (half to even)."""
    import numpy as np

    target = np.multiply((target_h, target_w), scale)
    ratio = np.minimum(target[0] / h, target[1] / w)
    return tuple(int(v) for v in np.round(np.multiply((h, w), ratio)).astype(int))


def test_lsj_resize_size_is_detectron2s_resize_scale():
    # Before: int(x + 0.5) (half up): where Detectron2's np.round ties to even the side was 1 px
    # longer, e.g. a 128x5 image at 64x64, scale 1: 64x3 against Detectron2's 64x2.
    assert scaled_size(128, 5, 64, 64, 1.0) == (64, 2)
    ties = 0
    for h in range(1, 200, 3):
        for w in (1, 2, 3, 5, 7, 9, 40, 128, 500, 3000):
            for scale in (0.1, 0.5, 1.0, 1.5, 2.0):
                for a, b in ((h, w), (w, h)):
                    want = _detectron2_resize_scale(a, b, 64, 64, scale)
                    assert scaled_size(a, b, 64, 64, scale) == tuple(max(1, v) for v in want), (a, b, scale)
                    factor = min(64 * scale / a, 64 * scale / b)
                    ties += (int(a * factor + 0.5), int(b * factor + 0.5)) != want
    assert ties > 5  # the grid holds half-way sizes

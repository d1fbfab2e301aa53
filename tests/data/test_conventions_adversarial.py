"""The data pipeline against Detectron2's conventions, on inputs built in Detectron2's format and
compared with what Detectron2's code would give (computed here independently)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from panfpn.data.transforms import LargeScaleJitter

# Detectron2's FixedSizeCrop (the LSJ crop of its new_baselines and of Mask2Former's COCO mappers)
# pads the image at the bottom/right with pad_value=128.0, the segmentation with 255 (ignore).
D2_FIXED_SIZE_CROP_PAD = 128
EXPERIMENTS = Path(__file__).resolve().parents[2] / "configs" / "experiment"


def _lsj_nodes(node):
    """Every LargeScaleJitter node of a plain config container."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).endswith(".LargeScaleJitter"):
            yield node
        for v in node.values():
            yield from _lsj_nodes(v)
    elif isinstance(node, list):
        for v in node:
            yield from _lsj_nodes(v)


def _padded(lsj: LargeScaleJitter, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """LSJ at its smallest scale on a random image of ``size``: mostly padding."""
    lsj.sample_scale = lambda: lsj.min_scale  # type: ignore[method-assign]
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    id_map = torch.ones(size, dtype=torch.int32)
    return lsj(image, id_map)


def test_lsj_pads_the_image_with_detectron2s_grey():
    """LargeScaleJitter padded with black (0): Detectron2's FixedSizeCrop pads with 128."""
    out, ids = _padded(LargeScaleJitter((64, 64), 0.5, 0.5), (32, 32))
    pad = D2_FIXED_SIZE_CROP_PAD
    assert bool((out[:, 32:, :] == pad).all() and (out[:, :, 32:] == pad).all())
    assert bool((ids[32:, :] == 0).all() and (ids[:, 32:] == 0).all())  # void: ignored by every target


@pytest.mark.parametrize("name", ["coco_r50_lsj_100ep", "coco_r50_lsj_400ep", "coco_mask2former_r50",
                                  "coco_mask2former_swin_t"])
def test_lsj_presets_pad_like_detectron2(name, compose_cfg, tmp_path):
    """The presets that follow Detectron2's new_baselines / Mask2Former LSJ recipes set pad_value: 0,
    so the model trained on black borders that Detectron2's never shows it."""
    cfg = compose_cfg([f"experiment={name}"], output_dir=tmp_path)
    nodes = list(_lsj_nodes(OmegaConf.to_container(cfg.data.train.transforms, resolve=True)))
    assert len(nodes) == 1
    lsj = instantiate(nodes[0])
    out, _ = _padded(lsj, (48, 64))
    h, w = out.shape[1:]
    assert (h, w) == (1024, 1024)
    # scale 0.1 of 1024 x 1024: the 48 x 64 image becomes 77 x 102 at the top left
    pad = D2_FIXED_SIZE_CROP_PAD
    assert bool((out[:, 77:, :] == pad).all() and (out[:, :, 102:] == pad).all())


def test_lsj_crop_slides_along_the_diagonal_like_fixed_size_crop():
    """Detectron2's FixedSizeCrop places its crop at ``round(room * u)`` with ONE uniform ``u`` for
    both axes (np.round: half to even): the offsets of an image with room on both axes agree on one
    ``u``, and the ends of the room are half as likely as any offset inside. Drawing each axis on
    its own (a RandomCrop) puts the crop anywhere in the room."""
    # 20x40 into 10x10 at scale 4: factor min(40/20, 40/40) = 1, so no resize; room 10 rows, 30 cols.
    ids = torch.arange(20 * 40, dtype=torch.int32).reshape(20, 40)
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    lsj = LargeScaleJitter((10, 10), 4.0, 4.0)
    torch.manual_seed(0)
    offsets = []
    for _ in range(400):
        _, out = lsj(image, ids)
        y0, x0 = divmod(int(out[0, 0]), 40)
        assert torch.equal(out, ids[y0:y0 + 10, x0:x0 + 10])
        offsets.append((y0, x0))
    for y0, x0 in offsets:  # the u that rounds to y0 (of 10) and the one that rounds to x0 (of 30) overlap
        assert max((y0 - 0.5) / 10, (x0 - 0.5) / 30) <= min((y0 + 0.5) / 10, (x0 + 0.5) / 30), (y0, x0)
    rows = [y0 for y0, _ in offsets]
    assert set(rows) == set(range(11))
    # u < 0.05 gives row 0 (5 %), u in [0.45, 0.55] row 5 (10 %): the end rows come up about half as often
    ends, middle = (rows.count(0) + rows.count(10)) / 2, (rows.count(4) + rows.count(5) + rows.count(6)) / 3
    assert ends < 0.75 * middle, (ends, middle)  # ~20 vs ~40 here; one draw per axis: ~36 vs ~36


def test_lsj_crop_offset_rounds_half_to_even_as_np_round():
    """room * u exactly halfway between two offsets goes to the even one (np.round), not up."""
    lsj = LargeScaleJitter((10, 10), 1.0, 1.0)
    # rooms 2 (rows) and 6 (cols) of a 12x16 image: u 0.25 gives 0.5 and 1.5, u 0.75 gives 1.5 and 4.5
    for u, expected in ((0.25, (0, 2)), (0.75, (2, 4))):
        with mock.patch.object(torch, "rand", lambda *args, **kwargs: torch.tensor(u, dtype=torch.float64)):
            assert lsj.crop_offset(12, 16) == expected, u

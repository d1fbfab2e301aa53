"""ColorAugSSD gives the bytes Detectron2's ColorAugSSDTransform gives for the same draws.

The reference below is the official transform's recipe written out independently, pixel by pixel,
in the source's own layout (BGR, [H, W, 3]) and with OpenCV's documented 8-bit HSV arithmetic
(hue in [0, 180): degrees / 2; forward in 12-bit fixed point with rounded reciprocals; backward in
float32 with ``1 - s * f`` rounded once, truncated in OpenCV's 32-pixel vector blocks of a row and
rounded half to even in the pixels after them). The fused rounding is computed exactly with
fractions here, not in float64 as the implementation does. No OpenCV is needed.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from panfpn.data.hsv8 import hsv8_to_rgb, rgb_to_hsv8
from panfpn.data.transforms import ColorAugSSD, ColorDraws, check_transforms_node
from panfpn.utils.errors import ConfigError

F32 = np.float32
BLOCK = 32  # OpenCV's vector HSV -> BGR loop: 8 float32 lanes x 4 pixels per step


def _nearest_f32(x: Fraction) -> np.float32:
    """The float32 nearest the exact rational ``x``, ties to the even significand."""
    guess = F32(float(x))
    candidates = [np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf))]
    odd = lambda f: int(np.array(f, F32).view(np.uint32)) & 1  # noqa: E731
    return min(candidates, key=lambda f: (abs(Fraction(float(f)) - x), odd(f)))


def _one_minus_fused(a: np.float32, b: np.float32) -> np.float32:
    return _nearest_f32(1 - Fraction(float(a)) * Fraction(float(b)))


def ref_bgr2hsv(b: int, g: int, r: int) -> tuple[int, int, int]:
    v, vmin = max(b, g, r), min(b, g, r)
    diff = v - vmin
    sdiv = round((255 << 12) / v) if v else 0
    hdiv = round((180 << 12) / (6 * diff)) if diff else 0
    if v == r:
        num = g - b
    elif v == g:
        num = b - r + 2 * diff
    else:
        num = r - g + 4 * diff
    h = (num * hdiv + (1 << 11)) >> 12
    return (h + 180 if h < 0 else h), (diff * sdiv + (1 << 11)) >> 12, v


def ref_hsv2bgr(h: int, s: int, v: int, in_vector_block: bool) -> tuple[int, int, int]:
    hh = F32(h) * (F32(6.0) / F32(180.0))
    ss, vv = F32(s) * (F32(1.0) / F32(255.0)), F32(v) * (F32(1.0) / F32(255.0))
    sector = int(math.floor(hh))
    f = hh - F32(sector)
    p = vv * (F32(1.0) - ss)
    q = vv * _one_minus_fused(ss, f)
    t = vv * _one_minus_fused(ss, F32(1.0) - f)
    r, g, b = [(vv, t, p), (q, vv, p), (p, vv, t), (p, q, vv), (t, p, vv), (vv, p, q)][sector]
    if not in_vector_block and s == 0:
        r = g = b = vv
    to_byte = (lambda x: math.trunc(float(x))) if in_vector_block else (lambda x: int(np.rint(x)))
    return tuple(min(255, max(0, to_byte(F32(c) * F32(255.0)))) for c in (b, g, r))


def ref_cvt(img: np.ndarray, to_hsv: bool) -> np.ndarray:
    """An [H, W, 3] uint8 image converted pixel by pixel (BGR -> HSV or HSV -> BGR)."""
    out = np.empty_like(img)
    width = img.shape[1]
    for y, x in itertools.product(range(img.shape[0]), range(width)):
        px = [int(c) for c in img[y, x]]
        out[y, x] = ref_bgr2hsv(*px) if to_hsv else ref_hsv2bgr(*px, x < width - width % BLOCK)
    return out


def ref_convert(img: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def ref_color_aug(rgb: np.ndarray, d: ColorDraws) -> np.ndarray:
    """The official apply_image for RGB input ([H, W, 3]) with the draws ``d``."""
    img = rgb[:, :, ::-1].copy()

    def contrast(im):
        return im if d.contrast is None else ref_convert(im, alpha=d.contrast)

    def saturation(im):
        if d.saturation is None:
            return im
        hsv = ref_cvt(im, to_hsv=True)
        hsv[:, :, 1] = ref_convert(hsv[:, :, 1], alpha=d.saturation)
        return ref_cvt(hsv, to_hsv=False)

    def hue(im):
        if d.hue is None:
            return im
        hsv = ref_cvt(im, to_hsv=True)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + d.hue) % 180
        return ref_cvt(hsv, to_hsv=False)

    if d.brightness is not None:
        img = ref_convert(img, beta=d.brightness)
    for step in ((contrast, saturation, hue) if d.contrast_first else (saturation, hue, contrast)):
        img = step(img)
    return img[:, :, ::-1]


def _test_image(h: int = 3, w: int = 40, seed: int = 0) -> np.ndarray:
    """RGB [H, W, 3] with random colours, greys, saturated and extreme pixels, in vector and tail columns."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    img[0, ::5] = img[0, ::5, :1]                       # greys (saturation 0)
    img[1, ::7] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [250, 3, 128]][: len(img[1, ::7])]
    img[2, -4:] = [[1, 0, 0], [128, 127, 127], [17, 240, 239], [200, 200, 201]]
    return img


def _as_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


STEPS = list(itertools.product([None, 21.7], [True, False], [None, 1.37], [None, 0.63], [None, -11]))


@pytest.mark.parametrize("brightness,contrast_first,contrast,saturation,hue", STEPS)
def test_colour_aug_equals_the_official_recipe_for_every_branch(brightness, contrast_first, contrast,
                                                                saturation, hue):
    rgb = _test_image()
    draws = ColorDraws(brightness, contrast_first, contrast, saturation, hue)
    got = ColorAugSSD.apply(_as_chw(rgb), draws).numpy().transpose(1, 2, 0)
    want = ref_color_aug(rgb, draws)
    assert np.array_equal(got, want), f"{int((got != want).any(-1).sum())} pixels differ"


@pytest.mark.parametrize("seed", range(4))
def test_colour_aug_with_strong_random_draws_equals_the_official_recipe(seed):
    torch.manual_seed(seed)
    aug = ColorAugSSD(brightness_delta=60, contrast_low=0.2, contrast_high=2.5, saturation_low=0.1,
                      saturation_high=3.0, hue_delta=90)
    rgb = _test_image(h=3, w=36, seed=seed)
    for _ in range(3):
        draws = aug.sample()
        got = ColorAugSSD.apply(_as_chw(rgb), draws).numpy().transpose(1, 2, 0)
        assert np.array_equal(got, ref_color_aug(rgb, draws)), draws


def test_hsv8_conversions_equal_the_8bit_formulas_in_vector_blocks_and_tails():
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (12, 45, 3)).astype(np.uint8)   # 32 vector columns + 13 tail columns
    rgb[0, :10] = rgb[0, :10, :1]
    hsv = np.stack(rgb_to_hsv8(rgb[..., 0], rgb[..., 1], rgb[..., 2]), -1)
    assert np.array_equal(hsv, ref_cvt(rgb[:, :, ::-1], to_hsv=True))
    hsv_in = np.stack([rng.integers(0, 180, (12, 45)), rng.integers(0, 256, (12, 45)),
                       rng.integers(0, 256, (12, 45))], -1).astype(np.uint8)
    hsv_in[1, ::3, 1] = 0
    back = np.stack(hsv8_to_rgb(hsv_in[..., 0], hsv_in[..., 1], hsv_in[..., 2]), -1)
    assert np.array_equal(back, ref_cvt(hsv_in, to_hsv=False)[:, :, ::-1])


def test_the_two_hsv_paths_really_differ_so_the_tail_rule_is_tested():
    # (0, 1, 5): v(1-s) * 255 = 4.98..: the vector loop truncates it to 4, the scalar code rounds to 5
    assert ref_hsv2bgr(0, 1, 5, True) != ref_hsv2bgr(0, 1, 5, False)
    hsv = np.zeros((1, 33, 3), np.uint8)
    hsv[0, :] = (0, 1, 5)
    r, g, b = hsv8_to_rgb(hsv[..., 0], hsv[..., 1], hsv[..., 2])
    assert (g[0, :32] == 4).all() and g[0, 32] == 5


@pytest.mark.parametrize("hsv,bgr,in_vector_block", [
    ((67, 180, 170), (78, 170, 49), True),     # 1 - s*f fused: 78.0000; unfused: 77.99999 -> 77
    ((74, 200, 153), (88, 153, 32), True),     # fused 88.99999 -> 88; unfused 89.00001 -> 89
    ((175, 51, 138), (115, 110, 138), True),
    ((117, 85, 45), (45, 32, 30), False),      # the scalar code fuses too (rounded: 32, not 31)
])
def test_hsv_to_bgr_rounds_one_minus_s_f_once_as_opencv_does(hsv, bgr, in_vector_block):
    # bytes OpenCV 4.11 (x86-64, AVX2) gave for these triples, where an unfused 1 - s*f is 1 off
    assert ref_hsv2bgr(*hsv, in_vector_block) == bgr
    width = 33 if in_vector_block else 1
    planes = [np.full((1, width), c, np.uint8) for c in hsv]
    r, g, b = hsv8_to_rgb(*planes)
    assert (int(b[0, 0]), int(g[0, 0]), int(r[0, 0])) == bgr


def test_hsv8_refuses_a_hue_outside_the_8bit_range():
    plane = np.full((1, 2), 180, np.uint8)
    with pytest.raises(ValueError, match="below 180"):
        hsv8_to_rgb(plane, plane, plane)


def test_draws_follow_the_recipes_probabilities_and_ranges():
    torch.manual_seed(0)
    aug = ColorAugSSD()
    draws = [aug.sample() for _ in range(4000)]
    for name in ("brightness", "contrast", "saturation", "hue"):
        taken = [getattr(d, name) for d in draws if getattr(d, name) is not None]
        assert 0.46 < len(taken) / len(draws) < 0.54, name   # each step with probability 1/2
    assert 0.46 < np.mean([d.contrast_first for d in draws]) < 0.54
    bright = [d.brightness for d in draws if d.brightness is not None]
    assert -32 <= min(bright) < -30 and 30 < max(bright) <= 32
    for name in ("contrast", "saturation"):
        vals = [getattr(d, name) for d in draws if getattr(d, name) is not None]
        assert 0.5 <= min(vals) < 0.52 and 1.48 < max(vals) <= 1.5
    hues = {d.hue for d in draws if d.hue is not None}
    assert hues == set(range(-18, 19))                      # integers, both ends included


def test_draws_are_taken_in_the_sources_order():
    # brightness coin (+ value), order coin, then each step's coin (+ value) in the order it runs
    aug = ColorAugSSD()
    for seed in range(20):
        torch.manual_seed(seed)
        d = aug.sample()
        torch.manual_seed(seed)
        coin = lambda: bool(torch.randint(2, ()).item())  # noqa: E731
        uni = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), dtype=torch.float64).item())  # noqa: E731
        bright = uni(-32, 32) if coin() else None
        first = coin()
        con = (uni(0.5, 1.5) if coin() else None) if first else "later"
        sat = uni(0.5, 1.5) if coin() else None
        hue = int(torch.randint(-18, 19, ()).item()) if coin() else None
        if con == "later":
            con = uni(0.5, 1.5) if coin() else None
        assert d == ColorDraws(bright, first, con, sat, hue)


def test_colour_aug_keeps_the_id_map_and_follows_the_torch_seed():
    image = _as_chw(_test_image())
    ids = torch.arange(3 * 40).reshape(3, 40)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        out_image, out_ids = ColorAugSSD()(image, ids)
        assert out_ids is ids and out_image.dtype == torch.uint8 and out_image.shape == image.shape
        outs.append(out_image)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("kwargs,message", [
    ({"brightness_delta": -1}, "brightness_delta"),
    ({"contrast_low": 1.6}, "contrast_low / contrast_high"),
    ({"saturation_low": -0.1}, "saturation_low / saturation_high"),
    ({"hue_delta": 2.5}, "hue_delta"),
    ({"hue_delta": 180}, "hue_delta"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ColorAugSSD(**kwargs)


def test_float_images_are_refused():
    with pytest.raises(ValueError, match="uint8 RGB"):
        ColorAugSSD()(torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.long))


def test_config_node_is_checked_like_the_other_transforms():
    check_transforms_node({"_target_": "panfpn.data.transforms.ColorAugSSD", "hue_delta": 18}, "t")
    with pytest.raises(ConfigError, match="did you mean 'hue_delta'"):
        check_transforms_node({"_target_": "panfpn.data.transforms.ColorAugSSD", "hue_delt": 18}, "t")
    with pytest.raises(ConfigError, match="config key 't': hue_delta"):
        check_transforms_node({"_target_": "panfpn.data.transforms.ColorAugSSD", "hue_delta": 400}, "t")
    with pytest.raises(ConfigError, match="is not a transform"):   # the draws record is no transform
        check_transforms_node({"_target_": "panfpn.data.transforms.ColorDraws"}, "t")


def test_cityscapes_mask2former_preset_runs_its_official_pipeline():
    from config_helpers import compose_config
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose_config(["experiment=cityscapes_mask2former_r50"])
    transform = instantiate(OmegaConf.to_container(cfg.data.train.transforms, resolve=True))
    image = _as_chw(np.random.default_rng(0).integers(0, 256, (64, 128, 3)).astype(np.uint8))
    ids = torch.arange(64 * 128).reshape(64, 128) // 128          # one id per row
    torch.manual_seed(0)
    out, out_ids = transform(image, ids)
    assert tuple(out.shape) == (3, 512, 1024) and tuple(out_ids.shape) == (512, 1024)
    sizes = transform.transforms[0].lengths
    assert len(sizes) == 16 and sizes[0] == 512 and sizes[-1] == 2048
    # the colour step changed bytes (some draw in 5 seeds) but never the ids
    changed = False
    for seed in range(5):
        torch.manual_seed(seed)
        colour = transform.transforms[2]
        before = out.clone()
        after, kept = colour(before, out_ids)
        changed |= not torch.equal(after, before)
        assert kept is out_ids
    assert changed

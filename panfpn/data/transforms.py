"""Joint geometric transforms of an image and its panoptic id map, and a colour one of the image alone.

Every transform is a callable ``(image, id_map) -> (image, id_map)`` with ``image`` uint8
``[3, H, W]`` and ``id_map`` int ``[H, W]``. The image is resampled bilinearly and the id map
by nearest neighbour (ids must never be blended); targets are derived afterwards
(:mod:`panfpn.data.targets`), so masks, boxes and semantic labels always agree.

Randomness comes from torch's global generator, which DataLoader seeds per worker, so a seeded
loader gives reproducible augmentation.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from panfpn.data.hsv8 import hsv8_to_rgb, rgb_to_hsv8

Pair = tuple[torch.Tensor, torch.Tensor]
Transform = Callable[[torch.Tensor, torch.Tensor], Pair]  # what every joint transform is


def _check_pair(image: torch.Tensor, id_map: torch.Tensor) -> None:
    if image.ndim != 3 or id_map.ndim != 2 or image.shape[1:] != id_map.shape:
        raise ValueError(f"expected image [3, H, W] and id map [H, W] of the same size, got "
                         f"{tuple(image.shape)} and {tuple(id_map.shape)}")


def nearest_indices(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each of ``n_out`` positions when Pillow's ``NEAREST`` resizes ``n_in`` to ``n_out``.

    Pillow steps a float64 pixel-centre position by ``n_in / n_out`` (adding, not multiplying), so on
    exact ties (640 -> 192: positions 5.0, 15.0, ...) it can pick the pixel before the one
    ``(i + 0.5) * n_in / n_out`` names; Pillow itself resizing ``0..n_in-1`` gives its choice exactly.
    """
    indices = Image.fromarray(np.arange(n_in, dtype=np.int32)[:, None]).resize((1, n_out), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(indices, dtype=np.int64)[:, 0].copy())


def resize_nearest(id_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of an integer map ``[H, W]``: the pixels Pillow's ``NEAREST`` picks,
    as Detectron2 resizes segmentation maps (``ResizeTransform.apply_segmentation``), so training
    targets are its targets. A multiplied ``(i + 0.5) * H / height`` differed on exact ties: 19 % of
    a 427x640 map resized to 128x192 (whole columns one pixel off)."""
    h, w = id_map.shape
    return id_map.index_select(0, nearest_indices(h, height)).index_select(1, nearest_indices(w, width))


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of an image ``[3, H, W]``; uint8 ones with Pillow's ``BILINEAR`` (antialiased
    when shrinking), byte for byte what Detectron2's ``ResizeTransform`` gives its uint8 images.

    torchvision's uint8 antialiased kernel follows the same algorithm with int16 weights of a lower
    fixed-point precision: ~18 % of the bytes of a COCO photo resized to 800 px came out 1 off
    Detectron2's input, so the same weights gave slightly other outputs. Other dtypes: torchvision.
    """
    if image.dtype != torch.uint8:
        return TF.resize(image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)

    # Channel by channel as greyscale images: Pillow resamples each band alone, so the bytes are
    # those of the RGB image, without transposing to HWC and back (2.5x faster at 640x480).
    planes = image.contiguous().numpy()
    out = np.empty((planes.shape[0], height, width), np.uint8)
    for c, plane in enumerate(planes):
        out[c] = np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BILINEAR))
    return torch.from_numpy(out)


def resize_pair(image: torch.Tensor, id_map: torch.Tensor, height: int, width: int) -> Pair:
    """Resize image (:func:`resize_image`) and id map (nearest) to ``height x width``."""
    if (height, width) == tuple(id_map.shape):
        return image, id_map
    return resize_image(image, height, width), resize_nearest(id_map, height, width)


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Output size when the shorter side becomes ``short`` and the longer at most ``max_size``.

    In Detectron2's float order (ResizeShortestEdge): the shorter side is ``short`` exactly, the
    longer ``short / shorter * longer``; when that passes ``max_size`` both are scaled by
    ``max_size / longer``; then each is rounded half up. Sizes on a .5 tie depend on that order:
    a 2:1 image at (800, 1333) becomes 666x1333 as in Detectron2, not 667x1333.
    """
    scale = short / min(h, w)
    new_h, new_w = (float(short), scale * w) if h < w else (scale * h, float(short))
    longer = max(new_h, new_w)
    if longer > max_size:
        new_h, new_w = new_h * (max_size / longer), new_w * (max_size / longer)
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def _size(value: object, name: str) -> int:
    """``value`` as a size in pixels: a whole number >= 1 (``'800'``, ``true``, ``0`` or ``-1`` would
    iterate as ``[8, 0, 0]``, mean 1 or shrink every image to 1 pixel)."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        # Detectron2 reads a short edge of 0 as "no resize" (INPUT.MIN_SIZE_TEST: 0): say how to get that here
        no_resize = name == "short_edge_lengths" and not isinstance(value, bool) and whole and value == 0
        hint = ("; Detectron2's 0 = no resize is not taken: leave the resize out (at test time "
                "data.val.transforms=null)") if no_resize else ""
        raise ValueError(f"{name}: each must be a whole number of pixels >= 1, got {value!r}{hint}")
    return int(value)


class ResizeShortestEdge:
    """Resize so the shorter side is a sampled length, the longer at most ``max_size``.

    ``sample_style="choice"`` picks one of ``short_edge_lengths``; ``"range"`` draws an integer
    uniformly in ``[min, max]`` of the two given lengths.
    """

    def __init__(self, short_edge_lengths: int | Sequence[int], max_size: int = 1333,
                 sample_style: Literal["choice", "range"] = "choice") -> None:
        given = [short_edge_lengths] if not isinstance(short_edge_lengths, Sequence) \
            or isinstance(short_edge_lengths, str) else list(short_edge_lengths)
        lengths = [_size(v, "short_edge_lengths") for v in given]
        max_size = _size(max_size, "max_size")
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if not lengths or (sample_style == "range" and len(lengths) != 2):
            raise ValueError(f"short_edge_lengths for sample_style={sample_style!r} must be "
                             f"{'two values' if sample_style == 'range' else 'non-empty'}, got {lengths}")
        self.lengths, self.max_size, self.sample_style = lengths, int(max_size), sample_style

    def _sample(self) -> int:
        if self.sample_style == "range":
            return int(torch.randint(min(self.lengths), max(self.lengths) + 1, ()).item())
        return self.lengths[int(torch.randint(len(self.lengths), ()).item())]

    def __call__(self, image: torch.Tensor, id_map: torch.Tensor) -> Pair:
        _check_pair(image, id_map)
        h, w = id_map.shape
        return resize_pair(image, id_map, *shortest_edge_size(h, w, self._sample(), self.max_size))

    def __repr__(self) -> str:
        return (f"ResizeShortestEdge({self.lengths}, max_size={self.max_size}, "
                f"sample_style={self.sample_style!r})")


class RandomHorizontalFlip:
    """Mirror image and id map left-right with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip prob must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, image: torch.Tensor, id_map: torch.Tensor) -> Pair:
        _check_pair(image, id_map)
        if torch.rand(()).item() < self.prob:
            return image.flip(-1), id_map.flip(-1)
        return image, id_map

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


class RandomCrop:
    """Crop a random ``height x width`` window (the whole side when the image is smaller).

    Instances emptied by the crop disappear from the targets because targets are derived from
    the cropped id map; their boxes are the tight boxes of the cropped masks.
    """

    def __init__(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"crop size must be positive, got {height}x{width}")
        self.height, self.width = int(height), int(width)

    def __call__(self, image: torch.Tensor, id_map: torch.Tensor) -> Pair:
        _check_pair(image, id_map)
        h, w = id_map.shape
        ch, cw = min(self.height, h), min(self.width, w)
        y0 = int(torch.randint(h - ch + 1, ()).item())
        x0 = int(torch.randint(w - cw + 1, ()).item())
        return image[:, y0:y0 + ch, x0:x0 + cw], id_map[y0:y0 + ch, x0:x0 + cw]

    def __repr__(self) -> str:
        return f"RandomCrop({self.height}, {self.width})"


@dataclass(frozen=True)
class ColorDraws:
    """The random choices of one :class:`ColorAugSSD` call; ``None``: that step is skipped."""

    brightness: float | None      # added to every byte
    contrast_first: bool          # contrast before saturation and hue (else after them)
    contrast: float | None        # every byte multiplied by it
    saturation: float | None      # the HSV saturation multiplied by it
    hue: int | None               # added to the 8-bit hue (0..179), modulo 180


def _coin() -> bool:
    return bool(torch.randint(2, ()).item())


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), dtype=torch.float64).item())


def _scale_bytes(planes: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``planes * alpha + beta`` in float32, clipped to 0..255 and truncated to uint8."""
    out = planes.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


class ColorAugSSD:
    """SSD's photometric distortion, as Detectron2's ``ColorAugSSDTransform`` (PointRend; Mask2Former's
    Cityscapes recipes, ``INPUT.COLOR_AUG_SSD``) gives it: byte for byte the same image for the same
    draws, the id map untouched.

    Each step runs with probability 1/2: brightness (``+ U(-brightness_delta, brightness_delta)``),
    then, in one of two orders chosen by a coin, contrast (``x U(contrast_low, contrast_high)``) and
    saturation (``x U(saturation_low, saturation_high)``, on OpenCV's 8-bit HSV) then hue (``+ an
    integer in [-hue_delta, hue_delta]``, modulo 180), or saturation, hue, then contrast. Each
    multiply / add is float32, clipped and truncated to uint8; saturation and hue each convert to
    HSV and back (:mod:`panfpn.data.hsv8`, OpenCV's arithmetic). Draws come from torch's global
    generator in the source's order (:meth:`sample`), so the stream is its structure, not its
    numbers (the source draws from Python's ``random``).
    """

    def __init__(self, brightness_delta: float = 32, contrast_low: float = 0.5, contrast_high: float = 1.5,
                 saturation_low: float = 0.5, saturation_high: float = 1.5, hue_delta: int = 18) -> None:
        if not 0 <= brightness_delta <= 255:
            raise ValueError(f"brightness_delta must be in [0, 255], got {brightness_delta}")
        for name, low, high in (("contrast", contrast_low, contrast_high),
                                ("saturation", saturation_low, saturation_high)):
            if not 0 <= low <= high:
                raise ValueError(f"{name}_low / {name}_high must satisfy 0 <= low <= high, got {low}, {high}")
        if isinstance(hue_delta, bool) or not isinstance(hue_delta, numbers.Integral) or not 0 <= hue_delta < 180:
            raise ValueError(f"hue_delta must be a whole number in [0, 180) (8-bit hue steps), got {hue_delta!r}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_low), float(contrast_high))
        self.saturation_range = (float(saturation_low), float(saturation_high))
        self.hue_delta = int(hue_delta)

    def sample(self) -> ColorDraws:
        """One call's choices, drawn as the source draws them: the brightness coin (and value), the
        order coin, then each later step's coin (and value) in the order the steps run."""
        brightness = _uniform(-self.brightness_delta, self.brightness_delta) if _coin() else None
        contrast_first = _coin()

        def contrast() -> float | None:
            return _uniform(*self.contrast_range) if _coin() else None

        first = contrast() if contrast_first else None
        saturation = _uniform(*self.saturation_range) if _coin() else None
        hue = int(torch.randint(-self.hue_delta, self.hue_delta + 1, ()).item()) if _coin() else None
        last = None if contrast_first else contrast()
        return ColorDraws(brightness, contrast_first, first if contrast_first else last, saturation, hue)

    @staticmethod
    def apply(image: torch.Tensor, draws: ColorDraws) -> torch.Tensor:
        """``image`` (uint8 ``[3, H, W]`` RGB) distorted by ``draws``."""
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"ColorAugSSD takes uint8 RGB images [3, H, W], got {image.dtype} "
                             f"{tuple(image.shape)}")
        planes = image.numpy()

        def contrast(x: np.ndarray) -> np.ndarray:
            return x if draws.contrast is None else _scale_bytes(x, alpha=draws.contrast)

        def saturation(x: np.ndarray) -> np.ndarray:
            if draws.saturation is None:
                return x
            h, s, v = rgb_to_hsv8(*x)
            return np.stack(hsv8_to_rgb(h, _scale_bytes(s, alpha=draws.saturation), v))

        def hue(x: np.ndarray) -> np.ndarray:
            if draws.hue is None:
                return x
            h, s, v = rgb_to_hsv8(*x)
            return np.stack(hsv8_to_rgb(((h.astype(np.int64) + draws.hue) % 180).astype(np.uint8), s, v))

        if draws.brightness is not None:
            planes = _scale_bytes(planes, beta=draws.brightness)
        steps = (contrast, saturation, hue) if draws.contrast_first else (saturation, hue, contrast)
        for step in steps:
            planes = step(planes)
        return torch.from_numpy(np.ascontiguousarray(planes))

    def __call__(self, image: torch.Tensor, id_map: torch.Tensor) -> Pair:
        _check_pair(image, id_map)
        return self.apply(image, self.sample()), id_map

    def __repr__(self) -> str:
        return (f"ColorAugSSD(brightness_delta={self.brightness_delta:g}, contrast={self.contrast_range}, "
                f"saturation={self.saturation_range}, hue_delta={self.hue_delta})")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Iterable) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"transform {t!r} is not callable")

    def __call__(self, image: torch.Tensor, id_map: torch.Tensor) -> Pair:
        for t in self.transforms:
            image, id_map = t(image, id_map)
        return image, id_map

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def check_test_transform(transform: Transform, what: str) -> None:
    """Refuse, as ``what``, a transform that moves pixels (a flip, a crop, large-scale jitter: a
    training transform) where outputs are mapped back to the original size by scaling alone
    (evaluation, inference): they would be mirrored or shifted against the image without a word."""
    for step in getattr(transform, "transforms", [transform]):
        flips = isinstance(step, RandomHorizontalFlip) and step.prob > 0
        if flips or isinstance(step, (RandomCrop, LargeScaleJitter)):
            raise ValueError(f"{what}: {step!r} flips or crops the image, but the outputs are mapped back to "
                             "the original size by scaling only; give the test transform (a resize)")


def scaled_size(h: int, w: int, target_h: int, target_w: int, scale: float) -> tuple[int, int]:
    """Size of an ``h x w`` image scaled (aspect kept) to fit ``scale`` times the target size.

    Detectron2's ``ResizeScale`` arithmetic: rounded half to even (``np.round``; a 128x5 image at
    64x64, scale 1, is 64x2, not 64x3), except that a side is never 0 (Detectron2 would fail on it).
    """
    factor = min(target_h * scale / h, target_w * scale / w)
    return max(1, round(h * factor)), max(1, round(w * factor))


def pad_pair(image: torch.Tensor, id_map: torch.Tensor, height: int, width: int,
             pad_value: int = 0) -> Pair:
    """Pad image (with ``pad_value``) and id map (with 0 = void) at the bottom/right to
    ``height x width``; both must be no larger than that."""
    h, w = id_map.shape
    if (h, w) == (height, width):
        return image, id_map
    out_image = image.new_full((image.shape[0], height, width), pad_value)
    out_ids = id_map.new_zeros((height, width))
    out_image[:, :h, :w] = image
    out_ids[:h, :w] = id_map
    return out_image, out_ids


class LargeScaleJitter:
    """Large-scale jitter (Simple Copy-Paste, Ghiasi et al. 2021): resize to fit the output size
    times a scale drawn uniformly in ``[min_scale, max_scale]`` (aspect kept), take a random
    crop of at most the output size, then pad (image with ``pad_value``, ids with 0 = void) to
    exactly ``output_size``. Padded pixels are void, so every target ignores them. The default
    ``pad_value`` 128 is Detectron2's ``FixedSizeCrop``'s (its LSJ recipes and Mask2Former's), and
    so is the crop's position (:meth:`crop_offset`): one draw for both axes, not one per axis.
    """

    def __init__(self, output_size: int | Sequence[int] = (1024, 1024), min_scale: float = 0.1,
                 max_scale: float = 2.0, pad_value: int = 128) -> None:
        size = [int(output_size)] * 2 if isinstance(output_size, int) else [int(v) for v in output_size]
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"output_size must be a positive int or (height, width), got {output_size}")
        if not 0.0 < min_scale <= max_scale:
            raise ValueError(f"LSJ scales must satisfy 0 < min_scale <= max_scale, got "
                             f"min_scale={min_scale}, max_scale={max_scale}")
        if not 0 <= pad_value <= 255:
            raise ValueError(f"pad_value must be a uint8 value (0..255), got {pad_value}")
        self.height, self.width = size
        self.min_scale, self.max_scale, self.pad_value = float(min_scale), float(max_scale), int(pad_value)

    def sample_scale(self) -> float:
        """One scale drawn uniformly in ``[min_scale, max_scale]`` from torch's global generator."""
        return self.min_scale + (self.max_scale - self.min_scale) * float(torch.rand(()).item())

    def crop_offset(self, h: int, w: int) -> tuple[int, int]:
        """Top-left ``(y0, x0)`` of the crop of an ``h x w`` scaled image, as Detectron2's
        ``FixedSizeCrop`` places it: one uniform ``u`` in [0, 1) for both axes, each offset ``u``
        times the room on its axis rounded half to even (``np.round``). The crop thus slides along
        the diagonal of the room, and an offset at either end is half as likely as one inside. ``u``
        is drawn (from torch's global generator) also when there is no room, as Detectron2 draws it."""
        u = float(torch.rand((), dtype=torch.float64).item())
        return round(max(h - self.height, 0) * u), round(max(w - self.width, 0) * u)

    def __call__(self, image: torch.Tensor, id_map: torch.Tensor) -> Pair:
        _check_pair(image, id_map)
        h, w = id_map.shape
        size = scaled_size(h, w, self.height, self.width, self.sample_scale())
        image, id_map = resize_pair(image, id_map, *size)
        y0, x0 = self.crop_offset(*size)
        image = image[:, y0:y0 + self.height, x0:x0 + self.width]
        id_map = id_map[y0:y0 + self.height, x0:x0 + self.width]
        return pad_pair(image, id_map, self.height, self.width, self.pad_value)

    def __repr__(self) -> str:
        return (f"LargeScaleJitter(output_size=({self.height}, {self.width}), min_scale="
                f"{self.min_scale}, max_scale={self.max_scale}, pad_value={self.pad_value})")


# Config keys of a hydra node that are not constructor arguments.
_HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
_PREFIX = __name__ + "."


def _transform_classes() -> dict[str, type]:
    return {name: obj for name, obj in globals().items()
            if isinstance(obj, type) and not name.startswith("_") and "__call__" in vars(obj)
            and obj.__module__ == __name__}  # classes defining __call__: not ColorDraws


def _check_node_keys(node: dict, key: str) -> None:
    """Unknown ``_target_`` class or constructor argument of one transform node (did-you-mean)."""
    import difflib
    import inspect

    from panfpn.utils.errors import ConfigError

    target = str(node["_target_"])
    classes = _transform_classes()
    cls = classes.get(target[len(_PREFIX):]) if target.startswith(_PREFIX) else None
    if cls is None:
        if not target.startswith(_PREFIX):
            return  # someone else's transform: its constructor checks its arguments
        hint = difflib.get_close_matches(target[len(_PREFIX):], sorted(classes), n=1)
        raise ConfigError(f"config key '{key}._target_': {target} is not a transform"
                          + (f"; did you mean '{_PREFIX}{hint[0]}'?" if hint else f"; known: {sorted(classes)}"))
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for name in node:
        if name not in _HYDRA_KEYS and name not in params:
            hint = difflib.get_close_matches(name, params, n=1)
            raise ConfigError(f"config key '{key}.{name}': {cls.__name__} has no parameter '{name}'"
                              + (f"; did you mean '{hint[0]}'?" if hint else f"; its parameters: {params}"))


def _walk(node, key: str):
    """Every dict with a ``_target_`` inside a plain container, with its dotted config key."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield node, key
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}.{i}")


def check_transforms_node(node, key: str) -> None:
    """Check a transforms config node (plain dict/list, interpolations resolved) before anything
    is built: unknown classes and misspelt parameters (did-you-mean), then the values, by building
    the transforms (each constructor checks its ranges). Raises ConfigError naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from panfpn.utils.errors import ConfigError

    nodes = list(_walk(node, key))
    for sub, sub_key in nodes:
        _check_node_keys(sub, sub_key)
    for sub, sub_key in reversed(nodes):  # the innermost first: the error names that transform's key
        try:
            instantiate(sub)
        except InstantiationException as err:
            cause = err.__cause__ if isinstance(err.__cause__, (ValueError, TypeError)) else err
            raise ConfigError(f"config key '{sub_key}': {cause}") from err
        except (ValueError, TypeError) as err:
            raise ConfigError(f"config key '{sub_key}': {err}") from err


def check_data_transforms(cfg) -> None:
    """:func:`check_transforms_node` on ``data.train.transforms`` and ``data.val.transforms`` of a
    composed config (those present), so a bad transform stops the job before the model is built."""
    from omegaconf import OmegaConf

    for split in ("train", "val"):
        node = OmegaConf.select(cfg, f"data.{split}.transforms", default=None)
        if node is not None:
            check_transforms_node(OmegaConf.to_container(node, resolve=True), f"data.{split}.transforms")

"""tools/merge.py's inputs, read and decoded per image (in DataLoader workers when there are any):
the semantic prediction (a label PNG, or the entries of a COCO semantic-segmentation results JSON)
and the instance results (RLE masks, scores, category ids).

An image whose inputs are missing or bad comes back with an ``error`` message naming the file or
the image and the problem (a :class:`BadInput`), never as a partial input. No torch here: on the CPU
the merge tool runs without it (:mod:`panfpn.engine.merge_tool.cpu`); only ``MergeInputs[k]`` (the
DataLoader's view, for merging on a GPU) makes tensors.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

try:  # the id-PNG reader's decoder (panfpn.data.panoptic_io), for 8-bit label PNGs
    import pyspng as _pyspng
except ImportError:  # pragma: no cover - optional
    _pyspng = None

from panfpn.data.metadata import DatasetMetadata

# semantic value of pixels no semantic entry covers: outside every category id, so never stuff
UNLABELED = -1


class BadInput(ValueError):
    """One image's inputs cannot be merged (the message says which file and why)."""


class MergeInputs:
    """Image ``k`` of ``images`` -> ``{"image", "sem", "crops", "origins", "scores", "labels",
    "error", "seconds"}`` (a map-style dataset for torch's DataLoader; :meth:`read` gives the same
    with numpy arrays, without torch): ``sem`` uint8 or int64 ``[H, W]`` dataset category ids (:data:`UNLABELED` where
    nothing is known); the instances with a score of at least ``score_thresh`` (the others can
    never become segments, so their RLEs are checked (size, run lengths) but not decoded): ``crops`` (bool numpy masks inside their boxes) at ``origins``
    ``(y0, x0)``, ``scores`` float64 ``[N]``, ``labels`` int64 ``[N]``; ``error`` (a message)
    instead of them when the inputs are bad. Crops travel as numpy arrays (pickled), not one
    shared-memory tensor each.

    Exactly one semantic source: ``semantic_dir`` (``<file stem>.png`` label maps) or
    ``semantic_by_image`` (image id -> its entries of a COCO semantic results JSON, from
    ``semantic_json``, named in messages).
    """

    def __init__(self, images: Sequence[Mapping[str, Any]], instances: Mapping[Any, list[dict]],
                 metadata: DatasetMetadata, *, semantic_dir: Path | None = None,
                 semantic_by_image: Mapping[Any, list[dict]] | None = None,
                 semantic_json: Path | None = None, score_thresh: float = float("-inf")) -> None:
        if (semantic_dir is None) == (semantic_by_image is None):
            raise ValueError("MergeInputs: give exactly one of semantic_dir and semantic_by_image")
        self.images = list(images)
        self.instances = instances
        self.metadata = metadata
        self.semantic_dir = semantic_dir
        self.semantic_by_image = semantic_by_image
        self.semantic_json = semantic_json
        self.score_thresh = score_thresh

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> dict[str, Any]:
        import torch

        item = self.read(k)
        if item["error"] is None:
            for key in ("sem", "scores", "labels"):
                item[key] = torch.from_numpy(item[key])
        return item

    def read(self, k: int) -> dict[str, Any]:
        """Image ``k``'s inputs as numpy arrays (``sem``, ``scores``, ``labels``; crops as always)."""
        start = time.perf_counter()
        image = self.images[k]
        item: dict[str, Any] = {"image": image, "error": None}
        try:
            item.update(self._read(image))
        except BadInput as err:
            item["error"] = str(err)
        item["seconds"] = time.perf_counter() - start
        return item

    def _read(self, image: Mapping[str, Any]) -> dict[str, Any]:
        size = (int(image["height"]), int(image["width"]))
        if self.semantic_dir is not None:
            sem = read_semantic_png(self.semantic_dir / (Path(image["file_name"]).stem + ".png"), size)
        else:
            sem = semantic_from_entries(self.semantic_by_image.get(image["id"], []), size, image["id"],
                                        self.metadata, self.semantic_json)
        results = self.instances.get(image["id"], [])
        scores = instance_scores(results, image["id"])
        labels = instance_labels(results, image["id"])
        kept = np.flatnonzero(scores >= self.score_thresh).tolist()
        runs = all_compressed_runs([r.get("segmentation") for r in results], size)
        if runs is not None:  # the common case: checked and decoded straight from the run lengths
            boxes = [mask_in_box(runs[k], size) for k in kept]
            crops, origins = [b[0] for b in boxes], [b[1] for b in boxes]
        else:  # uncompressed RLEs, or a bad one: checked one by one, so the error names it
            whats = [f"image {image['id']!r}: result {k}" for k in range(len(results))]
            rles = [checked_rle(r.get("segmentation"), size, what) for r, what in zip(results, whats)]
            crops, origins = boxed_masks([rles[k] for k in kept], [whats[k] for k in kept])
        return {"sem": sem, "crops": crops, "origins": origins, "scores": scores[kept],
                "labels": labels[kept]}


def as_is(item: dict[str, Any]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for ``batch_size=None``: the item unchanged (picklable)."""
    return item


def instance_scores(results: Sequence[Mapping[str, Any]], image_id: Any) -> np.ndarray:
    """float64 ``[N]`` scores of the results; BadInput when one has no finite numeric score
    (NaN and +/-Infinity, which Python's JSON reader accepts, are not scores; nor is an integer
    beyond float64's range, which it reads exactly)."""
    scores = []
    for k, r in enumerate(results):
        s = r.get("score")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not _finite(s):
            raise BadInput(f"image {image_id!r}: instance result {k} has no finite numeric score "
                           f"(score={s!r})")
        scores.append(float(s))
    return np.array(scores, dtype=np.float64)


def _finite(number: int | float) -> bool:
    """math.isfinite, False for an int beyond float64 (where it raises OverflowError)."""
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float64
        return False


def instance_labels(results: Sequence[Mapping[str, Any]], image_id: Any) -> np.ndarray:
    """int64 ``[N]`` category ids of the results; BadInput when one is not an integer."""
    labels = [r.get("category_id") for r in results]
    for k, c in enumerate(labels):
        if isinstance(c, bool) or not isinstance(c, int):
            raise BadInput(f"image {image_id!r}: instance result {k} has category_id {c!r}, not an integer")
    try:
        return np.array(labels, dtype=np.int64)
    except OverflowError:  # no category id is that large
        k, c = next((k, c) for k, c in enumerate(labels) if not -2 ** 63 <= c < 2 ** 63)
        raise BadInput(f"image {image_id!r}: instance result {k} has category_id {c!r}, not a "
                       "category (beyond int64)") from None


def read_semantic_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """uint8 (8-bit PNGs) or int64 ``[H, W]`` category ids of a single-channel label PNG of the image's size."""
    if not path.is_file():
        raise BadInput(f"semantic PNG {path} is missing")
    sem = _read_grey8_png(path)
    if sem is not None:
        return _check_size(sem, path, size)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise BadInput(f"semantic PNG {path}: mode {img.mode} is not a single-channel label map")
            sem = np.asarray(img)  # L and P: uint8 (kept: 8x less to read than int64)
            sem = sem if sem.dtype == np.uint8 else sem.astype(np.int64)
    except OSError as err:
        raise BadInput(f"semantic PNG {path}: cannot be read: {err}") from err
    return _check_size(sem, path, size)


def _check_size(sem: np.ndarray, path: Path, size: tuple[int, int]) -> np.ndarray:
    if sem.shape != size:
        raise BadInput(f"semantic PNG {path} is {sem.shape[0]}x{sem.shape[1]}, the image is "
                       f"{size[0]}x{size[1]}")
    return sem


def _read_grey8_png(path: Path) -> np.ndarray | None:
    """uint8 ``[H, W]`` of an 8-bit greyscale PNG decoded by pyspng (0.5 vs 0.9 ms for Pillow at
    640x480); None for any other file, or without pyspng (the caller then reads it with Pillow,
    which also names what is wrong with it)."""
    if _pyspng is None:
        return None
    data = path.read_bytes()
    if len(data) < 26 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x00":
        return None  # not a PNG, or not 8-bit greyscale (bit depth 8, colour type 0)
    try:
        sem = _pyspng.load(data)
    except Exception:  # noqa: BLE001 - libspng raises many types on a bad file: Pillow reports it
        return None
    if sem.ndim == 3 and sem.shape[2] == 1:
        sem = sem[..., 0]
    return sem if sem.ndim == 2 and sem.dtype == np.uint8 else None  # e.g. grey + alpha: Pillow's




def semantic_from_entries(entries: Sequence[Mapping[str, Any]], size: tuple[int, int], image_id: Any,
                          metadata: DatasetMetadata, source: Path | None) -> np.ndarray:
    """One image's entries of a COCO semantic results JSON -> int64 ``[H, W]`` category ids.

    As panopticapi's combine script: entries of thing categories are ignored (so is category 0
    when it is no category: Detectron2's merged 'things' class); pixels no stuff entry covers are
    :data:`UNLABELED`. A label map holds one category per pixel, so two stuff
    entries that share a pixel, two entries of one category or an unknown category are a
    BadInput (panopticapi would paint overlapping entries in file order, each with its own
    area limit); so is an image with no entry at all (a semantic prediction that was not saved).
    """
    where = f"{source}: image {image_id!r}" if source is not None else f"image {image_id!r}"
    if not entries:
        raise BadInput(f"{where} has no semantic entry")
    sem = np.full(size, UNLABELED, dtype=np.int64)
    owner: dict[int, int] = {}
    for k, entry in enumerate(entries):
        cat = entry.get("category_id")
        if cat == 0 and cat not in metadata:  # Detectron2's merged 'things' class (no COCO id is 0)
            continue
        if isinstance(cat, bool) or not isinstance(cat, int) or cat not in metadata:
            raise BadInput(f"{where}: semantic entry {k} has category_id {cat!r}, not a category of "
                           f"the images JSON")
        if metadata.category(cat).isthing:
            continue
        if cat in owner:
            raise BadInput(f"{where}: semantic entries {owner[cat]} and {k} are both of category {cat}")
        mask = decode_rle(entry.get("segmentation"), size, f"{where}: semantic entry {k}")
        taken = sem[mask]
        if (taken != UNLABELED).any():
            other = int(taken[taken != UNLABELED][0])
            raise BadInput(f"{where}: semantic entry {k} (category {cat}) overlaps entry {owner[other]} "
                           f"(category {other}) on {int((taken != UNLABELED).sum())} pixels")
        sem[mask] = cat
        owner[cat] = k
    return sem


def all_compressed_runs(rles: Sequence[Any], size: tuple[int, int]) -> list[np.ndarray] | None:
    """Run lengths of each RLE, all parsed in one vectorised pass (the per-RLE numpy calls of
    :func:`compressed_runs` cost more than the parsing), when every one is a compressed COCO RLE of
    ``size`` whose runs are >= 0 and cover the image exactly; None otherwise (the caller then checks
    them one by one with :func:`checked_rle`, which names the bad one)."""
    counts = []
    for rle in rles:
        if not isinstance(rle, dict) or rle.get("size") != list(size):
            return None
        c = rle.get("counts")
        if isinstance(c, str):
            if not c.isascii():
                return None
            c = c.encode("ascii")
        if not isinstance(c, bytes) or not c:
            return None
        counts.append(c)
    if not counts:
        return []
    chars = np.frombuffer(b"".join(counts), dtype=np.uint8).astype(np.int64) - 48
    seg_ends = np.cumsum([len(c) for c in counts])
    last = (chars & 0x20) == 0
    if (chars < 0).any() or (chars > 63).any() or not last[seg_ends - 1].all():
        return None
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    position = np.arange(chars.size) - starts[np.cumsum(last) - last]
    if position.max() > 7:
        return None
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (position[last][negative] + 1))
    first_run = np.searchsorted(ends, np.concatenate(([0], seg_ends[:-1])))  # each RLE's first run
    rle_of = np.searchsorted(first_run, np.arange(values.size), side="right") - 1
    index = np.arange(values.size) - first_run[rle_of]  # run index within its RLE
    runs = values.copy()
    for parity in (1, 0):  # from the fourth run on, a value is a difference to the run two before
        group = (index >= 1) & (index % 2 == parity)
        total = np.cumsum(np.where(group, values, 0))
        base = np.where(first_run > 0, total[first_run - 1], 0)
        runs[group] = total[group] - base[rle_of[group]]
    if (runs < 0).any() or not (np.add.reduceat(runs, first_run) == size[0] * size[1]).all():
        return None
    return np.split(runs, first_run[1:])


def mask_in_box(runs: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The mask of checked column-major run lengths (COCO's order, background first) cut to its
    box: a bool crop and its ``(y0, x0)``, as :func:`boxed_masks` gets them from pycocotools (an
    empty mask: a 0x0 crop at (0, 0)). Only the columns of the box are expanded."""
    h = size[0]
    ends = np.cumsum(runs)
    fg = np.flatnonzero(runs[1::2]) * 2 + 1
    if fg.size == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    x0, x1 = int(ends[fg[0]] - runs[fg[0]]) // h, int(ends[fg[-1]] - 1) // h
    lo, hi = x0 * h, (x1 + 1) * h
    lengths = np.minimum(np.maximum(ends, lo), hi) - np.minimum(np.maximum(ends - runs, lo), hi)
    columns = np.repeat(np.arange(runs.size) % 2 == 1, lengths).reshape(x1 + 1 - x0, h)
    rows = np.flatnonzero(columns.any(0))
    return columns[:, rows[0]:rows[-1] + 1].T, (int(rows[0]), x0)  # a view: rows x columns


def boxed_masks(rles: Sequence[dict], whats: Sequence[str]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Decoded masks of checked RLEs, each cut to its box: bool crops and their ``(y0, x0)``;
    BadInput naming ``whats[k]`` when RLE ``k`` cannot be decoded."""
    crops, origins = [], []
    for rle, what in zip(rles, whats):
        try:
            from pycocotools import mask as mask_utils  # only here: most RLEs never need it

            x0, y0, w, h = (int(v) for v in mask_utils.toBbox(rle))
            crops.append(mask_utils.decode(rle)[y0:y0 + h, x0:x0 + w].astype(bool))
        except (TypeError, ValueError) as err:
            raise BadInput(f"{what}: RLE cannot be decoded: {err}") from err
        origins.append((y0, x0))
    return crops, origins


def decode_rle(rle: Any, size: tuple[int, int], what: str) -> np.ndarray:
    """bool ``[H, W]`` of one COCO RLE (``counts`` a string, bytes or an uncompressed list)."""
    rle = checked_rle(rle, size, what)
    try:
        from pycocotools import mask as mask_utils

        return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError) as err:
        raise BadInput(f"{what}: RLE cannot be decoded: {err}") from err


def checked_rle(rle: Any, size: tuple[int, int], what: str) -> dict:
    """A COCO RLE of the image's size as pycocotools takes it (compressed ``counts`` bytes);
    BadInput naming ``what`` when it is not one (polygons, boxes, another size, bad counts)."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise BadInput(f"{what} has no RLE segmentation (polygons and boxes are not masks)")
    try:
        rle_size = [int(v) for v in rle["size"]]
    except (TypeError, ValueError) as err:
        raise BadInput(f"{what}: RLE size {rle['size']!r} is not [height, width]") from err
    if rle_size != list(size):
        raise BadInput(f"{what}: RLE size {rle['size']} is not the image's {list(size)}")
    try:
        if isinstance(rle["counts"], list):  # uncompressed RLE
            check_runs(np.asarray(rle["counts"], dtype=np.int64), size)
            from pycocotools import mask as mask_utils

            return mask_utils.frPyObjects(rle, *size)
        counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
        if not isinstance(counts, bytes):
            raise TypeError(f"counts is a {type(rle['counts']).__name__}")
        check_runs(compressed_runs(counts), size)
        return {"size": rle_size, "counts": counts}
    except (TypeError, ValueError, UnicodeError, OverflowError) as err:
        raise BadInput(f"{what}: RLE cannot be decoded: {err}") from err


def check_runs(runs: np.ndarray, size: tuple[int, int]) -> None:
    """ValueError unless the run lengths are >= 0 and cover the image exactly (pycocotools'
    decoder does not check: a broken RLE decodes to garbage instead of failing)."""
    if runs.ndim != 1 or (runs < 0).any() or int(runs.sum()) != size[0] * size[1]:
        raise ValueError(f"its run lengths cover {int(runs.sum()) if runs.ndim == 1 else '?'} pixels "
                         f"(negative runs: {int((runs < 0).sum())}), the image has {size[0] * size[1]}")


def compressed_runs(counts: bytes) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (pycocotools' format: each run a group of
    characters ``48 + 6 bits``, 5 value bits, 0x20 = more characters follow, 0x10 in the last one =
    negative; from the fourth run on, the value is a difference to the run two before)."""
    chars = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return chars
    if (chars < 0).any() or (chars > 63).any():
        raise ValueError("its counts string has characters outside '0'..'o'")
    last = (chars & 0x20) == 0
    if not last[-1]:
        raise ValueError("its counts string ends inside a run")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    position = np.arange(chars.size) - starts[np.cumsum(last) - last]  # index within its run
    if position.max() > 7:
        raise ValueError("its counts string holds a run longer than 40 bits")
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (position[last][negative] + 1))
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs

"""Fused panoptic merge: instance masks + semantic labels -> one panoptic id map (DESIGN.md section 4).

The definition is sequential (each instance sees what earlier, higher-scoring ones claimed); it is
computed here with a constant number of host reads per image and no Python work per pixel.

1. Candidates are the instances with ``score >= score_thresh``, by descending score (stable: on equal
   scores the lower input index comes first); candidate ``k`` is the k-th of that order.
2. Coverage words: the masks (``prob >= 0.5``) are thresholded chunk by chunk into a float32 buffer
   sized to stay in cache, and small matrix products turn the ``n`` mask rows into ``G`` rows per
   pixel: the set of candidates covering it, as words of ``_BITS`` bits (weights ``2**j``). The
   products are exact: inputs are 0/1 and powers of two (exact even in TF32 or bf16), and every sum
   is an integer below ``2**20`` (float32-exact in any summation order).
3. Patterns: every covered pixel is reduced to its coverage pattern; pixels with the same pattern are
   interchangeable for the merge, so the sequential logic runs on the ``U`` distinct patterns
   (typically a few hundred) weighted by their pixel counts, not on pixels.
4. Keep decisions (below) on the ``[n, U]`` pattern matrix; a covered pixel then belongs to the first
   kept candidate in its pattern. Because a kept instance takes only its unclaimed pixels, the claimed
   set is always the union of the full masks of the earlier kept instances, so "first kept candidate
   covering the pixel" is exactly the sequential owner.
5. Stuff: one histogram of the semantic labels over the still unclaimed pixels.

Keep decisions: instance ``i`` is kept iff ``|mask_i ∩ claimed_i| <= L_i``, where ``L_i`` is the largest
overlap with ``overlap / area <= overlap_thresh`` (the ratio in float64, as ``inter / area`` in Python)
and ``overlap < area`` (an instance whose every pixel is already claimed would get an empty segment, so
it is dropped; this matters only when ``overlap_thresh >= 1``). Empty masks get ``L_i = -1``. Two exact
schemes:

* ``"loop"``: one small group of tensor operations per candidate on the ``[U]`` pattern vector; it never
  reads a value back to the host. The CPU choice.
* ``"fixpoint"``: ``keep = F(keep)`` where ``F`` evaluates every decision at once given a guess of all
  earlier ones. Decision ``i`` depends only on decisions ``< i``, so ``F`` has exactly one fixed point,
  the sequential answer, and each application fixes at least one more leading decision. A few
  applications, one equality check (one host read), and the loop only if that check fails. Few kernel
  launches: the accelerator choice.

Conventions (those of Detectron2's panoptic combination, whose defaults these are): a score equal to
``score_thresh`` is kept; an overlap share equal to ``overlap_thresh`` is kept; a probability of exactly
0.5 is foreground (Detectron2 pastes masks as ``prob >= 0.5``); a stuff region needs
``max(stuff_area, 1)`` unclaimed pixels (segments are never empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["BoxMasks", "MergeThresholds", "merge_panoptic", "merge_panoptic_batch"]

# Candidate bits per coverage word: a sum of distinct powers of two below 2**20 is exact in float32.
_BITS = 20
# Coverage words packed into one int64 sort key (3 x 20 = 60 bits).
_WORDS_PER_KEY = 3
# Elements of the [n, chunk] threshold buffer: cache-sized on CPU (measured fastest), larger on
# accelerators where fewer, bigger kernels win; both bound the extra memory whatever N, H, W are.
_CPU_CHUNK_ELEMENTS = 1 << 20
_DEVICE_CHUNK_ELEMENTS = 1 << 24
# Semantic labels are histogram bins; anything this large is a bug upstream, not a label.
_MAX_SEM_LABEL = 1 << 20
# Applications of F before the fixed-point check; typical images converge within two or three.
_FIXPOINT_STEPS = 3
# Larger images are merged in bands of about this many pixels (bounds the memory; same result).
_PIXELS_PER_CHUNK = 1 << 22


@dataclass(frozen=True)
class BoxMasks:
    """Instance masks kept inside their boxes: ``crops[i]`` (bool ``[h_i, w_i]``, True = covered) sits
    at rows ``y0..y0+h_i`` and columns ``x0..x0+w_i`` (``origins[i] = (y0, x0)``) of an image of
    ``size`` (H, W); False elsewhere. At 24 MP, 100 instances take their boxes' area instead of
    2.4 GB (bool) or 9.6 GB (float) of full-size masks."""

    crops: tuple[Tensor, ...]
    origins: tuple[tuple[int, int], ...]
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.crops), *self.size)

    def dense(self, device: torch.device | str | None = None) -> Tensor:
        """bool ``[N, H, W]`` full-size masks."""
        device = device if device is not None else (self.crops[0].device if self.crops else "cpu")
        out = torch.zeros(self.shape, dtype=torch.bool, device=device)
        for i, (crop, (y0, x0)) in enumerate(zip(self.crops, self.origins)):
            out[i, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return out


@dataclass(frozen=True)
class MergeThresholds:
    """Thresholds of the panoptic merge (Detectron2's defaults).

    score_thresh: instances with a lower score are ignored.
    overlap_thresh: an instance whose already-claimed share of its mask exceeds this is dropped.
    stuff_area: a stuff label needs at least this many unclaimed pixels to become a segment
        (scale it with the image area for small images).
    """

    score_thresh: float = 0.5
    overlap_thresh: float = 0.5
    stuff_area: int = 4096

    def __post_init__(self) -> None:
        _check_thresholds(self.score_thresh, self.overlap_thresh, self.stuff_area)


Segment = dict  # {"id": int, "isthing": bool, "category": int, "score": float | None, "area": int}


def merge_panoptic(
    mask_probs: Tensor | BoxMasks,
    scores: Tensor,
    labels: Tensor,
    sem_labels: Tensor,
    *,
    thing_sem_labels: Sequence[int] | Tensor,
    score_thresh: float = 0.5,
    overlap_thresh: float = 0.5,
    stuff_area: int = 4096,
) -> tuple[Tensor, list[Segment]]:
    """Merge one image's instances and semantic labels into a panoptic id map.

    Args:
        mask_probs: float ``[N, H, W]``, per-instance foreground probabilities in [0, 1]; or bool
            ``[N, H, W]`` masks already thresholded (True = covered; 8x less memory than float32);
            or :class:`BoxMasks` (thresholded masks inside their boxes: no full-size tensor).
        scores: float ``[N]``, instance scores.
        labels: int ``[N]``, contiguous thing labels.
        sem_labels: int ``[H, W]``, semantic argmax (labels >= 0).
        thing_sem_labels: semantic labels that mean 'thing'; they are never turned into stuff.
        score_thresh, overlap_thresh, stuff_area: see :class:`MergeThresholds`.

    Returns:
        ``id_map``: int32 ``[H, W]`` on the input device, 0 = void, segment ids 1..K in creation order
        (things by descending score, then stuff by ascending semantic label).
        ``segments``: list of ``{"id", "isthing", "category", "score", "area"}``; ``category`` is the
        thing label (things) or the semantic label (stuff); ``score`` is None for stuff.
    """
    _check_thresholds(score_thresh, overlap_thresh, stuff_area)
    _check_inputs(mask_probs, scores, labels, sem_labels)
    return _merge(
        mask_probs, scores, labels, sem_labels, _thing_label_list(thing_sem_labels),
        score_thresh=float(score_thresh), overlap_thresh=float(overlap_thresh),
        stuff_area=int(stuff_area),
    )


def merge_panoptic_batch(
    mask_probs: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    sem_labels: Sequence[Tensor] | Tensor,
    *,
    thing_sem_labels: Sequence[int] | Tensor,
    thresholds: MergeThresholds | None = None,
) -> list[tuple[Tensor, list[Segment]]]:
    """:func:`merge_panoptic` over a batch: per image ``[N_b, H_b, W_b]`` probabilities, ``[N_b]``
    scores and labels, ``[H_b, W_b]`` semantic labels (a list, or a ``[B, H, W]`` tensor).

    Returns one ``(id_map, segments)`` per image; errors name the image's position in the batch.
    ``thresholds`` defaults to ``MergeThresholds()``.
    """
    thresholds = MergeThresholds() if thresholds is None else thresholds
    sizes = {len(mask_probs), len(scores), len(labels), len(sem_labels)}
    if len(sizes) != 1:
        raise ValueError(
            "merge_panoptic_batch: mask_probs, scores, labels and sem_labels must have one entry "
            f"per image, got lengths {len(mask_probs)}, {len(scores)}, {len(labels)}, {len(sem_labels)}"
        )
    results = []
    for b in range(len(mask_probs)):
        try:
            results.append(merge_panoptic(
                mask_probs[b], scores[b], labels[b], sem_labels[b],
                thing_sem_labels=thing_sem_labels, score_thresh=thresholds.score_thresh,
                overlap_thresh=thresholds.overlap_thresh, stuff_area=thresholds.stuff_area,
            ))
        except ValueError as err:
            raise ValueError(f"merge_panoptic_batch: image {b}: {err}") from err
    return results


# ----------------------------------------------------------------------------------------------
# checks


def _check_thresholds(score_thresh: float, overlap_thresh: float, stuff_area: int) -> None:
    for name, value in (("score_thresh", score_thresh), ("overlap_thresh", overlap_thresh)):
        if not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"merge: {name} must be a number, got {value!r}")
    if isinstance(stuff_area, bool) or not isinstance(stuff_area, int) or stuff_area < 0:
        raise ValueError(f"merge: stuff_area must be an int >= 0, got {stuff_area!r}")


def _check_inputs(mask_probs: Tensor | BoxMasks, scores: Tensor, labels: Tensor, sem_labels: Tensor) -> None:
    if sem_labels.dim() != 2 or sem_labels.is_floating_point() or sem_labels.dtype == torch.bool:
        raise ValueError(
            f"merge: sem_labels must be an integer [H, W] tensor, got {sem_labels.dtype} "
            f"{tuple(sem_labels.shape)}"
        )
    if isinstance(mask_probs, BoxMasks):
        _check_box_masks(mask_probs, sem_labels)
        # a zero-stride stand-in, so the shape and device checks below apply as they are
        mask_probs = torch.zeros((), dtype=torch.bool, device=sem_labels.device).expand(
            len(mask_probs), *sem_labels.shape)
    if mask_probs.dim() != 3 or not (mask_probs.is_floating_point() or mask_probs.dtype == torch.bool):
        raise ValueError(
            f"merge: mask_probs must be a float or bool [N, H, W] tensor, got {mask_probs.dtype} "
            f"{tuple(mask_probs.shape)}"
        )
    if mask_probs.shape[1:] != sem_labels.shape:
        raise ValueError(
            f"merge: mask_probs is {tuple(mask_probs.shape)} but sem_labels is "
            f"{tuple(sem_labels.shape)}; both must be at the same [H, W]"
        )
    n = mask_probs.shape[0]
    if labels.is_floating_point() or not scores.is_floating_point():
        raise ValueError(
            f"merge: scores must be float and labels integer, got {scores.dtype} and {labels.dtype}"
        )
    if scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"merge: scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be [{n}] "
            f"like mask_probs {tuple(mask_probs.shape)}"
        )
    devices = {t.device for t in (mask_probs, scores, labels, sem_labels)}
    if len(devices) != 1:
        raise ValueError(f"merge: all inputs must be on one device, got {sorted(map(str, devices))}")


def _check_box_masks(masks: BoxMasks, sem_labels: Tensor) -> None:
    h, w = sem_labels.shape
    if tuple(masks.size) != (h, w) or len(masks.origins) != len(masks.crops):
        raise ValueError(f"merge: BoxMasks of size {tuple(masks.size)} with {len(masks.crops)} crops and "
                         f"{len(masks.origins)} origins; sem_labels is {(h, w)}")
    for i, (crop, (y0, x0)) in enumerate(zip(masks.crops, masks.origins)):
        if crop.dtype != torch.bool or crop.dim() != 2 or crop.device != sem_labels.device:
            raise ValueError(f"merge: BoxMasks crop {i} must be a bool [h, w] tensor on "
                             f"{sem_labels.device}, got {crop.dtype} {tuple(crop.shape)} on {crop.device}")
        if y0 < 0 or x0 < 0 or y0 + crop.shape[0] > h or x0 + crop.shape[1] > w:
            raise ValueError(f"merge: BoxMasks crop {i} {tuple(crop.shape)} at {(y0, x0)} leaves the "
                             f"{h}x{w} image")


def _thing_label_list(thing_sem_labels: Sequence[int] | Tensor) -> list[int]:
    if isinstance(thing_sem_labels, Tensor):
        thing_sem_labels = thing_sem_labels.reshape(-1).tolist()
    try:
        labels = [int(t) for t in thing_sem_labels]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"merge: thing_sem_labels must be a sequence of ints, got {thing_sem_labels!r}"
        ) from err
    if any(t < 0 for t in labels):
        raise ValueError(f"merge: thing_sem_labels must be >= 0, got {labels}")
    return labels


# ----------------------------------------------------------------------------------------------
# the fused merge


def _merge(
    mask_probs: Tensor | BoxMasks, scores: Tensor, labels: Tensor, sem_labels: Tensor,
    thing_sem_labels: list[int], *, score_thresh: float, overlap_thresh: float,
    stuff_area: int, strategy: str | None = None, rows_per_chunk: int | None = None,
) -> tuple[Tensor, list[Segment]]:
    """The merge on checked inputs. ``strategy`` ("loop" or "fixpoint") defaults to the faster one
    for the device; both give the same result (the tests run both on CPU). Images above
    ``_PIXELS_PER_CHUNK`` pixels are processed in bands of ``rows_per_chunk`` rows (two passes:
    patterns, then owners), which bounds the memory; the result is the same."""
    device = sem_labels.device
    height, width = sem_labels.shape
    num_pixels = height * width
    sem = sem_labels.reshape(-1).long()
    if strategy is None:
        strategy = "loop" if device.type == "cpu" else "fixpoint"
    if strategy not in ("loop", "fixpoint"):
        raise ValueError(f"merge: unknown strategy {strategy!r}")
    rows = rows_per_chunk or max(1, _PIXELS_PER_CHUNK // max(1, width))
    bands = [(r, min(r + rows, height)) for r in range(0, height, rows)] or [(0, 0)]

    # Host read 1: the candidate count (shapes below depend on it) and the semantic label range.
    # Non-candidates (NaN scores included) sort last, so the candidates are a prefix of the order.
    is_candidate = scores.double() >= score_thresh  # float64, like comparing Python floats
    key = torch.where(is_candidate, scores, float("-inf"))
    order = torch.sort(key, descending=True, stable=True).indices
    sem_range = torch.stack([sem.min(), sem.max()]) if num_pixels else sem.new_zeros(2)
    num_candidates, sem_min, sem_max = torch.cat(
        [is_candidate.sum().view(1).long(), sem_range.long()]
    ).tolist()
    if sem_min < 0 or sem_max >= _MAX_SEM_LABEL:
        raise ValueError(
            f"merge: sem_labels must be in [0, {_MAX_SEM_LABEL}), found {sem_min}..{sem_max}"
        )
    cand = order[:num_candidates]

    id_map = torch.zeros(num_pixels, dtype=torch.int32, device=device)
    keep = torch.zeros(num_candidates, dtype=torch.bool, device=device)
    taken = torch.zeros(num_candidates, dtype=torch.int64, device=device)
    if num_candidates:
        keep, taken = _claim_things(mask_probs, cand, id_map, bands, width, overlap_thresh, strategy)

    # Stuff: unclaimed pixels per semantic label, in one histogram (index_add_: no host read).
    num_labels = sem_max + 1
    counts = torch.zeros(num_labels + 1, dtype=torch.int64, device=device)
    for r0, r1 in bands:
        band = slice(r0 * width, r1 * width)
        counts.index_add_(0, torch.where(id_map[band] == 0, sem[band], num_labels),
                          torch.ones(1, dtype=torch.int64, device=device).expand((r1 - r0) * width))
    counts = counts[:num_labels]
    is_thing = torch.zeros(num_labels, dtype=torch.bool)
    is_thing[[t for t in thing_sem_labels if t < num_labels]] = True
    is_stuff = ~is_thing.to(device) & (counts >= max(stuff_area, 1))
    first_stuff_id = keep.sum()
    stuff_ids = torch.where(is_stuff, first_stuff_id + torch.cumsum(is_stuff, 0), 0).to(torch.int32)
    for r0, r1 in bands:
        band = slice(r0 * width, r1 * width)
        id_map[band] = torch.where(id_map[band] == 0, stuff_ids[sem[band]], id_map[band])

    segments = _segment_list(cand, keep, taken, scores, labels, is_stuff, counts)  # last host read
    return id_map.view(height, width), segments


def _claim_things(masks: Tensor | BoxMasks, cand: Tensor, id_map: Tensor, bands: list[tuple[int, int]],
                  width: int, overlap_thresh: float, strategy: str) -> tuple[Tensor, Tensor]:
    """Keep decisions and the things' ids written into ``id_map`` (flat int32); returns ``keep``
    and ``taken`` (pixels each candidate got). One band: one pass. Several: the patterns and their
    pixel counts are gathered band by band and grouped again (pattern counts add up exactly), then
    a second pass maps each band's pixels to the owners."""
    num_candidates = cand.numel()
    chunk_elements = _CPU_CHUNK_ELEMENTS if id_map.device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    if len(bands) == 1:
        covered, keys = _band_keys(masks, cand, *bands[0], width, chunk_elements)
        if not covered.numel():
            return torch.zeros_like(cand, dtype=torch.bool), torch.zeros_like(cand)
        inverse, patterns, weight = _group_patterns(keys)  # host read 3
    else:
        parts, weights = [], []
        for r0, r1 in bands:
            covered, keys = _band_keys(masks, cand, r0, r1, width, chunk_elements)
            if covered.numel():
                _, band_patterns, band_weight = _group_patterns(keys)
                parts.append(band_patterns)
                weights.append(band_weight)
        if not parts:
            return torch.zeros_like(cand, dtype=torch.bool), torch.zeros_like(cand)
        joined = torch.cat(parts, 1)
        inverse_joined, patterns, _ = _group_patterns(joined)
        weight = torch.zeros(patterns.shape[1], dtype=torch.int64, device=joined.device).index_add_(
            0, inverse_joined, torch.cat(weights))
    pattern_masks = _decode_bits(patterns, num_candidates)  # [n, U]
    area = (pattern_masks * weight).sum(1)
    limit = _max_allowed_overlap(area, overlap_thresh)
    resolve = _resolve_loop if strategy == "loop" else _resolve_fixpoint  # fixpoint: read 4
    keep, inter, first = resolve(pattern_masks, weight, limit)
    # Segment id of each candidate (0 = dropped); index n stands for "no kept candidate".
    ids = torch.where(keep, torch.cumsum(keep, 0, dtype=torch.int32), 0)
    owner_ids = torch.cat([ids, ids.new_zeros(1)])[first]  # [U]
    if len(bands) == 1:
        id_map[covered] = owner_ids[inverse]
    else:
        num_patterns = patterns.shape[1]
        for r0, r1 in bands:
            covered, keys = _band_keys(masks, cand, r0, r1, width, chunk_elements)
            if covered.numel():
                # every band pattern is one of the sorted global patterns: grouping both together
                # gives back the global list, and each pixel's position in it
                band_inverse = _group_patterns(torch.cat([patterns, keys], 1))[0][num_patterns:]
                id_map[r0 * width + covered] = owner_ids[band_inverse]
    return keep, area - inter


def _band_keys(masks: Tensor | BoxMasks, cand: Tensor, r0: int, r1: int, width: int,
               chunk_elements: int) -> tuple[Tensor, Tensor]:
    """Covered pixels of rows ``r0..r1`` (flat indices within the band) and their sort keys."""
    if isinstance(masks, BoxMasks):
        words = _box_coverage_words(masks, cand, r0, r1)
    else:
        probs = masks.reshape(masks.shape[0], -1)[:, r0 * width:r1 * width]
        words = _coverage_words(probs, cand, chunk_elements)
    covered = torch.nonzero((words > 0).any(0)).squeeze(1)  # host read 2
    if not covered.numel():
        return covered, words.new_zeros((0, 0), dtype=torch.int64)
    return covered, _pack_keys(words.index_select(1, covered))


def _box_coverage_words(masks: BoxMasks, cand: Tensor, r0: int, r1: int) -> Tensor:
    """:func:`_coverage_words` of rows ``r0..r1`` from masks stored inside their boxes: each
    candidate adds its bit weight over its box (integer sums below ``2**_BITS``: exact)."""
    n, (_, width) = cand.numel(), masks.size
    num_words = (n + _BITS - 1) // _BITS
    words = torch.zeros(num_words, r1 - r0, width, dtype=torch.float32, device=cand.device)
    for k, i in enumerate(cand.tolist()):
        crop, (y0, x0) = masks.crops[i], masks.origins[i]
        a, b = max(y0, r0), min(y0 + crop.shape[0], r1)
        if a < b and crop.shape[1]:
            words[k // _BITS, a - r0:b - r0, x0:x0 + crop.shape[1]] += crop[a - y0:b - y0] * float(1 << (k % _BITS))
    return words.view(num_words, -1)


def _coverage_words(probs: Tensor, cand: Tensor, chunk_elements: int) -> Tensor:
    """Per pixel, the set of candidates covering it, as bit words.

    probs: float ``[N, HW]``; cand: long ``[n]`` candidate rows in order.
    Returns float32 ``[G, HW]``, ``G = ceil(n / _BITS)``: word ``g`` is the sum of ``2**(k % _BITS)``
    over the covering candidates ``k`` with ``k // _BITS == g``; exact integers below ``2**_BITS``.
    """
    n, num_pixels, device = cand.numel(), probs.shape[1], probs.device
    num_words = (n + _BITS - 1) // _BITS
    bit_weights = torch.pow(2.0, (torch.arange(n, device=device) % _BITS).float())
    words = torch.empty(num_words, num_pixels, dtype=torch.float32, device=device)
    chunk = max(1, min(num_pixels, chunk_elements // n))
    masks_buf = torch.empty(n, chunk, dtype=torch.float32, device=device)
    rows_buf = masks_buf if probs.dtype == torch.float32 else torch.empty(
        n, chunk, dtype=probs.dtype, device=device)
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        masks, rows = masks_buf[:, : stop - start], rows_buf[:, : stop - start]
        torch.index_select(probs[:, start:stop], 0, cand, out=rows)
        torch.ge(rows, 0.5, out=masks)  # compared in the input dtype (bool: True -> 1 >= 0.5)
        for g in range(num_words):
            # One [1, B] x [B, chunk] product per word: the weight matrix is block diagonal, and
            # skipping its zero blocks makes this several times cheaper than one [G, n] product.
            group = slice(g * _BITS, min((g + 1) * _BITS, n))
            torch.mm(bit_weights[None, group], masks[group], out=words[g : g + 1, start:stop])
    return words


def _pack_keys(words: Tensor) -> Tensor:
    """int64 ``[K, C]`` sort keys from float ``[G, C]`` words, ``_WORDS_PER_KEY`` words per key."""
    keys = []
    for first in range(0, words.shape[0], _WORDS_PER_KEY):
        key = words[first].long()
        for j in range(1, min(_WORDS_PER_KEY, words.shape[0] - first)):
            key += words[first + j].long() * (1 << (_BITS * j))  # bit fields do not overlap
        keys.append(key)
    return torch.stack(keys)


def _group_patterns(keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct columns of ``keys`` (int64 ``[K, C]``), found by lexicographic sorting.

    Returns ``inverse`` long ``[C]`` (pattern of each column), ``patterns`` int64 ``[K, U]`` and
    ``weight`` int64 ``[U]`` (columns per pattern). One host read (the number of patterns).
    """
    num_cols = keys.shape[1]
    if keys.shape[0] == 1:  # up to 60 candidates: one key per column, torch.unique does it all
        patterns, inverse, weight = torch.unique(
            keys[0], sorted=True, return_inverse=True, return_counts=True)
        return inverse, patterns[None], weight
    perm = torch.sort(keys[-1], stable=True).indices
    for key in keys.flip(0)[1:]:  # stable sorts, least significant key first: lexicographic order
        perm = perm[torch.sort(key[perm], stable=True).indices]
    sorted_keys = keys.index_select(1, perm)
    starts_pattern = torch.ones(num_cols, dtype=torch.bool, device=keys.device)
    starts_pattern[1:] = (sorted_keys[:, 1:] != sorted_keys[:, :-1]).any(0)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.cumsum(starts_pattern, 0) - 1
    starts = torch.nonzero(starts_pattern).squeeze(1)
    weight = torch.diff(starts, append=starts.new_full((1,), num_cols))
    return inverse, sorted_keys.index_select(1, starts), weight


def _decode_bits(patterns: Tensor, n: int) -> Tensor:
    """bool ``[n, U]``: candidate ``k`` is in pattern ``u`` (inverse of the words and keys)."""
    k = torch.arange(n, device=patterns.device)
    word = k // _BITS
    shift = (word % _WORDS_PER_KEY) * _BITS + k % _BITS
    return ((patterns[word // _WORDS_PER_KEY] >> shift[:, None]) & 1).bool()


def _max_allowed_overlap(area: Tensor, overlap_thresh: float) -> Tensor:
    """Largest overlap ``x`` with ``x < area`` and ``x / area <= overlap_thresh`` (float64 division,
    like Python's ``x / area``), or -1 when there is none (empty masks included). ``area``: int64 [n].

    ``fl(x / area)`` is non-decreasing in ``x``, so the allowed overlaps are ``0..L``; ``floor(t * area)``
    is within one of ``L``, and two correcting steps each way make it exact.
    """
    a = area.double()
    limit = torch.floor(overlap_thresh * a).clamp(min=-1.0)
    limit = torch.minimum(limit, a - 1)
    for _ in range(2):
        step_up = (limit + 1 <= a - 1) & ((limit + 1) / a <= overlap_thresh)
        limit = torch.where(step_up, limit + 1, limit)
    for _ in range(2):
        step_down = (limit >= 0) & (limit / a > overlap_thresh)
        limit = torch.where(step_down, limit - 1, limit)
    return torch.where(area > 0, limit, -1.0).long()


def _resolve_loop(masks: Tensor, weight: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sequential keep decisions with device tensor ops only (no host reads).

    masks: bool ``[n, U]`` candidate-in-pattern; weight: int64 ``[U]`` pixels per pattern;
    limit: int64 ``[n]`` (see :func:`_max_allowed_overlap`).
    Returns ``keep`` bool ``[n]``, ``inter`` int64 ``[n]`` (claimed pixels of each mask when its turn
    came), ``first`` long ``[U]`` (first kept candidate in the pattern, ``n`` if none).
    """
    n, num_patterns = masks.shape
    claimed = torch.zeros(num_patterns, dtype=torch.bool, device=masks.device)
    first = torch.full((num_patterns,), n, dtype=torch.int64, device=masks.device)
    keeps, inters = [], []
    for i in range(n):
        row = masks[i]
        inter = ((row & claimed) * weight).sum()
        keep = inter <= limit[i]
        take = row & ~claimed & keep
        first.masked_fill_(take, i)
        claimed |= take
        keeps.append(keep)
        inters.append(inter)
    return torch.stack(keeps), torch.stack(inters), first


def _claims_given(masks: Tensor, weight: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """For a guess ``keep`` [n]: the first kept candidate of each pattern (``n`` if none) ``[U]`` and
    each mask's overlap with the union of the kept masks before it ``[n]``."""
    n = masks.shape[0]
    position = torch.arange(n, dtype=torch.int32, device=masks.device)[:, None]
    first = torch.where(masks & keep[:, None], position, n).amin(0)
    inter = ((masks & (first[None, :] < position)) * weight).sum(1)
    return first.long(), inter


def _resolve_fixpoint(masks: Tensor, weight: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Same result as :func:`_resolve_loop` by fixed-point iteration (see the module docstring)."""
    keep = limit >= 0
    for _ in range(_FIXPOINT_STEPS):
        keep = _claims_given(masks, weight, keep)[1] <= limit
    first, inter = _claims_given(masks, weight, keep)
    if torch.equal(inter <= limit, keep):  # the unique fixed point is the sequential answer
        return keep, inter, first
    return _resolve_loop(masks, weight, limit)


def _segment_list(
    cand: Tensor, keep: Tensor, taken: Tensor, scores: Tensor, labels: Tensor,
    is_stuff: Tensor, counts: Tensor,
) -> list[Segment]:
    """Segment dicts in id order, from one host transfer (float64 holds ints < 2**53 exactly)."""
    n, num_labels = keep.numel(), is_stuff.numel()
    packed = torch.cat([
        keep.double(), taken.double(), scores[cand].double(), labels[cand].double(),
        is_stuff.double(), counts.double(),
    ]).tolist()
    keep_l, taken_l, score_l, label_l = (packed[k * n:(k + 1) * n] for k in range(4))
    stuff_l = packed[4 * n:4 * n + num_labels]
    count_l = packed[4 * n + num_labels:]
    segments: list[Segment] = []
    for k in range(n):
        if keep_l[k]:
            segments.append({
                "id": len(segments) + 1, "isthing": True, "category": int(label_l[k]),
                "score": score_l[k], "area": int(taken_l[k]),
            })
    for label in range(num_labels):
        if stuff_l[label]:
            segments.append({
                "id": len(segments) + 1, "isthing": False, "category": label, "score": None,
                "area": int(count_l[label]),
            })
    return segments

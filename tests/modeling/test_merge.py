"""The fused panoptic merge equals its sequential definition (panfpn.modeling.merge_reference) on every input."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from panfpn.modeling import merge_fused as fused
from panfpn.modeling.merge import MergeThresholds, merge_panoptic, merge_panoptic_batch
from panfpn.modeling.merge_reference import merge_panoptic_reference


def reference(probs, scores, labels, sem, things, score_thresh, overlap_thresh, stuff_area,
              min_remaining=0):
    """The package's definition of the merge, called with a ``random_case`` tuple."""
    return merge_panoptic_reference(probs, scores, labels, sem, thing_sem_labels=things,
                                    score_thresh=score_thresh, overlap_thresh=overlap_thresh,
                                    stuff_area=stuff_area, thing_min_remaining_area=min_remaining)


def random_case(seed):
    """Tiny random image: blob masks with duplicates, subsets, empties, exact 0.5 probabilities and
    tied scores; blocky semantic labels with tiny regions; thresholds including the edge values, the
    overlap rule switched off (None) and remaining-area minimums 0, small, 64 and larger than any mask."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    h, w, n = ri(8, 40), ri(8, 40), ri(0, 20)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    probs = torch.zeros(n, h, w)
    for i in range(n):
        kind = ri(0, 9)
        if kind == 0 or i == 0 and kind < 3:
            continue  # empty mask
        if kind <= 2 and i > 0:  # a copy, a subset or a superset of an earlier mask
            j = ri(0, i - 1)
            probs[i] = probs[j] * (0.7 + 0.6 * rnd(1)) if kind == 1 else probs[j] * (rnd(h, w) > 0.3)
            continue
        cy, cx, ry, rx = rnd(1) * h, rnd(1) * w, 1 + rnd(1) * h / 2, 1 + rnd(1) * w / 2
        d = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
        probs[i] = torch.sigmoid(3 * (1 - d)) * (rnd(1) * 0.5 + 0.5)
    probs[rnd(n, h, w) < 0.05] = 0.5  # exactly 0.5 is foreground
    scores = rnd(n) if ri(0, 1) else torch.tensor([0.3, 0.5, 0.7, 0.9])[torch.randint(0, 4, (n,), generator=g)]
    labels = torch.randint(0, 5, (n,), generator=g)
    num_sem = ri(1, 8)
    block = ri(1, 6)
    coarse = torch.randint(0, num_sem, (h // block + 1, w // block + 1), generator=g)
    sem = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w].contiguous()
    sem[rnd(h, w) < 0.03] = ri(0, num_sem - 1)  # speckles: tiny regions
    things = [t for t in range(num_sem) if rnd(1) < 0.3]
    score_thresh = [1.5, 0.95, 0.0, 0.0, 0.5, 0.5, float(rnd(1)) * 0.8][ri(0, 6)]
    overlap_thresh = [0.0, 1.0, 0.5, 1 / 3, 2.0, float(rnd(1)), None, None][ri(0, 7)]
    stuff_area = [0, 1, ri(2, 40)][ri(0, 2)]
    min_remaining = [0, 0, 1, ri(2, 30), 64, 10**6][ri(0, 5)]
    return probs, scores, labels, sem, things, score_thresh, overlap_thresh, stuff_area, min_remaining


def check_partition(id_map, segments):
    """Segment ids are 1..K, the areas are the pixel counts, nothing else is in the map."""
    assert id_map.dtype == torch.int32
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    counts = torch.bincount(id_map.reshape(-1).long(), minlength=len(segments) + 1)
    assert counts.numel() == len(segments) + 1
    assert [s["area"] for s in segments] == counts[1:].tolist()
    assert all(s["area"] > 0 for s in segments)


@pytest.mark.parametrize("bits", [20, 3, 2])
def test_fused_merge_equals_sequential_definition(bits, monkeypatch):
    monkeypatch.setattr(fused, "_CPU_CHUNK_ELEMENTS", 97)  # many pixel chunks, ragged last one
    monkeypatch.setattr(fused, "_BITS", bits)  # few bits: many coverage words and sort keys
    for seed in range(250):
        probs, scores, labels, sem, things, st, ot, sa, mr = random_case(seed)
        want_map, want_segments = reference(probs, scores, labels, sem, things, st, ot, sa, mr)
        if seed % 5 == 0 and want_segments:  # stuff_area exactly at a region's size, and one above
            stuff = [s["area"] for s in want_segments if not s["isthing"]]
            if stuff:
                sa = stuff[seed % len(stuff)] + (seed // 5) % 2
                want_map, want_segments = reference(probs, scores, labels, sem, things, st, ot, sa, mr)
        if seed % 5 == 1 and want_segments:  # remaining-area minimum exactly at a thing's area, one above
            taken = [s["area"] for s in want_segments if s["isthing"]]
            if taken:
                mr = taken[seed % len(taken)] + (seed // 5) % 2
                want_map, want_segments = reference(probs, scores, labels, sem, things, st, ot, sa, mr)
        id_map, segments = fused.merge_fused(
            probs, scores, labels, sem, things, score_thresh=st, overlap_thresh=ot, stuff_area=sa,
            thing_min_remaining_area=mr,
        )
        case = f"seed {seed}: n={len(scores)} size={tuple(sem.shape)} thresholds={st, ot, sa, mr}"
        assert torch.equal(id_map, want_map), case
        assert segments == want_segments, case
        check_partition(id_map, segments)


@pytest.mark.parametrize("merge", [merge_panoptic, merge_panoptic_reference])
def test_public_api_on_edge_cases(merge):
    """Hand-computed cases: the definition and the public entry both give them."""
    things = [2]
    sem = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]])
    full = torch.ones(1, 3, 4)
    # N = 0: only stuff; label 2 is 'thing' and stays void.
    id_map, segments = merge(torch.zeros(0, 3, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                             sem, thing_sem_labels=things, stuff_area=2)
    assert [(s["category"], s["area"]) for s in segments] == [(0, 4), (1, 4), (3, 2)]
    assert (id_map[2, :2] == 0).all()
    # All scores below the threshold, or NaN: same as no instances.
    for score in (0.49, float("nan")):
        below = merge(full, torch.tensor([score]), torch.tensor([7]), sem,
                      thing_sem_labels=things, stuff_area=2)
        assert below[1] == segments and torch.equal(below[0], id_map)
    # A score equal to the threshold is kept; on equal scores the lower index goes first; a fully
    # overlapped duplicate is dropped even at 1.0.
    two = torch.ones(2, 3, 4)
    id_map, segments = merge(two, torch.tensor([0.5, 0.5]), torch.tensor([7, 8]), sem,
                             thing_sem_labels=things, overlap_thresh=1.0)
    assert [(s["category"], s["area"], s["score"]) for s in segments] == [(7, 12, 0.5)]
    assert (id_map == 1).all()
    # Probabilities of exactly 0.5 are foreground (Detectron2 pastes masks as prob >= 0.5); the
    # next float below 0.5 is background.
    half = torch.full((1, 3, 4), 0.5)
    half[0, 2] = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    id_map, segments = merge(half, torch.ones(1), torch.ones(1, dtype=torch.long), sem,
                             thing_sem_labels=things, stuff_area=100)
    assert [(s["category"], s["area"]) for s in segments] == [(1, 8)]
    assert (id_map[:2] == 1).all() and (id_map[2] == 0).all()


def test_empty_image_and_float64_score_threshold():
    id_map, segments = merge_panoptic(torch.rand(3, 0, 5), torch.ones(3), torch.zeros(3, dtype=torch.long),
                                      torch.zeros(0, 5, dtype=torch.long), thing_sem_labels=[])
    assert id_map.shape == (0, 5) and segments == []
    # A threshold just above a float32 score must drop it (no rounding of the threshold to float32).
    score = torch.tensor([0.1])
    just_above = float(score) + 1e-12
    sem = torch.zeros(2, 2, dtype=torch.long)
    out = merge_panoptic(torch.ones(1, 2, 2), score, torch.zeros(1, dtype=torch.long), sem,
                         thing_sem_labels=[0], score_thresh=just_above)
    assert out[1] == []


def test_max_allowed_overlap_matches_python_division():
    areas = torch.arange(0, 400)
    for t in [0.0, 1e-9, 0.1, 0.2, 1 / 3, 0.5, 2 / 3, 0.7, 0.9, 0.999999, 1.0, 1.5, -0.2]:
        got = fused._max_allowed_overlap(areas, t).tolist()
        for a, limit in zip(areas.tolist(), got):
            allowed = [x for x in range(a) if x / a <= t]
            assert limit == (max(allowed) if allowed else -1), (a, t)


def test_batch_and_thresholds():
    case = [random_case(s)[:4] for s in (3, 4)]
    out = merge_panoptic_batch([c[0] for c in case], [c[1] for c in case], [c[2] for c in case],
                               [c[3] for c in case], thing_sem_labels=[1],
                               thresholds=MergeThresholds(stuff_area=5))
    for (probs, scores, labels, sem), (id_map, segments) in zip(case, out):
        want = reference(probs, scores, labels, sem, [1], 0.5, 0.5, 5)
        assert torch.equal(id_map, want[0]) and segments == want[1]
    with pytest.raises(ValueError, match="image 1"):
        merge_panoptic_batch([case[0][0], case[0][0][:, :2]], [case[0][1]] * 2, [case[0][2]] * 2,
                             [case[0][3]] * 2, thing_sem_labels=[1])
    with pytest.raises(ValueError, match="stuff_area"):
        MergeThresholds(stuff_area=-1)
    with pytest.raises(ValueError, match="sem_labels must be in"):
        merge_panoptic(torch.zeros(0, 2, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                       -torch.ones(2, 2, dtype=torch.long), thing_sem_labels=[])
    with pytest.raises(ValueError, match="thing_sem_labels"):
        merge_panoptic(torch.zeros(0, 2, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                       torch.ones(2, 2, dtype=torch.long), thing_sem_labels=[-1])


class _HostReads(TorchDispatchMode):
    """Counts the ATen ops that read device values back to the host."""

    SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::unique",
               "aten::_unique2", "aten::masked_select"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_host_reads_do_not_grow_with_instances(monkeypatch):
    tolist_calls = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: tolist_calls.append(1) or original(t))
    sem = torch.randint(0, 4, (32, 32), generator=torch.Generator().manual_seed(0))

    def reads(n):
        probs = torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(n))
        tolist_calls.clear()
        with _HostReads() as mode:
            fused.merge_fused(probs, torch.linspace(1, 0.6, n), torch.zeros(n, dtype=torch.long), sem,
                              [3], score_thresh=0.5, overlap_thresh=0.7, stuff_area=4)
        return mode.count + len(tolist_calls)

    assert reads(3) == reads(40) == reads(70) <= 6  # 70: several sort keys


def test_half_precision_probabilities():
    probs, scores, labels, sem, things, st, ot, sa, mr = random_case(7)
    probs = probs.half()
    want_map, want_segments = reference(probs, scores, labels, sem, things, st, ot, sa, mr)
    id_map, segments = merge_panoptic(probs, scores, labels, sem, thing_sem_labels=things,
                                      score_thresh=st, overlap_thresh=ot, stuff_area=sa,
                                      thing_min_remaining_area=mr)
    assert torch.equal(id_map, want_map) and segments == want_segments


@pytest.mark.gpu
def test_cuda_matches_cpu_with_constant_syncs():
    import warnings

    def cuda_run(probs, scores, labels, sem, things, st, ot, sa, mr=0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = merge_panoptic(probs.cuda(), scores.cuda(), labels.cuda(), sem.cuda(),
                                 thing_sem_labels=things, score_thresh=st, overlap_thresh=ot,
                                 stuff_area=sa, thing_min_remaining_area=mr)
        return out, sum("synchroniz" in str(w.message) for w in caught)

    torch.cuda.set_sync_debug_mode("warn")
    try:
        for seed in range(40):
            case = random_case(seed)
            want = merge_panoptic(case[0], case[1], case[2], case[3], thing_sem_labels=case[4],
                                  score_thresh=case[5], overlap_thresh=case[6], stuff_area=case[7],
                                  thing_min_remaining_area=case[8])
            (id_map, segments), _ = cuda_run(*case)
            assert torch.equal(id_map.cpu(), want[0]) and segments == want[1], f"seed {seed}"
        sem = torch.randint(0, 4, (64, 64))
        syncs = []
        for n in (3, 60):
            probs = torch.rand(n, 64, 64, generator=torch.Generator().manual_seed(n))
            syncs.append(cuda_run(probs, torch.linspace(1, 0.6, n), torch.zeros(n, dtype=torch.long),
                                  sem, [3], 0.5, 0.7, 4)[1])
        assert syncs[0] == syncs[1] > 0, syncs
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_group_patterns_finds_each_distinct_column_once(monkeypatch):
    monkeypatch.setattr(fused, "_BITS", 2)
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 3, (3, 500), generator=g)  # K = 3 sort keys, 27 possible columns
    inverse, patterns, weight = fused._group_patterns(keys)
    want = torch.unique(keys, dim=1)
    assert torch.equal(patterns, want)  # lexicographic, each once
    assert torch.equal(patterns[:, inverse], keys)
    assert torch.equal(weight, torch.bincount(inverse, minlength=want.shape[1]))


@pytest.mark.parametrize("merge", [merge_panoptic, merge_panoptic_reference])
def test_remaining_area_and_overlap_switch_by_hand(merge):
    """10x10 image: A (score 0.9) rows 0-5 (60 px); B (0.8) the whole image (100 px, 40 still free
    after A: overlap share 0.6); C (0.7) rows 8-9 (20 px, all free unless B was kept)."""
    rows = torch.arange(10)[:, None].expand(10, 10)
    masks = torch.stack([rows <= 5, rows >= 0, rows >= 8]).float()
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 3])
    sem = torch.zeros(10, 10, dtype=torch.long)

    def kept(**rules):
        _, segments = merge(masks, scores, labels, sem, thing_sem_labels=[0], **rules)
        return [(s["category"], s["area"]) for s in segments if s["isthing"]]

    assert kept(overlap_thresh=0.5) == [(1, 60), (3, 20)]  # B: 0.6 > 0.5
    assert kept(overlap_thresh=0.6) == [(1, 60), (2, 40)]  # a share equal to the threshold is kept
    assert kept(overlap_thresh=None) == kept(overlap_thresh=1.0) == [(1, 60), (2, 40)]
    # The minimum is on the REMAINING pixels (B covers 100, 40 remain), exactly the minimum is kept.
    assert kept(overlap_thresh=None, thing_min_remaining_area=40) == [(1, 60), (2, 40)]
    assert kept(overlap_thresh=None, thing_min_remaining_area=41) == [(1, 60)]
    assert kept(overlap_thresh=0.5, thing_min_remaining_area=20) == [(1, 60), (3, 20)]
    assert kept(overlap_thresh=0.5, thing_min_remaining_area=21) == [(1, 60)]
    assert kept(overlap_thresh=None, thing_min_remaining_area=101) == []
    # The named conventions: Detectron2's is the default; the textbook's drops A (60 < 64), so B
    # then takes the whole image and C has nothing left.
    assert MergeThresholds() == MergeThresholds.detectron2()
    assert kept(**asdict(MergeThresholds.detectron2())) == [(1, 60), (3, 20)]
    assert kept(**asdict(MergeThresholds.textbook())) == [(2, 100)]


def test_thresholds_are_checked():
    for bad in ({"thing_min_remaining_area": -1}, {"thing_min_remaining_area": 2.5},
                {"overlap_thresh": float("nan")}, {"overlap_thresh": "none"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MergeThresholds(**bad)
    assert MergeThresholds(overlap_thresh=None).overlap_thresh is None

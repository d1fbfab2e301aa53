"""Run-length helpers against plain per-pixel numpy."""

from __future__ import annotations

import numpy as np

from panfpn.evaluation.id_runs import (pair_counts, pair_counts_ids, pair_counts_packed, runs_of_ids,
                                       runs_of_packed)
from panfpn.data.panoptic_io import id_to_rgb, pack_rgb, rgb_to_id
from pq_case_gen import make_case


def _expand(runs):
    starts, ids, n = runs
    return np.repeat(ids, np.diff(starts, append=n))


def test_runs_reproduce_the_map_from_ids_and_colours():
    rng = np.random.default_rng(0)
    for _ in range(40):
        gt, _, pred, _ = make_case(rng)
        for m in (gt, pred):
            runs = runs_of_ids(m.reshape(-1))
            assert np.array_equal(_expand(runs), m.reshape(-1))
            assert np.all(runs[1][1:] != runs[1][:-1])  # maximal runs
            packed_runs = runs_of_packed(_words(m))
            assert all(np.array_equal(a, b) for a, b in zip(packed_runs[:2], runs[:2]))
            assert np.array_equal(rgb_to_id(id_to_rgb(m)), m)


def test_pair_counts_equal_per_pixel_counting():
    rng = np.random.default_rng(1)
    for _ in range(40):
        gt, _, pred, _ = make_case(rng)
        keys, counts = np.unique(gt.reshape(-1) * (1 << 24) + pred.reshape(-1), return_counts=True)
        expected = list(zip((keys >> 24).tolist(), (keys & 0xFFFFFF).tolist(), counts.tolist()))
        runs = runs_of_ids(gt.reshape(-1)), runs_of_ids(pred.reshape(-1))
        assert pair_counts(*runs) == expected
        assert pair_counts_packed(_words(gt), _words(pred)) == expected
        assert pair_counts_ids(gt, pred) == expected
        # Id hints (from the JSON) change nothing, whether complete or missing an id.
        full = np.unique(gt), np.unique(pred)
        partial = full[0][1:], full[1][:-1]
        for hints in (full, partial):
            assert pair_counts(*runs, *hints) == expected
            assert pair_counts_packed(_words(gt), _words(pred), *hints) == expected
            assert pair_counts_ids(gt, pred, *hints) == expected


def _words(id_map: np.ndarray, top_byte: int = 255) -> np.ndarray:
    """Packed words of an id map, built byte by byte as a decoder writes them: R, G, B, top byte."""
    rgba = np.empty((*id_map.shape, 4), np.uint8)
    rgba[..., :3] = id_to_rgb(id_map)
    rgba[..., 3] = top_byte
    return rgba.view("<u4").reshape(id_map.shape)


def test_packed_words_hold_the_id_in_their_low_24_bits():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, (1 << 24) - 1, 0x123456]])
    assert np.array_equal(pack_rgb(id_to_rgb(ids)), _words(ids))
    assert np.array_equal(pack_rgb(id_to_rgb(ids)) & 0xFFFFFF, ids)
    # The top byte is not part of the id: a map whose top bytes differ from pixel to pixel
    # gives the same runs' ids and counts as the plain one.
    varied = _words(ids, 0).reshape(-1).view(np.uint8).reshape(-1, 4)
    varied[:, 3] = np.arange(varied.shape[0]) % 3
    varied = varied.reshape(-1).view("<u4").reshape(ids.shape)
    assert pair_counts_packed(varied, _words(ids)) == pair_counts_ids(ids, ids)


def test_id_hints_outside_24_bits_or_negative_change_nothing():
    """The hinted fast path looks ids up in a 24-bit table; ids beyond it (int32 id maps of
    category * 1000 + instance, negative ids) take the exact path with the same counts."""
    rng = np.random.default_rng(2)
    gt = rng.choice(np.array([0, 7, 1 << 24, (1 << 30) + 5, -3]), size=(30, 40))
    pred = rng.choice(np.array([0, 9, 123_456]), size=(30, 40))
    keys, counts = np.unique(np.stack([gt.reshape(-1), pred.reshape(-1)], 1), axis=0, return_counts=True)
    expected = [(int(g), int(p), int(c)) for (g, p), c in zip(keys, counts)]
    for hints in ((np.unique(gt), np.unique(pred)), (np.array([0, 7]), np.array([0, 9])),
                  (np.array([-3, 0]), None)):
        assert pair_counts_ids(gt, pred, *hints) == expected


def test_empty_maps():
    empty = np.zeros(0, np.int64)
    assert pair_counts(runs_of_ids(empty), runs_of_ids(empty)) == []
    assert runs_of_packed(np.zeros((0, 5), np.uint32))[2] == 0
    assert pair_counts_packed(np.zeros((0, 5), np.uint32), np.zeros((0, 5), np.uint32)) == []


def _expected_counts(gt: np.ndarray, pred: np.ndarray) -> list[tuple[int, int, int]]:
    keys, counts = np.unique(np.stack([gt.reshape(-1), pred.reshape(-1)], 1), axis=0, return_counts=True)
    return [(int(g), int(p), int(c)) for (g, p), c in zip(keys, counts)]


def test_ids_sharing_a_lookup_slot_are_told_apart():
    """The hinted path looks ids up by their low 16 bits and checks the candidate: ids 16 bits
    apart (colours differing only in blue), an unhinted id in a hinted id's slot and a hint list
    whose ids collide must all give the exact counts."""
    rng = np.random.default_rng(3)
    base = np.array([0, 5, 5 + (1 << 16), 5 + (7 << 16), 300, 300 + (1 << 20)])
    gt = rng.choice(base, size=(40, 50))
    pred = rng.choice(np.array([0, 9, 9 + (1 << 16), 77]), size=(40, 50))
    expected = _expected_counts(gt, pred)
    hint_sets = [
        (np.unique(gt), np.unique(pred)),                  # colliding known ids: exact fallback
        (np.array([0, 5, 300]), np.array([0, 9, 77])),     # 5 + 2^16 etc. in the map, unhinted,
    ]                                                      # each in a hinted id's slot
    for gt_known, pred_known in hint_sets:
        assert pair_counts_ids(gt, pred, gt_known, pred_known) == expected
        assert pair_counts_packed(_words(gt), _words(pred), gt_known, pred_known) == expected


def test_more_hinted_ids_than_the_table_indexes():
    """Hint lists of 2^15 ids and more (the table holds int16 indices) take the exact path."""
    ids = np.arange(40_000, dtype=np.int64) * 7 + 1
    gt = ids.reshape(200, 200)
    pred = np.zeros_like(gt)
    pred[:, 100:] = 3
    expected = _expected_counts(gt, pred)
    hints = (np.concatenate([[0], ids]), np.array([0, 3]))
    assert pair_counts_ids(gt, pred, *hints) == expected
    assert pair_counts_packed(_words(gt), _words(pred), *hints) == expected


def test_many_segments_in_both_maps_are_counted_in_the_memory_of_their_runs():
    """The count table had a float64 cell per (gt id, pred id) of the image, present together or
    not: 40,000 one-pixel segments on each side made it 40,001^2 cells (12 GB: a MemoryError
    where panopticapi counts them), and hint lists just under the lookup table's 2^15 ids made
    it 30,001^2 cells (7 GB)."""
    import tracemalloc

    ids = np.random.default_rng(4).choice(np.arange(1, 1 << 24), 40_000, replace=False)
    gt = ids.reshape(200, 200)
    pred = np.roll(gt, 1, axis=1)
    gt_hinted = np.where(np.arange(40_000).reshape(200, 200) < 30_000, gt, 0)
    pred_hinted = np.roll(gt_hinted, 1, axis=0)
    cases = [(gt, pred, None, None),
             (gt_hinted, pred_hinted, np.unique(gt_hinted), np.unique(pred_hinted))]
    for g, p, g_known, p_known in cases:
        expected = _expected_counts(g, p)
        tracemalloc.start()
        try:
            got = [pair_counts_ids(g, p, g_known, p_known),
                   pair_counts_packed(_words(g), _words(p), g_known, p_known),
                   pair_counts(runs_of_ids(g.reshape(-1)), runs_of_ids(p.reshape(-1)), g_known, p_known)]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert all(counts == expected for counts in got)
        assert peak < 64 << 20, f"{peak / 2**20:.0f} MB to count {len(expected)} pairs"

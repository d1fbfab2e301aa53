"""Run-length helpers against plain per-pixel numpy."""

from __future__ import annotations

import numpy as np

from panfpn.evaluation.id_runs import (pair_counts, pair_counts_ids, pair_counts_rgb, runs_of_ids,
                                       runs_of_rgb)
from panfpn.data.panoptic_io import id_to_rgb, rgb_to_id
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
            rgb_runs = runs_of_rgb(id_to_rgb(m))
            assert all(np.array_equal(a, b) for a, b in zip(rgb_runs[:2], runs[:2]))
            assert np.array_equal(rgb_to_id(id_to_rgb(m)), m)


def test_pair_counts_equal_per_pixel_counting():
    rng = np.random.default_rng(1)
    for _ in range(40):
        gt, _, pred, _ = make_case(rng)
        keys, counts = np.unique(gt.reshape(-1) * (1 << 24) + pred.reshape(-1), return_counts=True)
        expected = list(zip((keys >> 24).tolist(), (keys & 0xFFFFFF).tolist(), counts.tolist()))
        runs = runs_of_ids(gt.reshape(-1)), runs_of_ids(pred.reshape(-1))
        assert pair_counts(*runs) == expected
        assert pair_counts_rgb(id_to_rgb(gt), id_to_rgb(pred)) == expected
        assert pair_counts_ids(gt, pred) == expected
        # Id hints (from the JSON) change nothing, whether complete or missing an id.
        full = np.unique(gt), np.unique(pred)
        partial = full[0][1:], full[1][:-1]
        for hints in (full, partial):
            assert pair_counts(*runs, *hints) == expected
            assert pair_counts_rgb(id_to_rgb(gt), id_to_rgb(pred), *hints) == expected
            assert pair_counts_ids(gt, pred, *hints) == expected


def test_empty_maps():
    empty = np.zeros(0, np.int64)
    assert pair_counts(runs_of_ids(empty), runs_of_ids(empty)) == []
    assert runs_of_rgb(np.zeros((0, 5, 3), np.uint8))[2] == 0

"""Per image pair: decoding vs pq_compute's own work, and what a compiled pair count would change.

Encodes generated COCO-like pairs (bench/pq.py's scenes, 640x480, ~30 segments) as PNGs in memory
and times, per pair, on one core (best of ``--rounds`` passes over all pairs):

* decoding both PNGs with the decoder pq_compute uses (Wuffs when installed) into RGB (the floor:
  the fastest output) and into the packed 32-bit words pq_compute reads, and with pyspng;
* panfpn's pair counts (numpy: ``id_runs.pair_counts_packed`` on the packed words) and its PQ
  rules (``pq_rules.accumulate_image``);
* with numba importable: the same counts as ONE compiled loop (a scan of 8-byte words for changes,
  a hashed id lookup per run, counts added in place). An experiment that bounds what compiled
  counting could give; numba is not a dependency of panfpn.

It prints "(decode + counts + rules) / decode floor" for each (each counter with the decode its
input needs), the in-process form of bench/pq.py's "ours / decode floor" (goal <= 1.25), and
checks every variant gives the same counts.

    python bench/pair_counts.py [--pairs 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pq import THING_IDS, STUFF_IDS, scene  # noqa: E402

from panfpn.data.panoptic_io import (decode_id_png_packed, decode_id_png_rgb, id_png_decoder,  # noqa: E402
                                    id_to_rgb)
from panfpn.evaluation.id_runs import known_ids, pair_counts_packed  # noqa: E402
from panfpn.evaluation.pq import tune_worker_malloc  # noqa: E402
from panfpn.evaluation.pq_rules import PQStat, accumulate_image  # noqa: E402


def make_pairs(n: int) -> list[dict]:
    """``n`` generated image pairs as PNG bytes plus their segments."""
    pairs = []
    for seed in range(n):
        (gt_map, gt_segs), (pred_map, pred_segs) = scene(np.random.default_rng(seed), 480, 640)
        pngs = []
        for id_map in (gt_map, pred_map):
            buf = io.BytesIO()
            Image.fromarray(id_to_rgb(id_map)).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        pairs.append({"pngs": pngs, "gt_segs": gt_segs, "pred_segs": pred_segs,
                      "known": (known_ids(gt_segs), known_ids(pred_segs))})
    return pairs


def compiled_pair_counts():
    """The fused compiled count of two RGB maps (``[H, W, 3]``), or None without numba."""
    try:
        from numba import njit
    except ImportError:
        return None

    @njit(cache=False, nogil=True)
    def slots_of(keys):
        size = 16
        while size < 2 * keys.size:
            size *= 2
        slots = np.full(size, -1, np.int64)
        for s in range(keys.size):
            h = (keys[s] * 2654435761) & (size - 1)
            while slots[h] >= 0:
                h = (h + 1) & (size - 1)
            slots[h] = s
        return slots

    @njit(cache=False, nogil=True)
    def index_of(keys, slots, flat, pixel):
        b = 3 * pixel
        v = np.int64(flat[b]) | (np.int64(flat[b + 1]) << 8) | (np.int64(flat[b + 2]) << 16)
        h = (v * 2654435761) & (slots.size - 1)
        while slots[h] >= 0 and keys[slots[h]] != v:
            h = (h + 1) & (slots.size - 1)
        return slots[h]  # -1: an id outside ``keys``

    @njit(cache=False, nogil=True)
    def same_as_before(flat, pixel):
        b = 3 * pixel
        return flat[b] == flat[b - 3] and flat[b + 1] == flat[b - 2] and flat[b + 2] == flat[b - 1]

    @njit(cache=False, nogil=True)
    def count(g, p, gkeys, pkeys):
        gslots, pslots = slots_of(gkeys), slots_of(pkeys)
        n_pred = pkeys.size
        table = np.zeros(gkeys.size * n_pred, np.int64)
        n = g.size // 3
        words = (g.size - 3) // 8
        g0, g3 = g[:8 * words].view(np.uint64), g[3:3 + 8 * words].view(np.uint64)
        p0, p3 = p[:8 * words].view(np.uint64), p[3:3 + 8 * words].view(np.uint64)
        run, gi, pi = 0, index_of(gkeys, gslots, g, 0), index_of(pkeys, pslots, p, 0)
        for i in range(words + 1):
            if i < words:  # bytes 8i+3 .. 8i+10 against the pixel before (byte j vs j - 3)
                x = (g3[i] ^ g0[i]) | (p3[i] ^ p0[i])
                if x == 0:
                    continue
                first, last = 8 * i + 3, 8 * i + 11
            else:  # the bytes after the last whole word
                x, first, last = ~np.uint64(0), 8 * words + 3, 3 * n
            for j in range(first, last):
                if i < words:
                    changed = (x >> np.uint64(8 * (j - first))) & np.uint64(0xFF) != 0
                else:
                    changed = g[j] != g[j - 3] or p[j] != p[j - 3]
                if changed and j // 3 != run:
                    if gi < 0 or pi < 0:
                        return table, False
                    table[gi * n_pred + pi] += j // 3 - run
                    run = j // 3
                    if not same_as_before(g, run):
                        gi = index_of(gkeys, gslots, g, run)
                    if not same_as_before(p, run):
                        pi = index_of(pkeys, pslots, p, run)
        if gi < 0 or pi < 0:
            return table, False
        table[gi * n_pred + pi] += n - run
        return table, True

    def pair_counts(gt_rgb, pred_rgb, gt_known, pred_known):
        table, ok = count(gt_rgb.reshape(-1), pred_rgb.reshape(-1), gt_known, pred_known)
        if not ok:
            raise ValueError("an id outside the segments (the numpy path handles it)")
        cells = np.flatnonzero(table)
        gi, pi = np.divmod(cells, pred_known.shape[0])
        return list(zip(gt_known[gi].tolist(), pred_known[pi].tolist(), table[cells].tolist()))

    return pair_counts


def per_pair_ms(fn, items: list, rounds: int) -> float:
    """Best over ``rounds`` of the mean milliseconds of ``fn(item)`` over ``items``."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return 1000 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tune_worker_malloc()  # as pq_compute's workers
    pairs = make_pairs(args.pairs)
    for pair in pairs:
        pair["rgb"] = [decode_id_png_rgb(png) for png in pair["pngs"]]
        pair["words"] = [decode_id_png_packed(png) for png in pair["pngs"]]
    cats = {c: {"id": c, "isthing": int(c in THING_IDS)} for c in THING_IDS + STUFF_IDS}
    rgb, packed = f"{id_png_decoder()}, RGB", f"{id_png_decoder()}, packed"
    decoders = {rgb: lambda pair: [decode_id_png_rgb(png) for png in pair["pngs"]],
                packed: lambda pair: [decode_id_png_packed(png) for png in pair["pngs"]]}
    try:
        import pyspng

        decoders["pyspng, RGB"] = lambda pair: [pyspng.load(png, "RGB") for png in pair["pngs"]]
    except ImportError:
        pass
    # name: (count function, the decoded form it reads, the decoder giving that form)
    counters = {"numpy (panfpn)": (pair_counts_packed, "words", packed)}
    compiled = compiled_pair_counts()
    if compiled is not None:
        counters["compiled (numba)"] = (compiled, "rgb", rgb)
    reference = [pair_counts_packed(*pair["words"], *pair["known"]) for pair in pairs]
    for name, (counter, form, _) in counters.items():
        assert [counter(*pair[form], *pair["known"]) for pair in pairs] == reference, name

    def rules(item):
        pair, counts = item
        accumulate_image(PQStat(), 0, pair["gt_segs"], pair["pred_segs"], counts, cats)

    decode_ms = {name: per_pair_ms(fn, pairs, args.rounds) for name, fn in decoders.items()}
    rules_ms = per_pair_ms(rules, list(zip(pairs, reference)), args.rounds)
    print(f"{len(pairs)} pairs of 640x480 (GT + prediction), one core, ms per pair, best of {args.rounds}:")
    for name, ms in decode_ms.items():
        print(f"  decode, {name:15s} {ms:6.3f}")
    print(f"  PQ rules               {rules_ms:6.3f}")
    floor = min(decode_ms.values())
    for name, (counter, form, decoder) in counters.items():
        ms = per_pair_ms(lambda pair: counter(*pair[form], *pair["known"]), pairs, args.rounds)
        ratio = (decode_ms[decoder] + ms + rules_ms) / floor
        print(f"  pair counts, {name:16s} {ms:6.3f}  -> ({decoder} decode + counts + rules) / decode "
              f"floor = {ratio:.2f} (goal <= 1.25)")
    if compiled is None:
        print("  pair counts, compiled: skipped (numba not installed; pip install numba to run it)")
    print(f"  budget for counts + rules at 1.25: {0.25 * floor:.3f} ms (with the floor's decode)")


if __name__ == "__main__":
    main()

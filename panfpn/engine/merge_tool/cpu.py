"""tools/merge.py on the CPU, without torch: each image read, merged in numpy
(:mod:`panfpn.modeling.merge_numpy`, the same rules and output as the fused merge) and its PNG
written in one of ``workers`` forked processes, listed in the JSON in image order by the caller.

Why not the torch path: importing torch (and what the DataLoader pulls in) costs 1-3 s of start-up,
more than merging 100 COCO-size images, and on a CPU one instance at a time inside its box is the
cheapest way to merge (bench/merge_tool.py, bench/RESULTS.md).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Iterator

from panfpn.data.merge_inputs import BadInput, MergeInputs
from panfpn.evaluation.writer import PanopticPredictionWriter
from panfpn.modeling.merge_numpy import merge_dataset_ids_numpy
from panfpn.modeling.merge_thresholds import MergeThresholds
from panfpn.utils.stop_signals import ignore_foreign_stop_signals, terminate_pool

__all__ = ["cuda_may_be_present", "merge_images_cpu"]


def cuda_may_be_present() -> bool:
    """False when this machine has no NVIDIA driver (so torch could not see a GPU either): config
    ``device=auto`` then means the CPU without importing torch to ask."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl",
                                             "/dev/dxg"))


class _MergeOne:
    """Image ``k`` -> ``{"k", "error", "seconds", "annotation", "entry", "merge", "write"}``, read,
    merged and written in the calling process, through a writer of that process's own (the PNG
    names were checked to be distinct up front)."""

    def __init__(self, inputs: MergeInputs, rules: MergeThresholds, out_dir: Path, name: str) -> None:
        self.inputs, self.rules, self.out_dir, self.name = inputs, rules, out_dir, name
        self._writer: PanopticPredictionWriter | None = None

    def __call__(self, k: int) -> dict[str, Any]:
        item = self.inputs.read(k)
        out = {"k": k, "error": item["error"], "seconds": item["seconds"]}
        if item["error"] is not None:
            return out
        image = item["image"]
        start = time.perf_counter()
        try:
            id_map, segments = merge_dataset_ids_numpy(
                item["sem"], item["crops"], item["origins"], item["scores"].tolist(),
                item["labels"].tolist(), metadata=self.inputs.metadata,
                score_thresh=self.rules.score_thresh, overlap_thresh=self.rules.overlap_thresh,
                stuff_area=self.rules.stuff_area, thing_min_remaining_area=self.rules.thing_min_remaining_area)
        except ValueError as err:
            out["error"] = str(BadInput(f"image {image['id']!r}: {err}"))
            return out
        merged = time.perf_counter()
        if self._writer is None:
            self._writer = PanopticPredictionWriter(self.out_dir, self.inputs.metadata, name=self.name)
        segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": int(s["isthing"]),
                     **({"score": s["score"]} if s["score"] is not None else {})} for s in segments]
        out["annotation"] = self._writer.add(image["id"], image["file_name"], id_map, segments, record=False)
        out["entry"] = {"id": image["id"], "file_name": image["file_name"], "height": int(id_map.shape[0]),
                        "width": int(id_map.shape[1])}
        out["merge"], out["write"] = merged - start, time.perf_counter() - merged
        return out


_JOB: _MergeOne | None = None  # the job of a forked worker process (set by _init_worker)


def _init_worker(job: _MergeOne) -> None:
    global _JOB
    ignore_foreign_stop_signals()  # a group SIGTERM / Ctrl-C: the parent stops the pool
    _JOB = job


def _run_in_worker(k: int) -> dict[str, Any]:
    assert _JOB is not None
    return _JOB(k)


def merge_images_cpu(inputs: MergeInputs, rules: MergeThresholds, out_dir: Path, name: str,
                     workers: int) -> Iterator[dict[str, Any]]:
    """Every image's outcome (``_MergeOne``'s dict), in image order; ``workers`` processes (forked
    where the platform can: the inputs are inherited, not pickled), 0: in this process."""
    job = _MergeOne(inputs, rules, out_dir, name)
    if workers == 0 or len(inputs) == 0:
        yield from map(job, range(len(inputs)))
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(min(workers, len(inputs)), initializer=_init_worker, initargs=(job,)) as pool:
        try:
            yield from pool.imap(_run_in_worker, range(len(inputs)), chunksize=2)
        except BaseException:  # an error, a stop signal (panfpn.utils.stop_signals), the caller closing us
            terminate_pool(pool)
            raise

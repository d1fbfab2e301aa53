"""Training checkpoints: full state (model, optimizer, scheduler, scaler, iteration, RNG, elapsed training
time), atomic writes."""

from __future__ import annotations

import logging
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panfpn.modeling.weights import load_error_reason, torch_file_problem
from panfpn.utils import atomic
from panfpn.utils.atomic import atomic_write

logger = logging.getLogger("panfpn")

LAST_CHECKPOINT = "last_checkpoint"  # text file naming the newest checkpoint in a run dir
FINAL_CHECKPOINT = "model_final.pth"
# What a training checkpoint must hold to resume from it.
RESUME_KEYS = ("model", "optimizer", "scaler", "iteration", "rng")
# The run-dir files training writes (their temp files are removed at start; other files of the
# run dir, e.g. an evaluation's, are not training's to clean up).
RUN_FILES = ("model_*.pth", LAST_CHECKPOINT, "metrics.jsonl")


class CheckpointError(RuntimeError):
    """A training checkpoint cannot be read, or no checkpoint of a run dir can be resumed from
    (each one named with its reason)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a synced temp file and a rename: a crash mid-write keeps the old file."""
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def capture_rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values, so checkpoints load with ``weights_only=True``."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, torch.tensor(py_state, dtype=torch.int64), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state.tolist()), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | os.PathLike, name: str, state: dict[str, Any]) -> Path:
    """Save ``state`` as ``run_dir/name`` atomically and point ``last_checkpoint`` at it."""
    path = Path(run_dir) / name
    atomic_torch_save(state, path)
    atomic_write_text(Path(run_dir) / LAST_CHECKPOINT, name)
    return path


def prune_checkpoints(run_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` periodic checkpoints (``model_<iteration>.pth``) of
    ``run_dir``; ``model_final.pth`` and the one ``last_checkpoint`` names always stay.
    ``keep=None`` keeps everything. Returns the deleted paths."""
    if keep is None:
        return []
    if keep < 1:
        raise ValueError(f"train.keep_checkpoints must be >= 1 or null, got {keep}")
    periodic = sorted(p for p in Path(run_dir).glob("model_*.pth")
                      if p.stem.removeprefix("model_").isdigit())
    last = find_last_checkpoint(run_dir)
    doomed = [p for p in periodic[:-keep] if last is None or p.name != last.name]
    for path in doomed:
        path.unlink()
    return doomed


def find_last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named in ``run_dir/last_checkpoint``, or None when there is none."""
    marker = Path(run_dir) / LAST_CHECKPOINT
    if not marker.is_file():
        return None
    path = Path(run_dir) / marker.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"{marker} names {path.name}, which does not exist in {run_dir}")
    return path


_EXPECTED = ("expected a training checkpoint as tools/train.py writes it (a torch.save zip file of a "
             f"dict with {', '.join(RESUME_KEYS)})")


def load_training_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                             mmap: bool = False) -> dict:
    """Load one of our training checkpoints; never with the unrestricted unpickler. A file that
    is not one (empty, text, truncated, another pickle) is a CheckpointError naming it. ``mmap``:
    the tensors of a zip-format file are mapped, not read (torch's legacy format is read whole)."""
    problem = torch_file_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path} cannot be loaded: {problem}; {_EXPECTED}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True,
                          mmap=mmap and zipfile.is_zipfile(path))
    except MemoryError:
        raise
    except Exception as err:  # truncated zip, pickle error, I/O error: the file is unusable
        raise CheckpointError(f"{path} cannot be loaded ({load_error_reason(path, err)}); {_EXPECTED}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a training checkpoint; {_EXPECTED}")
    return ckpt


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed checkpoint/marker/metrics write left in ``run_dir``."""
    return atomic.remove_stale_temp_files(run_dir, RUN_FILES)


def resume_candidates(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoints, the one ``last_checkpoint`` names first, then newest first (mtime)."""
    run_dir = Path(run_dir)
    ours = [p for p in run_dir.glob("model_*.pth")
            if p.name == FINAL_CHECKPOINT or p.stem.removeprefix("model_").isdigit()]
    ours.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    marker = run_dir / LAST_CHECKPOINT
    named = run_dir / marker.read_text().strip() if marker.is_file() else None
    if named is not None and named in ours:
        ours.remove(named)
        ours.insert(0, named)
    return ours


def _load_for_resume(path: Path, mmap: bool = False) -> dict:
    try:
        ckpt = load_training_checkpoint(path, mmap=mmap)
    except OSError as err:  # unreadable (permissions, I/O error)
        raise CheckpointError(f"{path} cannot be read ({err}); {_EXPECTED}") from err
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (it lacks {missing}); {_EXPECTED}")
    return ckpt


def load_resumable(run_dir: str | os.PathLike, mmap: bool = False) -> tuple[Path, dict] | None:
    """The newest checkpoint of ``run_dir`` that loads, as ``(path, state)``; None when the run
    dir holds no checkpoint. A bad one is logged as an error naming it, and the next older one is
    tried; CheckpointError when none loads (never a silent fresh start). ``mmap``: its tensors
    mapped, not read (for a look at its records)."""
    run_dir = Path(run_dir)
    marker = run_dir / LAST_CHECKPOINT
    if marker.is_file() and not (run_dir / marker.read_text().strip()).is_file():
        logger.error("%s names %s, which does not exist", marker, marker.read_text().strip())
    failures: list[str] = []
    for path in resume_candidates(run_dir):
        try:
            ckpt = _load_for_resume(path, mmap)
        except CheckpointError as err:
            logger.error("%s", err)
            failures.append(str(err))
            continue
        if failures:
            logger.warning("resuming from the older checkpoint %s instead: %s", path, "; ".join(failures))
        return path, ckpt
    if failures:
        raise CheckpointError(f"resume=true but no checkpoint in {run_dir} loads: " + "; ".join(failures))
    if marker.is_file():
        raise CheckpointError(f"resume=true but {marker} names {marker.read_text().strip()}, which does "
                              f"not exist, and {run_dir} holds no other checkpoint")
    return None

"""Where training metrics go: TensorBoard event files, ``metrics.jsonl`` and the console (main rank)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from panfpn.utils.atomic import atomic_write

logger = logging.getLogger("panfpn")


class MetricsLog:
    """Writes scalar dicts to TensorBoard and one JSON line per call to ``metrics.jsonl``.

    On non-main ranks every call is a no-op, so callers need no rank checks. ``resumed_at`` (the
    iteration a resumed run starts from) drops what an earlier attempt logged after it, from
    ``metrics.jsonl`` (rewritten atomically) and from TensorBoard (``purge_step``).
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True,
                 resumed_at: int | None = None) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            purge_step = None
            if resumed_at is not None:
                purge_step = resumed_at + 1
                drop_records_after(self.run_dir / "metrics.jsonl", resumed_at)
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge_step)
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: Mapping[str, float], *, kind: str = "train") -> None:
        """Log ``values`` (names like ``loss/total`` or ``pq/All``) at iteration ``step``."""
        if not self.enabled:
            return
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)
        record: dict[str, Any] = {"kind": kind, "iter": step}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")

    def logged(self, step: int, kind: str) -> bool:
        """Whether metrics.jsonl holds a ``kind`` record at iteration ``step`` (False when disabled)."""
        path = self.run_dir / "metrics.jsonl"
        if not self.enabled or not path.is_file():
            return False
        self._jsonl.flush()
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("kind") == kind and record.get("iter") == step:
                return True
        return False

    def images(self, step: int, tag: str, images: list[np.ndarray]) -> None:
        """Log HxWx3 uint8 images (e.g. panoptic overlays) under ``tag/i``."""
        if not self.enabled:
            return
        for i, img in enumerate(images):
            self._tb.add_image(f"{tag}/{i}", img, step, dataformats="HWC")

    def text(self, tag: str, text: str) -> None:
        """A text (e.g. the resolved config) in TensorBoard's Text tab, shown as preformatted."""
        if not self.enabled:
            return
        self._tb.add_text(tag, "\n".join("    " + line for line in text.splitlines()), 0)

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int = 0) -> None:
        """The run's hyperparameters and final metrics for TensorBoard's HParams tab, in the run's
        own event files (SummaryWriter.add_hparams would open a sub-folder per call). ``step``: the
        iteration the run ended at, so an extended run's ends are two points, the newest last."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: (v if isinstance(v, (int, float, bool, str)) else str(v)) for k, v in params.items()}
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        for summary in hparams(clean, finite):
            self._tb.file_writer.add_summary(summary)
        for name, value in finite.items():
            self._tb.add_scalar(name, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def drop_records_after(path: Path, iteration: int) -> int:
    """Rewrite the JSON-lines file ``path`` without records past ``iteration`` (and without a
    line cut short by a kill), so a resumed run logs each iteration once; returns how many went."""
    if not path.is_file():
        return 0
    kept: list[str] = []
    dropped = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s: dropping an unreadable line (a write cut short?): %.80s", path, line)
            dropped += 1
            continue
        if int(record.get("iter", 0)) > iteration:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write(path, lambda f: f.write("".join(f"{line}\n" for line in kept)), mode="w")
        logger.info("%s: dropped %d records past the resumed iteration %d", path, dropped, iteration)
    return dropped

"""Where training metrics go: TensorBoard event files, ``metrics.jsonl`` and the console (main rank)."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from panfpn.utils.atomic import atomic_write

logger = logging.getLogger("panfpn")
EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's event file names
HPARAMS_TAGS = b"_hparams_/"  # the tags of the HParams plugin's records (experiment, session start/end)


class MetricsLog:
    """Writes scalar dicts to TensorBoard and one JSON line per call to ``metrics.jsonl``.

    On non-main ranks every call is a no-op, so callers need no rank checks. ``resumed_at`` (the
    iteration a resumed run starts from; 0: a fresh start) drops what an earlier attempt logged after
    it, from ``metrics.jsonl`` (rewritten atomically) and from TensorBoard (``purge_step``; all of it
    on a fresh start, step 0 included). The event files
    already in ``tensorboard/`` are an earlier attempt's: :meth:`hparams` removes their hparams.
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
            self._earlier = sorted((self.run_dir / "tensorboard").glob(EVENT_FILES))
            purge_step = None
            if resumed_at is not None:
                purge_step = resumed_at + 1 if resumed_at else 0  # a fresh start: nothing of an earlier run
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

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """A text (e.g. the resolved config) in TensorBoard's Text tab, shown as preformatted."""
        if not self.enabled:
            return
        self._tb.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int = 0,
                steps: Mapping[str, int] | None = None) -> None:
        """The run's hyperparameters and final metrics for TensorBoard's HParams tab, in the run's
        own event files (SummaryWriter.add_hparams would open a sub-folder per call). ``step``: the
        iteration the run ended at, so an extended run's ends are two points, the newest last.
        ``steps``: another step for some metrics (an interrupted run's last evaluation, made before
        it stopped). TensorBoard keeps the first hparams record of a run it reads: an earlier
        attempt's (a resumed run, a fresh start in a used folder) are removed from its event files first."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        for path in self._earlier:
            drop_hparams(path)
        clean = {k: (v if isinstance(v, (int, float, bool, str)) else str(v)) for k, v in params.items()}
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        # the session's hparams and end, not the experiment record: TensorBoard takes the first
        # experiment record it finds in a logdir for every run (a sweep's other jobs' hparams and
        # metrics missing from the HParams tab); without one it joins all runs' sessions
        _, session_start, session_end = hparams(clean, finite)
        for summary in (_with_booleans(session_start, clean), session_end):
            self._tb.file_writer.add_summary(summary)
        for name, value in finite.items():
            self._tb.add_scalar(name, value, (steps or {}).get(name, step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def _with_booleans(session_start, params: Mapping[str, Any]):
    """The session start record with each boolean hparam as a boolean: torch's ``hparams`` tests for
    a number first, and a bool is one, so TensorBoard's HParams showed ``train.amp=true`` as 1."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    flags = {k: v for k, v in params.items() if isinstance(v, bool)}
    if not flags:
        return session_start
    [value] = session_start.value
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for name, flag in flags.items():
        data.session_start_info.hparams[name].bool_value = flag
    value.metadata.plugin_data.content = data.SerializeToString()
    return session_start


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


def drop_hparams(path: Path) -> bool:
    """Rewrite the TensorBoard event file ``path`` (atomically) without its HParams records, which
    TensorBoard would show instead of a later attempt's (it keeps the first it reads); the other
    events are copied byte for byte. A file without such records is not rewritten. Returns whether it was."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    if not _holds(path, HPARAMS_TAGS):
        return False

    def write(out) -> None:  # streamed: an event file with images can be large
        writer = RecordWriter(out)
        with open(path, "rb") as f:
            for framed, data in _records(f):
                if HPARAMS_TAGS not in data:  # most events: copied, not parsed nor checksummed again
                    out.write(framed)
                    continue
                event = event_pb2.Event.FromString(data)
                values = [v for v in event.summary.value if not _is_hparams(v)]
                if values:
                    del event.summary.value[:]
                    event.summary.value.extend(values)
                    writer.write(event.SerializeToString())

    atomic_write(path, write)
    logger.info("%s: removed an earlier attempt's hparams (TensorBoard shows this run's)", path.name)
    return True


def _records(f) -> Iterator[tuple[bytes, bytes]]:
    """``(framed bytes, data)`` of each record of a TFRecord file (an event file: an 8-byte length,
    its 4-byte checksum, the data, its checksum); a record cut short (a killed writer) ends it."""
    while True:
        header = f.read(12)
        if len(header) < 12:
            return
        (length,) = struct.unpack("<Q", header[:8])
        rest = f.read(length + 4)
        if len(rest) < length + 4:
            return
        yield header + rest, rest[:length]


def _is_hparams(value) -> bool:
    return value.tag.encode().startswith(HPARAMS_TAGS)


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file's bytes contain ``data`` (mapped, not read into memory)."""
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return mapped.find(data) >= 0

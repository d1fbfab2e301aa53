"""Progress of a long loop (training, evaluation, prediction): a tqdm bar on a terminal, log
lines when the output goes to a file (Slurm), a summary line at the end."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Any, Iterable, Iterator

logger = logging.getLogger("panfpn")


def bar_enabled(setting: Any, stream: Any = None) -> bool:
    """``train.progress_bar`` / ``eval.progress_bar``: ``true``, ``false`` or ``auto`` (a bar
    only when ``stream``, stderr by default, is a terminal: not in a Slurm log file)."""
    if setting == "auto":
        stream = sys.stderr if stream is None else stream
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(setting)


def duration(seconds: float) -> str:
    """``H:MM:SS`` of a number of seconds."""
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class Progress:
    """A loop's progress: a tqdm bar when ``bar`` is true, else a log line at most every
    ``every_s`` seconds (so a redirected log still moves); a summary line at the end. Only the
    main rank shows anything."""

    def __init__(self, items: Iterable, *, desc: str, bar: bool, total: int | None = None,
                 every_s: float = 60.0) -> None:
        from tqdm import tqdm

        from panfpn.engine import distributed as du  # torch: only where a loop runs (tools/merge.py's CPU path imports no torch)

        self.items, self.desc, self.every_s = items, desc, every_s
        self.main = du.is_main_process()
        self.total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        self.bar = tqdm(items, total=self.total, desc=desc, dynamic_ncols=True,
                        disable=not (bar and self.main)) if bar and self.main else None

    def __iter__(self) -> Iterator:
        start = last = time.perf_counter()
        n = 0
        source = self.bar if self.bar is not None else self.items
        try:
            for item in source:
                n += 1
                yield item
                now = time.perf_counter()
                if self.bar is None and self.main and now - last >= self.every_s:
                    last = now
                    rate = n / (now - start)
                    eta = f", eta {duration((self.total - n) / rate)}" if self.total and rate > 0 else ""
                    logger.info("%s: %d/%s batches, %.2f/s%s", self.desc, n, self.total or "?", rate, eta)
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.main:
                logger.info("%s: %d batches in %s", self.desc, n, duration(time.perf_counter() - start))

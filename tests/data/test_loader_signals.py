"""DataLoader workers and stop signals: a SIGTERM from elsewhere (sent to every process of the
job) is ignored, the parent's own SIGTERM (``Process.terminate()``, which torch's shutdown and
Python's exit use on a worker still running) ends the worker."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from torch.utils.data import Dataset

from panfpn.data.loader import build_dataloader


class _Slow(Dataset):
    """Samples that take a while: the worker is busy, not waiting for an index."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        time.sleep(0.2)
        return {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "sem_seg": torch.zeros(8, 8, dtype=torch.int64),
                "orig_size": (8, 8), "instances": None, "image_id": i, "file_name": f"{i}.png"}


def _alive_after(proc, seconds: float) -> bool:
    proc.join(timeout=seconds)
    return proc.is_alive()


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="POSIX signals")
def test_worker_ignores_a_foreign_sigterm_and_ends_on_its_parents():
    loader = build_dataloader(_Slow(), batch_size=1, num_workers=1)
    it = iter(loader)
    next(it)
    worker = it._workers[0]
    try:
        # From another process (scancel, kill -- -PGID): ignored, as SIGINT from a terminal
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
        subprocess.run(["kill", "-INT", str(worker.pid)], check=True)
        assert _alive_after(worker, 1.0)
        # From the parent (multiprocessing's atexit terminate() of a worker still running, as
        # after Ctrl-C twice): the worker exits, or the parent's exit joins it forever
        worker.terminate()
        assert not _alive_after(worker, 5.0)
    finally:
        if worker.is_alive():
            worker.kill()
        del it

"""Setup shared by train, eval and predict: logging, metadata checks, batch transfer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from panfpn.data.resolvers import LABEL_KEYS  # (importing it registers the panfpn.* resolvers)
from panfpn.data.metadata import DatasetMetadata
from panfpn.modeling.build import check_labels_fit
from panfpn.utils.cpus import cpus_per_local_process

logger = logging.getLogger("panfpn")


_FORMAT = "[%(asctime)s %(levelname)s] %(message)s"


class _Held(logging.Handler):
    """The records logged from the job's start until its run folder's ``log.txt`` is opened."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def start_job_logging() -> None:
    """The console of :func:`setup_logging` from a job's first line, before its run folder is known:
    what its start checks say (a warning, a lock taken over) is printed once, in the tools' format on
    stderr, not by hydra's handler on stdout; and held for ``log.txt`` (an earlier job's held lines
    dropped: one job's log)."""
    _console()
    for held in [h for h in logger.handlers if isinstance(h, _Held)]:
        logger.removeHandler(held)
    logger.addHandler(_Held())


def _console() -> None:
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_panfpn", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        handler._panfpn = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def setup_logging(run_dir: Path | None) -> None:
    """Console logging on every rank at INFO; a ``log.txt`` in the run dir on the main rank, which
    starts with what the job logged since :func:`start_job_logging`."""
    _console()
    held = [h for h in logger.handlers if isinstance(h, _Held)]
    for handler in held:
        logger.removeHandler(handler)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "log.txt"
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in logger.handlers):
            file_handler = logging.FileHandler(path)
            file_handler.setFormatter(logging.Formatter(_FORMAT))
            for record in (r for h in held for r in h.records):
                file_handler.handle(record)
            logger.addHandler(file_handler)


def build_metadata(cfg: DictConfig) -> DatasetMetadata:
    """Instantiate ``data.metadata`` and check the class counts the model config reads from it
    (derived from it in configs/config.yaml: this catches a ``data.num_*`` set by hand)."""
    metadata = instantiate(cfg.data.metadata)
    counts = {key: resolved(cfg, f"data.{key}") for key in LABEL_KEYS}
    check_labels_fit(counts, metadata, "of data.metadata", node="data")
    return metadata


def fit_threads_to_cpus() -> int:
    """Cap torch's intra-op threads at the CPUs this process may use (split among torchrun's
    processes on the node): in a container with a CPU quota, torch's default (all visible cores)
    oversubscribes the quota and every step slows down. Returns the thread count in use."""
    allowed = cpus_per_local_process()
    if torch.get_num_threads() > allowed:
        logger.info("torch threads %d -> %d (CPUs this process may use)", torch.get_num_threads(), allowed)
        torch.set_num_threads(allowed)
    return torch.get_num_threads()


def resolved(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` as plain Python (containers resolved), None when absent."""
    node = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a collated batch (nested in lists/dicts) to ``device``."""
    non_blocking = device.type == "cuda"

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=non_blocking)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, list):
            return [move(v) for v in x]
        return x

    return {k: move(v) for k, v in batch.items()}

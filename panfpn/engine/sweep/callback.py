"""Hydra callback (configs/config.yaml ``hydra.callbacks.sweep_summary``): a multirun keeps a
summary of its jobs in the sweep folder, refreshed after every job (so failed and interrupted
jobs are in it too) and printed at the end.

A job stopped by a signal (its job_status.json says interrupted) stops the sweep after the summary
is written, with tools/train.py's exit status 128 + signal; resume it with the same command line
plus ``resume=true`` per job folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from panfpn.engine.sweep.summary import format_table, write_summary
from panfpn.engine.training.job import JOB_STATUS
from panfpn.utils.json_file import JSONFileError, load_json

logger = logging.getLogger("panfpn")


def _sweep_dir(config: DictConfig) -> Path | None:
    if config.hydra.mode != RunMode.MULTIRUN:
        return None
    return Path(str(config.hydra.sweep.dir))


class SweepSummary(Callback):
    """Writes summary.csv / summary.json / summary.html into the sweep folder."""

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table

    def _write(self, sweep_dir: Path) -> list[dict]:
        return write_summary([sweep_dir], sweep_dir, title=f"Sweep {sweep_dir}")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        if sweep_dir is None:
            return
        self._write(sweep_dir)
        job_dir = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
        try:
            status = load_json(job_dir / JOB_STATUS) if (job_dir / JOB_STATUS).is_file() else {}
        except JSONFileError:
            status = {}
        if status.get("status") == "interrupted":
            self.on_multirun_end(config)
            print(f"sweep stopped: job {job_dir.name} was interrupted by signal {status.get('signal')}; "
                  f"summary in {sweep_dir}", file=sys.stderr)
            sys.exit(128 + int(status.get("signal") or 2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        if sweep_dir is None or not sweep_dir.is_dir():
            return
        rows = self._write(sweep_dir)
        if self.print_table:
            from panfpn.engine.sweep.summary import collect

            _, objective = collect([sweep_dir])
            print(f"\nsweep summary ({len(rows)} jobs): {sweep_dir}/summary.html\n{format_table(rows, objective)}")

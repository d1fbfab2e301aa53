"""An Optuna sweep's folder (``hydra.sweep.dir``) before its first trial (:mod:`panfpn.engine.sweep.precheck`).

hydra-optuna-sweeper numbers its trials from 0 at every launch (trial k trains in
``hydra.sweep.dir``/``hydra.sweep.subdir``, folder k by default), whatever its study holds, and
samples each trial's values only when the trial starts. In a sweep folder that already holds runs
(an earlier Optuna sweep launched there again, a basic sweep's jobs):

- trial k replaces run k (``resume=false``: a warning, then its checkpoints, metrics and record
  are overwritten; the earlier ``optimization_results.yaml`` too), or with ``resume=true``
  continues run k under its own, newly sampled values and tells Optuna that run's result for them;
- the runs no trial reaches stay, and the sweep's summary (every run folder in the sweep folder)
  mixes them with the trials, naming a best job of either sweep;
- a run folder a live training holds stops its trial with RunDirBusyError after the trials
  before it trained.

Which run a trial will get is not known before it is sampled, so no re-launch into such a folder
is meaningful (not even with ``resume=true``): the sweep is refused before its first trial, naming
the folder and ``hydra.sweep.dir``. What can be known is checked: the runs in the sweep folder
(a status, results, checkpoints, a lock, hydra's record in the jobs' ``hydra.output_subdir`` or
another) and the earlier study's ``optimization_results.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from panfpn.engine.sweep.summary import is_run_dir, natural_key
from panfpn.utils.errors import ConfigError

OPTUNA_RESULTS = "optimization_results.yaml"  # what hydra-optuna-sweeper writes in the sweep folder
MAX_DEPTH = 4  # hydra.sweep.subdir levels searched (``${hydra.job.num}``: one)
SHOWN = 5  # run folders named in the refusal


def earlier_runs(folder: Path, output_subdir: str | None = ".hydra", depth: int = MAX_DEPTH) -> list[Path]:
    """The run folders at or below ``folder`` (``depth`` levels; none below a run folder), numbered
    folders by number."""
    if is_run_dir(folder, output_subdir, checkpoints=True):
        return [folder]
    if depth <= 0:
        return []
    try:
        subfolders = [p for p in folder.iterdir() if p.is_dir()]
    except OSError:  # unreadable: its runs are not known here
        return []
    found: list[Path] = []
    for sub in sorted(subfolders, key=natural_key):  # siblings: by name, numbers as numbers
        found += earlier_runs(sub, output_subdir, depth - 1)
    return found


def _busy(runs: list[Path]) -> str | None:
    """``<folder>, in use by a live training (pid ... on host ...)`` for the first run folder a
    live training holds; None when none is."""
    from panfpn.engine.training.run_lock import LOCK_FILE, RunDirBusyError, check_run_dir_free, describe_holder, \
        read_record

    for run in runs:
        try:
            check_run_dir_free(run)
        except RunDirBusyError:
            return f"{run}, in use by a live training ({describe_holder(read_record(run / LOCK_FILE))})"
    return None


def check_optuna_sweep_dir(config: DictConfig) -> None:
    """ConfigError when the Optuna sweep's ``hydra.sweep.dir`` holds runs or an earlier study's
    results: its trials would replace or continue them, and its summary mix them in."""
    sweep = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
    if sweep.exists() and not sweep.is_dir():
        raise ConfigError(f"hydra.sweep.dir {sweep} is a file, not a folder: the trials cannot make their folders "
                          "there; give this sweep a new hydra.sweep.dir")
    if not sweep.is_dir():
        return  # a new folder: hydra makes it for the first trial
    runs = earlier_runs(sweep, OmegaConf.select(config, "hydra.output_subdir", default=".hydra"))
    results = (sweep / OPTUNA_RESULTS).is_file()
    if not runs and not results:
        return
    busy = _busy(runs)
    names = [str(p.relative_to(sweep)) if p != sweep else "." for p in runs[:SHOWN]]
    if busy:
        what = f"holds a run folder {busy}"
    elif runs:
        what = f"holds the runs of an earlier sweep ({len(runs)}: {', '.join(names)}{', ...' * (len(runs) > SHOWN)})"
        what += f" and its {OPTUNA_RESULTS}" if results else ""
    else:
        what = f"holds an earlier Optuna sweep's {OPTUNA_RESULTS}"
    raise ConfigError(
        f"hydra.sweep.dir {sweep} {what}: the Optuna sweeper numbers its trials from 0 at each launch and samples "
        "their values as they start, so its trials would replace the runs there (with resume=true: continue them "
        "under other values) and its summary would mix both sweeps; give this sweep a new hydra.sweep.dir")

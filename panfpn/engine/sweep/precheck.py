"""Hydra callback (configs/config.yaml ``hydra.callbacks.sweep_check``): a multirun checks every
job's config before the first job starts, so a bad value in one element of a sweep list
(``solver.base_lr=0.01,-1``), another tool's option or a wrong type stops the sweep at once,
naming the job, its overrides and the key, instead of when that job's turn comes hours later.

Each job is composed as hydra's launchers compose it (its override parser, the basic sweeper's
expansion, the config loader's ``load_sweep_config``) and given the checks a single run makes at
its start (:mod:`panfpn.engine.training.start_checks`), then a dry start of it
(:mod:`panfpn.engine.training.dry_start`: label metadata, the model on the meta device, ``weights``
named or present, the solver, the job's folder, with ``resume=true`` its checkpoint, the data
files present; each distinct config of a part once). A job's folder is hydra's ``hydra.sweep.dir`` /
``hydra.sweep.subdir`` resolved for that job, as its launcher resolves it (``_job_config``); two jobs
with one folder are refused (:func:`claim_folder`), as is a ``resume=true`` job whose folder holds a run
made with other values of the keys this launch sweeps (:mod:`panfpn.engine.sweep.relaunch`: a
re-launch whose grid changed). Optuna's checked values are not its trials, so
their folders are not checked one by one; its ``hydra.sweep.dir`` must hold no runs
(:mod:`panfpn.engine.sweep.sweep_dir`: its trials, numbered from 0 at each launch, would replace them).

- Basic sweeper: every job of the grid.
- Optuna sweeper: the trials are sampled while the sweep runs, so each value it may take is
  checked alone on the config of the fixed overrides: each choice, both bounds of an interval or
  range (with the GridSampler the ends of its grid). Combinations of values (two keys that must agree) and ``custom_search_space`` are not
  checked (each trial still checks its own config at its start).
- Other sweepers: not checked (logged).

A job is checked with its ``hydra.job.env_set`` variables set, as hydra sets them around it. With
a launcher whose jobs run on other machines (not in ``LOCAL_LAUNCHERS``), an error from this
machine's files or environment (a data folder, ``${oc.env:...}``) is logged, not a refusal.

Only tools/train.py's multiruns are checked (the other tools compose the same config.yaml).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from panfpn.engine.tool_errors import EXIT_INPUT_ERROR, input_error

if TYPE_CHECKING:
    from panfpn.engine.training.dry_start import DryStart

logger = logging.getLogger("panfpn")
BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
TOOL = "train"  # the checks are tools/train.py's
FIXED = "every trial (the fixed overrides)"
GRID = "optuna.samplers.GridSampler"
# launchers that run the jobs on this machine: its files and environment are theirs
LOCAL_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                   "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                   "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")


class Refusal(NamedTuple):
    """Why a job would stop at its start: the error in one line, and whether it is a known input
    error (:func:`panfpn.engine.tool_errors.input_error`: exit 2 alone, as in the sweep's refusal)."""

    line: str
    input_error: bool


def _sweeper_arguments(config: DictConfig) -> list[str]:
    """What hydra hands the sweeper: ``hydra.sweeper.params`` then the command line's overrides."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    return [f"{k}={v}" for k, v in params.items()] + list(task)


def basic_jobs(config: DictConfig) -> list[tuple[str, list[str]]]:
    """``(label, overrides)`` of every job the basic sweeper will launch, in its order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(_sweeper_arguments(config))
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return [(f"job {i}", list(job)) for i, job in enumerate(jobs)]


def _values(distribution: Any, grid: bool = False) -> list[tuple[str, Any]]:
    """``(what, value)`` of each value of an Optuna distribution worth checking; with ``grid`` (the
    GridSampler) the ends of the plugin's grid of it, which leaves out the distribution's upper end
    (``range(0.5,1.1,0.1)``: 0.5 ... 1.0)."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return [("choice", c) for c in choices]
    to_grid = getattr(OptunaSweeperImpl, "_to_grid_sampler_choices", None)
    if grid and to_grid is not None:
        values = to_grid(None, distribution)  # the plugin's own grid (no instance state used)
        return [("lowest grid value", min(values)), ("highest grid value", max(values))] if values else []
    return [("lower bound", distribution.low), ("upper bound", distribution.high)]


def optuna_candidates(config: DictConfig) -> list[tuple[str, list[str]]]:
    """``(label, overrides)``: the fixed overrides alone, then with each value the Optuna sweeper may
    give each searched key (parsed by the plugin itself, as its trials are written)."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    space, fixed = create_params_from_overrides(_sweeper_arguments(config))
    grid = OmegaConf.select(config, "hydra.sweeper.sampler._target_", default=None) == GRID
    base = [f"{k}={v}" for k, v in fixed.items()]
    out = [(FIXED, base)]
    for name, distribution in space.items():
        if name in fixed:
            continue  # the sweeper drops it from the search space too
        out += [(f"{what} of {name}", [*base, f"{name}={value}"]) for what, value in _values(distribution, grid)]
    return out


def _job_config(master: DictConfig, overrides: Sequence[str], num: int) -> DictConfig:
    """The job's config as the launcher composes it (with ``hydra.runtime.output_dir`` set, nothing
    made on disk); HydraConfig is left set to it."""
    from hydra.core.global_hydra import GlobalHydra

    cfg = GlobalHydra.instance().config_loader().load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = num
        cfg.hydra.job.num = num
    HydraConfig.instance().set_config(cfg)
    out = os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")), str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _one_line(err: BaseException) -> str:
    from panfpn.utils.errors import ConfigError

    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text if isinstance(err, ConfigError) else f"{type(err).__name__}: {text}"


def _from_this_machine(err: BaseException) -> bool:
    """Whether ``err`` comes from this machine's files or environment: an OSError (a missing data
    folder or JSON) or an unset variable (``${oc.env:...}``) anywhere in its chain of causes."""
    seen: BaseException | None = err
    for _ in range(16):  # a chain is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) or (isinstance(seen, KeyError) and "Environment variable" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def claim_folder(folders: dict[str, int], task: DictConfig, num: int) -> None:
    """ConfigError when job ``num``'s folder (its resolved ``output_dir``) is an earlier job's:
    hydra runs them one after the other there, and the later one continues (``resume=true``) or
    replaces the earlier one's run; ``folders``: folder -> the first job in it."""
    from panfpn.utils.errors import ConfigError

    folder = os.path.abspath(str(OmegaConf.select(task, "output_dir")))
    first = folders.setdefault(folder, num)
    if first != num:
        raise ConfigError(f"output_dir {folder} is job {first}'s folder too: this job would "
                          f"{'continue' if OmegaConf.select(task, 'resume') else 'replace'} job {first}'s run "
                          "there; give each job its own folder (hydra.sweep.subdir with ${hydra.job.num}, its "
                          "default, or a key the jobs differ in; no output_dir override)")


def check_job(master: DictConfig, overrides: Sequence[str], num: int, here: bool = True,
              dry: DryStart | None = None, folders: dict[str, int] | None = None,
              swept: Sequence[str] = ()) -> Refusal | None:
    """The error a job with ``overrides`` would stop with at its start; None when its
    config passes every start check (and ``dry``'s dry start of it, when given). The job's
    ``hydra.job.env_set`` is set while it is checked (as hydra sets it around the job); with
    ``here`` False (the jobs run on other machines) an error from this machine's files or
    environment is logged, not returned. ``folders``: the job folders of the jobs checked before
    (:func:`claim_folder`; None: not compared). ``swept``: the keys this launch sweeps, whose values
    a ``resume=true`` job's folder must record (:func:`~panfpn.engine.sweep.relaunch.check_relaunch`)."""
    from hydra.core.utils import env_override

    from panfpn.engine.sweep.relaunch import check_relaunch
    from panfpn.engine.training.start_checks import check_job_start, check_training_config

    saved = HydraConfig.instance().cfg
    try:
        task = _job_config(master, overrides, num)
        env = {str(k): str(v) for k, v in (OmegaConf.select(task, "hydra.job.env_set") or {}).items()}
        record_subdir = OmegaConf.select(task, "hydra.output_subdir")  # where hydra writes the job's record
        with read_write(task), open_dict(task):
            del task["hydra"]  # as the job gets it; HydraConfig holds its own copy
        with env_override(env):
            check_job_start(task)
            check_training_config(task, list(overrides))
            if folders is not None:
                claim_folder(folders, task, num)
            if swept:
                check_relaunch(task, overrides, swept, record_subdir)
            if dry is not None:
                dry.check(task, env)
    except Exception as err:  # noqa: BLE001 - whatever stops the job at its start is reported, one line each
        if here or not _from_this_machine(err):
            return Refusal(_one_line(err), input_error(err) is not None)
        logger.info("sweep check: job %d not judged on this machine (its jobs run elsewhere): %s", num, _one_line(err))
    finally:
        HydraConfig.instance().cfg = saved
    return None


def sweep_candidates(config: DictConfig) -> list[tuple[str, list[str]]] | None:
    """The configs to check for this multirun's sweeper; None for a sweeper not checked."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if target == BASIC:
        return basic_jobs(config)
    if target == OPTUNA:
        return optuna_candidates(config)
    return None


def _bad_candidates(config: DictConfig, candidates: list[tuple[str, list[str]]],
                    dry: DryStart | None = None) -> list[tuple[int, Refusal]]:
    """``(index, error)`` of each failing candidate; under Optuna, a value failing as the fixed
    overrides alone do is not listed again."""
    from panfpn.engine.sweep.relaunch import swept_keys

    bad: list[tuple[int, Refusal]] = []
    here = str(OmegaConf.select(config, "hydra.launcher._target_", default="")) in LOCAL_LAUNCHERS
    folders: dict[str, int] | None = {} if dry is not None and dry.job_folders else None  # jobs, not Optuna's values
    swept = swept_keys(_sweeper_arguments(config)) if folders is not None else []
    for num, (_, overrides) in enumerate(candidates):
        error = check_job(config, overrides, num, here, dry, folders, swept)
        if error is not None and not (bad and candidates[bad[0][0]][0] == FIXED and bad[0][1] == error):
            bad.append((num, error))
    return bad


def _training(config: DictConfig) -> bool:
    """Whether this multirun runs tools/train.py (its script, or hydra's job name for it)."""
    main = Path(str(getattr(sys.modules.get("__main__"), "__file__", None) or "")).stem
    return main == TOOL or OmegaConf.select(config, "hydra.job.name", default=None) == TOOL


def _shown(candidates: list[tuple[str, list[str]]], bad: list[tuple[int, Refusal]]) -> list[str]:
    """A line per bad candidate: its label, the overrides that tell the jobs apart (all of them
    when none differ) and the error."""
    from panfpn.engine.sweep.summary import add_params

    rows = [{"overrides": overrides} for _, overrides in candidates]
    add_params(rows)
    return [f"  {candidates[i][0]} [{rows[i]['params'] or ' '.join(candidates[i][1])}]: {refusal.line}"
            for i, refusal in bad]


def _refuse_on_error(check: Callable[[DictConfig], Any], config: DictConfig) -> Any:
    """``check(config)``; its error as one line on stderr (no traceback) and exit status 2 for a
    known input error (as a single run's), else 1."""
    try:
        return check(config)
    except Exception as err:  # noqa: BLE001 - whatever refuses the sweep, in one line
        print(f"sweep refused before any job started: {_one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR if input_error(err) is not None else 1)


def refuse_bad_sweep(config: DictConfig) -> None:
    """Check every candidate config; on any failure print one line per bad one (label, the overrides
    that differ between the jobs, error) on stderr and exit before any job starts: status 2 when
    every one is a known input error (the status each job would end with alone), else 1."""
    if not _training(config):
        return  # tools/eval.py etc. share configs/config.yaml's callbacks: their jobs check other keys
    started = time.perf_counter()
    candidates = _refuse_on_error(sweep_candidates, config)  # a sweep hydra cannot expand: its own words
    if candidates is None:
        logger.info("sweep check: hydra.sweeper %s is not checked before its jobs start",
                    OmegaConf.select(config, "hydra.sweeper._target_", default=None))
        return
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) == OPTUNA:
        from panfpn.engine.sweep.sweep_dir import check_optuna_sweep_dir

        _refuse_on_error(check_optuna_sweep_dir, config)  # trials renumbered from 0: an earlier sweep's folders
    from panfpn.engine.training.dry_start import DryStart

    dry = DryStart(job_folders=OmegaConf.select(config, "hydra.sweeper._target_", default=None) == BASIC)
    bad = _bad_candidates(config, candidates, dry)
    if bad:
        print(f"sweep refused before any job started: {len(bad)} of {len(candidates)} job configs are invalid",
              *_shown(candidates, bad), sep="\n", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR if all(refusal.input_error for _, refusal in bad) else 1)
    logger.info("sweep check: %d job configs valid, dry start built %s (%.2f s)", len(candidates), dry.summary(),
                time.perf_counter() - started)


class SweepCheck(Callback):
    """Refuses a multirun whose jobs' configs fail the start checks, before the first job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_bad_sweep(config)

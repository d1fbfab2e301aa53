"""A training job's start without the training: what tools/train.py builds before its first step
(``train_run._train``), built cheaply, so a multirun (:mod:`panfpn.engine.sweep.precheck`) finds
what would stop a job at its start before the first job runs.

In the job's order: the label metadata (``build_metadata``); the model, on the meta device (no
memory, no initialisation; a constructor that needs real tensors is built on the CPU), and its
label counts against the metadata (``check_model_labels``, as the job checks them); ``weights``:
a file must exist, be a file of a known suffix and (torch files) start like one, and load into
a meta-device build of the model as the job loads it (keys and shapes; a CPU build when the loader
compares values, as the Swin loaders do the relative position index); a torchvision weights
name must name a member of its enum, and its architecture's state dict (standing in for the
file: nothing is downloaded) load the same way; the solver on the built model (parameter
groups, lr multipliers, schedule); the job's folder (a file there, another live training's
lock: :func:`check_job_folder`); with ``resume=true``, the checkpoint of the job's folder
that the job would resume from, given the refusals resume makes before it loads it (another
model, other categories, another optimizer, an iteration past ``solver.max_iter``; its tensors
mapped, not read; nothing loaded into a model or optimizer); the files the datasets open at their
start (annotation JSON, PNG and image folders; checked to exist, not read).

Not built: the datasets' records (their JSON is not parsed), the loaders, anything on an
accelerator. Parts whose config is equal in two jobs are
built once (:class:`DryStart` keeps each result): a 12-job lr grid builds one model.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from panfpn.engine.data_files import check_dataset_files
from panfpn.utils.errors import ConfigError

logger = logging.getLogger("panfpn")


def config_key(cfg: DictConfig, *keys: str) -> str:
    """The resolved values of ``keys`` as one string: equal strings, equal parts of two jobs."""
    from panfpn.engine.job_setup import resolved

    return json.dumps({key: resolved(cfg, key) for key in keys}, sort_keys=True, default=repr)


def _instantiation_error(err: Exception, section: str = "model") -> Exception:
    """hydra's InstantiationException as a ConfigError naming the config key and the constructor's
    own error (chained, so its cause still tells a missing file); other errors as they are."""
    from hydra.errors import InstantiationException

    if not isinstance(err, InstantiationException) or err.__cause__ is None:
        return err
    text = str(err)
    key = text.rpartition("full_key: ")[2].strip() if "full_key: " in text else section
    cause = err.__cause__
    out = ConfigError(f"config key '{key}': {type(cause).__name__}: {cause}")
    out.__cause__ = cause
    return out


def build_model_cheaply(cfg: DictConfig) -> tuple[torch.nn.Module, str]:
    """``(model, device)``: ``cfg.model`` built on the meta device, or on the CPU (as the job builds
    it) when that fails: a constructor that computes with tensors (torchvision's RegNet), or a bad
    value, whose error is then the one the job meets. No weights are loaded."""
    from panfpn.modeling.build import instantiate_model

    try:
        with torch.device("meta"):
            return instantiate_model(cfg), "meta"
    except Exception as err:  # noqa: BLE001 - any failure is retried as the job builds it
        logger.debug("sweep check: model not buildable on the meta device (%s); building it on the CPU", err)
    return instantiate_cpu_model(cfg), "cpu"


def check_weights_source(source: Any) -> None:
    """What loading ``weights`` would refuse without reading it: a torchvision weights name that
    names no enum member; a path that is missing, a folder, of an unknown suffix, or not a torch
    file by its first bytes. Nothing is downloaded."""
    import torchvision

    from panfpn.modeling.weights import (
        TORCH_SUFFIXES, WeightsError, check_weights_path, is_weights_name, torch_file_problem,
    )

    if source in (None, ""):
        return
    if is_weights_name(source):
        try:
            torchvision.models.get_weight(source)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"config key 'weights': {source!r} is neither a file nor a torchvision weights "
                              f"name ({type(err).__name__}: {err}); e.g. ResNet50_Weights.IMAGENET1K_V1") from err
        return
    path = check_weights_path(str(source))
    problem = torch_file_problem(path) if path.suffix in TORCH_SUFFIXES else None
    if problem is not None:
        raise WeightsError(f"weights={path} cannot be read as a torch weights file: {problem}")


def check_weights_fit(cfg: DictConfig, built: tuple[torch.nn.Module, str] | None = None) -> torch.nn.Module | None:
    """A ``weights`` file loaded as the job loads it (strict unless ``weights_partial``) into
    ``built`` (``(model, device)``: a fresh build of the job's model, changed by the load; a
    meta-device one is built when None): its keys and shapes are checked, its tensors read but
    copied nowhere; a loader that needs the model's values (an operator meta tensors lack) gets
    a CPU build. A torchvision weights name is not downloaded: its architecture's own state dict
    (torchvision loads its files strictly into it: the same keys and shapes) stands in for it.
    Returns the model loaded into (its settings as the load left them), None when none was."""
    from panfpn.engine.job_setup import resolved
    from panfpn.modeling.weights import is_weights_name, load_weights

    source = resolved(cfg, "weights")
    if source in (None, ""):
        return None
    partial = bool(resolved(cfg, "weights_partial"))
    model, device = built or build_model_cheaply(cfg)
    named = is_weights_name(source)
    stand_in = torchvision_stand_in(source, device) if named else None
    if named and stand_in is None:
        return None
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")  # "copying ... to a meta parameter ... is a no-op": meant
        try:
            load_weights(model, source, allow_partial=partial, torchvision_state=stand_in)
        except (NotImplementedError, RuntimeError) as err:
            if device != "meta" or not _meta_limit(err):
                raise
            # a loader that compares values (the Swin relative position index) needs real tensors
            logger.info("sweep check: %s is loaded into a CPU build of the model (%s)", source, err)
            model = instantiate_cpu_model(cfg)
            load_weights(model, source, allow_partial=partial, torchvision_state=stand_in)
    return model


def check_resume(cfg: DictConfig, model: torch.nn.Module, metadata: Any) -> Path | None:
    """What ``resume=true`` refuses at the job's start before it loads anything
    (:func:`~panfpn.engine.training.resume.check_resume_start`: another model, other categories,
    another optimizer, an iteration past ``solver.max_iter``), on the checkpoint of the job's
    folder (``output_dir``) that ``load_resumable`` picks, its tensors mapped, not read; ``model``:
    the job's model with its weights' settings. The warnings are left to the job. Returns the
    checkpoint, None when the folder holds none (the job starts from scratch)."""
    from panfpn.engine.job_setup import resolved
    from panfpn.engine.training.checkpoint import load_resumable
    from panfpn.engine.training.resume import check_resume_start

    folder = resolved(cfg, "output_dir")
    if not folder:
        return None
    with _quiet(logging.ERROR):  # what resume only logs, the job logs at its start
        found = load_resumable(folder, mmap=True)
        if found is None:
            return None
        path, ckpt = found
        check_resume_start(cfg, ckpt, path, model=model, metadata=metadata)
    return path


def check_job_folder(folder: Any) -> None:
    """What stops a job in its folder (``output_dir``) before it reads anything: a path that is a
    file (hydra cannot make the folder there), a folder a live training holds (its ``train.lock``:
    RunDirBusyError, as the job's own lock raises it)."""
    from panfpn.engine.training.run_lock import check_run_dir_free

    if not folder:
        return
    path = Path(str(folder))
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output_dir {path} is a file, not a folder: the job cannot make its run folder there")
    check_run_dir_free(path)


def torchvision_stand_in(source: str, device: str) -> dict[str, torch.Tensor] | None:
    """The state dict of the architecture torchvision weights named ``source`` belong to, built on
    ``device`` (nothing fetched: torchvision loads its files strictly into that architecture, so
    the keys and shapes are the file's); None, logged, when the architecture is not found or not
    built with its defaults (the job's own load then tells). A meta-device build that fails (RegNet
    computes its widths with tensors) is made on the CPU."""
    import torchvision

    try:
        weights = torchvision.models.get_weight(source)
        builder = next(name for name in torchvision.models.list_models()
                       if torchvision.models.get_model_weights(name) is type(weights))
        try:
            with torch.device(device):
                return torchvision.models.get_model(builder).state_dict()
        except Exception:  # noqa: BLE001 - retried on the CPU, whose error is the one reported
            if device != "meta":
                raise
        return torchvision.models.get_model(builder).state_dict()
    except Exception as err:  # noqa: BLE001 - a name the check cannot stand in for is left to the job
        logger.info("sweep check: weights=%s not checked against the model (%s: %s)", source,
                    type(err).__name__, err)
        return None


def _meta_limit(err: BaseException) -> bool:
    """Whether ``err`` is an operator that meta tensors cannot run (no meta kernel, no data to read),
    not a verdict on the weights."""
    return isinstance(err, NotImplementedError) or "meta" in str(err).lower()


def instantiate_cpu_model(cfg: DictConfig) -> torch.nn.Module:
    """``cfg.model`` built on the CPU, as the job builds it (its errors with their config key)."""
    from panfpn.modeling.build import instantiate_model

    try:
        return instantiate_model(cfg)
    except Exception as err:  # noqa: BLE001 - reported with its config key
        raise _instantiation_error(err) from err


def build_solver_cheaply(cfg: DictConfig, model: torch.nn.Module) -> None:
    """The job's optimizer (parameter groups, lr multipliers), scheduler and grad scaler on ``model``
    (meta tensors suffice: nothing steps), as ``train_run`` builds them, its lr log line muted; what
    the constructors refuse is the job's ConfigError, any other error the job's own (not an input error)."""
    from panfpn.engine.train_run import _build_solver  # the job's own builder, not a copy of it

    with _quiet():
        _build_solver(cfg, model, torch.device("cpu"))


def solver_config_error(err: Exception) -> ConfigError:
    """What the optimizer's or the schedule's constructor refused, as a ConfigError naming the key
    (``config key 'solver.schedule': ValueError: ...``) or the solver section; the job and a
    multirun's dry start report it alike (tools/train.py: one line, exit 2)."""
    wrapped = _instantiation_error(err, "solver")
    if isinstance(wrapped, ConfigError):
        return wrapped
    out = ConfigError(f"config section 'solver' (optimizer, parameter groups, schedule): {type(err).__name__}: {err}")
    out.__cause__ = err
    return out


@contextmanager
def _quiet(level: int = logging.WARNING) -> Iterator[None]:
    """The panfpn logger at ``level`` meanwhile (a line per job of what the job itself logs is noise)."""
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


class DryStart:
    """Checks jobs' starts (:meth:`check`), each part once per distinct config of it: the results,
    errors included, are kept, and ``builds`` counts what was built (``model``, ``solver`` ...),
    ``cpu_models`` the models built on the CPU. ``job_folders``: each checked config's ``output_dir``
    is its job's folder (the basic sweeper's jobs, not Optuna's candidate values), so the folder
    (:func:`check_job_folder`) and with ``resume=true`` the checkpoint there are checked."""

    def __init__(self, job_folders: bool = True) -> None:
        self._done: dict[tuple[str, str], tuple[Any, BaseException | None]] = {}
        self.builds: Counter[str] = Counter()
        self.cpu_models = 0
        self.seconds = 0.0  # spent in check(), imports of the first call included
        self.job_folders = job_folders
        self._env = "{}"

    def _once(self, part: str, key: str, build: Callable[[], Any]) -> Any:
        """``build()``'s value, computed once per ``(part, key)``; its error raised again each time."""
        key = self._env + key
        if (part, key) not in self._done:
            self.builds[part] += 1
            try:
                self._done[part, key] = (build(), None)
            except Exception as err:  # noqa: BLE001 - kept for the next job with this part
                self._done[part, key] = (None, err)
        value, err = self._done[part, key]
        if err is not None:
            raise err
        return value

    def check(self, cfg: DictConfig, env: Mapping[str, str] | None = None) -> None:
        """Raise the first error the job with config ``cfg`` would stop with before its first step;
        ``env``: the variables hydra sets around the job (``hydra.job.env_set``, set meanwhile by the
        caller), part of every part's key (a data root may come from ``$COCO_ROOT``)."""
        started = time.perf_counter()
        self._env = json.dumps(dict(env or {}), sort_keys=True)
        try:
            self._check(cfg)
        finally:
            self.seconds += time.perf_counter() - started

    def _check(self, cfg: DictConfig) -> None:
        from panfpn.engine.job_setup import build_metadata, resolved
        from panfpn.engine.training.start_checks import check_model_labels

        if self.job_folders:  # hydra makes the folder, then the job locks it: before anything else
            check_job_folder(resolved(cfg, "output_dir"))
        labels = config_key(cfg, "data.metadata", "data.num_thing_classes", "data.num_sem_classes",
                            "data.thing_sem_labels")
        metadata = self._once("metadata", labels, lambda: build_metadata(cfg))
        model_key = config_key(cfg, "model")
        model = self._once("model", model_key, lambda: self._model(cfg))
        self._once("labels", model_key + labels, lambda: check_model_labels(cfg, metadata))
        weights = config_key(cfg, "weights", "weights_partial")
        self._once("weights", weights, lambda: check_weights_source(resolved(cfg, "weights")))
        loaded = self._once("weights fit", model_key + weights, lambda: self._weights_fit(cfg, model))
        solver = config_key(cfg, "solver", "data.batch_size", "train.amp", "train.amp_dtype")
        self._once("solver", model_key + solver, lambda: build_solver_cheaply(cfg, model))
        if self.job_folders and resolved(cfg, "resume"):
            if check_resume(cfg, model if loaded is None else loaded, metadata) is not None:
                self.builds["resume checkpoint"] += 1
        self._once("data", config_key(cfg, "data.train", "data.val", "train.eval_period"),
                   lambda: check_dataset_files(cfg))

    def _model(self, cfg: DictConfig) -> torch.nn.Module:
        """The job's model on the meta device: built there, or built on the CPU and moved there
        (the solver and resume checks read its structure and settings, never its values)."""
        model, device = build_model_cheaply(cfg)
        if device != "meta":
            self.cpu_models += 1
            logger.info("sweep check: %s built on the CPU (its constructor needs real tensors)",
                        OmegaConf.select(cfg, "model.backbone._target_", default=None) or "the model")
        return model.to("meta")

    def _weights_fit(self, cfg: DictConfig, model: torch.nn.Module) -> torch.nn.Module | None:
        """:func:`check_weights_fit` on a deep copy of the job's meta model (no second build: a
        RegNet is built on the CPU, 0.5 s; the load changes the copy only, not the model the solver
        check uses); the model loaded into, on the meta device, for its settings
        (``stride_in_1x1``); None without weights."""
        from panfpn.engine.job_setup import resolved

        if resolved(cfg, "weights") in (None, ""):
            return None
        loaded = check_weights_fit(cfg, (copy.deepcopy(model), "meta"))
        if loaded is None:
            return None
        if any(p.device.type != "meta" for p in loaded.parameters()):
            self.cpu_models += 1  # a loader that compares values got a CPU build
        return loaded.to("meta")

    def summary(self) -> str:
        """What was built, for the log line: ``1 model (meta), 12 solvers ...``."""
        parts = [f"{n} {part}" for part, n in sorted(self.builds.items())]
        cpu = f" ({self.cpu_models} on the CPU)" if self.cpu_models else ""
        return ", ".join(parts) + cpu + f" in {self.seconds:.2f} s"

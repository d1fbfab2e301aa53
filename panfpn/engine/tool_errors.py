"""Known input errors of tools/train.py, eval.py, predict.py and export.py: one stderr line
``tools/<x>.py: <message>`` and exit status 2, as tools/merge.py does; any other exception keeps
hydra's traceback (a bug), and ``HYDRA_FULL_ERROR=1`` shows the full trace of every error.

What counts as a known input error (its message names the file, key or image; the fix is the
user's, not the code's):

- ``ConfigError``: a config key unknown, missing, of a bad value, or another tool's key typed;
- ``WeightsError``: weights that cannot be read, do not fit the model or cannot be downloaded
  (``ImageNetFileError``: a Detectron2 ImageNet file that is not one);
- ``CheckpointError``: a training checkpoint that cannot be read or resumed from;
- ``RunDirBusyError``: another live training holds the run folder;
- ``ImageReadError`` (``BadImageError``): an image or id PNG that cannot be decoded;
- ``JSONFileError``: an annotation or other JSON file missing or malformed; ``AnnotationError``: a
  COCO-panoptic annotation file that breaks a rule (ids, categories, segments); ``PQInputError``:
  PQ inputs that do not match; ``PredictionNameError``: two image ids that give one prediction
  file name;
- ``FileNotFoundError`` raised with a message by panfpn's own checks of a named input (a weights
  file, a data root, an annotation JSON, a predict input): no ``errno`` (the operating system's
  own has one, and keeps its traceback: a file the code, not the user, got wrong) and raised in a
  panfpn module.

Such an error wrapped by hydra's ``instantiate`` or an OmegaConf interpolation (a resolver that
reads the dataset's categories) is told by its cause. In a multirun the error is raised as it
is: hydra's sweep callback records the failed job (summary.json). Under torchrun only rank 0
prints the line: every rank finds the same config error, and an input error of one rank alone (a
bad image in its shard) is left for the others (:mod:`panfpn.engine.rank_errors`), which end
with an :class:`~panfpn.utils.stop_signals.EndedElsewhere` that counts as that input error: every
rank exits 2, rank 0's line names the rank and its error (``tools/train.py: rank 1 failed:
BadImageError: ...``). Standard library only at import: tools/train.py imports torch later.
"""

from __future__ import annotations

import os
import sys
from contextlib import ContextDecorator
from pathlib import Path
from types import TracebackType

from panfpn.utils.launch_env import launch_rank
from panfpn.utils.stop_signals import EndedElsewhere

# (module, class): looked up among the loaded modules only (an error of a module never imported
# cannot have been raised), so this module imports none of them.
INPUT_ERRORS = (
    ("panfpn.utils.errors", "ConfigError"),
    ("panfpn.modeling.weights", "WeightsError"),
    ("panfpn.modeling.d2_imagenet", "ImageNetFileError"),
    ("panfpn.engine.training.checkpoint", "CheckpointError"),
    ("panfpn.engine.training.run_lock", "RunDirBusyError"),
    ("panfpn.data.image_io", "ImageReadError"),
    ("panfpn.data.validate", "AnnotationError"),
    ("panfpn.utils.json_file", "JSONFileError"),
    ("panfpn.evaluation.pq_rules", "PQInputError"),
    ("panfpn.evaluation.writer", "PredictionNameError"),
)
# errors that carry another one as their cause: hydra's instantiate, OmegaConf's resolvers
_WRAPPERS = (("hydra.errors", "InstantiationException"), ("omegaconf.errors", "InterpolationResolutionError"))
EXIT_INPUT_ERROR = 2


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    return tuple(getattr(sys.modules[mod], cls) for mod, cls in names if mod in sys.modules)


def _raised_by_panfpn(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in a panfpn module."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(Path(__file__).resolve().parents[1])


def input_error(err: BaseException) -> BaseException | None:
    """The known input error ``err`` is (or, through hydra's / OmegaConf's wrappers, carries as its
    cause); None for any other exception."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, _loaded(INPUT_ERRORS)) or (isinstance(err, EndedElsewhere) and err.exit_status() == 2):
            return err  # the latter: the job ended on another rank's input error
        if isinstance(err, FileNotFoundError) and err.errno is None and _raised_by_panfpn(err):
            return err
        if not isinstance(err, _loaded(_WRAPPERS)):
            return None
        err, seen = err.__cause__ or err.__context__, seen + 1  # hydra: 'from'; OmegaConf: the context
    return None


def in_multirun() -> bool:
    """Whether hydra runs this job as part of a multirun (``-m``); False before hydra is imported."""
    if "hydra" not in sys.modules:
        return False
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def reported_input_error(err: BaseException) -> BaseException | None:
    """The known input error that :class:`InputErrorsExit` ends on with its line and exit 2; None
    for another exception, and with ``HYDRA_FULL_ERROR=1`` or in a multirun (raised as it is)."""
    if not isinstance(err, Exception) or os.environ.get("HYDRA_FULL_ERROR") == "1" or in_multirun():
        return None
    return input_error(err)


def error_message(err: BaseException) -> str:
    """``err``'s message on one line: a DataLoader worker's (torch's re-raise puts the worker's
    traceback in it) by its last line; another rank's end by its summary (not this rank's consequence)."""
    text = err.summary if isinstance(err, EndedElsewhere) else str(err)
    if "Original Traceback" in text:  # "Caught BadImageError in DataLoader worker ...": the error's own line
        text = text.strip().splitlines()[-1]
    return text


def error_line(tool: str, err: BaseException) -> str:
    """``tools/<tool>.py: <message>``; a message that starts with the tool's name is printed as it is."""
    text = error_message(err)
    return text if text.startswith(f"tools/{tool}.py ") else f"tools/{tool}.py: {text}"


class InputErrorsExit(ContextDecorator):
    """Around a tool's job (a ``with`` block or a decorator under ``@hydra.main``): a known input
    error (also another rank's: module docstring) prints ``tools/<tool>.py: <message>`` on stderr
    (rank 0 only) and exits 2; everything else, a multirun's job and ``HYDRA_FULL_ERROR=1`` pass the
    exception on."""

    def __init__(self, tool: str) -> None:
        self.tool = tool

    def __enter__(self) -> "InputErrorsExit":
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: TracebackType | None) -> None:
        known = reported_input_error(err) if err is not None else None
        if known is None:
            return None
        if launch_rank() == 0:
            print(error_line(self.tool, known), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INPUT_ERROR)


def input_errors_exit_2(tool: str) -> InputErrorsExit:
    """:class:`InputErrorsExit` for tools/``tool``.py (``@input_errors_exit_2("eval")`` under ``@hydra.main``)."""
    return InputErrorsExit(tool)

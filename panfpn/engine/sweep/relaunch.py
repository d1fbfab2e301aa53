"""A re-launched sweep's job folders against this launch's grid (:mod:`panfpn.engine.sweep.precheck`).

A job with ``resume=true`` continues the run its folder (``hydra.sweep.dir``/``hydra.sweep.subdir``,
``${hydra.job.num}`` by default) holds, under the job's own config: resume only warns at changed
solver values. A sweep ``solver.base_lr=0.01,0.02`` re-launched as ``solver.base_lr=0.005,0.01,0.02``
in the same ``hydra.sweep.dir`` would have job 0 (lr 0.005) continue folder 0's lr-0.01 run, and the
summary pair each folder with the wrong config. So each job whose folder holds checkpoints must
have, for every key this launch sweeps, the value the folder's hydra record
(``.hydra/overrides.yaml``, written at each job's start) gives it; a key the record lacks differs.

Swept: a key given a list of values, ``choice``, ``range``, ``interval`` or ``glob`` on the command
line or in ``hydra.sweeper.params`` (one value in a ``choice`` is still a sweep). Keys given one value
for every job (``solver.max_iter=8`` to extend the runs, ``resume=true``) are not compared. Values are
compared as hydra parses them (``0.01`` and ``1e-2`` are one value).

The record is looked for where hydra writes it, the job's own ``hydra.output_subdir`` (``.hydra``
by default, ``.cfg`` with ``hydra.output_subdir=.cfg``), else in any subfolder of the job's folder
holding hydra's record (``overrides.yaml`` beside ``hydra.yaml``: the run was made with another
``hydra.output_subdir``). A folder with checkpoints but no readable record (a run copied there,
``hydra.output_subdir=null``) is logged as a warning and resumed: nothing tells which config made
it, and refusing would stop every re-launch of a sweep run without hydra's record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Collection, Sequence

from omegaconf import DictConfig, OmegaConf

from panfpn.engine.sweep.config_diff import override_key
from panfpn.engine.sweep.summary import OVERRIDES_RECORD, read_overrides
from panfpn.utils.errors import ConfigError

logger = logging.getLogger("panfpn")
ABSENT = object()  # a key the record does not name
RECORD_FILES = ("overrides.yaml", "hydra.yaml")  # what hydra writes in a job's hydra.output_subdir
HYDRA_RECORD = frozenset(RECORD_FILES + ("config.yaml",))  # all of it


def find_record(folder: Path, output_subdir: str | None = OVERRIDES_RECORD.parent.name) -> Path | None:
    """hydra's ``overrides.yaml`` of the job that ran in ``folder``: in ``output_subdir`` (the job's
    ``hydra.output_subdir``; None: hydra writes no record), else in the first subfolder (by name)
    holding hydra's record files and nothing else (a run made with another ``hydra.output_subdir``),
    else in ``folder`` itself (``hydra.output_subdir=.``); None when none.

    A folder holding the record beside other files is a job folder of ``hydra.output_subdir=.``, a
    folder holding only the record is a job's record folder: so a sweep folder is not taken for a
    job because its job folders hold records, nor a ``.cfg`` folder for a job of its own."""
    if output_subdir is not None and (folder / str(output_subdir) / RECORD_FILES[0]).is_file():
        return folder / str(output_subdir) / RECORD_FILES[0]
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # not a folder, or unreadable: no record to read
        return None
    record = next((p for p in entries if p.is_dir() and _holds_record(p) == "only"), None)
    if record is None and _holds_record(folder, {p.name for p in entries}) == "beside":
        record = folder
    return record / RECORD_FILES[0] if record is not None else None


def _holds_record(folder: Path, names: set[str] | None = None) -> str | None:
    """``"only"``: ``folder`` holds hydra's record files and nothing else; ``"beside"``: them and
    more; None: not them (or unreadable). ``names``: its entries, when already listed. A folder
    without the record files is not listed (summaries scan every folder of a tree: overlays too)."""
    if not all((folder / name).is_file() for name in RECORD_FILES):
        return None
    if names is None:
        try:
            names = {p.name for p in folder.iterdir()}
        except OSError:
            return None
    return "only" if names <= HYDRA_RECORD else "beside"


def swept_keys(arguments: Sequence[str]) -> list[str]:
    """The keys (groups) the sweeper's ``arguments`` sweep, in their order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(arguments))
    return list(dict.fromkeys(override_key(o.get_key_element()) for o in parsed if o.is_sweep_override()))


def _parsed_values(overrides: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """key -> (the text after ``=``, the value as hydra parses it; the text when it cannot)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    out: dict[str, tuple[str, Any]] = {}
    for text in overrides:
        value = text.partition("=")[2]
        try:
            parsed = parser.parse_override(text).value()
        except OverrideParseException:
            parsed = value
        out[override_key(text)] = (value, parsed)
    return out


def _differences(mine: dict[str, tuple[str, Any]], theirs: dict[str, tuple[str, Any]],
                 swept: Collection[str]) -> list[str]:
    """``key=X there, key=Y in this job`` (``no key`` where a side lacks it) for each swept key whose values differ."""
    out = []
    for key in swept:
        here = mine.get(key, (None, ABSENT))
        there = theirs.get(key, (None, ABSENT))
        if here[1] != there[1]:
            shown = [f"{key}={v[0]}" if v[1] is not ABSENT else f"no {key}" for v in (there, here)]
            out.append(f"{shown[0]} there, {shown[1]} in this job")
    return out


def check_relaunch(task: DictConfig, overrides: Sequence[str], swept: Collection[str],
                   output_subdir: str | None = OVERRIDES_RECORD.parent.name) -> None:
    """ConfigError when the job (config ``task``, ``overrides``) has ``resume=true`` and its folder
    (``output_dir``) holds checkpoints whose hydra record (:func:`find_record`; ``output_subdir``: the
    job's ``hydra.output_subdir``) gives a key of ``swept`` another value (or none); a folder with
    checkpoints and no readable record is logged as a warning."""
    from panfpn.engine.training.checkpoint import resume_candidates

    output_dir = OmegaConf.select(task, "output_dir")
    if not swept or not output_dir or not OmegaConf.select(task, "resume") or not Path(str(output_dir)).is_dir():
        return
    folder = Path(str(output_dir))
    checkpoints = resume_candidates(folder)
    if not checkpoints:
        return
    mine = _parsed_values(overrides)
    problems: list[str] = []
    record = find_record(folder, output_subdir)
    recorded = read_overrides(record, problems) if record is not None else []
    if problems or record is None:
        wanted = "hydra.output_subdir=null" if output_subdir is None else Path(str(output_subdir), RECORD_FILES[0])
        logger.warning("sweep check: %s holds checkpoints (%s) but %s: which config made them is not known; "
                       "resume=true continues them as this job's run (%s)", folder, checkpoints[0].name,
                       problems[0] if problems else f"no hydra record ({wanted})", _shown(mine, swept))
        return
    differ = _differences(mine, _parsed_values(recorded), swept)
    if differ:
        raise ConfigError(
            f"resume=true would continue the run in output_dir {folder} (checkpoint {checkpoints[0].name}) made with "
            f"other values of the keys this sweep varies: {'; '.join(differ)} (its record "
            f"{record.relative_to(folder) if record.is_relative_to(folder) else record}: "
            f"{' '.join(recorded) or 'no overrides'}); re-launch with that sweep's grid in its order (job k gets "
            "folder k again; new values only after the old ones of the first swept key) or give this launch a new "
            "hydra.sweep.dir")
    logger.info("sweep check: %s holds a run made with this job's %s: resume=true continues it", folder,
                _shown(mine, swept))


def _shown(values: dict[str, tuple[str, Any]], swept: Collection[str]) -> str:
    return " ".join(f"{key}={values[key][0]}" for key in swept if key in values)

"""tools/merge.py's output folder: refused when it already holds files, unless ``merge.overwrite``
and they are all an earlier merge's, which are then removed (and nothing else).

An earlier merge wrote: ``panoptic_merged/`` (one PNG per image), ``panoptic_merged.json``,
``merge_rules.json`` and ``merge_skipped.json``, plus the temp files of writes it was killed in
(``.<name>.<random>.tmp``). Hydra's own files in a run dir (``.hydra/``, ``*.log``) do not count
and are kept. Anything else in the folder is never deleted: the folder is refused whatever
``merge.overwrite`` says.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from panfpn.engine.config import ConfigError

PNG_FOLDER = "panoptic_merged"
FILES = ("panoptic_merged.json", "merge_rules.json", "merge_skipped.json")
_HYDRA = re.compile(r"\.hydra|.+\.log")
_TEMP = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp")


def _ours_at_top(entry: Path) -> bool:
    if entry.name == PNG_FOLDER:
        return entry.is_dir() and all(_png_or_temp(p) for p in entry.iterdir())
    m = _TEMP.fullmatch(entry.name)
    return entry.is_file() and (entry.name in FILES or (m is not None and m["target"] in FILES))


def _png_or_temp(path: Path) -> bool:
    m = _TEMP.fullmatch(path.name)
    name = m["target"] if m else path.name
    return path.is_file() and name.endswith(".png")


def earlier_merge_outputs(out_dir: Path, overwrite: bool) -> list[Path]:
    """What an earlier merge wrote into ``out_dir`` (to remove before writing; empty when the
    folder is new, empty or holds only hydra's files). ConfigError naming the folder and the key
    when it holds other files, or an earlier merge's files and ``overwrite`` is false."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise ConfigError(f"merge.output_dir {out_dir} is a file, not a folder")
    entries = sorted(p for p in out_dir.iterdir() if not (_HYDRA.fullmatch(p.name)))
    foreign = [p.name for p in entries if not _ours_at_top(p)]
    if foreign:
        raise ConfigError(
            f"merge.output_dir {out_dir} holds files tools/merge.py did not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); choose a new or empty merge.output_dir "
            "(merge.overwrite=true only replaces an earlier merge's own files)")
    if entries and not overwrite:
        raise ConfigError(
            f"merge.output_dir {out_dir} holds the output of an earlier merge ({', '.join(p.name for p in entries)}): "
            "set merge.overwrite=true to replace it, or choose another merge.output_dir")
    return entries


def remove_outputs(paths: list[Path]) -> None:
    """Delete what :func:`earlier_merge_outputs` returned (the PNG folder whole)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

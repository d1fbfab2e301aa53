"""Config keys that differ between a sweep's jobs although no override of theirs differs there.

Jobs made separately (one by one on Slurm, on other machines, or with config.yaml edited between
runs) can differ in keys their command lines never named; the summary's ``params`` (the
overrides that differ) would then hide the difference. Each job's resolved ``config.yaml`` is
compared key by key (a list of mappings, such as the transforms, item by item); a key under an
override key whose value differs between the jobs is explained by it (``model=...`` explains
``model.*``, ``data.train.transforms.transforms.0.max_size=256`` that transform's ``max_size``), the
others are reported.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from panfpn.engine.config.unread import under

logger = logging.getLogger("panfpn")
CONFIG_FILE = "config.yaml"  # the resolved config tools/train.py writes into the run folder
IGNORED = ("output_dir", "resume")  # differ between runs by design


def flat_config(run_dir: Path) -> dict[str, str] | None:
    """``{dotted key: value as JSON}`` of the run's resolved config; None when it has none."""
    return _flat_file(run_dir / CONFIG_FILE)


def interpolated_keys(run_dir: Path) -> dict[str, str] | None:
    """``{dotted key: interpolation}`` of the keys hydra's record of the job (its unresolved
    ``config.yaml`` beside ``overrides.yaml``) sets by interpolation (``solver.schedule.max_iter:
    ${solver.max_iter}``); None without a readable record."""
    from panfpn.engine.sweep.relaunch import find_record  # not at the top: relaunch imports the summary

    record = find_record(run_dir)
    try:
        flat = _flat_file(record.parent / CONFIG_FILE) if record is not None else None
    except ValueError:
        return None
    return None if flat is None else {k: v for k, v in flat.items() if _references_keys_only(v)}


def _references_keys_only(text: str) -> bool:
    """Whether a recorded value is an interpolation of config keys alone: ``${solver.max_iter}``,
    not a resolver such as ``${oc.env:DATA}``, whose value may differ between machines unseen."""
    refs = re.findall(r"\$\{([^}]*)\}", text)
    return bool(refs) and all(":" not in ref for ref in refs)


def _flat_file(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable config ({err})") from err
    out: dict[str, str] = {}
    _flatten(data, "", out)
    return out


def _flatten(node: Any, prefix: str, out: dict[str, str]) -> None:
    """Mappings by key; lists holding a mapping by index (``data.train.transforms.transforms.0.max_size``,
    the key an override of one transform names); other lists and values whole."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(node, list) and any(isinstance(item, dict) for item in node):
        for i, item in enumerate(node):
            _flatten(item, f"{prefix}.{i}", out)
    else:
        out[prefix] = json.dumps(node, default=str)


def override_key(override: str) -> str:
    """The config key (or group) an override sets: ``+a.b@pkg=1`` -> ``a.b``."""
    key = override.partition("=")[0].lstrip("+~")
    return key.partition("@")[0]


def unexplained_differences(configs: Sequence[dict[str, str] | None],
                            overrides: Sequence[Sequence[str]],
                            interpolations: Sequence[dict[str, str] | None] = ()) -> list[str]:
    """The config keys whose values differ between the jobs with a config, not under an override
    key that itself differs between the jobs, nor set by the same interpolation in every job's
    record (``solver.schedule.max_iter: ${solver.max_iter}`` follows ``solver.max_iter``, which is
    reported or explained itself) (in config order)."""
    present = [c for c in configs if c is not None]
    if len(present) < 2:
        return []
    keyed = [{override_key(o): o for o in job} for job in overrides]
    varying = {k for k in set().union(*keyed) if len({job.get(k) for job in keyed}) > 1}
    keys = list(dict.fromkeys(k for c in present for k in c))
    records = [r for r, c in zip(interpolations, configs) if c is not None]
    derived = set()
    if len(records) == len(present) and all(r is not None for r in records):
        derived = {k for k in records[0] if len({r.get(k) for r in records}) == 1}
    return [k for k in keys if k.split(".")[0] not in IGNORED and not under(k, varying) and k not in derived
            and len({c.get(k, "<absent>") for c in present}) > 1]


def add_config_differences(rows: Sequence[dict], run_dirs: Sequence[Path]) -> list[str]:
    """Set each row's ``config_diff`` (``key=value`` of the keys :func:`unexplained_differences`
    finds; empty without a config.yaml) and return those keys."""
    configs = []
    for run_dir in run_dirs:
        try:
            configs.append(flat_config(run_dir))
        except ValueError as err:
            logger.warning("%s: left out of the config comparison", err)
            configs.append(None)
    keys = unexplained_differences(configs, [r["overrides"] for r in rows], [interpolated_keys(d) for d in run_dirs])
    for row, config in zip(rows, configs):
        row["config_diff"] = "" if config is None else " ".join(f"{k}={config.get(k, '<absent>')}" for k in keys)
    return keys

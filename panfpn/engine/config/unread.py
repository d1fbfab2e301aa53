"""Command-line overrides of keys a tool never reads: refused or logged at start, not a run that
silently ignores them.

Every tool composes the same configs/config.yaml, so ``python tools/eval.py data.batch_size=16``
or ``python tools/predict.py eval.batch_size=8`` compose and validate, yet the evaluation batch is
``eval.batch_size`` and the prediction batch ``predict.batch_size``: the run would go on with
what the user did not ask for. Another tool's options are refused; training-only keys given to
eval / predict / export are logged as ignored (one command line shared by train and eval is a
habit). Keys set by config files (an experiment's ``train.*``) are not concerned: only what was typed.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from panfpn.utils.errors import ConfigError

# tool -> (another tool's options it never reads: refused, the keys under them it does read)
# tools/eval.py's files and display: training's evaluations write no files (TensorBoard only)
_EVAL_TOOL_ONLY = ("eval.save_predictions", "eval.save_semantic", "eval.save_overlays", "eval.report",
                   "eval.report_browse", "eval.progress_bar")
REFUSED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": (("predict", "merge", "export", *_EVAL_TOOL_ONLY), ()),
    "eval": (("predict", "merge", "export"), ()),
    "predict": (("eval", "merge", "export"), ("eval.allow_renamed_categories",)),
    "export": (("eval", "predict", "merge"), ("eval.allow_renamed_categories",)),
}
# tool -> training-only keys it never reads: a warning (one command line shared by tools/train.py
# and tools/eval.py is a common and harmless habit)
_TRAINING_ONLY = ("train", "solver", "data.train", "data.batch_size", "resume")
IGNORED: dict[str, tuple[str, ...]] = {
    "train": (), "eval": _TRAINING_ONLY,
    "predict": (*_TRAINING_ONLY, "data.num_workers"), "export": (*_TRAINING_ONLY, "data.num_workers"),
}


def under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether config key ``key`` is one of ``prefixes`` or inside one (``a.b`` is under ``a``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def unread_overrides(tool: str, overrides: Sequence[str],
                     cfg: DictConfig | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(override as typed, key)`` of each of ``overrides`` that ``tool`` never reads: those it
    refuses (another tool's options) and those it ignores (training-only keys). A key that ``cfg``
    interpolates elsewhere is read through it (coco_panoptic_folder's categories come from
    ``${data.train.json_file}``), so it is neither."""
    from panfpn.engine.model_spec import parse_overrides

    unread, read = REFUSED[tool]
    used = _interpolated(cfg, lambda key: under(key, (*unread, *IGNORED[tool])) and not under(key, read)) \
        if cfg is not None else set()
    parsed = [(o.input_line, o.key_or_group) for o in parse_overrides(overrides)]
    parsed = [(line, key) for line, key in parsed if not any(under(key, [u]) or under(u, [key]) for u in used)]
    refused = [(line, key) for line, key in parsed if under(key, unread) and not under(key, read)]
    ignored = [(line, key) for line, key in parsed if under(key, IGNORED[tool])]
    return refused, ignored


def _interpolated(cfg: DictConfig, unread: Callable[[str], bool]) -> set[str]:
    """The absolute keys that ``cfg``'s values interpolate (``${data.train.json_file}``) in keys
    the tool reads, and what those keys interpolate in turn: ``solver.schedule.max_iter:
    ${solver.max_iter}`` does not make tools/eval.py read ``solver.max_iter``, but
    ``data.metadata.json_file: ${data.train.json_file}`` makes it read what that file path
    interpolates (``unread(key)``: a key the tool never reads)."""
    values: dict[str, set[str]] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}")
        elif isinstance(node, str):
            values[key] = set(re.findall(r"\$\{([A-Za-z_][\w.]*)\}", node))

    if OmegaConf.is_config(cfg):
        walk(OmegaConf.to_container(cfg, resolve=False), "")
    found = {ref for key, refs in values.items() if not unread(key) for ref in refs}
    todo = list(found)
    while todo:  # a read key's value read through an unread one: that value's keys are read too
        ref = todo.pop()
        for key, refs in values.items():
            if under(key, [ref]):
                todo += [r for r in refs - found]
                found |= refs
    return found


def _named(tool: str, found: list[tuple[str, str]]) -> str:
    """The overrides, each with the key of ``tool``'s own section of the same name when there is one."""
    parts = []
    for line, key in found:
        own = f"{tool}.{key.rpartition('.')[2]}"
        parts.append(f"{line} (its setting is {own})" if own != key and _declared(own) else line)
    return ", ".join(parts)


def refuse_unread_overrides(tool: str, overrides: Sequence[str] | None = None, cfg: DictConfig | None = None) -> None:
    """ConfigError naming each override (``None``: hydra's command line) of another tool's options
    that tools/<tool>.py never reads; a logged warning for the training-only keys it ignores
    (``cfg``: the composed config, whose interpolations may read such a key)."""
    from panfpn.engine.model_spec import command_line_overrides

    given = command_line_overrides() if overrides is None else list(overrides)
    refused, ignored = unread_overrides(tool, given, cfg)
    if refused:
        raise ConfigError(f"tools/{tool}.py does not read {_named(tool, refused)}: the run would ignore "
                          f"{'it' if len(refused) == 1 else 'them'}; remove {'it' if len(refused) == 1 else 'them'}")
    if ignored:
        logging.getLogger("panfpn").warning("tools/%s.py ignores %s (training only)", tool, _named(tool, ignored))


def _declared(key: str) -> bool:
    from panfpn.engine.config.schema import SECTIONS, options_of

    section, _, leaf = key.partition(".")
    return section in SECTIONS and leaf in options_of(section)

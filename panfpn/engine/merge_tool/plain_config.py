"""tools/merge.py's config without composing the whole config tree, when the command line allows.

The merge job reads config keys ``merge.*`` and ``device`` only, and no config group sets them
(tests/engine/test_merge_tool_startup.py checks that against a full compose). A command line of
``merge.<key>=value`` / ``device=value`` overrides therefore gets the same job config from
configs/config.yaml alone, with the overrides parsed by hydra's own override grammar and applied
as hydra applies them. That skips loading the model, data, solver and experiment groups: ~0.15 s
of a ~0.9 s run on 100 images (bench/merge_tool.py --startup). Anything else (another key, a
group, ``+``/``~``/``++``, a sweep, a key config.yaml does not have) returns None: the caller
composes the full config, so errors and behaviour stay hydra's.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = ["plain_merge_config"]

_TOP_KEYS = ("device",)
_SECTION = "merge"


def plain_merge_config(config_dir: Path, argv: list[str]) -> DictConfig | None:
    """Config sections ``merge`` and ``device`` (and ``output_dir``: None) of ``config.yaml`` in
    ``config_dir`` with ``argv``'s overrides applied; None when ``argv`` needs a full compose."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        overrides = OverridesParser.create().parse_overrides(argv)
    except OverrideParseException:
        return None  # the full compose reports it, in hydra's words
    for o in overrides:
        plain = not (o.is_add() or o.is_delete() or o.is_force_add() or o.is_sweep_override()
                     or o.package is not None)
        key = o.key_or_group
        if not plain or not (key in _TOP_KEYS or key.startswith(f"{_SECTION}.")):
            return None
    root = OmegaConf.load(config_dir / "config.yaml")
    cfg = OmegaConf.create({_SECTION: root[_SECTION], **{k: root[k] for k in _TOP_KEYS}, "output_dir": None})
    OmegaConf.set_struct(cfg, True)
    for o in overrides:
        parent, _, leaf = o.key_or_group.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not OmegaConf.is_dict(node) or leaf not in node:
            return None
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    return cfg

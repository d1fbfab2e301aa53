"""tools/merge.py refuses a typed key it never reads, as the other tools refuse another tool's keys
(:mod:`panfpn.engine.config.unread`): ``python tools/merge.py eval.batch_size=8 solver.max_iter=3``
composed, validated and merged with neither. The merge job reads ``merge.*``, ``device`` and
``output_dir`` (:func:`panfpn.engine.merge_run.merge_from_config`); ``hydra.*`` keys are hydra's.
Plain string work on the overrides as typed: no torch, no hydra on the merge's start-up path."""

from __future__ import annotations

from typing import Sequence

from panfpn.engine.config.unread import under
from panfpn.engine.sweep.config_diff import override_key
from panfpn.utils.errors import ConfigError

READ = ("merge", "device", "output_dir", "hydra")  # the keys (and sections) tools/merge.py reads


def refuse_unread_keys(overrides: Sequence[str]) -> None:
    """ConfigError naming each of ``overrides`` whose key tools/merge.py never reads."""
    refused = [o for o in overrides if not under(override_key(o), READ)]
    if refused:
        them = "it" if len(refused) == 1 else "them"
        raise ConfigError(f"tools/merge.py does not read {', '.join(refused)}: it reads merge.*, device and "
                          f"output_dir only, so the run would ignore {them}; remove {them}")

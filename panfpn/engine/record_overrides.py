"""Command-line ``model.*`` overrides of keys that only the checkpoint's recorded model has.

``tools/eval.py weights=m2f/model_final.pth model.inference.object_mask_threshold=0.5``: the
checkpoint brings its model (docs/checkpoints.md: explicit ``model.*`` overrides win over the
record), but hydra composes the config's own model first, Panoptic FPN by default, which has no
``model.inference`` and refuses the override (``Key 'inference' is not in struct``) before the tool
runs. :func:`force_recorded_model_keys` rewrites such an override to hydra's ``++`` form, so the
config takes it and the record's model uses it; a key the record lacks is left to hydra's refusal.
With an exported file (``weights=model.onnx`` / ``.pt2``) every plain ``model.*`` override is
rewritten, so the tool's own refusal (the graph fixed the model at export) names it, not hydra's
struct error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from panfpn.engine.config.typed_overrides import parsed_override
from panfpn.engine.model_spec import read_model_record
from panfpn.modeling.weights import TORCH_SUFFIXES, WeightsError

_ABSENT = object()
EXPORTED_SUFFIXES = (".onnx", ".pt2")  # tools/export.py's pipelines: their model is fixed in the graph


def force_recorded_model_keys(args: Sequence[str]) -> list[str]:
    """``args`` with each plain ``model.<key>=<value>`` whose key the ``weights=`` checkpoint's (every
    one of a multirun's ``weights=a,b``) recorded model has written ``++model.<key>=<value>`` (unchanged without such a checkpoint, with
    ``model=<name>`` or ``model_from_checkpoint=false``: then the config's model is the one built); with
    exported files every plain ``model.<key>`` override, for the tool to refuse by name."""
    args = list(args)
    parsed = [parsed_override(a) for a in args]
    weights = None
    for o in parsed:
        if o is None:
            continue
        if o.key_or_group == "model" or (o.key_or_group == "model_from_checkpoint" and str(o.value()).lower() == "false"):
            return args
        if o.key_or_group == "weights" and not o.is_delete():
            weights = o.value()
    plain = [i for i, o in enumerate(parsed) if o is not None and o.key_or_group.startswith("model.")
             and not (o.is_add() or o.is_force_add() or o.is_delete())]
    files = list(weights.list) if isinstance(getattr(weights, "list", None), list) else [weights]  # -m weights=a,b
    if plain and files and all(isinstance(w, str) and Path(w).suffix in EXPORTED_SUFFIXES for w in files):
        return [("++" + a) if i in plain else a for i, a in enumerate(args)]
    if not plain or not files or not all(isinstance(w, str) and Path(w).suffix in TORCH_SUFFIXES for w in files):
        return args
    nodes = []
    for w in files:
        try:
            record = read_model_record(w)
        except WeightsError:
            return args  # the tool names the unreadable file when it loads the weights
        if record is None:
            return args
        nodes.append(OmegaConf.create(record.model_config))
    for i in plain:
        key = parsed[i].key_or_group[len("model."):]
        if all(OmegaConf.select(node, key, default=_ABSENT) is not _ABSENT for node in nodes):
            args[i] = "++" + args[i]
    return args

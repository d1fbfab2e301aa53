"""Checkpoints written before Panoptic FPN's own modules moved into panfpn/modeling/panoptic_fpn/
record ``_target_: panfpn.modeling.rpn.RPN`` etc.: they are read under the new names and rebuild
the same model."""

import torch
from omegaconf import OmegaConf

from panfpn.engine.model_spec import MOVED_MODULES, read_model_record
from panfpn.modeling.build import build_model

from modeling_helpers import compose_model_config


def _old_names(node):
    if isinstance(node, dict):
        out = {k: _old_names(v) for k, v in node.items()}
        for old, new in MOVED_MODULES.items():
            if isinstance(out.get("_target_"), str) and out["_target_"].startswith(new):
                out["_target_"] = old + out["_target_"][len(new):]
        return out
    return [_old_names(v) for v in node] if isinstance(node, list) else node


def test_a_checkpoint_with_the_old_module_names_rebuilds_the_model(tmp_path):
    cfg = compose_model_config("panoptic_fpn_small")
    model = build_model(cfg)
    recorded = _old_names(OmegaConf.to_container(cfg.model, resolve=True))
    targets = OmegaConf.to_yaml(OmegaConf.create(recorded))
    assert "panfpn.modeling.rpn.RPN" in targets and "panfpn.modeling.panoptic_fpn.rpn" not in targets
    path = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(), "model_config": targets, "test_transform": "transforms: null",
                "metadata": None}, path)
    record = read_model_record(path)
    assert record.model_config == OmegaConf.to_container(cfg.model, resolve=True)
    rebuilt = build_model(OmegaConf.create({"model": record.model_config}))
    rebuilt.load_state_dict(model.state_dict())
    assert type(rebuilt.rpn).__module__ == "panfpn.modeling.panoptic_fpn.rpn"

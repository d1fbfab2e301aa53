"""``evaluate_from_config(cfg) -> dict``: the job behind tools/eval.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from panfpn.utils.atomic import save_image_atomic, write_json_atomic
from panfpn.engine import distributed as du
from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.evaluator import build_eval_loader, evaluate, format_results
from panfpn.modeling.build import build_model
from panfpn.engine.setup import build_metadata, setup_logging

logger = logging.getLogger("panfpn")


def per_class_table(metrics: dict, metadata) -> str:
    rows = [f"{'category':24s}{'PQ':>8s}{'SQ':>8s}{'RQ':>8s}{'TP':>6s}{'FP':>6s}{'FN':>6s}"]
    for cat_id, r in sorted(metrics["panoptic"]["per_class"].items(), key=lambda kv: int(kv[0])):
        name = metadata.category(int(cat_id)).name
        rows.append(f"{name[:23]:24s}{100 * r['pq']:8.2f}{100 * r['sq']:8.2f}{100 * r['rq']:8.2f}"
                    f"{r['tp']:6d}{r['fp']:6d}{r['fn']:6d}")
    return "\n".join(rows)


def evaluate_from_config(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.weights`` on ``cfg.data.val``; writes ``eval_results.json`` (and predictions
    when ``eval.save_predictions``) into ``cfg.output_dir``; returns the metrics."""
    validate_config(cfg)
    if not cfg.weights:
        raise ConfigError("config key 'weights' must name the checkpoint to evaluate (weights=path/to/model.pth)")
    device = du.init_distributed(cfg.device)
    out_dir = Path(du.shared_run_dir(cfg.output_dir))
    setup_logging(out_dir if du.is_main_process() else None)
    metadata = build_metadata(cfg)
    model = build_model(cfg).to(device)
    loader = build_eval_loader(cfg, instantiate(cfg.data.val))
    writer = None
    if cfg.eval.save_predictions:
        from panfpn.evaluation.writer import PanopticPredictionWriter

        writer = PanopticPredictionWriter(out_dir / "predictions", metadata)
    # --- semantic label PNGs (eval.save_semantic): see panfpn.evaluation.writer ---
    semantic_writer = None
    if cfg.eval.get("save_semantic", False):
        from panfpn.evaluation.writer import SemanticPredictionWriter

        semantic_writer = SemanticPredictionWriter(out_dir / "semantic", metadata)
    # --- end semantic PNGs ---
    metrics = evaluate(model, loader, metadata, device=device, compute_ap=bool(cfg.eval.compute_ap),
                       max_images=cfg.eval.max_images, num_vis=int(cfg.eval.save_overlays),
                       progress=True, writer=writer, semantic_writer=semantic_writer)
    overlays = metrics.pop("overlays", [])
    if writer is not None:
        writer.write_json()
    if du.is_main_process():
        print(format_results(metrics))
        print(per_class_table(metrics, metadata))
        write_json_atomic(out_dir / "eval_results.json", json.loads(json.dumps(metrics, default=str)))
        logger.info("wrote %s", out_dir / "eval_results.json")
        for i, overlay in enumerate(overlays):
            save_image_atomic(out_dir / "overlays" / f"{i:04d}.png", overlay)
    return metrics

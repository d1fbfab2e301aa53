"""``evaluate_from_config(cfg) -> dict``: the job behind tools/eval.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from typing import Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig

from panfpn.utils.atomic import atomic_write, save_image_atomic, write_json_atomic
from panfpn.engine import distributed as du
from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.eval_loop import build_eval_loader, evaluate, format_results
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.model_spec import same_labels
from panfpn.engine.progress import bar_enabled
from panfpn.engine.job_setup import build_metadata, fit_threads_to_cpus, setup_logging

logger = logging.getLogger("panfpn")


def per_class_table(metrics: dict, metadata) -> str:
    rows = [f"{'category':24s}{'PQ':>8s}{'SQ':>8s}{'RQ':>8s}{'TP':>6s}{'FP':>6s}{'FN':>6s}"]
    for cat_id, r in sorted(metrics["panoptic"]["per_class"].items(), key=lambda kv: int(kv[0])):
        name = metadata.category(int(cat_id)).name
        rows.append(f"{name[:23]:24s}{100 * r['pq']:8.2f}{100 * r['sq']:8.2f}{100 * r['rq']:8.2f}"
                    f"{r['tp']:6d}{r['fp']:6d}{r['fn']:6d}")
    return "\n".join(rows)


def evaluate_from_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict:
    """Evaluate ``cfg.weights`` on ``cfg.data.val``; writes ``eval_results.json`` (and predictions
    when ``eval.save_predictions``) into ``cfg.output_dir``; returns the metrics.

    The model, its labels and test transform come from the checkpoint's record when it has one
    (see :func:`panfpn.engine.inference_model.build_inference_model`; ``overrides`` as there).
    """
    validate_config(cfg)
    if not cfg.weights:
        raise ConfigError("config key 'weights' must name the checkpoint to evaluate (weights=path/to/model.pth)")
    device = du.init_distributed(cfg.device)
    out_dir = Path(du.shared_run_dir(cfg.output_dir))
    setup_logging(out_dir if du.is_main_process() else None)
    fit_threads_to_cpus()
    built = build_inference_model(cfg, overrides)
    metadata = built.metadata
    _check_dataset_labels(metadata, build_metadata(cfg), cfg)
    model = built.model.to(device)
    loader = build_eval_loader(cfg, instantiate(built.cfg.data.val))
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
    # --- report.html (eval.report): the lowest per-image PQ images, see panfpn.evaluation.report ---
    worst = None
    if cfg.eval.get("report", True):
        from panfpn.evaluation.worst_images import WorstImages

        worst = WorstImages(metadata.to_coco_categories(), k=REPORT_WORST_IMAGES)
    # --- end report setup ---
    metrics = evaluate(model, loader, metadata, device=device, compute_ap=bool(cfg.eval.compute_ap),
                       max_images=cfg.eval.max_images, num_vis=int(cfg.eval.save_overlays),
                       progress=bar_enabled(cfg.eval.progress_bar), writer=writer, semantic_writer=semantic_writer,
                       collector=worst)
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
    # --- report.html (eval.report) ---
    if worst is not None and du.is_main_process():
        write_report(out_dir, metrics, metadata, worst.worst(),
                     title=f"Panoptic evaluation: {Path(str(cfg.weights)).name} on {metadata.name or 'data.val'}")
    # --- end report.html ---
    return metrics


REPORT_WORST_IMAGES = 8  # images with the lowest per-image PQ shown in report.html


def write_report(out_dir: Path, metrics: dict, metadata, worst, title: str = "Panoptic evaluation") -> None:
    """report.html (self-contained page) and categories.json (names for tools/compare_evals.py)
    beside eval_results.json."""
    from panfpn.evaluation.report import build_report

    names = {c.id: c.name for c in metadata.categories}
    write_json_atomic(out_dir / "categories.json",
                      [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in metadata.categories])
    page = build_report(json.loads(json.dumps(metrics, default=str)), names, worst, title=title)
    atomic_write(out_dir / "report.html", lambda f: f.write(page.encode("utf-8")))
    logger.info("wrote %s", out_dir / "report.html")


def _check_dataset_labels(model_labels, dataset_labels, cfg: DictConfig) -> None:
    """A model evaluated on another label space gives a meaningless PQ: refuse it."""
    if not same_labels(model_labels, dataset_labels):
        raise ConfigError(
            f"the model of {cfg.weights} predicts the categories of '{model_labels.name}' "
            f"({len(model_labels.categories)} categories, ids {[c.id for c in model_labels.categories][:8]}...) but "
            f"data.val is '{dataset_labels.name}' ({len(dataset_labels.categories)} categories, ids "
            f"{[c.id for c in dataset_labels.categories][:8]}...): evaluate on the dataset it was trained for")

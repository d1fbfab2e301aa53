"""``evaluate_from_config(cfg) -> dict``: the job behind tools/eval.py."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from typing import Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig

from panfpn.utils.atomic import write_json_atomic
from panfpn.engine import distributed as du
from panfpn.engine.config import ConfigError, validate_config
from panfpn.engine.config.unread import refuse_unread_overrides
from panfpn.engine.data_files import check_dataset_files
from panfpn.engine.eval_context import eval_context
from panfpn.engine.eval_loop import build_eval_loader, evaluate, format_results
from panfpn.engine.inference_model import build_inference_model
from panfpn.engine.model_spec import check_dataset_labels
from panfpn.engine.progress import bar_enabled
from panfpn.engine.rank_errors import told_to_rank_0
from panfpn.engine.job_setup import build_metadata, fit_threads_to_cpus, setup_logging, start_job_logging
from panfpn.evaluation.build import build_evaluators
from panfpn.evaluation.coco_ap import ap_text
from panfpn.evaluation.earlier_outputs import (check_fill_aside, fill_aside, move_predictions_into_place,
                                               predictions_removed_on_failure, remove_earlier_predictions,
                                               remove_killed_evaluations_files)
from panfpn.evaluation.partial_predictions import fill_lock, partial_dir
from panfpn.evaluation.report import AP_COLUMNS, category_ap
from panfpn.utils.json_values import nonfinite_to_null
from panfpn.engine.stop_messages import eval_stopped
from panfpn.utils.stop_signals import describe_outputs

logger = logging.getLogger("panfpn")


def per_class_table(metrics: dict, metadata) -> str:
    """The per-class table printed after an evaluation: PQ / SQ / RQ (n/a: a category without
    ground truth or prediction, left out of the means), then box and mask AP per
    category when AP was computed (n/a: no ground-truth instance; -: a stuff category), TP / FP / FN."""
    ap = category_ap(metrics)
    tasks = [(task, label) for task, label in AP_COLUMNS if task in ap]
    rows = [f"{'category':24s}{'PQ':>8s}{'SQ':>8s}{'RQ':>8s}" + "".join(f"{label:>9s}" for _, label in tasks)
            + f"{'TP':>6s}{'FP':>6s}{'FN':>6s}"]
    for cat_id, r in sorted(metrics["panoptic"]["per_class"].items(), key=lambda kv: int(kv[0])):
        name = metadata.category(int(cat_id)).name
        scored = r["tp"] + r["fp"] + r["fn"] > 0  # else no PQ: left out of the means, n/a as in report.html
        rows.append(f"{name[:23]:24s}" + "".join(f"{100 * r[k]:8.2f}" if scored else f"{'n/a':>8s}"
                                                 for k in ("pq", "sq", "rq"))
                    + "".join(f"{_ap_text(ap[task], int(cat_id)):>9s}" for task, _ in tasks)
                    + f"{r['tp']:6d}{r['fp']:6d}{r['fn']:6d}")
    return "\n".join(rows)


def _ap_text(per_category: dict, cat_id: int) -> str:
    """A category's AP as printed: ``-`` for a category without AP (stuff), ``n/a`` where COCO has
    no ground truth to average over."""
    if cat_id not in per_category:
        return "-"
    value = per_category[cat_id]
    return "n/a" if value is None else ap_text(value)


def evaluate_from_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict:
    """Evaluate ``cfg.weights`` on ``cfg.data.val``; writes ``eval_results.json`` (and predictions
    when ``eval.save_predictions``) into ``cfg.output_dir``; returns the metrics.

    The model, its labels and test transform come from the checkpoint's record when it has one
    (see :func:`panfpn.engine.inference_model.build_inference_model`; ``overrides`` as there).
    """
    du.job_log_on_rank_0_only()  # hydra's eval.log: one writer
    start_job_logging()  # what the checks below log (a folder moved aside): the tool's format, stderr and log.txt
    validate_config(cfg)
    refuse_unread_overrides("eval", overrides, cfg)  # e.g. data.batch_size: eval reads eval.batch_size
    if not cfg.weights:
        raise ConfigError("config key 'weights' must name the checkpoint to evaluate (weights=path/to/model.pth)")
    check_dataset_files(cfg, ["data.val"])  # before the model: a missing data root told first
    device = du.init_distributed(cfg.device)
    out_dir = Path(du.shared_run_dir(cfg.output_dir))
    with told_to_rank_0(out_dir):  # another rank's error or stop, said by rank 0
        # one evaluation at a time fills the run folder's prediction folders (partial_predictions)
        with fill_lock(out_dir) if du.is_main_process() else contextlib.nullcontext():
            return _evaluate(cfg, overrides, device, out_dir)


def _evaluate(cfg: DictConfig, overrides: Sequence[str] | None, device, out_dir: Path) -> dict:
    describe_outputs(eval_stopped(out_dir, bool(cfg.eval.save_predictions), bool(cfg.eval.report)))  # a stop signal's message
    setup_logging(out_dir if du.is_main_process() else None)
    fit_threads_to_cpus()
    built = build_inference_model(cfg, overrides)
    metadata = built.metadata
    metadata = check_dataset_labels(metadata, build_metadata(cfg), cfg)  # names shown: the dataset's
    model = built.model.to(device)
    dataset = instantiate(built.cfg.data.val)
    loader = build_eval_loader(cfg, dataset)
    context = eval_context(cfg, built, dataset) if du.is_main_process() else None  # report.html, compare.html
    written = {"save_predictions": bool(cfg.eval.save_predictions),
               "save_semantic": bool(cfg.eval.get("save_semantic", False))}
    if du.is_main_process():  # before the writers make their folders there
        check_fill_aside(out_dir, **written)  # a link to another disk: refused now, not at the renames
        remove_killed_evaluations_files(out_dir)
    du.barrier()
    # the prediction folders are filled aside and renamed into place whole (partial_predictions)
    evaluators = build_evaluators(built.cfg, metadata, out_dir, context=context if cfg.eval.report else None,
                                  fill_dir=partial_dir(out_dir))
    if du.is_main_process():  # before any rank writes: the official scripts read whole folders
        remove_earlier_predictions(out_dir, **written)
        fill_aside(out_dir, **written)
    du.barrier()
    # until the metrics are written, an error or a stop leaves no partial set of prediction files
    with predictions_removed_on_failure(out_dir, **written, main=du.is_main_process()) as filling:
        metrics = evaluate(model, loader, metadata, evaluators, device=device, max_images=cfg.eval.max_images,
                           progress=bar_enabled(cfg.eval.progress_bar))
        metrics.pop("overlays", None)
        du.barrier()  # every rank has written its prediction files
        filling.scored = True
        if du.is_main_process():
            print(format_results(metrics))
            print(per_class_table(metrics, metadata))
            results = nonfinite_to_null(json.loads(json.dumps({**metrics, "context": context}, default=str)))
            # the predictions first: a stop during the renames (os.sync can take seconds) removes them and
            # leaves no eval_results.json of this run, never one whose predictions were removed; a rename
            # that fails (a folder made in the way meanwhile) keeps them aside, complete, and says where
            filling.renaming = True
            move_predictions_into_place(out_dir, **written)
            write_json_atomic(out_dir / "eval_results.json", results)
            logger.info("wrote %s", out_dir / "eval_results.json")
    if du.is_main_process():
        for evaluator in evaluators:  # files that show every result: overlays, report.html
            getattr(evaluator, "finish", lambda results: None)(metrics)
    return metrics



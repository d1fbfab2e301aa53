"""``predict.backend=onnxruntime`` of tools/predict.py: the exported pipeline (``weights=model.onnx``)
run by :mod:`panfpn.deploy.onnx_runner`, the same code a user without panfpn runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from panfpn.deploy import onnx_runner
from panfpn.engine.config import ConfigError

logger = logging.getLogger("panfpn")


def predict_onnx(weights: str, paths: Sequence[Path], out_dir: Path, opts: Any) -> dict[str, Any]:
    """Predict ``paths`` with the ONNX pipeline ``weights`` into ``out_dir`` (panoptic PNGs + JSON as
    the torch backend; no overlays or semantic PNGs). Returns the summary of ``predict_images``."""
    from panfpn.data.image_files import output_stems
    from panfpn.data.image_ids import image_ids

    if not str(weights).endswith(".onnx"):
        raise ConfigError(f"predict.backend=onnxruntime runs an exported pipeline: weights must be a .onnx "
                          f"file written by tools/export.py, got {weights!r}")
    if opts.overlay or opts.semantic:
        logger.warning("predict.backend=onnxruntime writes the panoptic PNGs and JSON only "
                       "(predict.overlay / predict.semantic are ignored)")
    stems = output_stems(list(paths))
    ids = image_ids(list(paths), stems, opts.image_id)
    session = onnx_runner.open_session(weights)
    failed: list[tuple[str, str]] = []
    start = time.perf_counter()
    json_path = onnx_runner.predict_files(session, paths, out_dir, stems=stems, image_ids=ids, failed=failed)
    seconds = time.perf_counter() - start
    bad = {p for p, _ in failed}
    predicted = [s for s, p in zip(stems, paths) if str(p) not in bad]
    for path, error in failed:
        logger.warning("skipped %s: %s", path, error)
    logger.info("predicted %d image(s) with onnxruntime into %s", len(predicted), out_dir)
    return {"output_dir": str(out_dir), "json": str(json_path), "num_inputs": len(paths),
            "predicted": predicted, "skipped": [], "failed": [{"path": p, "error": e} for p, e in failed],
            "seconds": seconds, "images_per_s": len(predicted) / seconds if seconds > 0 else 0.0}

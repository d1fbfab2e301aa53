"""What a stop signal leaves written, per tool: the end of the one-line message of
:mod:`panfpn.utils.stop_signals` ("tools/predict.py: stopped by SIGTERM <this>"). Each function
returns a description to pass to :func:`~panfpn.utils.stop_signals.describe_outputs`; it is called
after the unwinding and looks at the files on disk, so it says what is there, not what was planned.
Standard library only (tools/merge.py on the CPU imports no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime ns) of a file, None when absent: an atomic write (a rename) changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _snapshot(paths: Sequence[Path]) -> Callable[[Path], bool]:
    """Whether a file of ``paths`` was (re)written since now."""
    before = {p: _identity(p) for p in paths}
    return lambda p: _identity(p) is not None and _identity(p) != before[p]


def _listed(json_path: Path) -> int:
    """The images a prediction JSON lists (0 when it is absent or unreadable)."""
    try:
        return len(json.loads(json_path.read_text()).get("images") or [])
    except (OSError, ValueError, AttributeError):
        return 0


def predict_stopped(json_path: Path, kept: int, todo: int) -> Callable[[], str]:
    """tools/predict.py (both backends): the images of this run the JSON lists (``kept``: the
    earlier entries it keeps) of the ``todo`` it was to predict."""
    def describe() -> str:
        done = max(_listed(json_path) - kept, 0)
        rest = f"; a rerun predicts the other {todo - done} (listed images are skipped unless predict.overwrite=true)"
        return (f"after {done} of {todo} images: {json_path.name} lists the {done} whose files are complete in "
                f"{json_path.parent}" + (rest if done < todo else ""))
    return describe


def eval_stopped(out_dir: Path, save_predictions: bool, report_on: bool = True) -> Callable[[], str]:
    """tools/eval.py: whether this run wrote ``eval_results.json`` (only after every image) and
    report.html (``eval.report``), and what an earlier run's files are."""
    results, report = out_dir / "eval_results.json", out_dir / "report.html"
    predictions = out_dir / "predictions" / "panoptic_pred.json"
    # an earlier run's file and the folder of per-image files it describes (rewritten image by image)
    pairs = [(report, out_dir / "report_images"),
             (predictions, out_dir / "predictions" / "panoptic_pred")]
    earlier, written = results.exists(), _snapshot([results, report] + [p for pair in pairs for p in pair])

    def describe() -> str:
        if written(results):
            names = [str(f.relative_to(out_dir)) for f in (predictions, results, report) if written(f)]
            return (f"after writing {', '.join(names)} in {out_dir}"
                    + ("; report.html not written" if report_on and not written(report) else ""))
        text = (f"before the metrics were complete: {results.name} not written "
                + ("(the earlier one is unchanged)" if earlier else "(no metrics)") + f" in {out_dir}")
        if save_predictions:  # an evaluation that ends early removes its own (panfpn.evaluation.earlier_outputs)
            left = any(f.is_file() for f in (out_dir / "predictions").rglob("*"))
            text += ("; predictions/ holds an earlier evaluation's files, not this one's" if left else
                     "; predictions/ holds no prediction file (a stopped evaluation leaves no partial set)")
        stale = [str(f.relative_to(out_dir)) for f, folder in pairs
                 if f.exists() and not written(f) and written(folder)]
        if stale:
            text += (f"; the earlier {' and '.join(stale)} no longer match the images this run rewrote "
                     "beside them: rerun to the end before using them")
        return text
    return describe


def export_stopped(stem: Path, fmt: str) -> Callable[[], str]:
    """tools/export.py: which of its files (``<stem>.onnx`` / ``.pt2`` per ``export.format``, then
    ``<stem>.json``) it wrote; an earlier export's file that was not replaced is named, and a
    mixed set is a warning."""
    extensions = {"onnx": [".onnx"], "torch_export": [".pt2"], "both": [".onnx", ".pt2"]}.get(fmt, [])
    files = [stem.with_name(stem.name + e) for e in [*extensions, ".json"]]
    changed = _snapshot(files)

    def describe() -> str:
        written = [p.name for p in files if changed(p)]
        missing = [p.name for p in files if p.name not in written]
        old = [p.name for p in files if p.name in missing and p.exists()]
        text = f"after writing {', '.join(written)}" if written else "before writing any file"
        if missing:
            text += f": {', '.join(missing)} not written"
        if old:
            text += (f"; the {', '.join(old)} in {files[0].parent} " + ("are" if len(old) > 1 else "is")
                     + (" from an earlier export: do not use with the new files" if written else
                        " from an earlier export, unchanged"))
        return text
    return describe


def merge_stopped(png_dir: Path, json_path: Path, total: int) -> Callable[[], str]:
    """tools/merge.py: the PNGs written so far (each complete); the JSON comes only at the end."""
    def describe() -> str:
        pngs = len(list(png_dir.glob("*.png"))) if png_dir.is_dir() else 0
        return (f"after {pngs} of {total} images: their PNGs are in {png_dir}, {json_path.name} not written "
                "(rerun with merge.overwrite=true to replace this partial output)")
    return describe

"""A resumable, crash-safe folder of predictions (tools/predict.py's output): where each image's
files go, which images an earlier run finished (:func:`plan_outputs`), the JSON rewritten as images
finish (:class:`JsonState`), the write threads (:class:`WriteQueue`) and the failure lists.

An image is listed in the JSON only after all its files are written, so after a crash or
``kill -9`` the JSON never lists a missing file and a rerun completes exactly the rest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from panfpn.data.image_files import FailedImage
from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.cityscapes_instance_folder import INSTANCES_DIR, InstanceFiles, cityscapes_instance_classes
from panfpn.evaluation.visualize import panoptic_overlay
from panfpn.evaluation.writer import PanopticPredictionWriter, SemanticPredictionWriter
from panfpn.utils.errors import ConfigError
from panfpn.utils.atomic import atomic_write, remove_stale_temp_files, save_image_atomic, write_json_atomic
from panfpn.utils.json_file import load_json

logger = logging.getLogger("panfpn")

PANOPTIC_NAME = "panoptic"  # panoptic.json + panoptic/ (the writer's layout)
OVERLAY_DIR = "overlays"
SEMANTIC_DIR = "semantic"
# Overlays are photos: JPEG encodes an 800x1216 one in ~8 ms at ~400 KB, PNG in 200-440 ms at ~1.9 MB.
OVERLAY_FORMATS = {"jpg": ("JPEG", {"quality": 92}), "png": ("PNG", {"compress_level": 1})}


@dataclasses.dataclass(frozen=True)
class PredictionTargets:
    """Where and how one run writes: the writers (PNG + JSON, semantic PNGs) and the overlay settings."""

    writer: PanopticPredictionWriter
    metadata: DatasetMetadata
    overlay_dir: Path | None
    overlay_format: str
    alpha: float
    semantic: SemanticPredictionWriter | None = None
    instances: InstanceFiles | None = None

    def files(self, stem: str) -> list[Path]:
        """Every file one image's outputs consist of (of its instance files the text file, written
        after the masks it names)."""
        overlay = [self.overlay_dir / f"{stem}.{self.overlay_format}"] if self.overlay_dir else []
        semantic = [self.semantic.out_dir / f"{stem}.png"] if self.semantic else []
        instances = [self.instances.text_file(stem)] if self.instances else []
        return [self.writer.png_dir / f"{stem}.png", *overlay, *semantic, *instances]


class JsonState:
    """The JSON being built: entries kept from an earlier run, then this run's in input order;
    rewritten atomically every ``every`` recorded images (:meth:`maybe_write`) and at the end."""

    def __init__(self, writer: PanopticPredictionWriter, kept: list[tuple[dict, dict]],
                 stems: list[str], paths: list[Path], every: int) -> None:
        self.writer, self.kept, self.every = writer, kept, every
        self.order = {f"{stem}.png": i for i, stem in enumerate(stems)}
        self.paths = paths
        self.written = 0

    def write(self) -> None:
        images, annotations = self.writer.snapshot()
        pairs = sorted(zip(images, annotations), key=lambda pair: self.order[pair[1]["file_name"]])
        for img, ann in pairs:
            img["path"] = str(self.paths[self.order[ann["file_name"]]])
        data = {"images": [img for img, _ in self.kept] + [img for img, _ in pairs],
                "annotations": [ann for _, ann in self.kept] + [ann for _, ann in pairs],
                "categories": self.writer.metadata.to_coco_categories()}
        write_json_atomic(self.writer.json_path, data)
        self.written = len(pairs)

    def maybe_write(self) -> None:
        if len(self.writer.annotations) - self.written >= self.every:
            self.write()


def prepare_targets(out_dir: Path, metadata: DatasetMetadata, *, overlay: bool, overlay_format: str,
                     overlay_alpha: float, semantic: bool,
                     cityscapes_ids: Mapping[str, str] | None = None) -> PredictionTargets:
    """The run's writers and folders; temp files a killed earlier run left there are removed.
    ``cityscapes_ids`` (stem -> ``<city>_<seq>_<frame>``): also write cityscapesScripts' instance
    files into ``cityscapes_instances/`` (ConfigError for metadata that is not Cityscapes')."""
    instances = None
    if cityscapes_ids is not None:
        instances = InstanceFiles(out_dir / INSTANCES_DIR, cityscapes_instance_classes(metadata),
                                  tuple(metadata.thing_ids), dict(cityscapes_ids))
    targets = PredictionTargets(PanopticPredictionWriter(out_dir, metadata, name=PANOPTIC_NAME), metadata,
                       out_dir / OVERLAY_DIR if overlay else None, overlay_format, overlay_alpha,
                       SemanticPredictionWriter(out_dir / SEMANTIC_DIR, metadata) if semantic else None, instances)
    if targets.overlay_dir is not None:
        targets.overlay_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps([out_dir, targets.writer.png_dir, targets.overlay_dir,
                         targets.semantic.out_dir if targets.semantic else None,
                         instances.out_dir if instances else None, instances.out_dir / "masks" if instances else None])
    return targets


class WriteQueue:
    """Runs write jobs in ``threads`` threads (inline when 0) while the model works on, holding at
    most 2 x ``threads`` images in memory."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 0 else None
        self.pending: deque[Future] = deque()

    def submit(self, job: Callable[[], None]) -> None:
        if self.pool is None:
            job()
            return
        self.pending.append(self.pool.submit(job))
        while len(self.pending) > 2 * self.threads:  # bound the images held in memory
            self.pending.popleft().result()

    def drain(self) -> None:
        """Wait for every queued write; re-raises the first that failed."""
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Finish the queued writes, also after an error (those predictions exist, and cancelling
        them raced with the JSON listing); raises nothing, so the JSON is still written."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def plan_outputs(paths: list[Path], stems: list[str], ids: dict[str, Any], targets: PredictionTargets,
          overwrite: bool) -> tuple[list[int], list[str], list[tuple[dict, dict]]]:
    """Inputs to predict (indices), stems skipped as done, and the entries of an existing JSON to
    keep (images not in this run whose PNG exists, so the JSON keeps describing the folder).

    Done = the JSON lists the file under the same image id AND every output file exists. Anything
    else (outputs of a crashed run with no entry, an entry with a missing file) is redone.
    """
    previous = _previous_entries(targets.writer.json_path, overwrite)
    todo, skipped = [], []
    for i, stem in enumerate(stems):
        entry = previous.get(f"{stem}.png")
        if not overwrite and entry is not None and _is_done(entry, paths[i], ids[stem], targets.files(stem)):
            skipped.append(stem)  # its entry stays listed, at its place
            logger.info("skipped %s: done (predict.overwrite=true redoes it)", paths[i])
            continue
        previous.pop(f"{stem}.png", None)
        if entry is None and not overwrite and any(p.exists() for p in targets.files(stem)):
            logger.warning("redoing %s: outputs exist but %s does not list them (an interrupted run?)",
                           paths[i], targets.writer.json_path)
        todo.append(i)
    new_ids = {ids[stems[i]] for i in todo}
    new_paths = {str(paths[i]) for i in todo}
    kept = []
    for name, (img, ann) in previous.items():
        if not (targets.writer.png_dir / name).is_file():
            logger.warning("dropping %s from %s: its PNG is missing", name, targets.writer.json_path)
        elif img.get("path") in new_paths:  # the input is predicted again, under another output name
            logger.warning("dropping %s from %s: its input %s is now written as another name", name,
                           targets.writer.json_path, img["path"])
        elif ann["image_id"] in new_ids:
            logger.warning("dropping %s from %s: image id %r is now another input's", name,
                           targets.writer.json_path, ann["image_id"])
        else:
            kept.append((img, ann))
    return todo, skipped, kept


# panfpn.utils.atomic's temp names: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
def _remove_stale_temps(folders: list[Path | None]) -> None:
    """Delete temp files that a killed run's atomic writes left in our output folders (one
    output folder belongs to one run at a time)."""
    for folder in folders:
        stale = remove_stale_temp_files(folder) if folder is not None else []
        if stale:
            logger.warning("removed %d temporary file(s) of an interrupted run from %s", len(stale), folder)


def _is_done(entry: tuple[dict, dict], path: Path, image_id: Any, files: list[Path]) -> bool:
    """A listed image is done when it is the same input (path, image id) and all its files exist."""
    img, ann = entry
    same_input = ann["image_id"] == image_id and img.get("path", str(path)) == str(path)
    return same_input and all(p.exists() for p in files)


def check_output_json(out_dir: Path, overwrite: bool) -> None:
    """ConfigError naming ``predict.output_dir`` when its ``panoptic.json`` is no prediction JSON of
    ours (a dataset's ground truth; unreadable without ``overwrite``): tools/predict.py calls it
    before the model is loaded or anything is written there."""
    _previous_entries(out_dir / f"{PANOPTIC_NAME}.json", overwrite, warn=False)


def _previous_entries(json_path: Path, overwrite: bool, warn: bool = True) -> dict[str, tuple[dict, dict]]:
    """PNG file name -> (images entry, annotation) of an existing prediction JSON; ConfigError
    (a ValueError) for a JSON that is not one."""
    if not json_path.is_file():
        return {}
    try:
        data = load_json(json_path, what="prediction JSON", expect=dict)
        if not isinstance(data.get("annotations"), list):
            raise ValueError(f"{json_path} has no 'annotations' list")
    except ValueError as e:
        if overwrite:
            if warn:
                logger.warning("replacing unreadable %s (%s)", json_path, e)
            return {}
        raise ConfigError(f"config key 'predict.output_dir': {e}; it is not a prediction JSON of ours: "
                          "move it away or set predict.overwrite=true") from None
    if not all(isinstance(img, dict) and "path" in img for img in data.get("images") or []):
        # e.g. the ground truth of a dataset laid out as panoptic.json + panoptic/ (data/synthetic.py)
        raise ConfigError(f"config key 'predict.output_dir': {json_path} is not a prediction JSON of "
                          "tools/predict.py (its images have no 'path'): a dataset's ground truth? Predicting "
                          "there would overwrite its PNGs; choose another predict.output_dir")
    images = {img["id"]: img for img in data.get("images", [])}
    return {ann["file_name"]: (images.get(ann["image_id"], {"id": ann["image_id"]}), ann)
            for ann in data["annotations"]}


def write_one(targets: PredictionTargets, stem: str, image_id: Any, path: str, id_map: np.ndarray,
               segments: list[dict], image: np.ndarray | None, sem: np.ndarray | None,
               instances: tuple[list[int], list[float], Any] | None = None) -> None:
    """PNG, overlay, semantic PNG and instance files (``(labels, scores, masks)`` as the model gives
    them) of one image, then its JSON entry (listed only once every file exists); thread-safe
    (distinct files, locked lists)."""
    ann = targets.writer.add(image_id, Path(path).name, id_map, segments, png_stem=stem, record=False)
    if targets.overlay_dir is not None and image is not None:
        vis = panoptic_overlay(image, id_map, segments, targets.metadata, alpha=targets.alpha)
        fmt, options = OVERLAY_FORMATS[targets.overlay_format]
        save_image_atomic(targets.overlay_dir / f"{stem}.{targets.overlay_format}", vis, fmt, **options)
    if targets.semantic is not None and sem is not None:
        targets.semantic.add(image_id, sem, png_stem=stem)
    if targets.instances is not None and instances is not None:
        targets.instances.write(stem, *instances)
    h, w = id_map.shape
    targets.writer.record(ann, {"id": image_id, "file_name": Path(path).name, "height": h, "width": w})


def without_own_outputs(paths: list[Path], out_dir: Path) -> list[Path]:
    """``paths`` less the files a predict run writes into ``out_dir`` (its image folders, the JSON,
    failure lists and log), so that an output folder inside the input folder is not read back as
    photos on the next run; logs how many were left out."""
    out_dir = out_dir.resolve()
    folders = [out_dir / name for name in (PANOPTIC_NAME, OVERLAY_DIR, SEMANTIC_DIR, INSTANCES_DIR)]
    files = {out_dir / name for name in (f"{PANOPTIC_NAME}.json", "failed.json", "failed.txt", "log.txt")}
    kept = [p for p in paths if (r := p.resolve()) not in files and not any(r.is_relative_to(f) for f in folders)]
    if len(kept) < len(paths):
        logger.info("left out %d input file(s) that are this run's own outputs in %s",
                    len(paths) - len(kept), out_dir)
    return kept


def log_summary(out_dir: Path, predicted: int, skipped: int, failed: int, backend: str = "") -> None:
    """The run's last lines, the same for both tools/predict.py backends: counts, and where the
    unreadable inputs are listed."""
    logger.info("predicted %d image(s)%s, skipped %d existing, %d failed; results in %s",
                predicted, f" with {backend}" if backend else "", skipped, failed, out_dir)
    if failed:
        logger.warning("%d input(s) could not be read; listed in %s", failed, out_dir / "failed.txt")


def write_failed(out_dir: Path, failed: list[FailedImage]) -> None:
    """failed.json (``{"failed": [{"path", "error"}]}``) and failed.txt (``path<TAB>error`` lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "failed.json", {"failed": [dataclasses.asdict(f) for f in failed]})
    lines = "".join(f"{f.path}\t{f.error}\n" for f in failed)
    atomic_write(out_dir / "failed.txt", lambda f: f.write(lines), mode="w")

"""Check a whole COCO-panoptic dataset before training: `python -m panfpn.data.check --root DIR`.

Or one split given by its paths: ``--json F --images DIR --panoptic DIR``; ``--workers N``
(default: a few processes, 0: in this process); ``--out report.json`` (optional).

Opening a dataset checks its JSON (:mod:`panfpn.data.validate`); a problem between the JSON and the
files (a segment id in a PNG and not in the JSON or the reverse, a PNG of another size than its
upright image, a JSON width/height other than the image's, a missing or undecodable image or PNG)
was found only when training reached that sample, one at a time. Here every sample is read as
training and evaluation read it (:meth:`panfpn.data.dataset.PanopticDataset.sample_problems`: the
same reads and checks, no targets) and every problem is listed, one line each (split, image id,
file, kind, message), then a summary. A JSON that cannot be used at all is one line for its split.
What opening a split only warns of (images without an annotation, which training leaves out; a stuff
category split into several segments; a JSON listing some of the categories) is listed too, as
``[warning]`` lines and under ``warnings`` in the report: training logs them once among its start-up
lines, where they are easily missed. ``--root`` checks the train and val splits of the
``data=coco_panoptic_folder`` layout found there (docs/data.md), val against the train JSON's
categories as training does; on a Cityscapes root (createPanopticImgs'
``gtFine/cityscapes_panoptic_{split}.json``, else its ``_trainId`` output) those splits as
``data=cityscapes_panoptic`` reads them: its 19 classes, the leftImg8bit images checked against the
JSON per city (docs/cityscapes.md).

Exit status: 0 clean (warnings alone included, unless ``--strict``), 2 problems, 1 a bug;
SIGINT / SIGTERM: one line, 130 / 143 (:mod:`panfpn.utils.stop_signals`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from panfpn.data.builtin_meta import cityscapes_panoptic_metadata
from panfpn.data.cityscapes_files import check_cityscapes_images
from panfpn.data.dataset import PanopticDataset
from panfpn.data.folder import find_split_json, folder_panoptic_paths, split_json_candidates
from panfpn.data.image_io import ImageReadError
from panfpn.data.metadata import DatasetMetadata
from panfpn.data.resolvers import default_num_workers
from panfpn.data.validate import AnnotationError
from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.closed_stdout import stdout_reader_may_leave
from panfpn.utils.stop_signals import describe_outputs, ignore_foreign_stop_signals, stop_signals, terminate_pool

TOOL = "python -m panfpn.data.check"
SPLITS = ("train", "val")  # of the coco_panoptic_folder layout


@dataclass(frozen=True)
class Split:
    """One split to check: its name, annotation JSON, image folder and id PNG folder; ``missing``:
    why its folders were not found (the split is then one problem)."""

    name: str
    json_file: Path
    image_dir: Path
    png_dir: Path
    missing: str | None = None
    cityscapes: bool = False  # createPanopticImgs' output: its 19 classes, images checked per city


@dataclass(frozen=True)
class Problem:
    """One problem: of an image (``image_id`` set) or of the whole split (``image_id`` None)."""

    split: str
    image_id: int | str | None
    file: str
    kind: str
    message: str

    def line(self) -> str:
        """One line naming the split, the image id (when there is one), the kind and the file."""
        where = f"image id {self.image_id!r}" if self.image_id is not None else "split"
        message = " ".join(self.message.split())
        # the reader's errors name the file too (at the start, or after 'not found:'): said once here
        message = (message.removeprefix(f"{self.file}: ").replace(f"not found: {self.file}", "not found")
                   .replace(f"annotation file {self.file} is", "it is"))
        return f"{self.split}: {where}: [{self.kind}] {self.file}: {message}"


def root_splits(root: str | Path) -> list[Split]:
    """The train and val splits of the ``coco_panoptic_folder`` layout under ``root`` (those whose
    JSON is there; one without its folders has ``missing`` set); FileNotFoundError naming the files
    tried when neither is."""
    found = [s for s in SPLITS if find_split_json(root, s, required=False)]
    if not found:
        cityscapes = cityscapes_splits(root)
        if cityscapes:
            return cityscapes
        tried = [str(p) for s in SPLITS for p in split_json_candidates(root, s) + cityscapes_json_candidates(root, s)]
        gt_fine = Path(root) / "gtFine"
        hint = (f"; for Cityscapes, create its panoptic annotations first: csCreatePanopticImgs --dataset-folder "
                f"{gt_fine} --set-names train val" if gt_fine.is_dir() else "")
        raise FileNotFoundError(f"no train or val annotations under {root}: tried {', '.join(tried)}{hint}")
    splits = []
    for name in found:
        try:
            splits.append(Split(name, *folder_panoptic_paths(root, name)))
        except FileNotFoundError as err:  # the JSON is there, a folder is not: the other split goes on
            json_file = Path(find_split_json(root, name))
            splits.append(Split(name, json_file, Path(root) / "images" / name, json_file.with_suffix(""),
                                missing=str(err)))
    return splits


def cityscapes_json_candidates(root: str | Path, split: str) -> list[Path]:
    """createPanopticImgs' JSONs of ``split`` under a Cityscapes root: label ids, then train ids."""
    return [Path(root) / "gtFine" / f"cityscapes_panoptic_{split}{suffix}.json" for suffix in ("", "_trainId")]


def cityscapes_splits(root: str | Path) -> list[Split]:
    """The train and val splits of a Cityscapes root (``gtFine/cityscapes_panoptic_{split}.json``, or
    its ``_trainId`` output, with ``leftImg8bit/{split}/``), as ``data=cityscapes_panoptic`` reads them."""
    splits = []
    for name in SPLITS:
        json_file = next((p for p in cityscapes_json_candidates(root, name) if p.is_file()), None)
        if json_file is not None:
            splits.append(Split(name, json_file, Path(root) / "leftImg8bit" / name, json_file.with_suffix(""),
                                cityscapes=True))
    return splits


def _open_dataset(split: Split, metadata: DatasetMetadata | None) -> tuple[PanopticDataset, Problem | None]:
    """The split's dataset; for Cityscapes with its metadata and its images checked against the JSON
    per city (the problem returned when some are missing: each is listed again by its sample)."""
    if not split.cityscapes:
        return PanopticDataset(split.json_file, split.image_dir, split.png_dir, metadata=metadata,
                               is_train=split.name != "val"), None
    use_train_id = split.json_file.stem.endswith("_trainId")
    dataset = PanopticDataset(split.json_file, split.image_dir, split.png_dir,
                              metadata=cityscapes_panoptic_metadata(use_train_id), is_train=split.name != "val")
    try:
        check_cityscapes_images(dataset)
    except FileNotFoundError as err:
        return dataset, Problem(split.name, None, str(split.image_dir), "missing images", str(err))
    return dataset, None


def classify(stage: str, error: Exception) -> str:
    """The kind of a :meth:`PanopticDataset.sample_problems` problem (the summary counts them)."""
    if stage == "size":
        return "size mismatch"
    if stage == "json size":
        return "json size"
    if stage == "area":
        return "segment area"
    what = "image" if stage == "image" else "PNG"
    if isinstance(error, FileNotFoundError):
        return f"missing {what}"
    if stage == "panoptic" and isinstance(error, AnnotationError):
        return "segment ids"
    if isinstance(error, (ImageReadError, OSError)):
        return f"unreadable {what}"
    return "PNG mode" if stage == "panoptic" else f"bad {what}"


def _problem_file(dataset: PanopticDataset, index: int, stage: str, error: Exception) -> str:
    rec = dataset.records[index]
    if stage == "image":
        return str(getattr(error, "path", None) or dataset.expected_image_path(index))
    if stage == "json size":  # the file the JSON's size was compared with: the image, else the PNG
        return str(getattr(error, "path"))
    return str(dataset.panoptic_root / rec.png_name)


def sample_problems(dataset: PanopticDataset, index: int) -> list[tuple]:
    """``(image_id, file, kind, message)`` of each problem of sample ``index`` (picklable)."""
    found = dataset.sample_problems(index)
    if not found:
        return []
    image_id = dataset.records[index].image_id
    return [(image_id, _problem_file(dataset, index, stage, err), classify(stage, err), str(err))
            for stage, err in found]


_DATASET: PanopticDataset | None = None  # the dataset of a forked worker (set by _init_worker)


def _init_worker(dataset: PanopticDataset) -> None:
    global _DATASET
    ignore_foreign_stop_signals()  # a group SIGTERM / Ctrl-C: the parent stops the pool
    _DATASET = dataset


def _check_in_worker(index: int) -> list[tuple]:
    assert _DATASET is not None
    return sample_problems(_DATASET, index)


def _each_sample(dataset: PanopticDataset, workers: int) -> Iterator[list[tuple]]:
    """:func:`sample_problems` of every sample in order, in ``workers`` forked processes (0: here)."""
    n = len(dataset)
    if workers == 0 or n == 0:
        yield from (sample_problems(dataset, i) for i in range(n))
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    workers = min(workers, n)
    chunk = max(1, min(16, n // (8 * workers)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(dataset,)) as pool:
        try:
            yield from pool.imap(_check_in_worker, range(n), chunksize=chunk)
        except BaseException:  # an error, a stop signal (panfpn.utils.stop_signals), the caller closing us
            terminate_pool(pool)
            raise


def _missing_folder(split: Split) -> tuple[str, str] | None:
    """``(folder, message)`` when the split's image or PNG folder is not there."""
    if split.missing:
        return str(split.json_file.parent), split.missing
    for key, folder in (("--images", split.image_dir), ("--panoptic", split.png_dir)):
        if not folder.is_dir():
            return str(folder), f"{key} {folder} is not a folder"
    return None


class _Collect(logging.Handler):
    """Keeps the messages of the WARNING records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def warnings_of(logger_name: str) -> Iterator[list[str]]:
    """The messages ``logger_name`` (and the loggers below it) warns of in the block, kept instead of
    logged: the report lists them."""
    logger, collect = logging.getLogger(logger_name), _Collect()
    propagate = logger.propagate
    logger.addHandler(collect)
    logger.propagate = False
    try:
        yield collect.messages
    finally:
        logger.removeHandler(collect)
        logger.propagate = propagate


def open_splits(splits: list[Split]) -> tuple[list[tuple[Split, PanopticDataset]], list[Problem], list[Problem]]:
    """The datasets that open (their JSON checked; val against the train JSON's categories, as
    training does), one problem per split that does not, and what opening them warned of (kind
    ``warning``, a problem only with ``--strict``)."""
    opened, problems, warnings = [], [], []
    metadata = None
    for split in splits:
        missing = _missing_folder(split)
        if missing is not None:
            problems.append(Problem(split.name, None, missing[0], "missing folder", missing[1]))
            continue
        with warnings_of("panfpn.data") as messages:
            try:
                dataset, missing_images = _open_dataset(split, metadata)
            except (OSError, ValueError) as err:  # the JSON is unusable: one line for the split
                problems.append(Problem(split.name, None, str(split.json_file), "annotation file", str(err)))
                continue
            finally:
                warnings.extend(Problem(split.name, None, str(split.json_file), "warning", m)
                                for m in messages)
        opened.append((split, dataset))
        if missing_images is not None:
            problems.append(missing_images)
        if split.name == "train":
            metadata = dataset.metadata
            if not split.cityscapes and not dataset.records.thing_flags().any():
                warnings.append(Problem(split.name, None, str(split.json_file), "warning", (
                    f"{split.json_file}: no image has a non-crowd thing segment, so data.train.filter_empty=true "
                    "(the default of data=coco_panoptic_folder) would leave nothing to train on: training "
                    "stops at its start (data.train.filter_empty=false keeps every image)")))
    return opened, problems, warnings


def check_splits(splits: list[Split], workers: int, *, bar: bool = False,
                 on_progress: Callable[[int, int], Any] | None = None) -> dict:
    """The report of every split: ``splits``, ``images_checked``, ``images_with_problems``,
    ``by_kind``, ``problems`` (dicts of :class:`Problem`, in split and dataset order) and
    ``warnings`` (the same form, kind ``warning``: what opening the splits warned of).
    ``on_progress(done, total)`` after each image; ``bar``: a tqdm bar on stderr."""
    from tqdm import tqdm

    opened, problems, warnings = open_splits(splits)
    total = sum(len(d) for _, d in opened)
    bad, done = 0, 0
    if on_progress is not None:
        on_progress(0, total)
    with tqdm(total=total, desc="checking", unit="img", dynamic_ncols=True, disable=not bar) as progress:
        for split, dataset in opened:
            for found in _each_sample(dataset, workers):
                problems.extend(Problem(split.name, *p) for p in found)
                bad, done = bad + bool(found), done + 1
                progress.update(1)
                if on_progress is not None:
                    on_progress(done, total)
    return {"splits": [{"name": s.name, "json_file": str(s.json_file), "image_dir": str(s.image_dir),
                        "png_dir": str(s.png_dir),
                        "images": next((len(d) for o, d in opened if o == s), None)} for s in splits],
            "images_checked": done, "images_with_problems": bad,
            "by_kind": dict(sorted(Counter(p.kind for p in problems).items())),
            "problems": [asdict(p) for p in problems], "warnings": [asdict(w) for w in warnings]}


def summary_line(report: dict) -> str:
    """``checked N images (train 3, val 2): M with problems; by kind: ...``."""
    per_split = ", ".join(f"{s['name']} {s['images'] if s['images'] is not None else 'not opened'}"
                          for s in report["splits"])
    text = (f"checked {report['images_checked']} images ({per_split}): "
            f"{report['images_with_problems']} with problems")
    if report["by_kind"]:
        text += "; by kind: " + ", ".join(f"{k} {n}" for k, n in report["by_kind"].items())
    if report["warnings"]:
        text += f"; {len(report['warnings'])} warning(s)"
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="dataset folder in the data=coco_panoptic_folder layout "
                        "(annotations/panoptic_{train,val}.json, their PNG folders, images/{train,val}/), "
                        "or a Cityscapes root (gtFine/cityscapes_panoptic_{train,val}.json of "
                        "createPanopticImgs, leftImg8bit/{train,val}/)")
    parser.add_argument("--json", type=Path, help="one split's COCO-panoptic JSON (instead of --root)")
    parser.add_argument("--images", type=Path, help="that split's image folder")
    parser.add_argument("--panoptic", type=Path, help="that split's id PNG folder")
    parser.add_argument("--split", default="train", choices=SPLITS,
                        help="what the --json split is: val is read as evaluation reads it (default train)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes reading the samples (default: up to 4 CPUs; 0: in this process)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 on warnings too (images without an annotation, split stuff, ...)")
    return parser


def _splits_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Split]:
    explicit = (args.json, args.images, args.panoptic)
    if (args.root is None) == all(p is None for p in explicit):
        parser.error("give --root DIR, or --json F --images DIR --panoptic DIR")
    if args.root is None:
        if any(p is None for p in explicit):
            parser.error("--json, --images and --panoptic go together")
        return [Split(args.split, args.json, args.images, args.panoptic)]
    if any(p is not None for p in explicit):
        parser.error("--root or --json/--images/--panoptic, not both")
    return root_splits(args.root)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0 clean, 2 problems)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = stop_signals(TOOL)
    with stop:
        try:
            splits = _splits_of(args, parser)
        except FileNotFoundError as err:  # --root without its layout
            print(f"{TOOL}: {err}", file=sys.stderr)
            return 2
        progress = {"done": 0, "total": None}
        describe_outputs(lambda: (f"after {progress['done']} of {progress['total']} images checked"
                                  if progress["total"] is not None else "while opening the annotation files")
                         + "; no report written")
        report = check_splits(splits, default_num_workers() if args.workers is None else args.workers,
                              bar=sys.stderr.isatty(),
                              on_progress=lambda done, total: progress.update(done=done, total=total))
        if args.out is not None:  # before the lines: a reader that closes early (`| head`) must not cost it
            write_json_atomic(args.out, report)
            describe_outputs(lambda: f"the report {args.out} written")
        with stdout_reader_may_leave():
            for problem in report["warnings"] + report["problems"]:
                print(Problem(**problem).line())
            if any(s["images"] is not None for s in report["splits"]):  # else the JSON lines say it all
                print(summary_line(report))
            if args.out is not None:
                print(f"wrote {args.out}")
    return 2 if report["problems"] or (args.strict and report["warnings"]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""User image files for inference: listing a file / folder / glob, and reading them safely
(decoding is :func:`panfpn.data.image_io.read_image`, shared with the datasets).

Nothing here raises on one bad file: :class:`ImageFileDataset` returns a failure record that
names the file and the reason, so a batch over a folder never stops at a corrupt JPEG or a
stray ``notes.txt``.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from panfpn.data.image_io import ImageReadError, read_image
from panfpn.data.metadata import IGNORE_LABEL
from panfpn.data.transforms import Transform, check_test_transform

logger = logging.getLogger("panfpn")

__all__ = ["FailedImage", "ImageFileDataset", "ImageReadError", "image_extensions",
           "list_image_files", "output_stems", "read_image"]



def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (``.jpg``, ``.png``, ...) of every format this Pillow build opens."""
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


def list_image_files(inputs: str | os.PathLike | Sequence[str | os.PathLike], *,
                     recursive: bool = False) -> list[Path]:
    """Expand inputs into a sorted, de-duplicated list of files.

    Each input is a file, a folder (its visible files; with ``recursive`` also those of its
    subfolders) or a glob pattern (``*``, ``?``, ``[``; ``**`` matches folders when
    ``recursive``). Every file of a folder is listed, images or not, so that callers can report
    what they skip instead of ignoring it silently; hidden files (``.name``) are left out.

    Raises:
        FileNotFoundError: an input matches nothing (names the input).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: dict[Path, None] = {}
    for spec in inputs:
        spec = os.path.expanduser(str(spec))
        path = Path(spec)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _folder_files(path, recursive)
        elif glob.has_magic(spec):
            matches = [Path(p) for p in glob.glob(spec, recursive=recursive) if Path(p).is_file()]
        else:
            matches = []
        if not matches:
            hint = " (its subfolders are searched with predict.recursive=true)" if path.is_dir() else ""
            raise FileNotFoundError(f"predict input {spec!r} is not a file, a folder with files, "
                                    f"or a glob pattern matching files{hint}")
        for p in sorted(matches):
            found.setdefault(p, None)
    return list(found)


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    """The visible files of ``folder`` (with ``recursive``, of its visible subfolders too). The
    subfolders not searched (all without ``recursive``; links to folders, which are not followed,
    with it) are logged, so that their images are not missed silently."""
    walk = folder.rglob("*") if recursive else folder.iterdir()
    entries = [p for p in walk if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    unsearched = sorted(str(p.relative_to(folder)) for p in entries
                        if p.is_dir() and (p.is_symlink() or not recursive))
    if unsearched:
        why = "links to folders are not followed" if recursive else "predict.recursive=true searches them"
        logger.info("%s: %d subfolder(s) not searched (%s): %s", folder, len(unsearched),
                    ", ".join(unsearched[:3]) + (", ..." if len(unsearched) > 3 else ""), why)
    return [p for p in entries if p.is_file()]


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A unique output name stem per input file.

    The file's stem when no other input shares it (``a.jpg`` -> ``a``); otherwise its path
    relative to the inputs' common folder, with the suffix kept and separators as ``__``
    (``x/a.jpg``, ``y/a.jpg`` -> ``x__a_jpg``, ``y__a_jpg``), so outputs never overwrite each other.
    Names are compared case-insensitively (``A.jpg``, ``a.png`` clash: one folder on macOS or
    Windows). A path name that another input's name already is (``a.jpg``, ``a.png`` beside
    ``a_jpg.png``) gets ``~2``, ``~3``, ... appended.
    """
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.casefold()] = counts.get(s.casefold(), 0) + 1
    if all(c == 1 for c in counts.values()):
        return stems
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    clashing = [counts[s.casefold()] > 1 for s in stems]
    taken = {s.casefold() for s, clash in zip(stems, clashing) if not clash}
    out = []
    for s, p, clash in zip(stems, resolved, clashing):
        if clash:
            rel = p.relative_to(root)
            s = base = "__".join([*rel.parent.parts, f"{rel.stem}_{rel.suffix.lstrip('.')}"])
            k = 2
            while s.casefold() in taken:
                s, k = f"{base}~{k}", k + 1
            taken.add(s.casefold())
        out.append(s)
    return out


@dataclass(frozen=True)
class FailedImage:
    """An input that was skipped: its path and why."""

    path: str
    error: str


class ImageFileDataset(Dataset):
    """Image files as eval-style samples (docs/interfaces.md section 1) without ground truth.

    A sample has ``image`` (uint8 ``[3, H, W]``, transformed), ``image_id`` and ``file_name``
    (the output stem and the file's name), ``orig_size`` ``(H0, W0)``, empty ``instances``, an all-ignore ``sem_seg`` ``[H, W]``, plus ``path`` (str) and ``orig_image``
    (uint8 ``[H0, W0, 3]``, for overlays). A file that cannot be read gives a
    :class:`FailedImage` instead of raising.

    Args:
        paths: input files (see :func:`list_image_files`).
        transforms: the test transform, a joint ``(image, id_map)`` callable; None keeps the size.
        keep_original: also return ``orig_image`` (needed for overlays).
        stems: output stems (the samples' ``image_id``), one per path; default
            :func:`output_stems` of ``paths``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, transforms: Transform | None = None,
                 keep_original: bool = True, stems: Sequence[str] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.stems = list(stems) if stems is not None else output_stems(self.paths)
        if len(self.stems) != len(self.paths):
            raise ValueError(f"got {len(self.stems)} stems for {len(self.paths)} paths")
        if transforms is not None:
            check_test_transform(transforms, "the image files' transform")
        self.transforms = transforms
        self.keep_original = keep_original
        self._extensions = image_extensions()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | FailedImage:
        path = self.paths[index]
        if path.suffix.lower() not in self._extensions:
            return FailedImage(str(path), f"not an image file (suffix {path.suffix or 'none'!r})")
        try:
            rgb = read_image(path)
        except ImageReadError as e:
            return FailedImage(str(path), e.reason)
        h0, w0 = rgb.shape[:2]
        image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        if self.transforms is not None:
            # the transforms are joint; a 1-byte placeholder map keeps their resize cheap
            image, _ = self.transforms(image, torch.zeros((h0, w0), dtype=torch.uint8))
        h, w = image.shape[-2:]
        empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
                 "masks": torch.zeros((0, h, w), dtype=torch.uint8)}
        sample = {"image": image, "image_id": self.stems[index], "file_name": path.name,
                  "orig_size": (h0, w0), "instances": empty,
                  "sem_seg": torch.full((h, w), IGNORE_LABEL, dtype=torch.int64), "path": str(path)}
        if self.keep_original:
            sample["orig_image"] = rgb
        return sample

"""Compact dataset records: every record encoded in one byte buffer, found through an offsets array.

A list of Python dicts is copied page by page into every forked DataLoader worker as reference
counts change (COCO train2017: ~170 MB per worker). A :class:`RecordStore` holds three numpy
arrays instead, which no reference count touches, so workers share them (with a memory-mapped
cache file, so do all ranks on a machine). A record is decoded only when it is indexed.

Records are encoded as UTF-8 JSON (not pickle): they came from a JSON file, so the round trip is
exact, and decoding a cache file can never run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence, overload

import numpy as np


@dataclass(frozen=True)
class Record:
    """One image of a COCO-panoptic dataset, as its validated JSON entries give it."""

    image_id: int | str
    file_name: str  # image file name from the JSON's image entry (normalised)
    png_name: str  # annotation (id PNG) file name (normalised)
    segments: tuple[dict, ...]
    # (height, width) from the JSON's image entry, either None where the entry lacks it; None: both
    # lacking. Checked against the image as read (EXIF orientation applied) when it is loaded.
    size: tuple[int | None, int | None] | None = None


def has_non_crowd_thing(segments: Iterable[Mapping], isthing: Mapping[int, bool]) -> bool:
    """True when a segment is a thing (by ``isthing[category_id]``) and not crowd."""
    return any(isthing.get(s["category_id"], False) and not s.get("iscrowd", 0) for s in segments)


class RecordStore(Sequence[Record]):
    """Read-only sequence of :class:`Record` over ``data`` (uint8) cut at ``offsets`` (int64,
    ``n + 1``); ``has_thing`` (bool, ``n``) says which records have a non-crowd thing segment.
    ``index`` (int64) selects and orders a subset of the records without copying them."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, has_thing: np.ndarray,
                 index: np.ndarray | None = None) -> None:
        if len(offsets) != len(has_thing) + 1 or (len(offsets) and int(offsets[-1]) != len(data)):
            raise ValueError(f"inconsistent record arrays: {len(offsets)} offsets ending at "
                             f"{int(offsets[-1]) if len(offsets) else None} for {len(has_thing)} "
                             f"records in {len(data)} bytes")
        self.data, self.offsets, self.has_thing, self.index = data, offsets, has_thing, index

    @classmethod
    def from_rows(cls, rows: Iterable[tuple], isthing: Mapping[int, bool]) -> "RecordStore":
        """Encode ``(image_id, file_name, png_name, segments, size)`` rows (validated) into a store."""
        encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps
        chunks: list[bytes] = []  # with arguments would build one per record (4x slower)
        flags: list[bool] = []
        for image_id, file_name, png_name, segments, size in rows:
            chunks.append(encode([image_id, file_name, png_name, list(segments),
                                  None if size is None else list(size)]).encode())
            flags.append(has_non_crowd_thing(segments, isthing))
        offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in chunks], out=offsets[1:])
        data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        return cls(data, offsets, np.array(flags, dtype=bool))

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.index is None else len(self.index)

    def _position(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        i = i % n
        return i if self.index is None else int(self.index[i])

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        k = self._position(int(i))
        raw = self.data[int(self.offsets[k]):int(self.offsets[k + 1])].tobytes()
        image_id, file_name, png_name, segments, size = json.loads(raw)
        return Record(image_id, file_name, png_name, tuple(segments), tuple(size) if size else None)

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    def thing_flags(self) -> np.ndarray:
        """``has_thing`` of the records in this view's order."""
        return self.has_thing if self.index is None else self.has_thing[self.index]

    def select(self, positions: np.ndarray) -> "RecordStore":
        """A view of the records at ``positions`` (of this view) without copying the buffer."""
        positions = np.asarray(positions, dtype=np.int64)
        view = object.__new__(type(self))  # keeps a subclass's state (a memory-mapped file)
        view.__dict__.update(self.__dict__)
        view.index = positions if self.index is None else self.index[positions]
        return view

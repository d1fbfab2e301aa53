"""Cache of a COCO-panoptic JSON's validated records, memory-mapped by every rank and worker.

Parsing COCO train2017's panoptic JSON takes tens of seconds and ~600 MB; with 8 ranks it was
done 8 times per machine. The first process to open a JSON writes its validated records
(:class:`panfpn.data.records.RecordStore`) to ``$PANFPN_CACHE/records/`` while holding a lock
file; the others wait for the lock and then memory-map the file, sharing its pages.

The file is keyed by the JSON's absolute path, size, mtime_ns, inode and :data:`FORMAT_VERSION`:
a rewritten JSON is parsed, validated and cached again (an in-place rewrite to the same size
within the file system's timestamp granularity, a few ms, is not noticed). It is written atomically
(:mod:`panfpn.utils.atomic`), and a file that does not read back whole (truncated, foreign,
another version) is ignored and rebuilt, so a half-written cache is never used.

Format: four ``.npy`` arrays one after the other: a JSON header (uint8: key and the JSON's
``categories``), offsets (int64), has_thing (bool), the encoded records (uint8).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from panfpn.data.records import RecordStore
from panfpn.utils.atomic import atomic_write
from panfpn.utils.cache_dir import default_cache_dir

logger = logging.getLogger(__name__)

# 2: iscrowd, area and bbox checked; 3: image ids non-empty and of one type; 4: records carry the
# image entry's height and width. A cache of records validated by older rules is rebuilt.
FORMAT_VERSION = 4
# JSONs smaller than this parse in well under a second: they are kept in memory, not cached.
MIN_CACHE_BYTES = 1 << 20
_DTYPES = (np.dtype(np.uint8), np.dtype(np.int64), np.dtype(bool), np.dtype(np.uint8))

# (raw categories list, {category id: isthing}, validated rows); rows may be a generator that
# validates as it goes.
Parsed = tuple[list, Mapping[int, bool], Iterable[tuple]]


def json_key(json_file: str | os.PathLike) -> dict:
    """What identifies a JSON's content for the cache: absolute path, size, mtime_ns, inode
    (a JSON replaced by a rename is a new inode) and the format version."""
    path = Path(json_file).absolute()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "version": FORMAT_VERSION}


def cache_file(json_file: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file of ``json_file`` (one per absolute path: a changed JSON overwrites it)."""
    path = str(Path(json_file).absolute())
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "records" / f"{Path(path).stem}-{digest}.v{FORMAT_VERSION}.npy"


class MappedRecordStore(RecordStore):
    """A RecordStore over a cache file: pickled (spawn/forkserver DataLoader workers) as the
    file's path and key, so a worker maps the file instead of receiving a copy of the records."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, has_thing: np.ndarray, *,
                 path: Path, key: dict) -> None:
        super().__init__(data, offsets, has_thing)
        self.path, self.key = path, key

    def __reduce__(self):
        return _remap, (str(self.path), self.key, self.index)


def _remap(path: str, key: dict, index: np.ndarray | None) -> RecordStore:
    hit = read_cache(Path(path), key)
    if hit is None:
        raise RuntimeError(f"record cache {path} no longer holds the records of {key['path']} "
                           f"(size {key['size']}, mtime_ns {key['mtime_ns']}): the JSON was "
                           f"rewritten while a process used them; open the dataset again")
    store = hit[1]
    store.index = index
    return store


def write_cache(path: Path, key: dict, categories: list, store: RecordStore) -> None:
    """Write ``store`` (a whole store, not a view) and its key atomically to ``path``."""
    header = np.frombuffer(json.dumps({"key": key, "categories": categories}).encode(), np.uint8)

    def write(f) -> None:
        for array in (header, store.offsets, store.has_thing, store.data):
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    atomic_write(path, write)


def _map_arrays(path: Path) -> list[np.ndarray]:
    """The four arrays of a cache file, memory-mapped; ValueError when it is not whole."""
    size = path.stat().st_size
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    arrays = []
    with open(path, "rb") as f:
        for expected in _DTYPES:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = readers[version](f)
            if dtype != expected or len(shape) != 1 or fortran:
                raise ValueError(f"unexpected array {dtype} {shape}")
            start, nbytes = f.tell(), shape[0] * dtype.itemsize
            if start + nbytes > size:
                raise ValueError(f"truncated: {size} bytes, an array needs {start + nbytes}")
            arrays.append(np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
                          if nbytes else np.zeros(shape, dtype))
            f.seek(start + nbytes)
        end = f.tell()
    if end != size:
        raise ValueError(f"{size - end} trailing bytes")
    return arrays


def read_cache(path: Path, key: dict) -> tuple[list, RecordStore] | None:
    """``(categories, store)`` from ``path`` when it is whole and made for ``key``, else None."""
    try:
        header, offsets, has_thing, data = _map_arrays(path)
        meta = json.loads(header.tobytes())
        if meta.get("key") != key:
            return None  # another version of the JSON: rebuilt by the caller
        if len(offsets) == 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets are not increasing from 0")
        return meta["categories"], MappedRecordStore(data, offsets, has_thing, path=path, key=key)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring unreadable record cache %s (%s: %s); rebuilding it",
                       path, type(e).__name__, e)
        return None


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock beside ``path`` (yields False where none can be taken)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")
    except (ImportError, OSError) as e:
        logger.warning("no lock for the record cache %s (%s): building without it", path, e)
        yield False
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        except OSError as e:  # e.g. a network file system without locks
            logger.warning("cannot lock the record cache %s (%s): building without it", path, e)
            yield False
            return
        yield True


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing COCO train2017 creates ~2M containers, and the
    collections they trigger took over half of the parse and validation time (9 s of 13 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build(parse: Callable[[], Parsed]) -> tuple[list, RecordStore]:
    with _gc_paused():
        categories, isthing, rows = parse()
        return categories, RecordStore.from_rows(rows, isthing)


def load_records(json_file: str | os.PathLike, parse: Callable[[], Parsed], *,
                 use_cache: bool | None = None,
                 cache_dir: str | os.PathLike | None = None) -> tuple[list, RecordStore]:
    """``(raw categories, records)`` of ``json_file``: from its cache, else from ``parse()``
    (which validates and raises on a bad JSON), cached for the next process.

    use_cache: None: cache JSONs of at least :data:`MIN_CACHE_BYTES`; False: always parse.
    """
    if use_cache is None:
        use_cache = os.path.isfile(json_file) and os.path.getsize(json_file) >= MIN_CACHE_BYTES
    if not use_cache or not os.path.isfile(json_file):  # parse() names a missing file
        return _build(parse)
    key, path = json_key(json_file), cache_file(json_file, cache_dir)
    hit = read_cache(path, key)
    if hit is not None:
        return hit
    with _build_lock(path):
        hit = read_cache(path, key)  # built by another process while this one waited
        if hit is not None:
            return hit
        categories, store = _build(parse)
        if json_key(json_file) != key:
            logger.warning("%s changed while it was read: its records are not cached", json_file)
            return categories, store
        try:
            write_cache(path, key, categories, store)
        except OSError as e:
            logger.warning("cannot write the record cache %s (%s); every process parses %s",
                           path, e, json_file)
            return categories, store
    # Map the file just written, so this process shares its pages with the others.
    return read_cache(path, key) or (categories, store)

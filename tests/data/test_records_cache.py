"""The record cache: used when valid, rebuilt when the JSON changes, never read half-written."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import panfpn.data.dataset as dataset_mod
from panfpn.data.builtin_meta import coco_panoptic_metadata
from panfpn.data.dataset import PanopticDataset
from panfpn.data.record_cache import MIN_CACHE_BYTES, cache_file


@pytest.fixture
def ds_json(small_copy) -> tuple[Path, dict]:
    root, data = small_copy
    return root / "panoptic.json", data


def _open(json_file: Path, cache: Path, **kw) -> PanopticDataset:
    root = json_file.parent
    return PanopticDataset(json_file, root / "images", root / "panoptic", record_cache=True,
                           cache_dir=cache, **kw)


def _forbid_parsing(monkeypatch) -> None:
    def fail(path, **kw):
        raise AssertionError(f"{path} was parsed although its cache is valid")

    monkeypatch.setattr(dataset_mod, "load_json", fail)


def test_second_open_reads_the_memory_mapped_cache(ds_json, tmp_path, monkeypatch):
    json_file, data = ds_json
    first = _open(json_file, tmp_path / "c")
    assert cache_file(json_file, tmp_path / "c").is_file()
    _forbid_parsing(monkeypatch)
    second = _open(json_file, tmp_path / "c")
    assert isinstance(second.records.data, np.memmap)
    assert list(second.records) == list(first.records)
    assert [r.image_id for r in second.records] == [img["id"] for img in data["images"]]


def test_rewritten_json_of_the_same_size_is_parsed_again(ds_json, tmp_path, monkeypatch):
    json_file, data = ds_json
    before = _open(json_file, tmp_path / "c")
    seg = data["annotations"][0]["segments_info"][0]
    seg["iscrowd"] = 1 - seg.get("iscrowd", 0)  # one digit: the file keeps its size
    stat = json_file.stat()
    json_file.write_text(json.dumps(data))
    os.utime(json_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert json_file.stat().st_size == stat.st_size
    after = _open(json_file, tmp_path / "c")
    assert after.records[0].segments[0]["iscrowd"] == seg["iscrowd"]
    assert before.records[0].segments[0]["iscrowd"] != seg["iscrowd"]
    _forbid_parsing(monkeypatch)  # and the new content is what the cache now holds
    assert _open(json_file, tmp_path / "c").records[0].segments[0]["iscrowd"] == seg["iscrowd"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_cache_is_ignored_and_rebuilt(ds_json, tmp_path, damage, caplog):
    json_file, data = ds_json
    want = list(_open(json_file, tmp_path / "c").records)
    path = cache_file(json_file, tmp_path / "c")
    content = path.read_bytes()
    path.write_bytes({"truncate": content[:-7], "garbage": b"x" * len(content), "empty": b""}[damage])
    assert list(_open(json_file, tmp_path / "c").records) == want
    assert "ignoring unreadable record cache" in caplog.text and str(path) in caplog.text
    assert path.read_bytes() == content  # rebuilt whole


def test_leftover_temp_file_is_ignored(ds_json, tmp_path, monkeypatch):
    json_file, _ = ds_json
    path = cache_file(json_file, tmp_path / "c")
    path.parent.mkdir(parents=True)
    # What a builder killed mid-write leaves (panfpn.utils.atomic's temp name), half written.
    (path.parent / f".{path.name}.abc123.tmp").write_bytes(b"\x93NUMPY half")
    want = list(_open(json_file, tmp_path / "c").records)
    _forbid_parsing(monkeypatch)
    assert list(_open(json_file, tmp_path / "c").records) == want


def test_validation_errors_unchanged_and_nothing_cached(ds_json, tmp_path):
    json_file, data = ds_json
    data["images"][1]["id"] = data["images"][0]["id"]
    json_file.write_text(json.dumps(data))
    for record_cache in (False, True):
        with pytest.raises(ValueError, match=f"{json_file}: image id 1 appears twice in 'images'"):
            PanopticDataset(json_file, json_file.parent, json_file.parent,
                            record_cache=record_cache, cache_dir=tmp_path / "c")
    assert not cache_file(json_file, tmp_path / "c").exists()


def test_json_made_bad_after_caching_is_refused(ds_json, tmp_path):
    json_file, data = ds_json
    _open(json_file, tmp_path / "c")
    data["annotations"][0]["segments_info"][0]["category_id"] = "1"
    json_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{json_file}: image id 1 segment \d+ has category id '1'"):
        _open(json_file, tmp_path / "c")


def test_metadata_is_checked_on_a_cache_hit(ds_json, tmp_path, monkeypatch):
    json_file, _ = ds_json
    _open(json_file, tmp_path / "c")
    _forbid_parsing(monkeypatch)
    with pytest.raises(ValueError, match=f"{json_file}: its categories differ from the metadata"):
        _open(json_file, tmp_path / "c", metadata=coco_panoptic_metadata())
    with pytest.raises(ValueError, match="sem_seg_mode='all' contradicts"):
        _open(json_file, tmp_path / "c", metadata=_open(json_file, tmp_path / "c").metadata,
              sem_seg_mode="all")


def test_default_caches_large_jsons_only(ds_json, tmp_path):
    json_file, data = ds_json
    root = json_file.parent
    PanopticDataset(json_file, root, root, cache_dir=tmp_path / "c")
    assert not cache_file(json_file, tmp_path / "c").exists()  # small: parsed, not cached
    data["info"] = {"description": "x" * MIN_CACHE_BYTES}
    json_file.write_text(json.dumps(data))
    PanopticDataset(json_file, root, root, cache_dir=tmp_path / "c")
    assert cache_file(json_file, tmp_path / "c").is_file()


def _slow_parse_and_count(counter: Path):
    real = dataset_mod.load_json

    def load(path, **kw):
        with open(counter, "a") as f:
            f.write("parse\n")
        time.sleep(0.5)  # both processes are in open() at the same time
        return real(path, **kw)

    return load


def _open_in_child(args) -> list:
    json_file, cache = args
    return [(r.image_id, r.png_name) for r in _open(Path(json_file), Path(cache)).records]


def test_concurrent_opens_parse_once(ds_json, tmp_path, monkeypatch):
    json_file, data = ds_json
    counter = tmp_path / "parses.txt"
    monkeypatch.setattr(dataset_mod, "load_json", _slow_parse_and_count(counter))
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
        got = list(pool.map(_open_in_child, [(str(json_file), str(tmp_path / "c"))] * 2))
    want = [(img["id"], ann["file_name"]) for img, ann in zip(data["images"], data["annotations"])]
    assert got == [want, want]
    assert counter.read_text() == "parse\n"  # the second waited for the first's cache


def test_mapped_records_pickle_as_the_file_not_a_copy(ds_json, tmp_path):
    """spawn/forkserver DataLoader workers receive the dataset pickled: they must map the file."""
    json_file, data = ds_json
    _open(json_file, tmp_path / "c")
    ds = _open(json_file, tmp_path / "c", filter_empty=True)  # a cache hit, and a view of it
    blob = pickle.dumps(ds.records)
    assert len(blob) < 2000 and str(cache_file(json_file, tmp_path / "c")).encode() in blob
    assert b"segments" not in blob and ds.records.data.nbytes > 1000  # no record inside
    assert list(pickle.loads(blob)) == list(ds.records)
    in_memory = PanopticDataset(json_file, json_file.parent, json_file.parent, record_cache=False)
    assert list(pickle.loads(pickle.dumps(in_memory.records))) == list(in_memory.records)
    seg = data["annotations"][0]["segments_info"][0]
    seg["iscrowd"] = 1 - seg.get("iscrowd", 0)
    mtime = json_file.stat().st_mtime_ns
    json_file.write_text(json.dumps(data))
    os.utime(json_file, ns=(mtime + 10**9, mtime + 10**9))  # however coarse the clock
    _open(json_file, tmp_path / "c")  # rebuilds the cache for the new JSON
    with pytest.raises(RuntimeError, match="no longer holds the records of .*open the dataset again"):
        pickle.loads(blob)


def test_unwritable_cache_dir_still_opens(ds_json, tmp_path, caplog):
    json_file, data = ds_json
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("a file where the cache folder would be")
    ds = _open(json_file, blocked)
    assert [r.image_id for r in ds.records] == [img["id"] for img in data["images"]]
    assert "building without it" in caplog.text and "cannot write the record cache" in caplog.text


def test_a_cache_validated_by_older_rules_is_rebuilt(ds_json, tmp_path, monkeypatch):
    """A cache written before iscrowd / area / bbox were checked (format 1) holds records those
    checks refuse (iscrowd "0" trained as crowd): it is not read, the JSON is checked again."""
    import panfpn.data.record_cache as record_cache
    import panfpn.data.validate as validate

    json_file, data = ds_json
    data["annotations"][0]["segments_info"][0]["iscrowd"] = "0"
    json_file.write_text(json.dumps(data))
    with monkeypatch.context() as old_rules:
        old_rules.setattr(record_cache, "FORMAT_VERSION", 1)
        old_rules.setattr(validate, "check_segments", lambda segments, **kw: tuple(segments))
        assert len(_open(json_file, tmp_path / "cache")) == 3
    with pytest.raises(ValueError, match=r"image id 1 segment \d+ has iscrowd '0'"):
        _open(json_file, tmp_path / "cache")

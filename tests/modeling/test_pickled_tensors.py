"""The safe ``.pkl`` reader rebuilds torch tensors written by a plain ``pickle.dump`` (as the official
Mask2Former ``tools/convert-pretrained-swin-model-to-d2.py`` writes the ImageNet Swin files) and
still refuses anything that would run code: globals other than the tensor / array ones, a storage
whose bytes are not a weights-only pickle of a storage, a view outside its storage."""

import collections
import io
import os
import pickle
import pickletools
import warnings

import numpy as np
import pytest
import torch

from panfpn.modeling.panoptic_fpn.detectron2_import import load_d2_pickle


def _converted(state, path):
    """What the official converter writes: ``pkl.dump({"model": ..., ...}, f)``, default protocol."""
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "third_party", "matching_heuristics": True}, f)
    return path


def _globals(path):
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(open(path, "rb").read()):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            names.add((strings[-2], strings[-1]))
    return names


def test_tensors_pickled_like_the_official_converter_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    state = collections.OrderedDict([
        ("layers.0.blocks.0.attn.qkv.weight", torch.randn(9, 3, generator=g)),
        ("layers.0.blocks.0.attn.relative_position_index", torch.arange(16).view(4, 4)),  # int64 buffer
        ("half", torch.randn(3, generator=g).half()),
        ("transposed", base.t()),  # a strided view: the whole storage with its stride
        ("row", base[2, 1:4]),  # an offset into the storage
        ("scalar", torch.tensor(3.5)),
        ("empty", torch.zeros(0, 4)),
    ])
    path = _converted(state, tmp_path / "swin.pkl")
    assert _globals(path) == {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                              ("torch.storage", "_load_from_bytes")}
    loaded = load_d2_pickle(path)
    assert list(loaded) == list(state)
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape, name
        assert torch.equal(loaded[name], value), name


def test_numpy_pickles_still_load(tmp_path):
    path = tmp_path / "d2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64(4)}}, f)
    loaded = load_d2_pickle(path)
    assert torch.equal(loaded["a"], torch.arange(6.0).view(2, 3)) and int(loaded["b"]) == 4


class _Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _evil_storage(marker):
    """A storage whose bytes are a pickle that runs ``touch marker`` when torch's own
    ``_load_from_bytes`` (the general unpickler) reads them."""
    return _Reduce(torch.storage._load_from_bytes, pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2))


def test_a_storage_payload_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, _evil_storage(marker), 0, (1,), (1,), False,
                     collections.OrderedDict())
    path = _converted({"x": tensor}, tmp_path / "evil.pkl")
    with pytest.raises(pickle.UnpicklingError, match=r"refusing a tensor storage in .*evil\.pkl.*system"):
        load_d2_pickle(path)
    assert not marker.exists()
    with pytest.raises(Exception):  # the control: plain unpickling runs the payload (then fails)
        pickle.load(open(path, "rb"))
    assert marker.exists()


def _storage_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


@pytest.mark.parametrize("case,match", [
    ("not_a_storage", "hold a dict, not a tensor storage"),  # weights-only readable, but not a storage
    ("outside", r"reach element 99 of a storage of 6"),  # torch itself would read past the storage
    ("negative_stride", "not non-negative integers"),
    ("system", r"refusing to load (posix|nt)\.system"),
    ("parameter", r"refusing to load torch\._utils\._rebuild_parameter"),
])
def test_other_tensor_payloads_are_refused(tmp_path, case, match):
    with warnings.catch_warnings():  # TypedStorage is deprecated: it is what tensors pickle through
        warnings.simplefilter("ignore")
        func, args = torch.zeros(6).storage().__reduce__()
    storage = _Reduce(func, *args)
    rebuild = torch._utils._rebuild_tensor_v2
    obj = {
        "not_a_storage": _Reduce(rebuild, _Reduce(torch.storage._load_from_bytes, _storage_bytes({"a": 1})),
                                 0, (1,), (1,), False, collections.OrderedDict()),
        "outside": _Reduce(rebuild, storage, 0, (100,), (1,), False, collections.OrderedDict()),
        "negative_stride": _Reduce(rebuild, storage, 5, (3,), (-1,), False, collections.OrderedDict()),
        "system": _Reduce(os.system, "true"),
        "parameter": torch.nn.Parameter(torch.zeros(2)),
    }[case]
    with pytest.raises(pickle.UnpicklingError, match=match):
        load_d2_pickle(_converted({"x": obj}, tmp_path / "bad.pkl"))

"""Torch tensors inside a plain pickle, rebuilt without running code from the file.

``pickle.dump`` of a CPU torch tensor (as the official Mask2Former
``tools/convert-pretrained-swin-model-to-d2.py`` writes the ImageNet Swin weights) reduces it to
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[,
metadata])`` and its storage to ``torch.storage._load_from_bytes(data)``, ``data`` being that
storage in torch's legacy ``torch.save`` format. torch's own ``_load_from_bytes`` reads ``data``
with the general unpickler (any code); :func:`storage_from_bytes` reads it with
``torch.load(weights_only=True)`` and accepts only a storage. :func:`rebuild_tensor` accepts only
such a storage, no backward hooks, and a view that lies inside the storage: torch does not check
the last, so a crafted size or stride would read memory outside the storage.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch

# The globals a pickled CPU tensor names; the unpickler maps them to the functions below.
REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
LOAD_STORAGE = ("torch.storage", "_load_from_bytes")


def storage_from_bytes(data: Any, source: str) -> torch.storage.TypedStorage:
    """A storage from its legacy ``torch.save`` bytes, read by torch's weights-only unpickler;
    ``pickle.UnpicklingError`` ("refusing ...", naming ``source``) for anything else."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"refusing a tensor storage in {source}: its data is a "
                                     f"{type(data).__name__}, not bytes")
    try:
        with _typed_storage_quiet():
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(
            f"refusing a tensor storage in {source}: torch's weights-only reader refused its bytes "
            f"({weights_only_reason(err)}; the file may be malicious)") from err
    if not isinstance(obj, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"refusing a tensor storage in {source}: its bytes hold a "
                                     f"{type(obj).__name__}, not a tensor storage")
    return obj


@contextlib.contextmanager
def _typed_storage_quiet() -> Iterator[None]:
    """Legacy storages are TypedStorage, which torch warns about on every use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        yield


def weights_only_reason(err: BaseException) -> str:
    """What torch's weights-only refusal refused, without its paragraphs of general advice."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue")
    kept = [p for p in text.split("\n\n") if p.strip() and not p.strip().startswith(advice)]
    return " ".join(" ".join(kept).split())[:300] or type(err).__name__


def rebuild_tensor(source: str) -> Callable[..., torch.Tensor]:
    """``torch._utils._rebuild_tensor_v2`` for the unpickler of ``source``, with its arguments checked."""

    def rebuild(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                hooks: Any = None, metadata: Any = None) -> torch.Tensor:
        if not isinstance(storage, torch.storage.TypedStorage):
            raise pickle.UnpicklingError(f"refusing a tensor in {source}: its storage is a "
                                         f"{type(storage).__name__}, not a tensor storage")
        if hooks:
            raise pickle.UnpicklingError(f"refusing a tensor in {source}: it has backward hooks")
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, bool) for v in metadata.values())):
            raise pickle.UnpicklingError(f"refusing a tensor in {source}: its metadata is not a dict of flags")
        with _typed_storage_quiet():
            check_view(offset, size, stride, storage.size(), source)
            return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), bool(requires_grad),
                                                   collections.OrderedDict(), metadata)

    return rebuild


def check_view(offset: Any, size: Any, stride: Any, numel: int, source: str) -> None:
    """Raise ``pickle.UnpicklingError`` unless offset / size / stride (non-negative ints) address
    only elements ``0 .. numel - 1`` of the storage."""
    fields: list[Any] = [offset, *_ints(size), *_ints(stride)]
    if len(_ints(size)) != len(_ints(stride)) or not all(type(v) is int and v >= 0 for v in fields):
        raise pickle.UnpicklingError(f"refusing a tensor in {source}: offset {offset!r}, size {size!r}, "
                                     f"stride {stride!r} are not non-negative integers of one length")
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= numel:
        raise pickle.UnpicklingError(f"refusing a tensor in {source}: size {tuple(size)}, stride {tuple(stride)} "
                                     f"at offset {offset} reach element {last} of a storage of {numel}")


def _ints(values: Any) -> Sequence[Any]:
    return tuple(values) if isinstance(values, (tuple, list, torch.Size)) else (None,)

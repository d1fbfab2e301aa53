"""OmegaConf resolvers the configs use; registered when this module is imported.

- ``${panfpn.labels:${data.metadata},KEY}``: ``num_thing_classes``, ``num_sem_classes`` or
  ``thing_sem_labels`` of the dataset's categories (:func:`label_keys` of the instantiated
  ``data.metadata`` node). configs/config.yaml derives ``data.num_thing_classes`` etc. with it, so
  no data config states a class count: the model yamls read them from there;
- ``${panfpn.json_meta:JSON,KEY[,SEM_SEG_MODE]}``: the same keys of the categories in a
  COCO-panoptic JSON (:func:`panfpn.data.folder.json_meta_value`; kept for configs written
  before ``panfpn.labels``);
- ``${panfpn.panoptic_json:ROOT,SPLIT}``: the split's annotation JSON under a dataset folder,
  null when there is none (the dataset builder then names what it tried;
  :func:`panfpn.data.folder.find_split_json`);
- ``${panfpn.num_workers:N}``: ``min(N, CPUs this process may use / processes on the node)``
  DataLoader workers.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from panfpn.data.metadata import DatasetMetadata
from panfpn.utils.cpus import cpus_per_local_process

LABEL_KEYS = ("num_thing_classes", "num_sem_classes", "thing_sem_labels")  # the data.* keys models read


def label_keys(metadata: DatasetMetadata) -> dict[str, Any]:
    """The class counts and thing labels a model needs, as ``metadata``'s categories define them
    (the one derivation: dataset configs and the Python zoo both use it)."""
    return {"num_thing_classes": metadata.num_thing_classes, "num_sem_classes": metadata.num_sem_classes,
            "thing_sem_labels": list(metadata.thing_sem_labels)}


def default_num_workers(cap: int | str = 4) -> int:
    """Loader workers per process: ``min(cap, CPUs / processes on this node)``, at least 1.

    The processes on a node are torchrun's ``LOCAL_WORLD_SIZE`` (1 without it); under Slurm's
    task-per-GPU launch each task's affinity mask already holds only its own CPUs.
    """
    return min(int(cap), cpus_per_local_process())


def _labels(metadata_node: Any, key: str) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if str(key) not in LABEL_KEYS:
        raise ValueError(f"panfpn.labels: unknown key {key!r}; expected one of {LABEL_KEYS}")
    if metadata_node is None:
        raise ValueError("panfpn.labels: config key 'data.metadata' is null; the class counts come "
                         "from the dataset's categories (a _target_ returning a DatasetMetadata)")
    try:
        metadata = instantiate(metadata_node)
    except InstantiationException as err:  # show the builder's own message (names the key or file)
        raise (err.__cause__ or err) from None
    if not isinstance(metadata, DatasetMetadata):
        raise ValueError(f"panfpn.labels: data.metadata built a {type(metadata).__name__}, "
                         "not a panfpn.data.metadata.DatasetMetadata")
    return _node(label_keys(metadata)[str(key)])


def _node(value: Any) -> Any:
    """A list as a ListConfig: ``OmegaConf.resolve`` cannot store a plain list a resolver returns."""
    return OmegaConf.create(value) if isinstance(value, list) else value


def _json_meta(json_file: str | None, key: str, sem_seg_mode: str = "stuff_plus_thing"):
    from panfpn.data.folder import json_meta_value

    return _node(json_meta_value(json_file, str(key), str(sem_seg_mode)))


def _panoptic_json(root, split: str) -> str | None:
    from panfpn.data.folder import find_split_json

    return find_split_json(root, str(split), required=False)


def register_resolvers() -> None:
    """Register the ``panfpn.*`` resolvers (once; importing this module does it)."""
    for name, fn in (("panfpn.labels", _labels), ("panfpn.json_meta", _json_meta),
                     ("panfpn.panoptic_json", _panoptic_json), ("panfpn.num_workers", default_num_workers)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()

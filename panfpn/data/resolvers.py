"""OmegaConf resolvers the data configs use; registered when this module is imported.

- ``${panfpn.json_meta:JSON,KEY[,SEM_SEG_MODE]}``: ``num_thing_classes``, ``num_sem_classes`` or
  ``thing_sem_labels`` of the categories in a COCO-panoptic JSON
  (:func:`panfpn.data.folder.json_meta_value`);
- ``${panfpn.panoptic_json:ROOT,SPLIT}``: the split's annotation JSON under a dataset folder,
  null when there is none (the dataset builder then names what it tried;
  :func:`panfpn.data.folder.find_split_json`);
- ``${panfpn.num_workers:N}``: ``min(N, CPUs this process may use / processes on the node)``
  DataLoader workers.
"""

from __future__ import annotations


from omegaconf import OmegaConf

from panfpn.utils.cpus import cpus_per_local_process


def default_num_workers(cap: int | str = 4) -> int:
    """Loader workers per process: ``min(cap, CPUs / processes on this node)``, at least 1.

    The processes on a node are torchrun's ``LOCAL_WORLD_SIZE`` (1 without it); under Slurm's
    task-per-GPU launch each task's affinity mask already holds only its own CPUs.
    """
    return min(int(cap), cpus_per_local_process())


def _json_meta(json_file: str | None, key: str, sem_seg_mode: str = "stuff_plus_thing"):
    from panfpn.data.folder import json_meta_value

    return json_meta_value(json_file, str(key), str(sem_seg_mode))


def _panoptic_json(root, split: str) -> str | None:
    from panfpn.data.folder import find_split_json

    return find_split_json(root, str(split), required=False)


def register_resolvers() -> None:
    """Register the ``panfpn.*`` resolvers (once; importing this module does it)."""
    for name, fn in (("panfpn.json_meta", _json_meta), ("panfpn.panoptic_json", _panoptic_json),
                     ("panfpn.num_workers", default_num_workers)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()

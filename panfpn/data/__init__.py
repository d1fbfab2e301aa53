"""Data: COCO-panoptic datasets, synthetic data, joint transforms, targets, batching.

- ``metadata``: category ids <-> contiguous labels (DatasetMetadata)
- ``builtin_meta``: COCO panoptic and Cityscapes categories
- ``dataset``: PanopticDataset (JSON + id PNGs + images -> samples, docs/interfaces.md section 1)
- ``transforms`` / ``targets``: joint resize/flip/crop, then targets derived from the id map
- ``collate`` / ``loader`` / ``sampler``: padded batches (section 2); the endless, exactly
  resumable training loader and the ordered, sharded evaluation loader
- ``synthetic``: the default generated dataset; ``build``: hydra ``_target_`` builders
"""

from panfpn.data import resolvers as _resolvers  # noqa: E402,F401 - registers the panfpn.* config resolvers

"""Data: COCO-panoptic datasets, synthetic data, joint transforms, targets, batching.

- ``metadata``: category ids <-> contiguous labels (DatasetMetadata)
- ``builtin_meta``: COCO panoptic and Cityscapes categories
- ``dataset``: PanopticDataset (JSON + id PNGs + images -> samples, docs/interfaces.md section 1);
  ``validate``: the JSON checks made when one opens; ``bad_images``: undecodable files;
  ``check``: ``python -m panfpn.data.check``, every problem of a dataset's files in one run
- ``image_io``: the one image reader (every Pillow mode, EXIF orientation) of datasets and predict
- ``folder``: any COCO-panoptic folder, categories read from its JSON; ``resolvers``: the
  ``panfpn.*`` OmegaConf resolvers of configs/data (registered on import of this package)
- ``transforms`` / ``targets``: joint resize/flip/crop, then targets derived from the id map
- ``collate`` / ``loader`` / ``sampler``: padded batches (section 2); the endless, exactly
  resumable training loader and the ordered, sharded evaluation loader
- ``synthetic``: the default generated dataset; ``build``: hydra ``_target_`` builders;
  ``cityscapes_files``: a Cityscapes split's images against its JSON, when it opens
"""

from panfpn.data import resolvers as _resolvers  # noqa: E402,F401 - registers the panfpn.* config resolvers

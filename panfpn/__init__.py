"""panfpn: Panoptic FPN training, inference and exact PQ evaluation."""

__version__ = "0.1.0"

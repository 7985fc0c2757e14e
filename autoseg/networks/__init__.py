"""Segmentation networks: a registry of explicit-argument 2D/3D networks and their memory model.

>>> from autoseg.networks import build_network, default_network_kwargs
>>> kw = default_network_kwargs("arunet", 3, [8, 16, 32], [[1, 1], [2, 2], [2, 2]], [[3, 3]] * 3)
>>> net = build_network("arunet", kw, in_channels=1, num_classes=3)
>>> import torch; [tuple(o.shape) for o in net(torch.zeros(1, 1, 32, 32))]
[(1, 3, 32, 32), (1, 3, 16, 16)]
"""
from autoseg.networks.config import check_patch_size
from autoseg.networks.memory import measure_peak_activation_bytes
from autoseg.networks.protocol import SegmentationNetwork
from autoseg.networks.registry import (
    DEFAULT_NETWORK,
    NETWORKS,
    build_network,
    count_parameters,
    default_network_kwargs,
    estimate_training_memory,
    feature_map_elements,
    get_spec,
    network_names,
)

__all__ = [
    "DEFAULT_NETWORK",
    "NETWORKS",
    "SegmentationNetwork",
    "build_network",
    "check_patch_size",
    "count_parameters",
    "default_network_kwargs",
    "estimate_training_memory",
    "feature_map_elements",
    "get_spec",
    "measure_peak_activation_bytes",
    "network_names",
]

"""Network registry: name -> :class:`NetworkSpec`, plus building and memory estimation.

Each network lives in its own module that defines a ``NetworkSpec``; registering one is one line in
``REGISTRY`` (module, attribute). Modules are imported on first use, so a network with heavy
optional dependencies costs nothing until it is asked for.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from autoseg.errors import ConfigurationError
from autoseg.networks.config import check_int, check_patch_size
from autoseg.networks.protocol import SegmentationNetwork
from autoseg.networks.spec import NetworkSpec
from autoseg.registry import Registry

#: Where each network's spec lives: (module, attribute), imported by :func:`get_spec` on first use.
REGISTRY: Registry[tuple[str, str]] = Registry("network", {
    "arunet": ("autoseg.networks.arunet", "SPEC"),
    "plain_unet": ("autoseg.networks.baselines", "PLAIN_UNET"),
    "resenc_unet": ("autoseg.networks.baselines", "RESENC_UNET"),
    "uca_net": ("autoseg.networks.uca_net", "SPEC"),
    "ra_vnet": ("autoseg.networks.ra_vnet", "SPEC"),
    "unetpp_aspp": ("autoseg.networks.unetpp_aspp", "SPEC"),
    "transunet": ("autoseg.networks.transunet", "SPEC"),
})

#: Registered network names; ``arunet`` is the default.
NETWORKS: tuple[str, ...] = REGISTRY.names()
DEFAULT_NETWORK = "arunet"
#: fp32 activations.
BYTES_PER_ELEMENT = 4


def network_names() -> list[str]:
    """Names of all registered networks."""
    return list(NETWORKS)


def get_spec(name: str) -> NetworkSpec:
    """The spec of network ``name``; unknown names raise with the known ones and a suggestion."""
    module, attr = REGISTRY[name]
    return getattr(importlib.import_module(module), attr)


def build_network(name: str, kwargs: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """Build network ``name`` from its JSON kwargs (see :func:`default_network_kwargs`).

    Raises ``ConfigurationError`` for an unknown name or invalid arguments. Works under
    ``with torch.device("meta"):`` for allocation-free shape and cost calculations.
    """
    spec = get_spec(name)
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"network kwargs must be a dict, got {type(kwargs).__name__}",
                                 fix="give the network's keyword arguments as a JSON object")
    return spec.cls(in_channels, num_classes, **kwargs)


def default_network_kwargs(name: str, n_stages: int, features_per_stage: Sequence[int],
                           strides: Sequence[Sequence[int]], kernel_sizes: Sequence[Sequence[int]],
                           deep_supervision: bool = True) -> dict[str, Any]:
    """Complete JSON kwargs for network ``name`` from the planner's topology.

    The network adds its own defaults (blocks or convs per stage). The result is validated by
    building the network on the meta device, so a bad topology fails here, not in training.
    """
    spec = get_spec(name)
    kwargs: dict[str, Any] = {
        "n_stages": n_stages,
        "features_per_stage": [int(f) for f in features_per_stage],
        "strides": [[int(s) for s in st] for st in strides],
        "kernel_sizes": [[int(k) for k in ks] for ks in kernel_sizes],
        "deep_supervision": bool(deep_supervision),
    }
    if isinstance(n_stages, int) and n_stages >= 2:
        kwargs.update(spec.defaults(n_stages))
    with torch.device("meta"):
        spec.cls(1, 2, **kwargs)
    return kwargs


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def feature_map_elements(name: str, kwargs: dict[str, Any], in_channels: int, num_classes: int,
                         patch_size: Sequence[int]) -> int:
    """``compute_conv_feature_map_size`` of the network for ``patch_size`` (per sample)."""
    check_patch_size(kwargs, patch_size)
    with torch.device("meta"):
        net = build_network(name, kwargs, in_channels, num_classes)
    if not isinstance(net, SegmentationNetwork):
        raise TypeError(f"network {name!r} ({type(net).__name__}) does not satisfy SegmentationNetwork")
    return int(net.compute_conv_feature_map_size(tuple(patch_size)))


def estimate_training_memory(name: str, kwargs: dict[str, Any], in_channels: int, num_classes: int,
                             patch_size: Sequence[int], batch_size: int) -> int:
    """Bytes of activation memory of one fp32 forward+backward step at this patch and batch.

    ``memory_factor * compute_conv_feature_map_size(patch) * 4 bytes * batch``; parameters,
    gradients of parameters and optimiser state are not included. The factor of each network is
    explained in its module and checked against :func:`~autoseg.networks.memory.measure_peak_activation_bytes`
    by the test suite (within 25%).
    """
    check_int("batch_size", batch_size, 1)
    elements = feature_map_elements(name, kwargs, in_channels, num_classes, patch_size)
    return int(get_spec(name).memory_factor * elements * BYTES_PER_ELEMENT * batch_size)

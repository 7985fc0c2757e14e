"""Validation of network keyword arguments and the operators they imply.

Network kwargs live in ``plans.json``, so they hold only plain JSON values; the operator classes
(``conv_op``, ``norm_op``, ``nonlin``) follow from the dimension, which is ``len(kernel_sizes[0])``.
Everything a user could get wrong when editing a plans file by hand is checked here and raised as a
:class:`~autoseg.errors.ConfigurationError` that names the argument, its value and the fix.
:func:`network_preamble` is what every autoseg network's constructor does first; :func:`stage_sizes`
is the size pyramid its ``compute_conv_feature_map_size`` walks.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from autoseg.errors import ConfigurationError

#: Keys every network accepts; a network adds its own (blocks per stage and so on).
COMMON_KEYS = ("n_stages", "features_per_stage", "strides", "kernel_sizes", "deep_supervision")

_M = TypeVar("_M", bound=nn.Module)

NORM_OP_KWARGS: dict[str, Any] = {"eps": 1e-5, "affine": True}
NONLIN_KWARGS: dict[str, Any] = {"negative_slope": 1e-2, "inplace": True}


def init_he(module: nn.Module) -> None:
    """He (Kaiming) initialisation of every convolution, as nnU-Net does; none of a module whose
    weights are on the meta device.

    The planner builds dozens of networks on the meta device to count FLOPs and feature maps;
    initialising their weights there does no arithmetic but dispatched ~4000 ``normal_`` calls per
    ARUNet, 3 of the 7 s a plan took (cProfile, 2-core VM).
    """
    he = InitWeights_He(1e-2)

    def init(m: nn.Module) -> None:
        weight = getattr(m, "weight", None)
        if not (isinstance(weight, torch.Tensor) and weight.is_meta):
            he(m)

    module.apply(init)


@dataclass(frozen=True)
class Ops:
    """Operator classes and their settings for one dimension (2D or 3D)."""

    dim: int
    conv_op: type[nn.Module]
    transp_op: type[nn.Module]
    norm_op: type[nn.Module]
    nonlin: type[nn.Module]
    norm_op_kwargs: dict[str, Any]
    nonlin_kwargs: dict[str, Any]

    @property
    def interp_mode(self) -> str:
        """Linear interpolation mode matching the dimension."""
        return "bilinear" if self.dim == 2 else "trilinear"


def members(container: Iterable[nn.Module], kind: type[_M]) -> list[_M]:
    """The modules of ``container`` (an ``nn.ModuleList`` or ``nn.Sequential``) in order, typed as
    ``kind``. Indexing or iterating a container gives plain ``nn.Module``s to a type checker, which
    hides the members' own methods (``compute_conv_feature_map_size``); a member that is not a
    ``kind`` raises ``TypeError``."""
    found: list[_M] = []
    for module in container:
        if not isinstance(module, kind):
            raise TypeError(f"expected {kind.__name__} modules, got a {type(module).__name__}")
        found.append(module)
    return found


def ops_for_dim(dim: int) -> Ops:
    """Conv, transposed conv, affine InstanceNorm and in-place LeakyReLU for ``dim`` = 2 or 3."""
    if dim == 2:
        return Ops(2, nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.LeakyReLU,
                   dict(NORM_OP_KWARGS), dict(NONLIN_KWARGS))
    if dim == 3:
        return Ops(3, nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.LeakyReLU,
                   dict(NORM_OP_KWARGS), dict(NONLIN_KWARGS))
    raise ConfigurationError(f"networks work in 2D or 3D, got kernel sizes of dimension {dim}",
                             fix="give kernel_sizes entries with 2 or 3 values")


@dataclass(frozen=True)
class StageConfig:
    """The validated common arguments: stages, features, strides and kernel sizes per stage."""

    n_stages: int
    features_per_stage: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    deep_supervision: bool

    @property
    def dim(self) -> int:
        return len(self.kernel_sizes[0])

    @property
    def total_stride(self) -> tuple[int, ...]:
        return tuple(math.prod(s[a] for s in self.strides) for a in range(self.dim))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int no smaller than ``minimum``, else a ConfigurationError naming ``name``."""
    if not _is_int(value) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}",
                                 fix=f"set {name} to an integer of at least {minimum}")
    return value


def check_int_list(name: str, value: Any, length: int, minimum: int = 1) -> tuple[int, ...]:
    """A list of ``length`` integers each >= ``minimum``."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ConfigurationError(
            f"{name} must be a list of {length} integers, got {value!r}",
            fix=f"give {name} exactly {length} entries")
    for v in value:
        if not _is_int(v) or v < minimum:
            raise ConfigurationError(f"{name} entries must be integers >= {minimum}, got {value!r}",
                                     fix=f"correct {name}")
    return tuple(value)


def _check_per_stage(name: str, value: Any, n_stages: int, dim: int) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n_stages:
        raise ConfigurationError(
            f"{name} must have one entry per stage (n_stages={n_stages}), got {value!r}",
            fix=f"give {name} exactly {n_stages} entries, each a list of {dim} integers")
    return tuple(check_int_list(f"{name}[{i}]", v, dim) for i, v in enumerate(value))


def check_keys(kwargs: Any, accepted: Sequence[str], network: str) -> None:
    """Every key present is known to the network and every required key is there."""
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"network kwargs must be a dict, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigurationError(
            f"network '{network}' does not accept {unknown}; accepted: {', '.join(accepted)}",
            fix="remove or rename those keys in the network kwargs")
    missing = [k for k in COMMON_KEYS if k not in kwargs]
    if missing:
        raise ConfigurationError(f"network '{network}' kwargs lack {missing}",
                                 fix="regenerate the kwargs with default_network_kwargs()")


def parse_topology(kwargs: dict[str, Any]) -> StageConfig:
    """Validate the common keys (stages, features, strides, kernels, deep supervision)."""
    n_stages = check_int("n_stages", kwargs["n_stages"], 2)
    features = check_int_list("features_per_stage", kwargs["features_per_stage"], n_stages)
    kernels_raw = kwargs["kernel_sizes"]
    if not isinstance(kernels_raw, (list, tuple)) or not kernels_raw \
            or not isinstance(kernels_raw[0], (list, tuple)):
        raise ConfigurationError(f"kernel_sizes must be a list of per-stage lists, got {kernels_raw!r}",
                                 fix="give e.g. [[3, 3, 3], [3, 3, 3], ...] with one entry per stage")
    dim = len(kernels_raw[0])
    ops_for_dim(dim)  # rejects dimensions other than 2 and 3
    kernels = _check_per_stage("kernel_sizes", kernels_raw, n_stages, dim)
    if any(k % 2 == 0 for ks in kernels for k in ks):
        raise ConfigurationError(f"kernel sizes must be odd (same padding), got {list(kernels)}",
                                 fix="use kernel sizes 1 or 3")
    strides = _check_per_stage("strides", kwargs["strides"], n_stages, dim)
    if any(s != 1 for s in strides[0]):
        raise ConfigurationError(f"the first stage must not downsample, got strides[0]={list(strides[0])}",
                                 fix=f"set strides[0] to {[1] * dim}")
    ds = kwargs["deep_supervision"]
    if not isinstance(ds, bool):
        raise ConfigurationError(f"deep_supervision must be true or false, got {ds!r}")
    return StageConfig(n_stages, features, strides, kernels, ds)


def check_channels(in_channels: Any, num_classes: Any) -> None:
    """At least one input channel and at least one output class."""
    check_int("in_channels", in_channels, 1)
    check_int("num_classes", num_classes, 1)


def check_patch_size(kwargs: dict[str, Any], patch_size: Sequence[int]) -> None:
    """Raise unless every patch axis is a positive multiple of the network's total stride."""
    topo = parse_topology(kwargs)
    patch = tuple(patch_size)
    if len(patch) != topo.dim or not all(_is_int(p) and p > 0 for p in patch):
        raise ConfigurationError(
            f"patch size {list(patch)} does not fit a {topo.dim}D network",
            fix=f"give {topo.dim} positive integers")
    total = topo.total_stride
    bad = [a for a in range(topo.dim) if patch[a] % total[a]]
    if bad:
        fixed = [max(t, p // t * t) for p, t in zip(patch, total)]
        raise ConfigurationError(
            f"patch size {list(patch)} is not divisible by the total stride {list(total)} "
            f"on axes {bad}",
            fix=f"use a patch such as {fixed}, or fewer downsampling stages")


def check_input_divisible(spatial: Sequence[int], total_stride: Sequence[int]) -> None:
    """Raise unless a forward input's spatial size is a multiple of the network's total stride."""
    if len(spatial) != len(total_stride) or any(s % t for s, t in zip(spatial, total_stride)):
        raise ConfigurationError(
            f"input of spatial size {list(spatial)} is not divisible by the network's total stride "
            f"{list(total_stride)}",
            fix="autoseg feeds the network patches of plans.json's patch_size: if that was edited, make "
                "each axis a multiple of the total stride (e.g. "
                f"{[max(t, s // t * t) for s, t in zip(spatial, total_stride)]}) or re-plan with "
                "autoseg plan_and_preprocess --only plan --force; when calling the network yourself, pad "
                "or crop its input to such a multiple")


def check_input_size(input_size: Sequence[int], total_stride: Sequence[int]) -> None:
    """``compute_conv_feature_map_size`` takes the spatial sizes only."""
    if len(input_size) != len(total_stride):
        raise ConfigurationError(
            f"input_size must be the {len(total_stride)} spatial sizes only, got {list(input_size)}")


def stage_counts(kwargs: dict[str, Any], defaults: dict[str, Any], key: str) -> tuple[int, ...]:
    """``kwargs[key]``, else ``defaults[key]``: integers >= 1, as many as the default has (one per
    encoder or decoder stage)."""
    default = defaults[key]
    return check_int_list(key, kwargs.get(key, default), len(default))


def network_preamble(net: DecoderDeepSupervision, network: str, accepted: Sequence[str], in_channels: Any,
                     num_classes: Any, kwargs: Any) -> tuple[StageConfig, Ops]:
    """What every autoseg network's constructor does first: check the channels, the keys and the
    topology (in that order, so a bad plans file gets the same first error from every network), pick
    the 2D or 3D operators, and set the protocol attributes and ``total_stride`` on ``net``."""
    check_channels(in_channels, num_classes)
    check_keys(kwargs, accepted, network)
    topo = parse_topology(kwargs)
    ops = ops_for_dim(topo.dim)
    net.input_channels, net.num_classes = in_channels, num_classes
    net.conv_op, net.norm_op, net.nonlin = ops.conv_op, ops.norm_op, ops.nonlin
    net.total_stride = topo.total_stride
    return topo, ops


def numel(shape: Sequence[int]) -> int:
    """Elements of a map of ``shape``, e.g. ``numel([channels, *spatial])``."""
    return int(np.prod(shape, dtype=np.int64))


def stage_sizes(input_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Spatial size of every encoder stage's output for ``input_size``, finest first: ``sizes[i]`` is
    the size of ``skips[i]``, so decoder stage ``s`` (coarse to fine) works at ``sizes[-(s + 2)]``."""
    sizes = [list(input_size)]
    for stride in strides[1:]:
        sizes.append([i // j for i, j in zip(sizes[-1], stride)])
    return sizes


class DecoderDeepSupervision:
    """Base of every registered network: the contract's attributes (set by :func:`network_preamble`,
    declared here for type checkers), and ``deep_supervision`` read from and written to
    ``self.decoder``, so that inference can switch the extra outputs off on a trained network (the
    heads stay, so checkpoints load either way)."""

    input_channels: int
    num_classes: int
    conv_op: type[nn.Module]
    norm_op: type[nn.Module]
    nonlin: type[nn.Module]
    total_stride: tuple[int, ...]
    decoder: Any

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

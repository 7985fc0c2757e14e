"""Channels-last (NDHWC) inference on the CPU: the same network and weights, laid out the way
oneDNN's convolutions want them.

Measured on an Intel Xeon with AMX-bf16 (torch 2.13.0+cpu, 2 threads; ``docs/benchmarks.md``, "Where
a prediction pass goes"): with PyTorch's default NCDHW layout, every bf16 convolution first copies its
input into the layout oneDNN computes in, and a quarter of ARUNet's prediction pass was those copies
(``aten::copy_`` under ``mkldnn_convolution``). One 3x3x3 convolution of 16 channels on 2 x 24 x 96 x 96
voxels took 10.9 ms from NCDHW and 4.2 ms from NDHWC. Converting the network alone is not enough: two
operators turn a channels-last tensor back into NCDHW, so the next convolution copies again:

- ``InstanceNorm3d`` (it views the batch as channels); :class:`torch.nn.GroupNorm` with one group per
  channel computes the same normalisation (per sample and channel over the spatial axes, the same
  affine weight and bias under the same names) and keeps the layout;
- ``AvgPool3d`` (the residual shortcut of a downsampling block; it has no bf16 kernel either, so
  autocast ran it in fp32); with the kernel equal to the stride and no padding it is a strided
  depthwise convolution with constant weights, which keeps the layout and runs in bf16.

:func:`for_cpu_inference` returns a converted copy and leaves the caller's network alone (fold
validation converts a copy of the network it trained, once for all its cases), or converts a
network in place that was loaded for the prediction alone (each fold's, once per case). Training
keeps NCDHW: there the channels-last backward passes were slower (a training step took twice as
long on the same machine).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StridedMean", "for_cpu_inference", "is_channels_last"]


class StridedMean(nn.Module):
    """``AvgPool3d(kernel_size=k, stride=k)`` as a depthwise convolution with weights 1/prod(k): the
    same windows and the same floor on sizes the stride does not divide; keeps channels-last."""

    def __init__(self, kernel: tuple[int, int, int]):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        weight = torch.full((channels, 1, *self.kernel), 1.0 / (self.kernel[0] * self.kernel[1] * self.kernel[2]),
                            dtype=x.dtype, device=x.device)  # autocast casts it with the input
        return F.conv3d(x, weight.contiguous(memory_format=torch.channels_last_3d), stride=self.kernel,
                        groups=channels)


def _triple(value: int | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    if isinstance(value, (tuple, list)):
        a, b, c = (int(v) for v in value)
        return a, b, c
    return int(value), int(value), int(value)


def _replacement(module: nn.Module) -> nn.Module | None:
    """The layout-keeping equivalent of ``module``, or None where it has none (left as it is)."""
    if isinstance(module, nn.InstanceNorm3d) and not module.track_running_stats:
        norm = nn.GroupNorm(module.num_features, module.num_features, eps=module.eps, affine=module.affine)
        if module.affine:
            norm.weight = module.weight
            norm.bias = module.bias
        return norm
    if isinstance(module, nn.AvgPool3d):
        kernel, stride = _triple(module.kernel_size), _triple(module.stride or module.kernel_size)
        if (kernel == stride and _triple(module.padding) == (0, 0, 0) and not module.ceil_mode
                and module.divisor_override is None):
            return StridedMean(kernel)
    return None


def _swap(module: nn.Module) -> None:
    for name, child in module.named_children():
        new = _replacement(child)
        if new is not None:
            setattr(module, name, new)
        else:
            _swap(child)


def for_cpu_inference(network: nn.Module, copy_first: bool = True) -> nn.Module:
    """``network`` in channels-last with its instance norms and stride-sized average pools replaced
    by their layout-keeping equivalents: a copy, or with ``copy_first=False`` ``network`` itself,
    converted in place (for a network the caller loaded for this prediction alone). ``network``
    unchanged when it is converted already or holds no 3D convolution (an ONNX Runtime session, a
    2D network: nothing to gain there)."""
    if is_channels_last(network) or not any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
                                            for m in network.modules()):
        return network
    converted = copy.deepcopy(network) if copy_first else network
    _swap(converted)
    return converted.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]


def is_channels_last(network: nn.Module) -> bool:
    """Whether ``network``'s 3D convolutions hold their weights in channels-last (as
    :func:`for_cpu_inference` leaves them): its inputs should then be channels-last too."""
    for m in network.modules():
        if isinstance(m, nn.Conv3d) and m.weight.shape[1] > 1 and max(m.weight.shape[2:]) > 1:
            return m.weight.is_contiguous(memory_format=torch.channels_last_3d) and not m.weight.is_contiguous()
    return False

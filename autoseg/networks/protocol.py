"""The contract every registered network satisfies.

Training, inference and the planner rely only on these members, so any ``nn.Module`` that has them
can be registered. The test suite checks every registered network against this protocol.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class SegmentationNetwork(Protocol):
    """A 2D or 3D segmentation network configured by explicit arguments.

    ``forward`` returns logits of shape ``(N, num_classes, *spatial)``; with ``deep_supervision``
    true it returns a list of logits at full, 1/2, 1/4 ... resolution (highest first, one per
    decoder stage). ``deep_supervision`` is a plain settable attribute so inference can switch the
    extra outputs off without rebuilding the network (their weights are always built, so a
    checkpoint loads either way).
    """

    input_channels: int
    num_classes: int
    conv_op: type[nn.Module]
    norm_op: type[nn.Module]
    nonlin: type[nn.Module]
    deep_supervision: bool

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements (per sample) of the feature maps the network produces for a patch ``input_size``.

        ``input_size`` is the spatial size only, without batch and channel axes.
        """
        ...

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        ...

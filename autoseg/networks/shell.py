"""The encoder-decoder shell that autoseg's own networks share.

Each network (ARUNet, UCA-Net, RA V-Net, TransUNet, UNet++ with ASPP) differs in its blocks: what a
decoder stage does with the map from below and the encoder's skip, and what sits at the bottleneck.
What they share lives here once:

- :class:`EncoderDecoderNetwork`: the input check, ``encoder -> (bottleneck) -> decoder``, and the
  feature-map count the planner's memory model reads (:mod:`autoseg.networks.registry`);
- :class:`CoarseToFineDecoder`: the walk over the skips from coarse to fine, one 1x1 head a stage,
  the logits of the last stage (or of every stage with deep supervision, finest first, as nnU-Net's
  decoders return them), and the matching feature-map count;
- :func:`plain_encoder`: dynamic-network-architectures' plain conv encoder from a parsed topology.

A subclass builds its modules in its own ``__init__`` (their names are the checkpoints' keys, and
their order fixes the seeded initial weights), and supplies only its stage: :meth:`CoarseToFineDecoder.step`
and :meth:`CoarseToFineDecoder.step_map_size`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from torch import nn

from autoseg.networks.config import (DecoderDeepSupervision, Ops, StageConfig, check_input_divisible,
                                     check_input_size, numel, stage_sizes)


def plain_encoder(in_channels: int, topo: StageConfig, ops: Ops, n_conv: Sequence[int]) -> PlainConvEncoder:
    """dynamic-network-architectures' plain conv encoder for ``topo``, returning every stage's skip."""
    return PlainConvEncoder(
        in_channels, topo.n_stages, list(topo.features_per_stage), ops.conv_op, [list(k) for k in topo.kernel_sizes],
        [list(s) for s in topo.strides], list(n_conv), True, ops.norm_op, ops.norm_op_kwargs, None, None,
        ops.nonlin, ops.nonlin_kwargs, return_skips=True)


def segmentation_head(ops: Ops, channels: int, num_classes: int) -> nn.Module:
    """A decoder stage's 1x1 conv to the class logits (every autoseg decoder's heads)."""
    return ops.conv_op(channels, num_classes, 1, 1, 0, bias=True)


class CoarseToFineDecoder(nn.Module):
    """A decoder that walks the encoder's skips from the deepest up, one stage per skip.

    Sets ``deep_supervision``, ``num_classes``, ``skip_channels`` (coarse to fine) and ``strides``
    (the encoder's); the subclass builds its stage modules and ``seg_layers`` (one head per stage,
    :meth:`head`) and defines :meth:`step` and :meth:`step_map_size`.
    """

    seg_layers: nn.ModuleList

    def __init__(self, encoder: Any, num_classes: int, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        self.skip_channels: list[int] = list(encoder.output_channels)[-2::-1]
        self.strides: list[tuple[int, ...]] = [tuple(s) for s in encoder.strides]

    def head(self, ops: Ops, channels: int) -> nn.Module:
        """A stage's 1x1 segmentation head."""
        return segmentation_head(ops, channels, self.num_classes)

    def step(self, s: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Stage ``s`` (0 = the coarsest): the map from below and the encoder's skip -> this stage's map."""
        raise NotImplementedError

    def step_map_size(self, s: int, size: Sequence[int]) -> int:
        """Elements per sample of the maps stage ``s`` produces at spatial ``size`` (head excluded)."""
        raise NotImplementedError

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.seg_layers) - 1
        for s in range(len(self.seg_layers)):
            x = self.step(s, x, skips[-(s + 2)])
            if self.deep_supervision or s == last:
                outputs.append(self.seg_layers[s](x))
        outputs.reverse()
        return outputs if self.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Every stage's maps plus the logits of the heads that run."""
        sizes = stage_sizes(input_size, self.strides)
        total = 0
        last = len(self.seg_layers) - 1
        for s in range(len(self.seg_layers)):
            size = sizes[-(s + 2)]
            total += self.step_map_size(s, size)
            if self.deep_supervision or s == last:
                total += numel([self.num_classes, *size])
        return total


class EncoderDecoderNetwork(DecoderDeepSupervision, nn.Module):
    """``encoder`` (skips, finest first), an optional bottleneck on the deepest skip, ``decoder``.

    A subclass with a bottleneck overrides :meth:`encode` and :meth:`bottleneck_map_size`.
    """

    encoder: Any

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The skips the decoder reads, finest first."""
        return self.encoder(x)

    def bottleneck_map_size(self, size: Sequence[int]) -> int:
        """Elements per sample of the bottleneck's maps at the deepest stage's spatial ``size``."""
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input_divisible(tuple(x.shape[2:]), self.total_stride)
        return self.decoder(self.encode(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements per sample of the maps of every conv, attention, bottleneck and head for ``input_size``."""
        check_input_size(input_size, self.total_stride)
        bottleneck = [s // t for s, t in zip(input_size, self.total_stride)]
        return int(self.encoder.compute_conv_feature_map_size(list(input_size))) \
            + self.bottleneck_map_size(bottleneck) + self.decoder.compute_conv_feature_map_size(input_size)

"""RA V-Net: CofRes encoder, channel attention and attention-recovery decoder (Lee et al., 2021).

Built from the paper's description (Z. Lee, S. Qi, C. Fan, Z. Xie, arXiv, December 2021), for 2D and
3D alike:

- CofRes block (Composite Original Feature Residual): four 3x3 conv-norm-LeakyReLU at a quarter of
  the block's channels, chained (each reads the previous one's output, so their receptive fields
  grow 3, 5, 7, 9: four parallel 3x3 convs on the same input would only be one wider conv); their
  outputs are concatenated, fused by a 1x1 conv-norm and added to the block input (through a 1x1
  conv-norm projection when the channel count changes), then LeakyReLU. Features per stage must
  therefore be multiples of 4. Encoder stage s > 0 first downsamples with a V-Net down-convolution
  (conv-norm-LeakyReLU whose kernel and stride are that stage's stride), then ``n_blocks_per_stage``
  CofRes blocks; stage 0 maps the input channels with its first CofRes block.
- Channel attention (CA) on the deepest skip connection: the C x C affinity
  ``A = softmax(X X^T / N)`` over the skip's channels (``X`` is C x N, flattened positions; dividing
  by N keeps the softmax from saturating on large maps, where DANet's unscaled energy does), output
  ``gamma * A X + X`` with ``gamma`` a learned scalar initialised to 0 (the module starts as the
  identity). ``gamma`` scales ``A`` rather than ``A X``, so no extra full map is kept for it.
- Attention-recovery (AR) decoder block: the coarser feature is upsampled by a transposed conv
  straight to half the skip's channels and the skip is reduced to half by a 1x1 conv-norm-LeakyReLU
  (the paper's channel adjustment that cuts the cost); a convolutional LSTM cell (gates
  ``i, f, g, o`` from one conv over ``cat(x_t, h_{t-1})``, kernel = the stage's kernel) reads the
  length-2 sequence (upsampled, skip): the decoder context fills the memory first, then the input
  and forget gates of the second step, computed from the skip and that context, decide per voxel and
  channel which skip detail enters. The final hidden state is brought back to the skip's channels by
  ``n_conv_per_stage_decoder`` conv-norm-LeakyReLU (``StackedConvBlocks``), then a 1x1 head (deep
  supervision uses every decoder stage's head). The first step starts from zero state, so its gate
  conv runs on the input half of the weights only; the forget-gate bias starts at 1.

Memory model (``saved_per_count``): ``compute_conv_feature_map_size`` counts one map per conv,
transposed conv and head output, and the channel attention's output; C x C affinities are not
counted. With C the stage's channels and H = C/2: encoder stage 0 counts 3C (branches C, fusion C,
projection C) and keeps 6C (branch conv and activation outputs 2C, the concatenation C, fusion
conv output and block output 2C, the projection's conv output C); deeper stages count 3C (down-conv
C, branches C, fusion C) and keep 7C. An AR block counts 6C (upsampled H, reduced skip H, two gate
maps 4H each, recovery conv C) and keeps 10C (step 1: its input and the i, g, o gates, the cell and
its tanh, 6H; step 2: the reduced skip's conv and activation outputs 2H, the concatenation 2H, four
gates and tanh of the cell 5H; the final hidden state H; recovery conv 2C). At the finest stage,
which holds most of the elements: (6 + 10) / (3 + 6) = 16/9.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.simple_conv_blocks import (
    ConvDropoutNormReLU,
    StackedConvBlocks,
)
from torch import nn

from autoseg.errors import ConfigurationError
from autoseg.networks.config import (
    COMMON_KEYS,
    Ops,
    StageConfig,
    init_he,
    members,
    network_preamble,
    numel,
    stage_counts,
    stage_sizes,
)
from autoseg.networks.shell import CoarseToFineDecoder, EncoderDecoderNetwork
from autoseg.networks.spec import NetworkSpec

RA_KEYS = COMMON_KEYS + ("n_blocks_per_stage", "n_conv_per_stage_decoder")
#: Branches of a CofRes block; each stage's features are split among them.
COFRES_BRANCHES = 4


def _conv_norm(ops: Ops, cin: int, cout: int, kernel: Sequence[int] | int, stride: Sequence[int] | int = 1,
               act: bool = True) -> ConvDropoutNormReLU:
    """conv-norm(-LeakyReLU) with same padding."""
    return ConvDropoutNormReLU(ops.conv_op, cin, cout, kernel, stride, True, ops.norm_op, ops.norm_op_kwargs,
                               None, None, ops.nonlin if act else None, ops.nonlin_kwargs if act else None)


class CofResBlock(nn.Module):
    """Four chained 3x3 convs at C/4, concatenated, 1x1 fusion, residual sum, LeakyReLU."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int, kernel_size: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        quarter = out_channels // COFRES_BRANCHES
        self.branches = nn.ModuleList(
            _conv_norm(ops, in_channels if b == 0 else quarter, quarter, kernel_size)
            for b in range(COFRES_BRANCHES))
        self.fuse = _conv_norm(ops, out_channels, out_channels, 1, act=False)
        self.project = _conv_norm(ops, in_channels, out_channels, 1, act=False) \
            if in_channels != out_channels else None
        self.act = ops.nonlin(**ops.nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, y = [], x
        for branch in self.branches:
            y = branch(y)
            feats.append(y)
        out = self.fuse(torch.cat(feats, 1))
        out += x if self.project is None else self.project(x)
        return self.act(out)

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """Branches (C in all), fusion (C) and the projection (C) when present."""
        maps = 2 if self.project is None else 3
        return maps * numel([self.out_channels, *size])


class CofResEncoder(nn.Module):
    """Per stage: V-Net down-convolution (stages > 0), then CofRes blocks; returns every stage."""

    def __init__(self, ops: Ops, in_channels: int, topo: StageConfig, n_blocks: Sequence[int]):
        super().__init__()
        self.output_channels = list(topo.features_per_stage)
        self.strides = [tuple(s) for s in topo.strides]
        self.kernel_sizes = [tuple(k) for k in topo.kernel_sizes]
        stages, cin = [], in_channels
        for s, feat in enumerate(self.output_channels):
            layers: list[nn.Module] = []
            if s > 0:
                layers.append(_conv_norm(ops, cin, feat, self.strides[s], self.strides[s]))
                cin = feat
            for _ in range(n_blocks[s]):
                layers.append(CofResBlock(ops, cin, feat, self.kernel_sizes[s]))
                cin = feat
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        total, size = 0, list(input_size)
        for stage in members(self.stages, nn.Sequential):
            for layer in stage:
                if isinstance(layer, ConvDropoutNormReLU):  # the down-convolution
                    total += int(layer.compute_conv_feature_map_size(size))
                    size = [i // j for i, j in zip(size, layer.stride)]
                elif isinstance(layer, CofResBlock):
                    total += layer.compute_conv_feature_map_size(size)
                else:
                    raise TypeError(f"a CofRes encoder stage holds a {type(layer).__name__}")
        return total


class ChannelAttention(nn.Module):
    """``gamma * softmax(X X^T / N) X + X`` over the channels of X; ``gamma`` starts at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    @staticmethod
    def affinity(x: torch.Tensor) -> torch.Tensor:
        """(N, C, C) channel affinity; each row sums to one."""
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return torch.softmax(torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[-1], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return torch.bmm(self.gamma * self.affinity(x), flat).view_as(x) + x


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell: gates ``i, f, g, o`` from one conv over ``cat(x_t, h_{t-1})``."""

    def __init__(self, ops: Ops, in_channels: int, hidden: int, kernel_size: Sequence[int]):
        super().__init__()
        self.in_channels, self.hidden = in_channels, hidden
        gates = ops.conv_op(in_channels + hidden, 4 * hidden, tuple(kernel_size), 1,
                            [(k - 1) // 2 for k in kernel_size], bias=True)
        assert isinstance(gates, (nn.Conv2d, nn.Conv3d))  # ops.conv_op is Conv2d or Conv3d
        self.gates: nn.Conv2d | nn.Conv3d = gates
        self._conv = F.conv3d if ops.dim == 3 else F.conv2d

    def reset_forget_bias(self, value: float = 1.0) -> None:
        """Start the forget gate open (a common LSTM initialisation)."""
        bias = self.gates.bias
        assert bias is not None  # the gates' conv is built with bias=True
        with torch.no_grad():
            bias[self.hidden:2 * self.hidden].fill_(value)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; ``state`` (h, c) of None is the zero state. Returns the new (h, c)."""
        if state is None:  # h = 0: only the input half of the weights contributes
            z = self._conv(x, self.gates.weight[:, :self.in_channels], self.gates.bias,
                           padding=self.gates.padding)
        else:
            z = self.gates(torch.cat((x, state[0]), 1))
        i, f, g, o = z.chunk(4, 1)
        c = torch.sigmoid(i) * torch.tanh(g)
        if state is not None:
            c = c + torch.sigmoid(f) * state[1]
        return torch.sigmoid(o) * torch.tanh(c), c


class AttentionRecovery(nn.Module):
    """Upsample to C/2, reduce the skip to C/2, ConvLSTM over (up, skip), convs back to C."""

    def __init__(self, ops: Ops, below: int, skip: int, stride: Sequence[int], kernel: Sequence[int],
                 n_conv: int):
        super().__init__()
        self.channels, self.hidden = skip, skip // 2
        self.upsample = ops.transp_op(below, self.hidden, tuple(stride), tuple(stride), bias=True)
        self.reduce = _conv_norm(ops, skip, self.hidden, 1)
        self.lstm = ConvLSTMCell(ops, self.hidden, self.hidden, kernel)
        self.recover = StackedConvBlocks(n_conv, ops.conv_op, self.hidden, skip, kernel, 1, True, ops.norm_op,
                                         ops.norm_op_kwargs, None, None, ops.nonlin, ops.nonlin_kwargs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        state = self.lstm(self.upsample(x))
        h, _ = self.lstm(self.reduce(skip), state)
        return self.recover(h)

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """Upsampled and reduced maps, two steps of four gates, recovery convs."""
        return 10 * numel([self.hidden, *size]) + int(self.recover.compute_conv_feature_map_size(size))


class RAVNetDecoder(CoarseToFineDecoder):
    """Channel attention on the deepest skip, then AR blocks and heads, coarse to fine."""

    def __init__(self, encoder: CofResEncoder, ops: Ops, num_classes: int, n_conv: Sequence[int],
                 deep_supervision: bool):
        super().__init__(encoder, num_classes, deep_supervision)
        feats = encoder.output_channels
        self.channel_attention = ChannelAttention()
        blocks, heads = [], []
        for s in range(1, len(feats)):
            skip = feats[-(s + 1)]
            blocks.append(AttentionRecovery(ops, feats[-s], skip, self.strides[-s], encoder.kernel_sizes[-(s + 1)],
                                            n_conv[s - 1]))
            heads.append(self.head(ops, skip))
        self.stages = nn.ModuleList(blocks)
        self.seg_layers = nn.ModuleList(heads)

    def step(self, s: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.stages[s](x, self.channel_attention(skip) if s == 0 else skip)

    def step_map_size(self, s: int, size: Sequence[int]) -> int:
        return members(self.stages, AttentionRecovery)[s].compute_conv_feature_map_size(size)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Channel attention output, then per stage the AR block and the logits (when produced)."""
        deepest_skip = stage_sizes(input_size, self.strides)[-2]
        return numel([self.skip_channels[0], *deepest_skip]) + super().compute_conv_feature_map_size(input_size)


def _check_features(features: Sequence[int]) -> None:
    bad = [f for f in features if f % COFRES_BRANCHES]
    if bad:
        fixed = [-(-f // COFRES_BRANCHES) * COFRES_BRANCHES for f in features]  # rounded up
        raise ConfigurationError(
            f"ra_vnet splits each stage's features among {COFRES_BRANCHES} CofRes branches, so "
            f"features_per_stage must be multiples of {COFRES_BRANCHES}; got {list(features)} ({bad} are not)",
            fix=f"use features_per_stage such as {fixed}")


class RAVNet(EncoderDecoderNetwork):
    """RA V-Net for 2D or 3D patches (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any):
        super().__init__()
        topo, ops = network_preamble(self, "ra_vnet", RA_KEYS, in_channels, num_classes, kwargs)
        _check_features(topo.features_per_stage)
        defaults = _defaults(topo.n_stages)
        blocks = stage_counts(kwargs, defaults, "n_blocks_per_stage")
        n_dec = stage_counts(kwargs, defaults, "n_conv_per_stage_decoder")
        self.encoder = CofResEncoder(ops, in_channels, topo, blocks)
        self.decoder = RAVNetDecoder(self.encoder, ops, num_classes, n_dec, topo.deep_supervision)
        init_he(self)
        for stage in self.decoder.stages:
            stage.lstm.reset_forget_bias()


def _defaults(n_stages: int) -> dict[str, Any]:
    return {"n_blocks_per_stage": [1] * n_stages, "n_conv_per_stage_decoder": [1] * (n_stages - 1)}


SPEC = NetworkSpec(
    name="ra_vnet",
    cls=RAVNet,
    defaults=_defaults,
    # Derived in the module docstring: at the finest stage the encoder keeps 6 maps per 3 counted and
    # an attention-recovery block 10 per 6 -> 16/9.
    saved_per_count=16 / 9,
    summary="RA V-Net: CofRes residual encoder, channel attention, ConvLSTM attention-recovery decoder",
    paper="Lee et al., RA V-Net: Deep learning network for automated liver segmentation, arXiv, 2021",
)

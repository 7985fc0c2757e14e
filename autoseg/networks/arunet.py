"""ARUNet: Attention Residual U-Net, autoseg's default network.

Encoder: dynamic-network-architectures ``ResidualEncoder`` without a stem; every stage is a stack
of ``BasicBlockD`` residual blocks (y = act(x + F(x)), F = two conv-norm layers); the first block of
a stage downsamples with a strided conv, and its shortcut is average pooling + 1x1 conv + norm when
the stride or the channel count changes. Decoder stage (coarse to fine): transposed-conv upsampling
``up``, an additive attention gate on the skip connection, a fusion residual block
``act(up + F(cat(up, gated skip)))`` whose shortcut is the upsampled path (no 1x1 projection at
full resolution), optionally more residual blocks, and a 1x1 segmentation head (deep supervision
uses the heads of every decoder stage).

Attention gate (Oktay et al. 2018), in the paper's own, cheapest variant: the skip ``x`` is
brought down to the gating signal's grid by ``W_x`` (a conv whose kernel and stride equal that
stage's stride), the gating signal ``g`` is the coarser decoder feature itself (no upsampling), so
``relu(W_x x + W_g g)``, ``psi`` and the sigmoid all run at the coarse resolution; only the
one-channel coefficient map is upsampled (linear interpolation) and multiplied with ``x``. At full
resolution the gate costs one map of one channel and one multiplication.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks
from dynamic_network_architectures.building_blocks.residual_encoders import (
    ResidualEncoder,
)
from dynamic_network_architectures.building_blocks.simple_conv_blocks import (
    ConvDropoutNormReLU,
)
from torch import nn

from autoseg.networks.config import (
    COMMON_KEYS,
    Ops,
    init_he,
    members,
    network_preamble,
    numel,
    stage_counts,
)
from autoseg.networks.shell import CoarseToFineDecoder, EncoderDecoderNetwork
from autoseg.networks.spec import NetworkSpec

ARUNET_KEYS = COMMON_KEYS + ("n_blocks_per_stage", "n_blocks_per_stage_decoder")


class AttentionGate(nn.Module):
    """Additive attention gate ``x * sigmoid(psi(relu(W_x x + W_g g)))`` computed on g's grid."""

    def __init__(self, ops: Ops, skip_channels: int, gate_channels: int, stride: Sequence[int]):
        super().__init__()
        self.inter_channels = max(1, skip_channels // 2)
        self.stride = tuple(stride)
        self.mode = ops.interp_mode
        self.theta_x = ops.conv_op(skip_channels, self.inter_channels, self.stride, self.stride, bias=False)
        self.phi_g = ops.conv_op(gate_channels, self.inter_channels, 1, 1, bias=True)
        self.psi = ops.conv_op(self.inter_channels, 1, 1, 1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        q = F.relu(self.theta_x(x) + self.phi_g(g), inplace=True)
        alpha = torch.sigmoid(self.psi(q))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode=self.mode, align_corners=False)
        return x * alpha

    def compute_conv_feature_map_size(self, skip_size: Sequence[int]) -> int:
        """theta, phi and psi maps on the coarse grid plus the upsampled coefficient map."""
        coarse = [s // t for s, t in zip(skip_size, self.stride)]
        return 2 * numel([self.inter_channels, *coarse]) + numel(coarse) + numel(skip_size)


class FusionBlock(nn.Module):
    """First decoder block: ``act(up + F(cat(up, gated_skip)))``, F = two conv-norm layers.

    The shortcut is the upsampled decoder path itself, so unlike a residual block on the
    concatenation it needs no 1x1 projection at the finest, most expensive resolution.
    """

    def __init__(self, ops: Ops, channels: int, kernel_size: Sequence[int]):
        super().__init__()
        self.channels = channels
        self.conv1 = ConvDropoutNormReLU(ops.conv_op, 2 * channels, channels, kernel_size, 1, True, ops.norm_op,
                                         ops.norm_op_kwargs, None, None, ops.nonlin, ops.nonlin_kwargs)
        self.conv2 = ConvDropoutNormReLU(ops.conv_op, channels, channels, kernel_size, 1, True, ops.norm_op,
                                         ops.norm_op_kwargs, None, None, None, None)
        self.act = ops.nonlin(**ops.nonlin_kwargs)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(torch.cat((up, skip), 1)))
        out += up
        return self.act(out)

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        return 2 * numel([self.channels, *size])


def _residual_blocks(ops: Ops, n_blocks: int, channels: int, kernel: Sequence[int]) -> nn.Module:
    """``n_blocks`` identity-shortcut residual blocks, or an identity when there are none."""
    if n_blocks < 1:
        return nn.Identity()
    return StackedResidualBlocks(n_blocks, ops.conv_op, channels, channels, kernel, 1, True, ops.norm_op,
                                 ops.norm_op_kwargs, None, None, ops.nonlin, ops.nonlin_kwargs)


class ARUNetDecoder(CoarseToFineDecoder):
    """Upsample, gate the skip, fuse (+ more residual blocks), segmentation head; coarse to fine."""

    def __init__(self, encoder: ResidualEncoder, ops: Ops, num_classes: int,
                 n_blocks: Sequence[int], deep_supervision: bool):
        super().__init__(encoder, num_classes, deep_supervision)
        feats = list(encoder.output_channels)
        up, gates, fuse, refine, heads = [], [], [], [], []
        for s in range(1, len(feats)):
            below, skip, stride = feats[-s], feats[-(s + 1)], self.strides[-s]
            kernel = encoder.kernel_sizes[-(s + 1)]
            up.append(ops.transp_op(below, skip, stride, stride, bias=True))
            gates.append(AttentionGate(ops, skip, below, stride))
            fuse.append(FusionBlock(ops, skip, kernel))
            refine.append(_residual_blocks(ops, n_blocks[s - 1] - 1, skip, kernel))
            heads.append(self.head(ops, skip))
        self.upsample = nn.ModuleList(up)
        self.gates = nn.ModuleList(gates)
        self.fuse = nn.ModuleList(fuse)
        self.refine = nn.ModuleList(refine)
        self.seg_layers = nn.ModuleList(heads)

    def step(self, s: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.refine[s](self.fuse[s](self.upsample[s](x), self.gates[s](skip, x)))

    def step_map_size(self, s: int, size: Sequence[int]) -> int:
        """Upsampled map, gate maps, fusion and residual blocks.

        The gated skip and the concatenation re-use maps already counted (skip and upsample), as
        the library's decoder does not count its concatenation either.
        """
        refine = self.refine[s]
        total = numel([self.skip_channels[s], *size]) \
            + members(self.gates, AttentionGate)[s].compute_conv_feature_map_size(size) \
            + members(self.fuse, FusionBlock)[s].compute_conv_feature_map_size(size)
        if isinstance(refine, StackedResidualBlocks):
            total += int(refine.compute_conv_feature_map_size(size))
        return total


class ARUNet(EncoderDecoderNetwork):
    """Attention Residual U-Net for 2D or 3D patches (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any):
        super().__init__()
        topo, ops = network_preamble(self, "arunet", ARUNET_KEYS, in_channels, num_classes, kwargs)
        n = topo.n_stages
        defaults = _defaults(n)
        blocks = stage_counts(kwargs, defaults, "n_blocks_per_stage")
        dec_blocks = stage_counts(kwargs, defaults, "n_blocks_per_stage_decoder")
        self.encoder = ResidualEncoder(
            in_channels, n, list(topo.features_per_stage), ops.conv_op, [list(k) for k in topo.kernel_sizes],
            [list(s) for s in topo.strides], list(blocks), True, ops.norm_op, ops.norm_op_kwargs, None,
            None, ops.nonlin, ops.nonlin_kwargs, return_skips=True, disable_default_stem=True)
        self.decoder = ARUNetDecoder(self.encoder, ops, num_classes, dec_blocks, topo.deep_supervision)
        init_he(self)


def default_blocks(n_stages: int) -> list[int]:
    """One residual block (two convs, as the plain U-Net's two convs) per encoder stage."""
    return [1] * n_stages


def _defaults(n_stages: int) -> dict[str, Any]:
    return {"n_blocks_per_stage": default_blocks(n_stages),
            "n_blocks_per_stage_decoder": [1] * (n_stages - 1)}


SPEC = NetworkSpec(
    name="arunet",
    cls=ARUNet,
    defaults=_defaults,
    # Derived at the finest stage, which holds most of the counted elements. Encoder: one residual
    # block with a projection shortcut counts 3 maps (conv1, conv2, shortcut) and keeps 5 (conv and
    # norm outputs of conv1 and conv2, the shortcut's conv output; its norm output is added in place
    # into the main path). Decoder: counts 3 (upsampled map, conv1, conv2) and keeps 6 (the
    # concatenation = 2, conv1 and conv2 with their norm outputs = 4). The gate's maps are one
    # channel or coarse and keep about what they count. (5 + 6) / (3 + 3) = 11/6.
    saved_per_count=11 / 6,
    summary="Attention Residual U-Net: residual encoder/decoder, additive attention gates on skips",
    paper="Oktay et al., Attention U-Net, MIDL 2018; He et al., ResNet, CVPR 2016",
)

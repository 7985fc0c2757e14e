"""UNet++ with atrous spatial pyramid pooling (ASPP) at the bottleneck.

Encoder: dynamic-network-architectures ``PlainConvEncoder`` (``n_conv_per_stage`` conv-norm-LeakyReLU
per stage, the first strided) gives the nodes ``X^{i,0}``. ASPP (DeepLab v3) replaces the deepest one:
parallel 1x1 conv, one dilated conv per rate in ``aspp_rates`` and a global-average-pool branch
broadcast back to the grid, concatenated and projected by a 1x1 conv-norm-LeakyReLU. Each ASPP branch
has half the bottleneck's channels (DeepLab narrows 2048 to 256; half keeps the concatenation of
five branches at 2.5x the bottleneck's width). A dilated conv uses the bottleneck stage's kernel and
is dilated only along axes whose kernel is larger than one (3), so an anisotropic ``[1, 3, 3]``
kernel stays in-plane. The pooled branch has no norm (instance norm of one voxel is undefined).

Nested decoder (Zhou et al. 2018): node ``X^{i,j} = convs(cat(X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})))``
for ``i + j <= n - 1``, ``j >= 1``: ``n (n - 1) / 2`` nodes. A node at depth ``i`` has
``features_per_stage[i]`` channels (its input ``(j + 1)`` times that), upsamples with a transposed conv
(kernel = stride) and runs ``n_conv_per_stage_decoder[i]`` conv-norm-LeakyReLU with that stage's kernel.

Deep supervision: the paper supervises the full-resolution nested outputs ``X^{0,1..n-1}``; the
contract here wants one output per resolution, so the 1x1 heads sit on the decoder's main path
``X^{i, n-1-i}`` (the last node of each depth, which the dense paths of its depth all feed into):
full resolution ``X^{0,n-1}`` first, then one per coarser stage.

Memory (``compute_conv_feature_map_size``) counts every map a node produces: the upsampled map, the
concatenation (which the first conv keeps for backward, ``j + 1`` maps wide, the reason UNet++ is
memory-hungry) and every conv output; the encoder and ASPP maps; the logit heads.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import (
    PlainConvEncoder,
)
from dynamic_network_architectures.building_blocks.simple_conv_blocks import (
    ConvDropoutNormReLU,
    StackedConvBlocks,
)
from torch import nn

from autoseg.errors import ConfigurationError
from autoseg.networks.config import (
    COMMON_KEYS,
    Ops,
    check_int_list,
    init_he,
    members,
    network_preamble,
    numel,
    stage_counts,
    stage_sizes,
)
from autoseg.networks.shell import EncoderDecoderNetwork, plain_encoder, segmentation_head
from autoseg.networks.spec import NetworkSpec

UNETPP_KEYS = COMMON_KEYS + ("n_conv_per_stage", "n_conv_per_stage_decoder", "aspp_rates")
#: Dilation rates for a bottleneck of a few voxels per axis: DeepLab's 6, 12, 18 at a 33-voxel map,
#: scaled to the 4-8 voxels a planned bottleneck has (a rate at or beyond the map size sees only padding).
DEFAULT_ASPP_RATES = (1, 2, 3)


def check_rates(value: Any) -> tuple[int, ...]:
    """``aspp_rates``: a non-empty list of at most 6 integers >= 1."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 6:
        raise ConfigurationError(f"aspp_rates must be a list of 1 to 6 integers, got {value!r}",
                                 fix=f"give e.g. {list(DEFAULT_ASPP_RATES)}")
    return check_int_list("aspp_rates", value, len(value))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated and global-pool branches, concatenated, projected."""

    def __init__(self, ops: Ops, channels: int, kernel: Sequence[int], rates: Sequence[int]):
        super().__init__()
        self.branch_channels = max(1, channels // 2)
        self.channels = channels
        cb = self.branch_channels
        branches: list[nn.Module] = [ConvDropoutNormReLU(
            ops.conv_op, channels, cb, 1, 1, True, ops.norm_op, ops.norm_op_kwargs, None, None,
            ops.nonlin, ops.nonlin_kwargs)]
        for rate in rates:
            dilation = [rate if k > 1 else 1 for k in kernel]
            padding = [d * (k - 1) // 2 for d, k in zip(dilation, kernel)]
            branches.append(nn.Sequential(
                ops.conv_op(channels, cb, list(kernel), 1, padding, dilation, bias=True),
                ops.norm_op(cb, **ops.norm_op_kwargs), ops.nonlin(**ops.nonlin_kwargs)))
        self.branches = nn.ModuleList(branches)
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1) if ops.dim == 2 else nn.AdaptiveAvgPool3d(1),
            ops.conv_op(channels, cb, 1, 1, 0, bias=True), ops.nonlin(**ops.nonlin_kwargs))
        self.project = ConvDropoutNormReLU(
            ops.conv_op, (len(branches) + 1) * cb, channels, 1, 1, True, ops.norm_op, ops.norm_op_kwargs,
            None, None, ops.nonlin, ops.nonlin_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(outs, 1))

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """Branch maps, their concatenation (pooled branch included) and the projection; the pooled
        vector itself (one voxel) is left out so the count stays proportional to the patch."""
        n_branches = len(self.branches)
        return numel([(2 * n_branches + 1) * self.branch_channels + self.channels, *size])


class NestedNode(nn.Module):
    """UNet++ node ``X^{i,j}``: convs over the dense skips of its depth and the upsampled node below."""

    def __init__(self, ops: Ops, below: int, channels: int, j: int, stride: Sequence[int],
                 kernel: Sequence[int], n_conv: int):
        super().__init__()
        self.channels, self.j = channels, j
        self.up = ops.transp_op(below, channels, list(stride), list(stride), bias=True)
        self.convs = StackedConvBlocks(n_conv, ops.conv_op, (j + 1) * channels, channels, list(kernel), 1,
                                       True, ops.norm_op, ops.norm_op_kwargs, None, None, ops.nonlin,
                                       ops.nonlin_kwargs)

    def forward(self, same_depth: list[torch.Tensor], below: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([*same_depth, self.up(below)], 1))

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """Upsampled map, the (j + 1)-wide concatenation and every conv output."""
        convs = int(self.convs.compute_conv_feature_map_size(size))
        return numel([(self.j + 2) * self.channels, *size]) + convs


class NestedDecoder(nn.Module):
    """All UNet++ nodes ``X^{i,j}`` (j >= 1) and the 1x1 heads on the main path ``X^{i,n-1-i}``."""

    def __init__(self, encoder: PlainConvEncoder, ops: Ops, num_classes: int, n_conv: Sequence[int],
                 deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        feats = list(encoder.output_channels)
        self.n_stages = n = len(feats)
        self.strides = [tuple(s) for s in encoder.strides]
        self.nodes = nn.ModuleList(
            nn.ModuleList(NestedNode(ops, feats[i + 1], feats[i], j, self.strides[i + 1],
                                     encoder.kernel_sizes[i], n_conv[i]) for j in range(1, n - i))
            for i in range(n - 1))
        self.seg_layers = nn.ModuleList(segmentation_head(ops, feats[i], num_classes) for i in range(n - 1))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        n = self.n_stages
        grid = [[s] for s in skips]  # grid[i][j] = X^{i,j}
        rows = members(self.nodes, nn.ModuleList)
        for j in range(1, n):
            for i in range(n - j):
                grid[i].append(rows[i][j - 1](grid[i][:j], grid[i + 1][j - 1]))
        depths = range(n - 1) if self.deep_supervision else range(1)
        outputs = [self.seg_layers[i](grid[i][n - 1 - i]) for i in depths]
        return outputs if self.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Every node's maps plus the logit maps of the heads that run."""
        sizes = stage_sizes(input_size, self.strides)
        total = sum(node.compute_conv_feature_map_size(sizes[i])
                    for i, row in enumerate(members(self.nodes, nn.ModuleList))
                    for node in members(row, NestedNode))
        heads = range(self.n_stages - 1) if self.deep_supervision else range(1)
        return total + sum(numel([self.num_classes, *sizes[i]]) for i in heads)


class UNetPlusPlusASPP(EncoderDecoderNetwork):
    """UNet++ (nested dense skips) with ASPP at the bottleneck, 2D or 3D (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any):
        super().__init__()
        topo, ops = network_preamble(self, "unetpp_aspp", UNETPP_KEYS, in_channels, num_classes, kwargs)
        defaults = _defaults(topo.n_stages)
        n_conv = stage_counts(kwargs, defaults, "n_conv_per_stage")
        n_dec = stage_counts(kwargs, defaults, "n_conv_per_stage_decoder")
        rates = check_rates(kwargs.get("aspp_rates", list(DEFAULT_ASPP_RATES)))
        self.encoder = plain_encoder(in_channels, topo, ops, n_conv)
        self.aspp = ASPP(ops, topo.features_per_stage[-1], topo.kernel_sizes[-1], rates)
        self.decoder = NestedDecoder(self.encoder, ops, num_classes, n_dec, topo.deep_supervision)
        init_he(self)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder skips, the deepest replaced by the ASPP's output map."""
        skips = self.encoder(x)
        skips[-1] = self.aspp(skips[-1])
        return skips

    def bottleneck_map_size(self, size: Sequence[int]) -> int:
        return self.aspp.compute_conv_feature_map_size(size)


def _defaults(n_stages: int) -> dict[str, Any]:
    return {"n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "aspp_rates": list(DEFAULT_ASPP_RATES)}


SPEC = NetworkSpec(
    name="unetpp_aspp",
    cls=UNetPlusPlusASPP,
    defaults=_defaults,
    # Derived at the finest depth, which holds most counted elements (5 stages, two convs per stage
    # and node). Encoder: counts 2 maps (conv outputs) and keeps 4 (each conv output, saved by the
    # norm, and the norm output, saved by the in-place LeakyReLU and the next conv). Node X^{0,j}:
    # counts the upsampled map, the (j + 1)-map concatenation and 2 conv outputs = j + 4; keeps the
    # concatenation (saved by its first conv; the upsampled map is freed once copied into it) and 2
    # per conv = j + 5. Over j = 1..4: counted 2 + 26 = 28, kept 4 + 30 = 34, so 17/14. Four stages
    # give 25/20 and six 44/37, within 3% of it; ASPP and heads are a few per cent of the count.
    saved_per_count=17 / 14,
    summary="UNet++: nested dense skip pathways, ASPP (atrous spatial pyramid pooling) at the bottleneck",
    paper="Zhou et al., UNet++, DLMIA 2018; Chen et al., DeepLab v3 (ASPP), arXiv:1706.05587, 2017",
)

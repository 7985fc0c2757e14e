"""The dynamic-network-architectures baselines: ``plain_unet`` and ``resenc_unet``.

Both are the library's own classes, configured from plain JSON kwargs, with the attributes of the
:class:`~autoseg.networks.protocol.SegmentationNetwork` contract added (``deep_supervision`` is a
property that switches the library decoder's flag, so parameter names match the library's).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynamic_network_architectures.architectures.unet import (
    PlainConvUNet,
    ResidualEncoderUNet,
)
from dynamic_network_architectures.initialization.weight_init import (
    init_last_bn_before_add_to_0,
)
from torch import nn

from autoseg.errors import ConfigurationError
from autoseg.networks.config import (
    COMMON_KEYS,
    DecoderDeepSupervision,
    Ops,
    check_channels,
    check_keys,
    init_he,
    ops_for_dim,
    parse_topology,
    stage_counts,
)
from autoseg.networks.spec import NetworkSpec

PLAIN_KEYS = COMMON_KEYS + ("n_conv_per_stage", "n_conv_per_stage_decoder")
RESENC_KEYS = COMMON_KEYS + ("n_blocks_per_stage", "n_conv_per_stage_decoder")
#: nnU-Net ResEnc-M encoder depth per stage; later stages repeat the last entry.
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6)


def _protocol_attrs(net: DecoderDeepSupervision, ops: Ops, in_channels: int, num_classes: int) -> None:
    net.input_channels = in_channels
    net.num_classes = num_classes
    net.conv_op = ops.conv_op
    net.norm_op = ops.norm_op
    net.nonlin = ops.nonlin


def _feature_map_size(net: Any, input_size: Sequence[int]) -> int:
    dim = 2 if net.conv_op is nn.Conv2d else 3
    if len(input_size) != dim:
        raise ConfigurationError(f"input_size must be the {dim} spatial sizes only, got {list(input_size)}")
    return int(net.encoder.compute_conv_feature_map_size(list(input_size))
               + net.decoder.compute_conv_feature_map_size(list(input_size)))


class PlainUNet(DecoderDeepSupervision, PlainConvUNet):
    """nnU-Net's default U-Net: ``n_conv_per_stage`` conv-norm-nonlin per encoder stage."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any):
        check_channels(in_channels, num_classes)
        check_keys(kwargs, PLAIN_KEYS, "plain_unet")
        topo = parse_topology(kwargs)
        n = topo.n_stages
        defaults = _plain_defaults(n)
        n_conv = stage_counts(kwargs, defaults, "n_conv_per_stage")
        n_dec = stage_counts(kwargs, defaults, "n_conv_per_stage_decoder")
        ops = ops_for_dim(topo.dim)
        super().__init__(
            in_channels, n, list(topo.features_per_stage), ops.conv_op, [list(k) for k in topo.kernel_sizes],
            [list(s) for s in topo.strides], list(n_conv), num_classes, list(n_dec), conv_bias=True,
            norm_op=ops.norm_op, norm_op_kwargs=ops.norm_op_kwargs, nonlin=ops.nonlin,
            nonlin_kwargs=ops.nonlin_kwargs, deep_supervision=topo.deep_supervision)
        _protocol_attrs(self, ops, in_channels, num_classes)
        init_he(self)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """One count per conv output, transposed-conv output and logit map (the library's rule)."""
        return _feature_map_size(self, input_size)


class ResEncUNet(DecoderDeepSupervision, ResidualEncoderUNet):
    """nnU-Net ResEnc U-Net: residual encoder (BasicBlockD stacks), plain conv decoder."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any):
        check_channels(in_channels, num_classes)
        check_keys(kwargs, RESENC_KEYS, "resenc_unet")
        topo = parse_topology(kwargs)
        n = topo.n_stages
        defaults = _resenc_defaults(n)
        blocks = stage_counts(kwargs, defaults, "n_blocks_per_stage")
        n_dec = stage_counts(kwargs, defaults, "n_conv_per_stage_decoder")
        ops = ops_for_dim(topo.dim)
        super().__init__(
            in_channels, n, list(topo.features_per_stage), ops.conv_op, [list(k) for k in topo.kernel_sizes],
            [list(s) for s in topo.strides], list(blocks), num_classes, list(n_dec), conv_bias=True,
            norm_op=ops.norm_op, norm_op_kwargs=ops.norm_op_kwargs, nonlin=ops.nonlin,
            nonlin_kwargs=ops.nonlin_kwargs, deep_supervision=topo.deep_supervision)
        _protocol_attrs(self, ops, in_channels, num_classes)
        init_he(self)
        self.apply(init_last_bn_before_add_to_0)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """One count per conv output (residual shortcuts included), as the library counts."""
        return _feature_map_size(self, input_size)


def resenc_blocks(n_stages: int) -> list[int]:
    """ResEnc-M blocks per stage for ``n_stages`` stages."""
    return [RESENC_BLOCKS[min(i, len(RESENC_BLOCKS) - 1)] for i in range(n_stages)]


def _plain_defaults(n_stages: int) -> dict[str, Any]:
    return {"n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1)}


def _resenc_defaults(n_stages: int) -> dict[str, Any]:
    return {"n_blocks_per_stage": resenc_blocks(n_stages), "n_conv_per_stage_decoder": [1] * (n_stages - 1)}


PLAIN_UNET = NetworkSpec(
    name="plain_unet",
    cls=PlainUNet,
    defaults=_plain_defaults,
    # Per counted conv output autograd keeps two maps of that size: the conv output (saved by the
    # InstanceNorm) and the norm output (saved by the in-place LeakyReLU and the next conv). In a
    # decoder stage the counted transposed-conv output (C) is freed after the concatenation, but
    # the concatenation (2C) is saved by the next conv: again two per count.
    saved_per_count=2.0,
    summary="nnU-Net's plain U-Net (dynamic-network-architectures PlainConvUNet)",
    paper="Isensee et al., nnU-Net, Nature Methods 18:203-211, 2021",
)

RESENC_UNET = NetworkSpec(
    name="resenc_unet",
    cls=ResEncUNet,
    defaults=_resenc_defaults,
    # As the plain U-Net: two maps per counted conv output (stem, residual convs, decoder). The few
    # counted shortcut projections (first block of a stage) keep only their conv output, since their
    # norm output is added in place into the main path, but a strided shortcut also keeps its
    # average-pooled input: together again about two per count.
    saved_per_count=2.0,
    summary="nnU-Net residual-encoder U-Net (dynamic-network-architectures ResidualEncoderUNet)",
    paper="Isensee et al., nnU-Net Revisited, MICCAI 2024",
)

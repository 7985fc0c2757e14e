"""UCA-Net: U-shaped cross-attention network (Kuang et al., ICASSP 2023).

The paper replaces every skip connection of a 3D U-Net by cross-attention between the encoder
feature ``e`` (keys and values) and the upsampled decoder feature ``d`` (queries): a channel-wise
module that relates channels, and a slice-wise module that relates slices along the first spatial
axis; their outputs are summed. No code was published; this is an implementation from the
description, with these choices:

- Encoder: dynamic-network-architectures ``PlainConvEncoder`` (``n_conv_per_stage`` conv-norm-
  LeakyReLU per stage, strided first conv). Decoder stage: transposed-conv upsampling ``d``, the
  cross-attention output ``z`` in place of the skip, ``StackedConvBlocks`` on ``cat(d, z)``, a 1x1
  head (deep supervision uses every decoder stage's head), as in the plain U-Net.
- Affinities from pooled features: ``d`` and ``e`` are averaged over in-slice blocks (the first
  spatial axis kept, every other axis reduced to at most 8 positions in 3D, 16 in 2D), so the
  attention's cost hardly grows with the patch; the values it mixes are the full-resolution ``e``.
- Channel-wise cross-attention: ``A_c = softmax(tau_c * q k^T)``, a C x C affinity per sample, with
  ``q = W_q pool(d)``, ``k = W_k pool(e)`` (1x1 convs) flattened over the pooled positions and
  L2-normalised (cosine similarity with a learned temperature, as XCiT's cross-covariance attention);
  ``A_c e`` mixes encoder channels at every voxel.
- Slice-wise cross-attention: 1x1 convs compress ``pool(d)`` and ``pool(e)`` to one channel; each
  slice of the first spatial axis gives one L2-normalised vector (at most 64 values in 3D), hence a
  D x D affinity ``A_s = softmax(tau_s * q_s k_s^T)`` that mixes the slices of ``e``, all channels
  alike. In 2D the same code attends over the rows of the first axis (an H x H affinity).
- Combination: ``z = e + gamma_c * A_c e + gamma_s * A_s e`` with learned scalars ``gamma`` initialised
  to 0 (DANet's convention). Without the identity term a softmax over channels starts out near
  uniform and averages all encoder channels into one map, so the decoder would begin training
  without the skip's detail; with it the network starts as a plain U-Net and learns how much
  attention to mix in. ``gamma`` multiplies the small affinities, not the full maps, so autograd
  keeps no extra full-resolution tensor for it (``A e`` saves only ``A`` and ``e``, which the encoder
  keeps anyway).

No affinity is ever N_voxels x N_voxels: per sample C x C and D x D. Temperatures are learned in
log space, initialised to 10 (a cosine similarity of 1 vs 0 gives e^10 times the weight).

Memory model (``saved_per_count``): ``compute_conv_feature_map_size`` counts one map per conv and
transposed-conv output and logit head, plus the attended map ``z`` and, on the pooled grid, the two
pooled inputs and the query and key maps; the affinities (C x C, D x D) are not counted. An encoder
conv-norm-LeakyReLU keeps two maps per count (conv output for the norm, the in-place activation's
output for the next conv). A decoder stage counts ``d``, ``z`` and two convs (4 maps of C) and keeps
the concatenation (2C) and two maps per conv (4C): 6/4; ``d`` and ``z`` themselves are freed after
the concatenation. The pooled maps keep about 3/2 per count too (pooled inputs for the 1x1 convs,
their outputs for the normalisation, the normalised maps for the affinity product). At the finest
stage, which holds most of the elements, the encoder's 2 and the decoder's 1.5 weigh 2:4 in counted
maps: (2 * 2 + 4 * 1.5) / 6 = 5/3.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import (
    PlainConvEncoder,
)
from dynamic_network_architectures.building_blocks.simple_conv_blocks import (
    StackedConvBlocks,
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
from autoseg.networks.shell import CoarseToFineDecoder, EncoderDecoderNetwork, plain_encoder
from autoseg.networks.spec import NetworkSpec

UCA_KEYS = COMMON_KEYS + ("n_conv_per_stage", "n_conv_per_stage_decoder")
#: Positions per in-slice axis left by the pooling before the affinities (3D: <= 64 per slice).
POOL_CAP = {2: 16, 3: 8}
#: Initial attention temperature (learned, in log space).
INIT_TEMPERATURE = 10.0


def _block(size: int, cap: int) -> int:
    """Smallest divisor of ``size`` that leaves at most ``cap`` blocks."""
    return next(b for b in range(1, size + 1) if size % b == 0 and size // b <= cap)


def pooled_size(spatial: Sequence[int], cap: int) -> list[int]:
    """Spatial size after :func:`slice_pool`: the first axis kept, the others at most ``cap``."""
    return [spatial[0]] + [s // _block(s, cap) for s in spatial[1:]]


def slice_pool(x: torch.Tensor, cap: int) -> torch.Tensor:
    """Average over in-slice blocks: the first spatial axis is kept, the others reduced to <= ``cap``.

    A reshape + mean rather than a pooling layer: its backward keeps no input tensor alive.
    """
    n, c, first, *rest = x.shape
    blocks = [_block(s, cap) for s in rest]
    split = [v for s, b in zip(rest, blocks) for v in (s // b, b)]
    return x.reshape(n, c, first, *split).mean(dim=tuple(range(4, 4 + 2 * len(rest), 2)))


def _cosine_softmax(q: torch.Tensor, k: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
    """``softmax(tau * q_hat k_hat^T)`` over the last axis for ``q``, ``k`` of shape (N, rows, features)."""
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return torch.softmax(log_tau.exp() * torch.bmm(q, k.transpose(1, 2)), dim=-1)


class CrossAttentionSkip(nn.Module):
    """Channel-wise plus slice-wise cross-attention from decoder queries to encoder keys/values."""

    def __init__(self, ops: Ops, enc_channels: int, dec_channels: int):
        super().__init__()
        self.channels = enc_channels
        self.cap = POOL_CAP[ops.dim]
        self.query_c = ops.conv_op(dec_channels, enc_channels, 1, 1, 0, bias=True)
        self.key_c = ops.conv_op(enc_channels, enc_channels, 1, 1, 0, bias=True)
        self.query_s = ops.conv_op(dec_channels, 1, 1, 1, 0, bias=True)
        self.key_s = ops.conv_op(enc_channels, 1, 1, 1, 0, bias=True)
        self.log_tau_c = nn.Parameter(torch.full((1,), math.log(INIT_TEMPERATURE)))
        self.log_tau_s = nn.Parameter(torch.full((1,), math.log(INIT_TEMPERATURE)))
        self.gamma_c = nn.Parameter(torch.zeros(1))
        self.gamma_s = nn.Parameter(torch.zeros(1))

    def affinities(self, dec: torch.Tensor, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel affinity (N, C, C) and slice affinity (N, D, D); row i weights the encoder's
        channels (slices) for output channel (slice) i. Both come from in-slice pooled features."""
        pooled_dec, pooled_enc = slice_pool(dec, self.cap), slice_pool(enc, self.cap)
        n, d = dec.shape[0], dec.shape[2]
        a_c = _cosine_softmax(self.query_c(pooled_dec).flatten(2), self.key_c(pooled_enc).flatten(2),
                              self.log_tau_c)
        a_s = _cosine_softmax(self.query_s(pooled_dec).reshape(n, d, -1),
                              self.key_s(pooled_enc).reshape(n, d, -1), self.log_tau_s)
        return a_c, a_s

    def forward(self, dec: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        n, c, d = enc.shape[:3]
        a_c, a_s = self.affinities(dec, enc)
        by_channel = torch.bmm(self.gamma_c * a_c, enc.reshape(n, c, -1)).view_as(enc)
        by_slice = torch.matmul((self.gamma_s * a_s).unsqueeze(1), enc.reshape(n, c, d, -1)).view_as(enc)
        return enc + by_channel + by_slice

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """The attended map; on the pooled grid the pooled inputs and the query/key maps (affinities
        are not counted)."""
        pooled = pooled_size(size, self.cap)
        return numel([self.channels, *size]) + 2 * numel([2 * self.channels + 1, *pooled])


class UCADecoder(CoarseToFineDecoder):
    """Per stage, coarse to fine: upsample, cross-attend to the skip, convs on cat(up, z), head."""

    def __init__(self, encoder: PlainConvEncoder, ops: Ops, num_classes: int, n_conv: Sequence[int],
                 deep_supervision: bool):
        super().__init__(encoder, num_classes, deep_supervision)
        feats = list(encoder.output_channels)
        up, attend, convs, heads = [], [], [], []
        for s in range(1, len(feats)):
            below, skip, stride = feats[-s], feats[-(s + 1)], self.strides[-s]
            up.append(ops.transp_op(below, skip, stride, stride, bias=True))
            attend.append(CrossAttentionSkip(ops, skip, skip))
            convs.append(StackedConvBlocks(n_conv[s - 1], ops.conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)],
                                           1, True, ops.norm_op, ops.norm_op_kwargs, None, None, ops.nonlin,
                                           ops.nonlin_kwargs))
            heads.append(self.head(ops, skip))
        self.upsample = nn.ModuleList(up)
        self.attention = nn.ModuleList(attend)
        self.stages = nn.ModuleList(convs)
        self.seg_layers = nn.ModuleList(heads)

    def step(self, s: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.upsample[s](x)
        return self.stages[s](torch.cat((up, self.attention[s](up, skip)), 1))

    def step_map_size(self, s: int, size: Sequence[int]) -> int:
        """Upsampled map, attention maps, decoder convs."""
        return numel([self.skip_channels[s], *size]) \
            + members(self.attention, CrossAttentionSkip)[s].compute_conv_feature_map_size(size) \
            + int(members(self.stages, StackedConvBlocks)[s].compute_conv_feature_map_size(size))


class UCANet(EncoderDecoderNetwork):
    """UCA-Net for 2D or 3D patches (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any):
        super().__init__()
        topo, ops = network_preamble(self, "uca_net", UCA_KEYS, in_channels, num_classes, kwargs)
        defaults = _defaults(topo.n_stages)
        n_conv = stage_counts(kwargs, defaults, "n_conv_per_stage")
        n_dec = stage_counts(kwargs, defaults, "n_conv_per_stage_decoder")
        self.encoder = plain_encoder(in_channels, topo, ops, n_conv)
        self.decoder = UCADecoder(self.encoder, ops, num_classes, n_dec, topo.deep_supervision)
        init_he(self)


def _defaults(n_stages: int) -> dict[str, Any]:
    return {"n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1)}


SPEC = NetworkSpec(
    name="uca_net",
    cls=UCANet,
    defaults=_defaults,
    # Derived in the module docstring: encoder 2 per count, decoder stage 6 kept per 4 counted,
    # weighted 2:4 at the finest stage -> 5/3.
    saved_per_count=5 / 3,
    summary="UCA-Net: U-Net whose skips are channel-wise + slice-wise cross-attention (decoder queries)",
    paper="Kuang et al., Towards Simultaneous Segmentation of Liver Tumors and Intrahepatic Vessels "
          "via Cross-attention Mechanism (UCA-Net), ICASSP 2023",
)

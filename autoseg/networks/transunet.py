"""TransUNet with spatial and channel attention in the decoder.

Encoder: dynamic-network-architectures ``PlainConvEncoder`` (``n_conv_per_stage`` conv-norm-LeakyReLU
per stage, the first strided), as the planner's topology gives it. Bottleneck: a transformer encoder
over the deepest CNN map (Chen et al. 2021): a 1x1 conv projects it to ``embed_dim`` channels, every
voxel of that map is one token, ``transformer_layers`` pre-norm ``nn.TransformerEncoderLayer`` (GELU,
MLP width 4 x ``embed_dim``, no dropout) with ``transformer_heads`` heads and a final LayerNorm mix
all tokens, and a conv-norm-LeakyReLU (the bottleneck stage's kernel) maps the tokens back to the
CNN's channels for the decoder. The planner's bottleneck keeps the token count small (a 32x96x96
patch with total stride (8, 16, 16) gives 4x6x6 = 144 tokens).

Position: a conditional positional encoding (Chu et al. 2021, CPVT): a depthwise 3x3(x3) conv on the
token grid, added to the tokens before the first layer. Its zero padding tells a token where it is
relative to the patch border, it has no fixed grid, so any patch size works (sliding-window inference,
a re-planned patch) without interpolating a learned table.

Decoder stage (coarse to fine): transposed-conv upsampling, concatenation with the encoder skip,
``n_conv_per_stage_decoder`` conv-norm-LeakyReLU, then channel attention (squeeze-excitation: global
average pool, 1x1 conv to C/4 but at least 4 channels, LeakyReLU, 1x1 conv to C, sigmoid, scale; leaky
rather than SE's ReLU so that a narrow hidden layer cannot die and freeze the gate) and spatial
attention (channel mean and max -> conv with the stage's kernel to one channel -> sigmoid -> scale),
then a 1x1 head; deep supervision uses every stage's head. CBAM's 7x7 spatial kernel is not used: in
3D a 7x7x7 conv from 2 channels to 1 took a quarter to a third of the CPU training step (its backward
is inefficient), and the stage kernel keeps anisotropic ``[1, 3, 3]`` stages in-plane.

Memory (``compute_conv_feature_map_size``) counts every map produced: conv, transposed-conv and
attention-scaled maps, the concatenations, the one-channel spatial-attention maps, the heads, and the
transformer's token tensors (see ``TransformerBottleneck.compute_conv_feature_map_size``). PyTorch's
fused scaled-dot-product attention (flash on the CPU, flash or memory-efficient on CUDA) keeps only a
log-sum-exp per token and head, so no tokens x tokens map is kept and memory stays linear in the patch.
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
    check_int,
    init_he,
    members,
    network_preamble,
    numel,
    stage_counts,
)
from autoseg.networks.shell import CoarseToFineDecoder, EncoderDecoderNetwork, plain_encoder
from autoseg.networks.spec import PEAK_TRANSIENT, NetworkSpec

TRANSUNET_KEYS = COMMON_KEYS + ("n_conv_per_stage", "n_conv_per_stage_decoder", "embed_dim",
                                "transformer_layers", "transformer_heads")
#: CPU-sized transformer: 4 layers of width 128 with 4 heads of 32 channels (0.8 M parameters).
DEFAULT_EMBED_DIM, DEFAULT_LAYERS, DEFAULT_HEADS = 128, 4, 4
MLP_RATIO = 4
#: Token tensors one pre-norm layer keeps for backward, in units of tokens x embed_dim: input and
#: output of both LayerNorms (4), q, k, v (3), the attention output and its head-merged copy (2), the
#: MLP hidden map before and after GELU (2 x MLP_RATIO).
KEPT_PER_LAYER = 9 + 2 * MLP_RATIO
SE_REDUCTION = 4
#: Derived at the finest stage (two convs per stage), which holds most counted elements, for many
#: channels C (the four one-channel spatial-attention maps add a few per cent at C = 8). Encoder:
#: counts 2C (conv outputs), keeps 4C (each conv output, saved by the norm, and the norm output, saved
#: by the in-place LeakyReLU and the next conv). Decoder: counts the upsampled map C, the
#: concatenation 2C, two conv outputs 2C and the channel- and spatial-attention outputs 2C = 7C;
#: keeps the concatenation 2C (the upsampled map is freed once copied into it), 2 per conv 4C, the
#: channel-attention output C (saved by the channel max and the spatial product) and the
#: spatial-attention output C (saved by the head and the next transposed conv) = 8C.
#: (4 + 8) / (2 + 7) = 4/3. The transformer's kept tensors are counted divided by the memory factor
#: (this x 1.2) so the estimate charges them exactly once: the transient gradient buffers the 1.2
#: stands for are finest-resolution maps, not tokens.
SAVED_PER_COUNT = 4 / 3


def check_transformer(embed_dim: Any, layers: Any, heads: Any) -> tuple[int, int, int]:
    """Positive sizes, and an embedding that splits evenly into the heads."""
    check_int("embed_dim", embed_dim, 1)
    check_int("transformer_layers", layers, 1)
    check_int("transformer_heads", heads, 1)
    if embed_dim % heads:
        lower = max(heads, embed_dim // heads * heads)
        raise ConfigurationError(
            f"embed_dim {embed_dim} is not divisible by transformer_heads {heads}",
            fix=f"set embed_dim to a multiple of {heads} (e.g. {lower} or {lower + heads}) "
                f"or choose transformer_heads that divides {embed_dim}")
    return embed_dim, layers, heads


class TransformerBottleneck(nn.Module):
    """Tokens = voxels of the deepest map: 1x1 projection, conv position encoding, transformer layers."""

    def __init__(self, ops: Ops, channels: int, embed_dim: int, layers: int, heads: int,
                 kernel: Sequence[int]):
        super().__init__()
        self.channels, self.embed_dim, self.heads = channels, embed_dim, heads
        self.proj_in = ops.conv_op(channels, embed_dim, 1, 1, 0, bias=True)
        self.pos = ops.conv_op(embed_dim, embed_dim, 3, 1, 1, groups=embed_dim, bias=True)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(embed_dim, heads, MLP_RATIO * embed_dim, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.proj_out = ConvDropoutNormReLU(ops.conv_op, embed_dim, channels, list(kernel), 1, True,
                                            ops.norm_op, ops.norm_op_kwargs, None, None, ops.nonlin,
                                            ops.nonlin_kwargs)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's output tokens ``(N, T, embed_dim)`` for the deepest CNN map ``x``."""
        e = self.proj_in(x)
        e = e + self.pos(e)
        t = e.flatten(2).transpose(1, 2)
        for layer in self.layers:
            t = layer(t)
        return self.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        return self.proj_out(t.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *x.shape[2:]))

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """Projection and position maps, the token tensors each layer keeps, the final norm's input
        and output, the back-projection.

        Per layer: ``KEPT_PER_LAYER`` tokens x embed_dim tensors (its input included) plus the
        attention's log-sum-exp (tokens x heads); the flash attention keeps no tokens x tokens map.
        """
        per_layer = KEPT_PER_LAYER * self.embed_dim + self.heads
        kept = numel(size) * (4 * self.embed_dim + len(self.layers) * per_layer)
        return round(kept / (SAVED_PER_COUNT * (1 + PEAK_TRANSIENT))) + numel([self.channels, *size])


class ChannelAttention(nn.Module):
    """Squeeze-excitation: scale each channel by a sigmoid of a bottleneck MLP on its global mean."""

    def __init__(self, ops: Ops, channels: int):
        super().__init__()
        hidden = max(min(channels, 4), channels // SE_REDUCTION)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1) if ops.dim == 2 else nn.AdaptiveAvgPool3d(1),
            ops.conv_op(channels, hidden, 1, 1, 0, bias=True), ops.nonlin(**ops.nonlin_kwargs),
            ops.conv_op(hidden, channels, 1, 1, 0, bias=True), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialAttention(nn.Module):
    """Scale each voxel by a sigmoid of a conv over the channel-wise mean and max."""

    def __init__(self, ops: Ops, kernel: Sequence[int]):
        super().__init__()
        self.conv = ops.conv_op(2, 1, list(kernel), 1, [k // 2 for k in kernel], bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)
        return x * torch.sigmoid(self.conv(stats))


class AttentionDecoderStage(nn.Module):
    """Upsample, concatenate the skip, convs, channel attention, spatial attention."""

    def __init__(self, ops: Ops, below: int, channels: int, stride: Sequence[int], kernel: Sequence[int],
                 n_conv: int):
        super().__init__()
        self.channels = channels
        self.up = ops.transp_op(below, channels, list(stride), list(stride), bias=True)
        self.convs = StackedConvBlocks(n_conv, ops.conv_op, 2 * channels, channels, list(kernel), 1, True,
                                       ops.norm_op, ops.norm_op_kwargs, None, None, ops.nonlin,
                                       ops.nonlin_kwargs)
        self.channel_attention = ChannelAttention(ops, channels)
        self.spatial_attention = SpatialAttention(ops, kernel)

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.convs(torch.cat((self.up(below), skip), 1))
        return self.spatial_attention(self.channel_attention(x))

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        """Upsampled map, concatenation (2C), convs, the two attention-scaled maps, four 1-channel maps."""
        return numel([5 * self.channels + 4, *size]) + int(self.convs.compute_conv_feature_map_size(size))


class AttentionDecoder(CoarseToFineDecoder):
    """Attention decoder stages and 1x1 heads, coarse to fine."""

    def __init__(self, encoder: PlainConvEncoder, ops: Ops, num_classes: int, n_conv: Sequence[int],
                 deep_supervision: bool):
        super().__init__(encoder, num_classes, deep_supervision)
        feats = list(encoder.output_channels)
        self.stages = nn.ModuleList(
            AttentionDecoderStage(ops, feats[-s], feats[-(s + 1)], self.strides[-s],
                                  encoder.kernel_sizes[-(s + 1)], n_conv[s - 1])
            for s in range(1, len(feats)))
        self.seg_layers = nn.ModuleList(self.head(ops, c) for c in self.skip_channels)

    def step(self, s: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.stages[s](x, skip)

    def step_map_size(self, s: int, size: Sequence[int]) -> int:
        return members(self.stages, AttentionDecoderStage)[s].compute_conv_feature_map_size(size)


class TransUNet(EncoderDecoderNetwork):
    """CNN encoder, transformer bottleneck, attention U-Net decoder; 2D or 3D (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any):
        super().__init__()
        topo, ops = network_preamble(self, "transunet", TRANSUNET_KEYS, in_channels, num_classes, kwargs)
        defaults = _defaults(topo.n_stages)
        n_conv = stage_counts(kwargs, defaults, "n_conv_per_stage")
        n_dec = stage_counts(kwargs, defaults, "n_conv_per_stage_decoder")
        embed, layers, heads = check_transformer(kwargs.get("embed_dim", DEFAULT_EMBED_DIM),
                                                 kwargs.get("transformer_layers", DEFAULT_LAYERS),
                                                 kwargs.get("transformer_heads", DEFAULT_HEADS))
        self.encoder = plain_encoder(in_channels, topo, ops, n_conv)
        self.transformer = TransformerBottleneck(ops, topo.features_per_stage[-1], embed, layers, heads,
                                                 topo.kernel_sizes[-1])
        self.decoder = AttentionDecoder(self.encoder, ops, num_classes, n_dec, topo.deep_supervision)
        init_he(self)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder skips, the deepest replaced by the transformer's output map."""
        skips = self.encoder(x)
        skips[-1] = self.transformer(skips[-1])
        return skips

    def bottleneck_map_size(self, size: Sequence[int]) -> int:
        return self.transformer.compute_conv_feature_map_size(size)


def _defaults(n_stages: int) -> dict[str, Any]:
    return {"n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "embed_dim": DEFAULT_EMBED_DIM, "transformer_layers": DEFAULT_LAYERS,
            "transformer_heads": DEFAULT_HEADS}


SPEC = NetworkSpec(
    name="transunet",
    cls=TransUNet,
    defaults=_defaults,
    # See SAVED_PER_COUNT.
    saved_per_count=SAVED_PER_COUNT,
    summary="TransUNet: CNN encoder, transformer over the deepest map, decoder with channel and spatial "
            "attention",
    paper="Chen et al., TransUNet, arXiv:2102.04306, 2021; Woo et al., CBAM, ECCV 2018; "
          "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018",
)

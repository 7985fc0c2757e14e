"""Behaviour of ``unetpp_aspp`` (nested skips, ASPP) and ``transunet`` (attention bottleneck, decoder
attention) beyond the registry-wide contract of test_networks.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from autoseg.errors import ConfigurationError
from autoseg.networks import build_network, default_network_kwargs, feature_map_elements
from autoseg.networks.config import ops_for_dim
from autoseg.networks.transunet import (
    ChannelAttention,
    SpatialAttention,
    TransformerBottleneck,
)
from autoseg.networks.unetpp_aspp import ASPP

STRIDES_2D = [[1, 1], [2, 2], [2, 2]]


def kwargs_for(name: str, strides, kernels=None, features=None, ds: bool = True, **extra) -> dict:
    n = len(strides)
    kernels = kernels or [[3] * len(strides[0])] * n
    features = features or [4 * 2**i for i in range(n)]
    return {**default_network_kwargs(name, n, features, strides, kernels, ds), **extra}


def strip_instance_norms(module: nn.Module) -> nn.Module:
    """Replace every InstanceNorm by an identity: instance statistics make any output depend on every
    voxel, which would hide which layers really give a global receptive field."""
    for name, child in module.named_children():
        if isinstance(child, (nn.InstanceNorm2d, nn.InstanceNorm3d)):
            setattr(module, name, nn.Identity())
        else:
            strip_instance_norms(child)
    return module


def far_change(model, x: torch.Tensor, probe) -> float:
    """How much ``model(x)`` at index ``probe`` moves when the voxel at the opposite corner changes."""
    moved = x.clone()
    moved[(0, 0) + (0,) * (x.dim() - 2)] += 10.0
    with torch.no_grad():
        return (model(moved)[probe] - model(x)[probe]).abs().max().item()


# --- unetpp_aspp -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_stages", [3, 5])
def test_unetpp_builds_every_nested_node_with_dense_inputs(n_stages):
    strides = [[1, 1]] + [[2, 2]] * (n_stages - 1)
    features = [4 * 2**i for i in range(n_stages)]
    net = build_network("unetpp_aspp", kwargs_for("unetpp_aspp", strides, features=features), 1, 2)
    nodes = [(i, j, node) for i, row in enumerate(net.decoder.nodes) for j, node in enumerate(row, start=1)]
    assert len(nodes) == n_stages * (n_stages - 1) // 2
    assert {(i, j) for i, j, _ in nodes} == {(i, j) for i in range(n_stages) for j in range(1, n_stages - i)}
    for i, j, node in nodes:  # X^{i,j} sees j same-depth nodes plus the upsampled one, f_i wide each
        assert node.convs.convs[0].conv.in_channels == (j + 1) * features[i]
        assert node.convs.output_channels == features[i]
        assert node.up.in_channels == features[i + 1]


def test_unetpp_runs_each_node_once_and_supervises_the_main_path():
    net = build_network("unetpp_aspp", kwargs_for("unetpp_aspp", [[1, 1], [2, 2], [2, 2], [2, 2]]), 1, 3)
    calls: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i, row in enumerate(net.decoder.nodes):
        for j, node in enumerate(row, start=1):
            node.register_forward_hook(lambda m, a, out, key=(i, j): calls.setdefault(key, []).append(out))
    with torch.no_grad():
        outs = net(torch.randn(1, 1, 32, 24))
    assert len(calls) == 6 and all(len(v) == 1 for v in calls.values())
    n = 4
    for depth, out in enumerate(outs):  # head k reads X^{k, n-1-k}, not another node of that depth
        main = calls[(depth, n - 1 - depth)][0]
        with torch.no_grad():
            assert torch.equal(out, net.decoder.seg_layers[depth](main))


def test_unetpp_feature_map_count_includes_every_dense_concatenation():
    kw = kwargs_for("unetpp_aspp", STRIDES_2D)  # features 4, 8, 16; two convs everywhere; 3 ASPP rates
    # encoder 2 convs per stage: 2*4*64 + 2*8*16 + 2*16*4 = 896
    # ASPP at 2x2, branch width 8, 4 conv branches: (4 branches + 5-wide concat) * 8 + projection 16
    # = 88 per voxel
    # X^{0,1}: up 4 + concat 8 + convs 8 = 20/voxel * 64; X^{0,2}: up 4 + concat 12 + convs 8 = 24 * 64;
    # X^{1,1}: (8 + 16 + 16) * 16; heads 3 * (64 + 16)
    expected = 896 + 88 * 4 + 20 * 64 + 24 * 64 + 40 * 16 + 3 * (64 + 16)
    assert feature_map_elements("unetpp_aspp", kw, 1, 3, (8, 8)) == expected


def test_aspp_global_pool_branch_sees_the_whole_map():
    torch.manual_seed(0)
    aspp = strip_instance_norms(ASPP(ops_for_dim(2), channels=4, kernel=(3, 3), rates=(1, 2))).eval()
    x = torch.randn(1, 4, 24, 24)
    probe = (0, slice(None), 23, 23)  # 23 voxels from the change: beyond every dilated 3x3 (reach 2)
    assert far_change(aspp, x, probe) > 1e-4
    with torch.no_grad():
        aspp.pool[1].weight.zero_()
    assert far_change(aspp, x, probe) == 0.0


def test_aspp_dilates_only_along_axes_with_kernel_three():
    aspp = ASPP(ops_for_dim(3), channels=8, kernel=(1, 3, 3), rates=(2, 3))
    dilated = [b[0] for b in aspp.branches[1:]]
    assert [c.dilation for c in dilated] == [(1, 2, 2), (1, 3, 3)]
    assert [c.padding for c in dilated] == [(0, 2, 2), (0, 3, 3)]
    assert aspp.branch_channels == 4
    with torch.no_grad():
        assert aspp(torch.randn(2, 8, 3, 5, 7)).shape == (2, 8, 3, 5, 7)


@pytest.mark.parametrize("rates", [[], [0, 2], "6,12", [1, 2, 3, 4, 5, 6, 7]])
def test_unetpp_rejects_bad_aspp_rates(rates):
    with pytest.raises(ConfigurationError, match="aspp_rates"):
        build_network("unetpp_aspp", kwargs_for("unetpp_aspp", STRIDES_2D, aspp_rates=rates), 1, 2)


# --- transunet ---------------------------------------------------------------------------------

def test_attention_gives_transunet_a_global_receptive_field_that_plain_unet_lacks():
    torch.manual_seed(0)
    kw = {"features": [4, 8, 16], "ds": False}
    trans = strip_instance_norms(build_network("transunet", kwargs_for("transunet", STRIDES_2D, **kw), 1, 2))
    plain = strip_instance_norms(build_network("plain_unet", kwargs_for("plain_unet", STRIDES_2D, **kw),
                                               1, 2))
    x = torch.randn(1, 1, 64, 64)
    corner = (0, slice(None), 15, 15)  # bottleneck token 45+ voxels away from the changed voxel
    assert far_change(lambda t: trans.encode(t)[-1], x, corner) > 1e-4
    assert far_change(lambda t: plain.encoder(t)[-1], x, corner) == 0.0
    assert far_change(plain.eval(), x, (0, slice(None), 63, 63)) == 0.0  # whole U-Net: still local
    assert far_change(trans.eval(), x, (0, slice(None), 63, 63)) > 0.0  # exact zero if it were local


@pytest.mark.parametrize("grid", [(2, 3, 3), (4, 6, 5)])
def test_conv_position_encoding_distinguishes_identical_tokens(grid):
    torch.manual_seed(0)
    bottleneck = TransformerBottleneck(ops_for_dim(3), channels=8, embed_dim=16, layers=2, heads=4,
                                       kernel=(3, 3, 3)).eval()
    x = torch.ones(1, 8, *grid)  # every voxel the same: only the position encoding can tell them apart
    with torch.no_grad():
        tokens = bottleneck.tokens(x)
        assert tokens.shape == (1, grid[0] * grid[1] * grid[2], 16)
        assert (tokens - tokens[:, :1]).abs().max() > 1e-3
        bottleneck.pos.weight.zero_()
        bottleneck.pos.bias.zero_()
        flat = bottleneck.tokens(x)
    assert (flat - flat[:, :1]).abs().max() < 1e-5


def test_transunet_runs_at_two_patch_sizes_with_the_same_weights():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    net = build_network("transunet", kwargs_for("transunet", strides, kernels=[[1, 3, 3]] + [[3, 3, 3]] * 2,
                                                ds=False), 1, 2)
    with torch.no_grad():
        for patch in [(4, 16, 16), (6, 24, 40)]:
            assert net(torch.randn(1, 1, *patch)).shape == (1, 2, *patch)


def test_decoder_attention_scales_between_zero_and_one():
    ops = ops_for_dim(2)
    x = torch.randn(2, 6, 8, 10)
    channel, spatial = ChannelAttention(ops, 6), SpatialAttention(ops, (3, 3))
    assert spatial.conv.kernel_size == (3, 3)
    with torch.no_grad():
        for module, bias in [(channel, channel.gate[3].bias), (spatial, spatial.conv.bias)]:
            bias.fill_(-50.0)
            assert module(x).abs().max() < 1e-6
            bias.fill_(50.0)
            assert torch.allclose(module(x), x, atol=1e-6)


def test_spatial_attention_kernel_follows_anisotropic_stage_kernel():
    conv = SpatialAttention(ops_for_dim(3), (1, 3, 3)).conv
    assert conv.kernel_size == (1, 3, 3) and conv.padding == (0, 1, 1)


def test_transformer_and_attention_are_trained():
    torch.manual_seed(0)
    net = build_network("transunet", kwargs_for("transunet", STRIDES_2D), 1, 3)
    outs = net(torch.randn(2, 1, 16, 16))
    sum(nn.functional.cross_entropy(o, torch.randint(0, 3, (2, *o.shape[2:]))) for o in outs).backward()
    for key in ("transformer.layers.", "transformer.pos.", "channel_attention.", "spatial_attention."):
        grads = [p.grad.abs().sum() for n, p in net.named_parameters() if key in n]
        assert grads and all(g > 0 for g in grads), key


@pytest.mark.parametrize("change, words", [
    ({"embed_dim": 100, "transformer_heads": 8}, r"not divisible by transformer_heads 8(.|\n)*multiple of 8"),
    ({"transformer_layers": 0}, "transformer_layers"),
    ({"transformer_heads": 0}, "transformer_heads"),
    ({"embed_dim": 12.5}, "embed_dim"),
])
def test_transunet_rejects_bad_transformer_arguments(change, words):
    with pytest.raises(ConfigurationError, match=words):
        build_network("transunet", kwargs_for("transunet", STRIDES_2D, **change), 1, 2)


def test_transunet_memory_count_grows_with_the_transformer():
    kw = kwargs_for("transunet", STRIDES_2D)
    base = feature_map_elements("transunet", kw, 1, 2, (32, 32))
    deeper = feature_map_elements("transunet", {**kw, "transformer_layers": kw["transformer_layers"] + 2},
                                  1, 2, (32, 32))
    tokens, embed = 8 * 8, kw["embed_dim"]
    # two more layers keep 2 * (17 * embed + heads) elements per token, counted in conv-map units
    assert deeper - base == pytest.approx(2 * tokens * (17 * embed + kw["transformer_heads"]) / (4 / 3 * 1.2),
                                          abs=2)

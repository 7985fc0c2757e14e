"""Behaviour of the uca_net and ra_vnet building blocks: attention, ConvLSTM fusion, CofRes checks.

The registry-wide contract (shapes, gradients, errors, memory) is in ``test_networks.py``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoseg.errors import ConfigurationError
from autoseg.networks import build_network, default_network_kwargs
from autoseg.networks.config import ops_for_dim
from autoseg.networks.ra_vnet import (
    AttentionRecovery,
    ChannelAttention,
    CofResBlock,
    ConvLSTMCell,
)
from autoseg.networks.uca_net import CrossAttentionSkip, slice_pool

STRIDES_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]


def _kwargs(name: str, features: list[int], strides=STRIDES_3D) -> dict:
    n = len(strides)
    return default_network_kwargs(name, n, features, strides, [[3] * len(strides[0])] * n)


# --- uca_net: cross-attention skip -------------------------------------------------------------

def _attention(dim: int = 3, channels: int = 6, seed: int = 0) -> CrossAttentionSkip:
    torch.manual_seed(seed)
    return CrossAttentionSkip(ops_for_dim(dim), channels, channels)


def test_cross_attention_starts_as_the_plain_skip():
    att = _attention()
    dec, enc = torch.randn(2, 6, 5, 16, 16), torch.randn(2, 6, 5, 16, 16)
    with torch.no_grad():
        assert torch.equal(att(dec, enc), enc)  # gamma = 0: the encoder feature passes unchanged


def test_affinities_are_channel_by_channel_and_slice_by_slice():
    att = _attention(channels=6)
    dec, enc = torch.randn(2, 6, 5, 24, 16), torch.randn(2, 6, 5, 24, 16)
    with torch.no_grad():
        a_c, a_s = att.affinities(dec, enc)
    assert a_c.shape == (2, 6, 6) and a_s.shape == (2, 5, 5)  # never voxels x voxels
    assert torch.allclose(a_c.sum(-1), torch.ones(2, 6)) and torch.allclose(a_s.sum(-1), torch.ones(2, 5))
    att2d = _attention(dim=2, channels=6)
    with torch.no_grad():
        _, rows = att2d.affinities(torch.randn(1, 6, 12, 20), torch.randn(1, 6, 12, 20))
    assert rows.shape == (1, 12, 12)  # 2D: attention over the rows of the first axis


def test_slice_branch_mixes_slices_and_channel_branch_mixes_channels():
    att = _attention(channels=4)
    dec, enc = torch.randn(1, 4, 6, 8, 8), torch.randn(1, 4, 6, 8, 8)
    with torch.no_grad():
        a_c, a_s = att.affinities(dec, enc)
        att.gamma_s.fill_(1.0)
        by_slice = att(dec, enc) - enc
        att.gamma_s.fill_(0.0)
        att.gamma_c.fill_(1.0)
        by_channel = att(dec, enc) - enc
    assert torch.allclose(by_slice, torch.einsum("nij,ncjhw->ncihw", a_s, enc), atol=1e-5)
    assert torch.allclose(by_channel, torch.einsum("nij,njdhw->nidhw", a_c, enc), atol=1e-5)


@pytest.mark.parametrize("branch", ["gamma_c", "gamma_s"])
def test_each_branch_takes_queries_from_the_decoder(branch):
    att = _attention()
    dec, enc = torch.randn(1, 6, 4, 16, 16), torch.randn(1, 6, 4, 16, 16)
    with torch.no_grad():
        getattr(att, branch).fill_(1.0)
        assert not torch.allclose(att(torch.randn_like(dec), enc), att(dec, enc), atol=1e-4)


def test_changing_one_encoder_slice_changes_every_output_slice():
    att = _attention()
    dec, enc = torch.randn(1, 6, 4, 16, 16), torch.randn(1, 6, 4, 16, 16)
    with torch.no_grad():
        att.gamma_s.fill_(1.0)
        out = att(dec, enc)
        enc2 = enc.clone()
        enc2[:, :, 0] += 1.0  # change one slice of the encoder feature only
        changed = (att(dec, enc2) - out).abs().amax(dim=(0, 1, 3, 4))
    assert (changed[1:] > 1e-4).all()


def test_slice_pool_keeps_the_first_axis_and_averages_the_rest():
    x = torch.randn(2, 3, 5, 32, 24)
    pooled = slice_pool(x, 8)
    assert pooled.shape == (2, 3, 5, 8, 8)
    assert torch.allclose(pooled, F.avg_pool3d(x, (1, 4, 3)), atol=1e-6)
    assert slice_pool(torch.randn(1, 2, 7, 13), 8).shape == (1, 2, 7, 1)  # prime size: one block


def test_uca_net_attention_gammas_receive_gradient():
    torch.manual_seed(0)
    net = build_network("uca_net", _kwargs("uca_net", [4, 8, 16]), 1, 2)
    outs = net(torch.randn(2, 1, 4, 16, 16))
    sum(F.cross_entropy(o, torch.randint(0, 2, (2, *o.shape[2:]))) for o in outs).backward()
    grads = [p.grad.abs().item() for n, p in net.named_parameters() if n.endswith(("gamma_c", "gamma_s"))]
    assert len(grads) == 2 * 2 and all(g > 0 for g in grads)  # two decoder stages, two branches each


# --- ra_vnet -----------------------------------------------------------------------------------

def test_channel_attention_with_gamma_zero_is_the_identity():
    ca = ChannelAttention()
    x = torch.randn(2, 8, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(ca(x), x)
        a = ca.affinity(x)
        assert a.shape == (2, 8, 8) and torch.allclose(a.sum(-1), torch.ones(2, 8))
        ca.gamma.fill_(0.5)
        expected = x + 0.5 * torch.einsum("nij,njdhw->nidhw", a, x)
        assert torch.allclose(ca(x), expected, atol=1e-5)


def _lstm(seed: int = 0) -> ConvLSTMCell:
    torch.manual_seed(seed)
    cell = ConvLSTMCell(ops_for_dim(2), 3, 4, (3, 3))
    cell.reset_forget_bias()
    return cell


def test_convlstm_first_step_equals_a_conv_over_input_and_zero_state():
    cell = _lstm()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        h, c = cell(x)
        z = cell.gates(torch.cat((x, torch.zeros(2, 4, 8, 8)), 1))
        i, _, g, o = z.chunk(4, 1)
        c_ref = torch.sigmoid(i) * torch.tanh(g)
        assert torch.allclose(c, c_ref, atol=1e-6)
        assert torch.allclose(h, torch.sigmoid(o) * torch.tanh(c_ref), atol=1e-6)
        assert torch.equal(cell.gates.bias[4:8], torch.ones(4))  # forget gate starts open


def test_convlstm_second_step_uses_the_previous_state():
    cell = _lstm()
    x1, x2 = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        h_a, _ = cell(x2, cell(x1))
        h_b, _ = cell(x2, cell(torch.randn(1, 3, 8, 8)))
    assert not torch.allclose(h_a, h_b, atol=1e-4)


def test_attention_recovery_output_depends_on_both_inputs():
    torch.manual_seed(0)
    ar = AttentionRecovery(ops_for_dim(3), below=16, skip=8, stride=(1, 2, 2), kernel=(3, 3, 3), n_conv=1)
    x, skip = torch.randn(1, 16, 4, 4, 4), torch.randn(1, 8, 4, 8, 8)
    with torch.no_grad():
        out = ar(x, skip)
        assert out.shape == (1, 8, 4, 8, 8)
        assert not torch.allclose(ar(torch.randn_like(x), skip), out, atol=1e-4)
        assert not torch.allclose(ar(x, torch.randn_like(skip)), out, atol=1e-4)


def test_cofres_block_adds_its_input():
    torch.manual_seed(0)
    block = CofResBlock(ops_for_dim(2), 8, 8, (3, 3))
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        block.fuse.norm.weight.zero_()
        block.fuse.norm.bias.zero_()  # fused branches contribute nothing: output = act(x)
        assert torch.allclose(block(x), F.leaky_relu(x, 0.01), atol=1e-6)
    assert block.project is None and CofResBlock(ops_for_dim(2), 1, 8, (3, 3)).project is not None
    assert [b.conv.out_channels for b in block.branches] == [2, 2, 2, 2]


def test_ra_vnet_features_must_be_multiples_of_four():
    with pytest.raises(ConfigurationError, match="multiples of 4") as err:
        build_network("ra_vnet", {**_kwargs("ra_vnet", [8, 16, 32]), "features_per_stage": [8, 18, 32]}, 1, 2)
    assert "[8, 20, 32]" in str(err.value)  # the fix names usable features
    net = build_network("ra_vnet", _kwargs("ra_vnet", [8, 16, 32]), 1, 3)  # 8 / 4 = 2 per branch
    assert net(torch.randn(2, 1, 4, 16, 16))[0].shape == (2, 3, 4, 16, 16)


def test_ra_vnet_channel_attention_gamma_receives_gradient():
    torch.manual_seed(0)
    net = build_network("ra_vnet", _kwargs("ra_vnet", [4, 8, 16]), 1, 2)
    outs = net(torch.randn(2, 1, 4, 16, 16))
    sum(F.cross_entropy(o, torch.randint(0, 2, (2, *o.shape[2:]))) for o in outs).backward()
    assert net.decoder.channel_attention.gamma.grad.abs().item() > 0

"""Channels-last CPU inference (autoseg.networks.cpu_layout): the converted copy computes what the
network computes, for every registered network, and the caller's network is left alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.networks import NETWORKS, build_network, default_network_kwargs
from autoseg.networks.cpu_layout import StridedMean, for_cpu_inference, is_channels_last
from autoseg.sliding_window import predict_sliding_window

STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
PATCH = (8, 16, 16)


def trained_looking(name: str, seed: int = 0) -> nn.Module:
    """A small network of ``name`` with random norm weights and biases too (fresh ones are 1 and 0,
    which would hide a norm that lost its affine parameters)."""
    torch.manual_seed(seed)
    kwargs = default_network_kwargs(name, 4, [4, 8, 16, 32], STRIDES, KERNELS, deep_supervision=False)
    net = build_network(name, kwargs, 1, 3)
    for m in net.modules():
        if isinstance(m, (nn.InstanceNorm3d, nn.GroupNorm, nn.BatchNorm3d)) and m.weight is not None:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    return net.eval()


def first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("name", NETWORKS)
def test_the_channels_last_copy_computes_what_the_network_computes(name: str) -> None:
    net = trained_looking(name)
    if not any(isinstance(m, nn.Conv3d) for m in net.modules()):
        pytest.skip(f"{name} has no 3D convolution")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kinds = [type(m) for m in net.modules()]
    fast = for_cpu_inference(net)
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        ref = first(net(x))
        out = first(fast(x.contiguous(memory_format=torch.channels_last_3d)))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert is_channels_last(fast) and not is_channels_last(net)
    # the caller's network is untouched: same modules, same layout, same weights
    assert [type(m) for m in net.modules()] == kinds
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert fast.state_dict().keys() == net.state_dict().keys()


def test_arunets_norms_and_shortcut_pools_are_replaced() -> None:
    net = trained_looking("arunet")
    kinds = {type(m) for m in net.modules()}
    assert nn.InstanceNorm3d in kinds and nn.AvgPool3d in kinds  # what there is to replace
    fast_kinds = {type(m) for m in for_cpu_inference(net).modules()}
    assert nn.InstanceNorm3d not in fast_kinds and nn.AvgPool3d not in fast_kinds
    assert nn.GroupNorm in fast_kinds and StridedMean in fast_kinds


@pytest.mark.parametrize("pool", [nn.AvgPool3d(2), nn.AvgPool3d((1, 2, 2)), nn.AvgPool3d((2, 2, 2), (2, 2, 2))])
def test_a_stride_sized_average_pool_becomes_a_strided_mean_with_the_same_result(pool: nn.AvgPool3d) -> None:
    x = torch.randn(2, 3, 5, 9, 8)  # sizes the stride does not divide: the same floor
    fast = for_cpu_inference(nn.Sequential(nn.Conv3d(3, 3, 1), pool))
    assert isinstance(fast[1], StridedMean)
    with torch.no_grad():
        torch.testing.assert_close(fast[1](x), pool(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", [nn.AvgPool3d(3, stride=2), nn.AvgPool3d(2, padding=1),
                                    nn.AvgPool3d(2, ceil_mode=True), nn.InstanceNorm3d(4, track_running_stats=True)])
def test_what_has_no_equivalent_is_left_as_it_is(module: nn.Module) -> None:
    fast = for_cpu_inference(nn.Sequential(nn.Conv3d(4, 4, 1), module))
    assert type(fast[1]) is type(module)


def test_a_converted_network_is_not_copied_again_and_an_owned_one_is_converted_in_place() -> None:
    net = trained_looking("arunet")
    fast = for_cpu_inference(net)
    assert fast is not net and for_cpu_inference(fast) is fast  # fold validation: one copy for all cases
    owned = trained_looking("arunet")
    assert for_cpu_inference(owned, copy_first=False) is owned and is_channels_last(owned)
    assert not any(isinstance(m, nn.InstanceNorm3d) for m in owned.modules())


def test_a_network_without_3d_convolutions_is_returned_itself() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2))
    assert for_cpu_inference(net) is net


def test_sliding_window_probabilities_are_the_same_in_either_layout() -> None:
    net = trained_looking("arunet", seed=3)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 12, 40, 36)).astype(np.float32)
    plain = predict_sliding_window(net, data, PATCH, 3, precision="fp32")
    fast = predict_sliding_window(for_cpu_inference(net), data, PATCH, 3, precision="fp32")
    np.testing.assert_allclose(fast, plain, atol=1e-4)

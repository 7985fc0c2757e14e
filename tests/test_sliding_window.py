"""Sliding-window prediction: tiles cover the volume, overlaps average exactly, mirroring is exact
for a mirror-symmetric network, and small volumes are padded and cropped back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoseg.sliding_window import gaussian_importance, predict_sliding_window, tile_starts


def pointwise_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 3, 1), torch.nn.Tanh(), torch.nn.Conv3d(3, 3, 1)).eval()


@pytest.mark.parametrize("shape", [(12, 30, 41), (5, 9, 7)])
def test_matches_whole_volume_forward_for_a_pointwise_network(shape) -> None:
    data = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    net = pointwise_net()
    probs = predict_sliding_window(net, data, (8, 16, 16), 3, overlap=0.5, batch_size=3, precision="fp32")
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(data)[None]), 1)[0].numpy()
    assert probs.shape == (3, *shape)
    np.testing.assert_allclose(probs, whole, atol=1e-5)


def test_mirroring_of_a_pointwise_network_changes_nothing() -> None:
    data = np.random.default_rng(2).normal(size=(1, 10, 20, 20)).astype(np.float32)
    net = pointwise_net()
    a = predict_sliding_window(net, data, (8, 16, 16), 3, precision="fp32")
    b = predict_sliding_window(net, data, (8, 16, 16), 3, mirror_axes=(0, 1, 2), precision="fp32")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tiles_cover_every_voxel_with_the_overlap() -> None:
    starts = tile_starts((100, 37), (32, 37), 0.5)
    assert starts[1] == [0] and starts[0][0] == 0 and starts[0][-1] == 100 - 32
    assert all(b - a <= 16 for a, b in zip(starts[0], starts[0][1:]))


def test_gaussian_weights_peak_in_the_centre_and_never_vanish() -> None:
    g = gaussian_importance((9, 17, 17))
    assert g.max() == g[4, 8, 8] == 1.0 and g.min() > 0

"""Topology rule: anisotropic axes are pooled late, patches fit the total stride."""
from __future__ import annotations

import math

from autoseg.planners.topology import plan_topology


def test_isotropic_patch_pools_all_axes() -> None:
    t = plan_topology((64, 64, 64), (1.0, 1.0, 1.0))
    assert t.n_stages == 5 and t.strides[1] == (2, 2, 2)
    assert t.total_stride == (16, 16, 16) and t.patch_size == (64, 64, 64)
    assert all(k == (3, 3, 3) for k in t.kernel_sizes)


def test_thick_slices_pool_in_plane_first() -> None:
    t = plan_topology((40, 160, 160), (2.5, 0.8, 0.8))
    assert t.strides[1] == (1, 2, 2)  # z untouched while its spacing is > 2x the in-plane spacing
    assert t.kernel_sizes[0] == (1, 3, 3)
    assert any(s[0] == 2 for s in t.strides[2:])  # z pooled once the voxels are near isotropic
    for axis in range(3):
        assert t.patch_size[axis] % t.total_stride[axis] == 0
        assert t.patch_size[axis] // t.total_stride[axis] >= 4


def test_odd_patch_is_rounded_down_to_stride() -> None:
    t = plan_topology((37, 101, 99), (1.0, 1.0, 1.0), max_stages=4)
    assert all(p % s == 0 and p <= o for p, s, o in zip(t.patch_size, t.total_stride, (37, 101, 99)))


def test_max_stages_respected_and_2d_works() -> None:
    t = plan_topology((512, 512), (0.8, 0.8), max_stages=6)
    assert t.n_stages == 6 and len(t.strides[0]) == 2
    assert math.prod(t.patch_size) == 512 * 512

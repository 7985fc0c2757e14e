"""Network topology from a patch size and a spacing: stages, strides and kernel sizes.

The rule follows nnU-Net's reasoning (written anew): an axis is pooled only while its current
spacing is less than twice the finest current spacing and its feature map stays at least
``min_size`` voxels, so an anisotropic volume is first pooled in-plane until the voxels become
roughly isotropic. An axis whose spacing is still much coarser than the finest uses kernel size 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """Per-stage strides and kernel sizes, and the patch size adjusted to the total stride."""

    patch_size: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)

    @property
    def total_stride(self) -> tuple[int, ...]:
        return tuple(math.prod(s[a] for s in self.strides) for a in range(len(self.patch_size)))


def plan_topology(patch_size: tuple[int, ...], spacing: tuple[float, ...], max_stages: int = 6,
                  min_size: int = 4) -> Topology:
    """Strides and kernels for ``patch_size`` at ``spacing``; the patch is rounded down to fit them."""
    dims = len(patch_size)
    current_spacing = [float(s) for s in spacing]
    current_size = [int(p) for p in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = [_kernel(current_spacing)]
    while len(strides) < max_stages:
        finest = min(current_spacing)
        pool = [current_spacing[a] < 2 * finest and current_size[a] >= 2 * min_size for a in range(dims)]
        if not any(pool):
            break
        strides.append(tuple(2 if p else 1 for p in pool))
        current_size = [s // 2 if p else s for s, p in zip(current_size, pool)]
        current_spacing = [sp * 2 if p else sp for sp, p in zip(current_spacing, pool)]
        kernels.append(_kernel(current_spacing))
    total = [math.prod(s[a] for s in strides) for a in range(dims)]
    adjusted = tuple(max(t, (p // t) * t) for p, t in zip(patch_size, total))
    return Topology(adjusted, tuple(strides), tuple(kernels))


def _kernel(spacing: list[float]) -> tuple[int, ...]:
    finest = min(spacing)
    return tuple(3 if s < 2 * finest else 1 for s in spacing)

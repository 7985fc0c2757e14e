"""benchmarks/fov_ends.py: the liver-free fields of view it draws from the trunk generator."""
from __future__ import annotations

from tests.benchmark_modules import load_benchmark

fov = load_benchmark("fov_ends")


def test_a_liver_free_case_is_the_generators_own_pelvis_only_field_without_liver() -> None:
    """The first case is a pelvis-only field of view (its top at most -120 mm, below every trunk liver) of
    a held-out seed, rendered as the generator renders it: body, bone and muscle, no liver label."""
    import numpy as np

    from autoseg.phantom_family2_shapes import LIVER_TISSUES
    from autoseg.phantom_trunk import TRUNK_TISSUES, trunk_grid

    [(seed, case)] = list(fov.liver_free_cases(1))
    grid = trunk_grid(seed)
    assert seed >= fov.LIVER_FREE_SEED and grid.origin[0] + (grid.shape[0] - 1) * grid.spacing[0] <= -120
    assert case.image.shape == grid.shape and not case.labels.any() and not np.isin(case.tissues, LIVER_TISSUES).any()
    present = {name for name, tissue in TRUNK_TISSUES.items() if (case.tissues == tissue).any()}
    assert {"bone_cortical", "muscle"} <= present, present

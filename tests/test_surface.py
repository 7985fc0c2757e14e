"""Area-weighted surface distances (autoseg.surface): hand-derived areas and distances of boxes, and
agreement with the two implementations published figures use, DeepMind's surface-distance and MONAI
(the metrics-reference extra), on ellipsoids and random shapes with anisotropic spacing.

Stated tolerances: DeepMind's package computes the same quantities in float64 and agrees to 1e-9;
MONAI computes NSD in float32 and agrees to 1e-5. MONAI's Hausdorff distance is not compared: it
takes unweighted boundary voxels, not area-weighted surface elements (docs/evaluation.md).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from autoseg import surface
from autoseg.evaluation import hausdorff95, normalised_surface_dice, score_masks
from tests.optional import require_extra

SPACING_ZYX = (2.5, 0.8, 1.1)


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii_mm: tuple[float, ...],
               spacing: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) * s / r) ** 2 for g, c, r, s in zip(grid, centre, radii_mm, spacing)) <= 1.0


def _blob(shape: tuple[int, ...], seed: int) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma=(1.0, 2.5, 2.5))
    return noise > 0.6 * noise.std()


def _box_areas(n: int, spacing: tuple[float, float, float]) -> dict[str, float]:
    """The marching-cubes surface through the voxel centres of an n^3 box: flat faces between the
    outer voxel centres, chamfers along the 12 edges and a triangle at each of the 8 corners."""
    sz, sy, sx = spacing
    side = n - 1
    face = {"z": side * sy * side * sx, "y": side * sz * side * sx, "x": side * sz * side * sy}
    edge = {"x": side * sx * math.hypot(sy, sz) / 2, "y": side * sy * math.hypot(sx, sz) / 2,
            "z": side * sz * math.hypot(sx, sy) / 2}
    corner = math.sqrt((sy * sx) ** 2 + (sz * sx) ** 2 + (sz * sy) ** 2) / 8
    total = 2 * sum(face.values()) + 4 * sum(edge.values()) + 8 * corner
    return {"total": total, "face_z": face["z"], "bottom": face["z"] + 2 * edge["x"] + 2 * edge["y"] + 4 * corner}


def _box(n: int, shape: tuple[int, int, int] = (9, 8, 8)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[2:2 + n, 2:2 + n, 2:2 + n] = True
    return mask


def test_surface_area_of_a_box_is_its_marching_cubes_area() -> None:
    for n, spacing in ((4, (1.0, 2.0, 1.5)), (3, (2.5, 0.8, 1.1)), (5, (1.0, 1.0, 1.0))):
        box = _box(n)
        d = surface.surface_distances(box, box, spacing)
        assert d.ref_areas.sum() == pytest.approx(_box_areas(n, spacing)["total"], rel=1e-12)
        assert np.all(d.pred_to_ref == 0) and np.all(d.ref_to_pred == 0)


def test_a_cell_and_its_complement_have_the_same_area() -> None:
    areas = surface.cell_areas(SPACING_ZYX)
    assert areas[0] == areas[255] == 0 and np.all(areas[1:255] > 0)
    np.testing.assert_allclose(areas, areas[::-1], rtol=1e-12)


def test_nsd_and_hd95_of_a_box_shifted_by_one_voxel() -> None:
    # A box of n^3 voxels shifted by one voxel along z, the axis with the smallest spacing (1 mm).
    # The side walls of the two surfaces coincide where the boxes overlap (distance 0). The surface
    # elements at the bottom level of the lower box (face, its 4 edges, its 4 corners) have no
    # counterpart in its plane: the other surface is one z step (1 mm) away; so are the face elements
    # of its top level, whose rim the other box's side wall touches. The same holds the other way
    # round, every other element is at distance 0, and the in-plane steps (1.5, 2 mm) are longer.
    # NSD = 1 - (bottom + face_z) / total below 1 mm, 1 from 1 mm; HD95 = 1 mm.
    n, spacing = 4, (1.0, 2.0, 1.5)
    ref = _box(n)
    pred = np.roll(ref, 1, axis=0)
    areas = _box_areas(n, spacing)
    partial = 1 - (areas["bottom"] + areas["face_z"]) / areas["total"]
    assert normalised_surface_dice(pred, ref, spacing, 0.5) == pytest.approx(partial, rel=1e-12)
    assert normalised_surface_dice(pred, ref, spacing, 0.99) == pytest.approx(partial, rel=1e-12)
    assert normalised_surface_dice(pred, ref, spacing, 1.0) == pytest.approx(1.0)
    assert normalised_surface_dice(pred, ref, spacing, 2.0) == pytest.approx(1.0)
    assert hausdorff95(pred, ref, spacing) == pytest.approx(1.0)
    assert normalised_surface_dice(ref, ref, spacing, 0.0) == pytest.approx(1.0)


def test_distances_use_the_spacing_of_each_axis() -> None:
    # a 5^3 box shifted by two voxels along its finest axis: the far cap is two steps from the other
    # surface, every in-plane step (3 mm) is longer
    ref = np.zeros((12, 12, 12), bool)
    ref[3:8, 3:8, 3:8] = True
    for axis, spacing in ((0, (0.5, 3.0, 3.0)), (2, (3.0, 3.0, 0.5)), (1, (3.0, 0.7, 3.0))):
        pred = np.roll(ref, 2, axis=axis)
        assert hausdorff95(pred, ref, spacing) == pytest.approx(2 * spacing[axis])


def test_weighted_percentile_takes_the_area_into_account() -> None:
    distances, areas = np.array([0.0, 5.0]), np.array([96.0, 4.0])
    assert surface.weighted_percentile(distances, areas, 95) == 0.0  # 96 % of the area is at 0
    assert surface.weighted_percentile(distances, np.array([94.0, 6.0]), 95) == 5.0


def _shape_pairs() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    sphere_spacing = (2.5, 0.8, 0.8)
    shape = (40, 96, 96)
    sphere = _ellipsoid(shape, (20, 48, 48), (30, 30, 30), sphere_spacing)
    shifted = _ellipsoid(shape, (21.3, 50.2, 46.9), (30, 30, 30), sphere_spacing)
    larger = _ellipsoid(shape, (20, 47, 49), (33, 28, 31), sphere_spacing)
    pairs = [(shifted, sphere, sphere_spacing), (larger, sphere, sphere_spacing)]
    pairs += [(_blob((20, 50, 40), seed), _blob((20, 50, 40), seed + 100), SPACING_ZYX) for seed in range(3)]
    return pairs


@pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")  # the package's scipy imports
@pytest.mark.parametrize("index", range(5))
def test_nsd_and_hd95_agree_with_deepmind_surface_distance(index: int) -> None:
    require_extra("metrics-reference")
    import surface_distance

    pred, ref, spacing = _shape_pairs()[index]
    assert pred.any() and ref.any() and not np.array_equal(pred, ref)
    theirs = surface_distance.compute_surface_distances(ref, pred, spacing)  # (ground truth, prediction)
    scores = {tol: score_masks(pred, ref, spacing, tol) for tol in (1.0, 2.0, 4.0)}
    for tol, ours in scores.items():
        assert ours["nsd"] == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(theirs, tol), abs=1e-9)
        assert ours["hd95_mm"] == pytest.approx(surface_distance.compute_robust_hausdorff(theirs, 95), abs=1e-9)
    assert 0.0 < scores[1.0]["nsd"] < scores[4.0]["nsd"] <= 1.0


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # inside MONAI 1.6
@pytest.mark.parametrize("index", range(5))
def test_nsd_agrees_with_monai_subvoxel_surface_dice(index: int) -> None:
    require_extra("metrics-reference")
    import torch
    from monai.metrics import compute_surface_dice

    pred, ref, spacing = _shape_pairs()[index]
    for tol in (1.0, 2.0):
        theirs = compute_surface_dice(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None], [tol],
                                      include_background=True, spacing=spacing, use_subvoxels=True)
        assert normalised_surface_dice(pred, ref, spacing, tol) == pytest.approx(float(theirs), abs=1e-5)


def test_area_weighting_differs_from_counting_boundary_voxels() -> None:
    # why the convention matters: counting boundary voxels gives another NSD on the same pair
    pred, ref, spacing = _shape_pairs()[0]
    structure = ndimage.generate_binary_structure(3, 1)
    edges = [m ^ ndimage.binary_erosion(m, structure) for m in (pred, ref)]
    to_ref = ndimage.distance_transform_edt(~edges[1], sampling=spacing)[edges[0]]
    to_pred = ndimage.distance_transform_edt(~edges[0], sampling=spacing)[edges[1]]
    counted = (np.count_nonzero(to_ref <= 1.0) + np.count_nonzero(to_pred <= 1.0)) / (to_ref.size + to_pred.size)
    assert abs(normalised_surface_dice(pred, ref, spacing, 1.0) - counted) > 0.01

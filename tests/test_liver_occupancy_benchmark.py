"""benchmarks/liver_occupancy.py: where a liver lies relative to the spinal canal.

Checked on small masks whose offsets are known by construction: a RAS grid (x and y axes flipped)
gives the same patient-space offsets as the LPS grid of the same anatomy, the occupancy map counts
slices not voxels, and the shares behind the canal and in a reference's rare cells are what the
construction says.
"""
from __future__ import annotations

import numpy as np
import pytest

from autoseg.io import Geometry
from tests.benchmark_modules import load_benchmark

occ = load_benchmark("liver_occupancy")

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def anatomy(shape: tuple[int, int, int] = (3, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """In LPS array order: a canal voxel at (y 10, x 10) on every slice, and a liver block on slices
    0 and 1 occupying rows 4-5 (6 and 5 voxels in front of the canal) and columns 3-4 (7 and 6
    voxels to the patient's right)."""
    canal, liver = np.zeros(shape, bool), np.zeros(shape, bool)
    canal[:, 10, 10] = True
    liver[:2, 4:6, 3:5] = True
    return liver, canal


def test_offsets_are_in_patient_space_whatever_the_grid() -> None:
    liver, canal = anatomy()
    lps = occ.slice_offsets(liver, canal, Geometry((20, 20, 3), (2.0, 3.0, 5.0), (0.0, 0.0, 0.0), LPS))
    # the same anatomy stored RAS: rows and columns reversed, the direction saying so
    ras = occ.slice_offsets(liver[:, ::-1, ::-1], canal[:, ::-1, ::-1],
                            Geometry((20, 20, 3), (2.0, 3.0, 5.0), (0.0, 0.0, 0.0), RAS))
    assert len(lps) == len(ras) == 2  # the third slice has canal but no liver
    for (dy1, dx1), (dy2, dx2) in zip(lps, ras):
        assert sorted(dy1) == pytest.approx(sorted(dy2))
        assert sorted(dx1) == pytest.approx(sorted(dx2))
    dy, dx = lps[0]
    assert sorted(set(dy.tolist())) == [-18.0, -15.0]  # rows 4, 5 at 3 mm: in front of the canal
    assert sorted(set(dx.tolist())) == [-14.0, -12.0]  # columns 3, 4 at 2 mm: the patient's right


def test_a_grid_turned_in_plane_gives_the_same_offsets() -> None:
    """The array's columns run along the patient's y (posterior) and its rows along -x (right): the
    direction matrix's columns say so, and the offsets must come out as for the LPS grid. The matrix
    is not symmetric, so reading its rows for its columns would fail here."""
    liver, canal = anatomy()
    lps = occ.slice_offsets(liver, canal, Geometry((20, 20, 3), (3.0, 3.0, 5.0), (0.0, 0.0, 0.0), LPS))
    turned = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # row-major: index x -> LPS +y, index y -> LPS -x

    def turn(a: np.ndarray) -> np.ndarray:  # turned[z, j, i] = lps[z, i, N - 1 - j]
        return a.transpose(0, 2, 1)[:, ::-1, :]

    out = occ.slice_offsets(turn(liver), turn(canal), Geometry((20, 20, 3), (3.0, 3.0, 5.0), (0.0, 0.0, 0.0), turned))
    assert len(out) == len(lps) == 2
    for (dy1, dx1), (dy2, dx2) in zip(lps, out):
        assert np.allclose(sorted(zip(dy1, dx1)), sorted(zip(dy2, dx2)))


def test_a_sagittal_grid_is_refused() -> None:
    liver, canal = anatomy()
    sagittal = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="not an axial grid"):
        occ.slice_offsets(liver, canal, Geometry((20, 20, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), sagittal))


def test_occupancy_counts_slices_and_rare_cells() -> None:
    one = [(np.array([-28.0, -27.0, -26.0]), np.array([-14.0, -14.0, -13.0]))]  # one slice, one 5 mm cell
    edges = occ.occupancy_map([(np.array([-50.0, 45.0, 50.0]), np.array([0.0, 0.0, 0.0]))], cell=5.0, half=50.0)
    # a cell holds its lower edge; +half lies off the map
    assert edges[0, 10] == 1 and edges[19, 10] == 1 and edges.sum() == 2
    two = one + [(np.array([22.0]), np.array([2.0]))]  # a second slice with liver elsewhere
    grid = occ.occupancy_map(two, cell=5.0, half=50.0)
    assert grid.shape == (20, 20)
    assert grid.max() == pytest.approx(0.5) and grid.sum() == pytest.approx(1.0)
    assert grid[int((-28 + 50) // 5), int((-14 + 50) // 5)] == pytest.approx(0.5)
    reference = occ.occupancy_map(one, cell=5.0, half=50.0)
    # of two's 4 voxels, the one behind the canal lies where the reference never has liver
    assert occ.rare_share(two, reference, rare=0.05, cell=5.0, half=50.0) == pytest.approx(0.25)
    assert occ.rare_share([], reference) is None
    figures = occ.case_figures(two)
    assert figures["slices"] == 2
    assert figures["share_behind_40mm"] == pytest.approx(1.0)
    assert figures["share_behind_20mm"] == pytest.approx(0.25)
    assert figures["dy_p5_mm"] == pytest.approx(np.percentile([-28, -27, -26, 22], 5))
    assert figures["dy_mean_mm"] == pytest.approx(-59 / 4)
    assert figures["behind_abs_dx_p5_mm"] == pytest.approx(np.percentile([14, 14, 13, 2], 5))
    assert occ.case_figures([]) == {"slices": 0}


def test_sets_are_parsed_or_refused() -> None:
    assert occ.parse_set("v4=trunk4:0:12") == ("v4", "trunk4", 0, 12)
    assert occ.parse_set("f1=family1:3:5") == ("f1", "family1", 3, 5)
    with pytest.raises(Exception, match="NAME=GENERATOR:SEED:N"):
        occ.parse_set("f3=family3:0:5")
    from autoseg.phantom_trunk import TRUNK_VERSIONS

    with pytest.raises(Exception, match=f"versions {', '.join(str(v) for v in TRUNK_VERSIONS)}, not 7"):
        occ.parse_set("t=trunk7:0:5")


def test_the_summary_covers_cases_without_liver() -> None:
    cases = [{"case": "pelvis only", "slices": 0, "rare_in_a": None},
             {"case": "x", "slices": 3, "dy_mean_mm": -50.0, "rare_in_a": 0.1},
             {"case": "y", "slices": 4, "dy_mean_mm": -30.0, "rare_in_a": 0.3}]
    summary = occ.summarise(cases)
    assert summary["cases"] == 3 and summary["cases_with_liver"] == 2
    assert summary["dy_mean_mm"] == {"median": -40.0, "min": -50.0, "max": -30.0}
    assert summary["rare_in_a"]["median"] == pytest.approx(0.2)


def test_extents_follow_the_patient_axes_and_skip_cut_livers() -> None:
    liver, _ = anatomy((5, 20, 20))
    liver[:] = False
    liver[1:4, 4:6, 3:9] = True  # 3 slices, 2 rows, 6 columns
    geometry = Geometry((20, 20, 5), (2.0, 3.0, 5.0), (0.0, 0.0, 0.0), LPS)
    assert occ.liver_extents(liver, geometry) == {"lr_mm": 12.0, "ap_mm": 6.0, "cc_mm": 15.0}
    turned = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # index x -> LPS y, index y -> LPS -x
    same = occ.liver_extents(liver.transpose(0, 2, 1)[:, ::-1, :],
                             Geometry((20, 20, 5), (3.0, 2.0, 5.0), (0.0, 0.0, 0.0), turned))
    assert same == {"lr_mm": 12.0, "ap_mm": 6.0, "cc_mm": 15.0}
    liver[0] = liver[1]  # now it touches the first slice: cut by the field of view
    assert occ.liver_extents(liver, geometry) == {"lr_mm": None, "ap_mm": None, "cc_mm": None}

"""One orientation for the network: a CT stored in another voxel order is the same patient to it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.io import Geometry, read_label, write_image
from autoseg.orientation import Reorientation, reorientation_for
from autoseg.preprocessing import labels_on_original_grid, preprocess_case, restore_to_original
from tests.test_preprocessing import make_plans, phantom

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_CT = REAL / "totalsegmentator_example" / "example_ct.nii.gz"


def lps_geometry(shape_zyx: tuple[int, ...], spacing_zyx=(2.5, 0.8, 0.7)) -> Geometry:
    return Geometry(tuple(reversed(shape_zyx)), tuple(reversed(spacing_zyx)), (-10.0, 5.0, 20.0),
                    (1, 0, 0, 0, 1, 0, 0, 0, 1))


def stored_as(array: np.ndarray, geometry: Geometry, code: str) -> tuple[np.ndarray, Geometry]:
    """``array`` on ``geometry`` (LPS) stored in orientation ``code`` (e.g. "RAS", "PIL"), via SimpleITK."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    turned = sitk.DICOMOrient(image, code)
    return sitk.GetArrayFromImage(turned), Geometry.of(turned)


@pytest.mark.parametrize("code", ["LPS", "RAS", "LAS", "RPI", "PIL", "SRA", "ILP"])
def test_any_stored_order_comes_back_to_lps_exactly(code: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, (5, 6, 7)).astype(np.int16)
    geometry = lps_geometry(array.shape)
    stored, stored_geometry = stored_as(array, geometry, code)
    reo = Reorientation.of(stored_geometry)
    assert reo.is_identity == (code == "LPS")
    assert np.array_equal(reo.apply(stored), array)
    assert reo.shape(stored.shape) == array.shape
    assert reo.spacing(stored_geometry.spacing_zyx) == pytest.approx(geometry.spacing_zyx)
    assert np.array_equal(reo.undo(array), stored)
    channels = np.stack([stored, stored + 1])
    assert np.array_equal(reo.apply(channels)[1], array + 1), "leading channel axes are kept"
    # a box on the stored grid covers the same voxels once turned
    box = ((1, 3), (2, 5), (0, 4))
    mask = np.zeros(stored.shape, bool)
    mask[tuple(slice(a, b) for a, b in box)] = True
    turned = reo.box(box, stored.shape)
    expect = np.zeros(array.shape, bool)
    expect[tuple(slice(a, b) for a, b in turned)] = True
    assert np.array_equal(reo.apply(mask), expect)


def test_an_oblique_grid_takes_the_nearest_order() -> None:
    t = np.deg2rad(20)  # 20 degrees about z, then stored RAS-like
    d = np.array([[-np.cos(t), np.sin(t), 0], [-np.sin(t), -np.cos(t), 0], [0, 0, 1]])
    reo = Reorientation.of(Geometry((4, 4, 4), (1, 1, 1), (0, 0, 0), tuple(d.ravel())))
    assert reo.perm == (0, 1, 2) and reo.flips == (False, True, True)


def test_plans_without_an_orientation_keep_the_files_order() -> None:
    g = Geometry((4, 4, 4), (1, 1, 1), (0, 0, 0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert reorientation_for(None, g).is_identity
    assert reorientation_for("LPS", g).flips == (False, True, True)
    with pytest.raises(ValueError, match="unknown orientation"):
        reorientation_for("RAS", g)


@pytest.mark.parametrize("code", ["RAS", "PIL"])
def test_preprocessing_sees_one_patient_and_restores_the_files_grid(tmp_path: Path, code: str) -> None:
    """The phantom stored LPS and stored ``code``: with an orientation in the plans both preprocess to
    the same arrays; labels and probabilities restore onto each file's own grid, voxel for voxel."""
    image, labels = phantom(shape=(12, 40, 44))
    geometry = lps_geometry(image.shape, (2.5, 0.8, 0.8))
    plans = make_plans(orientation="LPS")
    cases = {}
    for name, (img, lab, geom) in {"lps": (image, labels, geometry),
                                   code: (*[stored_as(a, geometry, code)[0] for a in (image, labels)],
                                          stored_as(image, geometry, code)[1])}.items():
        write_image(tmp_path / f"{name}.nii.gz", img, geom)
        write_image(tmp_path / f"{name}_seg.nii.gz", lab, geom)
        cases[name] = (preprocess_case([tmp_path / f"{name}.nii.gz"], tmp_path / f"{name}_seg.nii.gz", plans), lab)
    a, b = cases["lps"][0], cases[code][0]
    assert np.array_equal(a.data, b.data) and np.array_equal(a.seg, b.seg)
    assert a.properties.reorientation is None and b.properties.reorientation is not None
    for pre, file_labels in (cases["lps"], cases[code]):
        back = restore_to_original(pre.seg[0] if pre.seg.ndim == 4 else pre.seg, pre.properties)
        assert back.shape == file_labels.shape
        assert np.mean(back == file_labels) > 0.99  # resampled there and back: edges may move a voxel
        probs = np.stack([(pre.seg == k).astype(np.float32) for k in range(3)])
        probs = probs[:, 0] if probs.ndim == 5 else probs
        assert np.array_equal(labels_on_original_grid(probs, pre.properties), back)
        restored_probs = restore_to_original(probs, pre.properties)
        assert restored_probs.shape == (3, *file_labels.shape)
    # without an orientation the stored order reaches the network as it is
    plain = preprocess_case([tmp_path / f"{code}.nii.gz"], None, make_plans())
    assert plain.properties.reorientation is None and not np.array_equal(plain.data, a.data)


@pytest.mark.skipif(not REAL_CT.is_file(), reason=f"{REAL_CT} is absent (the shared real-data folder)")
def test_the_ras_stored_real_ct_is_turned_round() -> None:
    """TotalSegmentator's example CT is stored RAS: the network must see its spine at the back (high y)."""
    image, geometry = read_label(REAL_CT)
    reo = Reorientation.of(geometry)
    assert reo.perm == (0, 1, 2) and reo.flips == (False, True, True)
    turned = reo.apply(image.astype(np.float32))
    profile = (turned > 300).sum(axis=(0, 2))  # bone per row, anterior (y = 0) to posterior
    assert np.average(np.arange(len(profile)), weights=profile) > turned.shape[1] / 2


def test_lps_plans_never_reuse_cases_or_ensembles_of_the_files_order() -> None:
    """Cases preprocessed under plans without an orientation are not current for LPS plans (a RAS
    dataset would otherwise train on file-order arrays while predict turns inputs to LPS), and two
    networks that differ only in it are not averaged as one preprocessing group."""
    from autoseg.inference.ensembles import _preprocessing_key  # noqa: PLC2701 - the key under test
    from autoseg.preprocessing.storage import plans_key

    old, new = make_plans(), make_plans(orientation="LPS")
    assert plans_key(old) != plans_key(new)
    assert plans_key(old) == plans_key(make_plans())
    assert _preprocessing_key(old) != _preprocessing_key(new)

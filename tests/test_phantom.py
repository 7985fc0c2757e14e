"""The synthetic phantom: realistic HU and class fractions, consistent labels, determinism, MSD output."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.datasets import load_dataset
from autoseg.errors import ConfigurationError, DatasetError
from autoseg.io import read_image, read_label
from autoseg.phantom import (FOV_MM, PhantomCase, case_seed, choose_grid, generate_case, main, task_labels,
                             write_task)
from autoseg.phantom_anatomy import TISSUES

SMALL = (48, 128, 128)


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [generate_case(seed, "Task08", shape=SMALL) for seed in range(3)]


def _liver(case: PhantomCase) -> np.ndarray:
    return task_labels(case.tissues, "Task03") == 1


def test_case_arrays_and_grid(cases: list[PhantomCase]) -> None:
    case = cases[0]
    assert case.image.dtype == np.int16 and case.labels.dtype == np.uint8
    assert case.image.shape == case.labels.shape == case.tissues.shape == SMALL
    # Without a spacing the grid fits the default field of view; the origin centres it on (0, 0, 0).
    assert np.allclose(np.multiply(case.spacing, SMALL), FOV_MM)
    centre_xyz = np.add(case.origin, (np.array(SMALL[::-1]) - 1) / 2 * case.spacing[::-1])
    assert np.allclose(centre_xyz, 0.0)
    assert set(np.unique(case.labels)) <= {0, 1, 2}


def test_hu_of_tissues_is_realistic(cases: list[PhantomCase]) -> None:
    for case in cases:
        image = case.image.astype(float)
        liver_label = image[_liver(case)].mean()
        parenchyma = image[case.tissues == TISSUES["liver"]].mean()
        assert 50 <= liver_label <= 130
        assert image[case.labels == 1].mean() > parenchyma + 20  # enhancing vessels
        assert image[case.labels == 2].mean() < parenchyma - 10  # hypodense tumours
        assert -130 <= np.median(image[case.tissues == TISSUES["fat"]]) <= -70
        assert np.median(image[case.tissues == TISSUES["bone_cancellous"]]) >= 300
        assert 120 <= np.median(image[case.tissues == TISSUES["aorta"]]) <= 220
        assert abs(image[case.tissues == TISSUES["air"]].mean() + 1000) < 15
        assert 8 <= image[:, :8, :8].std() <= 22  # noise in the air of a corner


def test_labels_lie_inside_body_and_liver(cases: list[PhantomCase]) -> None:
    outside = {TISSUES[t] for t in ("air", "fat", "muscle", "lung", "bone_cortical", "bone_cancellous")}
    for case in cases:
        assert not np.isin(case.tissues[case.labels > 0], list(outside)).any()
        assert (case.labels > 0).sum() > 0
    seed = 1
    vessels = generate_case(seed, "Task08", shape=SMALL)
    liver = generate_case(seed, "Task03", shape=SMALL)
    np.testing.assert_array_equal(vessels.image, liver.image)  # one anatomy, two label sets
    assert np.all(liver.labels[vessels.labels == 1] == 1)  # vessels lie in the liver label
    np.testing.assert_array_equal(liver.labels == 2, vessels.labels == 2)
    assert (liver.labels == 1).sum() > 10 * (vessels.labels == 1).sum()


def test_class_fractions_are_realistic(cases: list[PhantomCase]) -> None:
    for case in cases:
        liver = _liver(case)
        assert 0.02 <= liver.mean() <= 0.12  # ~1.0-1.8 L in a 27 L field of view
        assert 0.0005 <= (case.labels == 1).mean() <= 0.01
        assert 0 < (case.labels == 2).sum() <= 0.15 * liver.sum()  # one 4 mm tumour is ~0.05 %


def test_same_seed_same_case_other_seed_other_case(cases: list[PhantomCase]) -> None:
    again = generate_case(0, "Task08", shape=SMALL)
    np.testing.assert_array_equal(again.image, cases[0].image)
    np.testing.assert_array_equal(again.labels, cases[0].labels)
    assert again.spacing == cases[0].spacing and again.origin == cases[0].origin
    assert not np.array_equal(cases[0].labels, cases[1].labels)


def test_anatomy_keeps_its_size_in_mm_across_spacings() -> None:
    coarse = generate_case(4, "Task03", spacing=(4.5, 2.8, 2.8))
    fine = generate_case(4, "Task03", spacing=(3.0, 1.8, 1.8))
    assert fine.image.shape == tuple(round(f / s) for f, s in zip(FOV_MM, (3.0, 1.8, 1.8)))
    volumes = [(c.labels > 0).sum() * np.prod(c.spacing) / 1000 for c in (coarse, fine)]  # mL
    assert 900 <= volumes[0] <= 2200
    assert abs(volumes[0] - volumes[1]) / volumes[1] < 0.1


def test_spacing_is_drawn_within_the_callers_range() -> None:
    rng = ((2.0, 1.5, 1.5), (4.0, 2.5, 2.5))
    spacings = {choose_grid(seed, spacing_range=rng).spacing for seed in range(6)}
    assert len(spacings) == 6
    for z, y, x in spacings:
        assert 2.0 <= z <= 4.0 and 1.5 <= y <= 2.5 and y == x
    # A given shape with a spacing crops or pads the field of view around the same centre.
    grid = choose_grid(0, shape=(10, 20, 30), spacing=(2.0, 1.0, 1.0))
    assert grid.shape == (10, 20, 30) and grid.origin == (-9.0, -9.5, -14.5)


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(ConfigurationError, match="Task08"):
        generate_case(0, "Task8")
    with pytest.raises(ConfigurationError, match="shape"):
        generate_case(0, shape=(0, 10, 10))
    with pytest.raises(ConfigurationError, match="spacing_range"):
        generate_case(0, spacing_range=((2.0, 1.0, 1.0), (1.0, 1.0, 1.0)))


def test_write_task_is_a_loadable_msd_folder(tmp_path: Path) -> None:
    shape = (24, 64, 64)
    root = write_task(tmp_path, "Task08", num_training=3, num_test=1, seed=5, shape=shape)
    assert root == tmp_path / "Task08_HepaticVessel"
    dataset = load_dataset(root)
    assert len(dataset.cases) == 3 and dataset.is_ct
    assert dataset.labels == {0: "background", 1: "vessel", 2: "tumour"}
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    assert meta["training"][0] == {"image": "./imagesTr/hepaticvessel_000.nii.gz",
                                   "label": "./labelsTr/hepaticvessel_000.nii.gz"}
    assert meta["test"] == ["./imagesTs/hepaticvessel_003.nii.gz"]
    assert (root / "labelsTs" / "hepaticvessel_003.nii.gz").is_file()

    expected = generate_case(case_seed(5, 1), "Task08", shape=shape)
    image, geometry = read_image(root / "imagesTr" / "hepaticvessel_001.nii.gz")
    labels, label_geometry = read_label(root / "labelsTr" / "hepaticvessel_001.nii.gz")
    np.testing.assert_array_equal(image[0], expected.image)
    np.testing.assert_array_equal(labels, expected.labels)
    assert geometry.same_grid(expected.geometry, tol=1e-5) and label_geometry.same_grid(geometry)
    assert np.allclose(geometry.spacing_zyx, expected.spacing) and np.allclose(geometry.origin, expected.origin)


def test_write_task_reruns_skip_or_rewrite(tmp_path: Path) -> None:
    args = dict(task="Task03", num_training=2, num_test=1, seed=0, shape=(16, 48, 48))
    root = write_task(tmp_path, **args)
    first = root / "imagesTr" / "liver_000.nii.gz"
    stamp = first.stat().st_mtime_ns
    assert write_task(tmp_path, **args) == root and first.stat().st_mtime_ns == stamp  # up to date
    write_task(tmp_path, **{**args, "num_training": 1})  # fewer cases: the stale ones go
    assert len(load_dataset(root).cases) == 1
    assert not (root / "imagesTr" / "liver_002.nii.gz").exists()
    assert (root / "imagesTs" / "liver_001.nii.gz").is_file()


def test_write_task_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    foreign = tmp_path / "Task08_HepaticVessel"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="phantom.json"):
        write_task(tmp_path, "Task08", num_training=1, num_test=0, shape=(8, 16, 16))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_command_line(tmp_path: Path) -> None:
    assert main([str(tmp_path), "--task", "Task03", "--num-training", "1", "--num-test", "0",
                 "--shape", "12", "32", "32"]) == 0
    assert len(load_dataset(tmp_path / "Task03_Liver").cases) == 1
    assert main([str(tmp_path), "--num-training", "0"]) == 2


def test_a_tumour_free_family1_case_is_the_same_patient_without_its_tumours(cases: list[PhantomCase]) -> None:
    sick = cases[0]
    free = generate_case(0, "Task08", shape=SMALL, tumour_free=True)
    assert (sick.labels == 2).any() and not (free.labels == 2).any()
    outside = sick.labels != 2
    np.testing.assert_array_equal((free.labels == 1)[outside], (sick.labels == 1)[outside])  # the same vessels
    same = np.abs(free.image.astype(np.int32) - sick.image.astype(np.int32))[outside] == 0
    assert same.mean() > 0.99  # the same patient, the blur reaching only just past each tumour's rim


def test_write_task_gives_family1_tumour_free_livers_only_when_asked(tmp_path: Path) -> None:
    args = dict(task="Task08", num_training=3, num_test=2, seed=5, shape=(24, 64, 64))
    plain = write_task(tmp_path / "plain", **args)
    assert "tumour_free_share" not in json.loads((plain / "phantom.json").read_text())  # as before the option
    root = write_task(tmp_path / "free", **args, tumour_free_share=0.5)
    free = [p.name for p in sorted((root / "labelsTr").glob("*.nii.gz")) + sorted((root / "labelsTs").glob("*.nii.gz"))
            if not (read_label(p)[0] == 2).any()]
    assert len(free) == 3  # round(0.5 * 3) of the training cases and round(0.5 * 2) of the test cases
    with pytest.raises(ConfigurationError):
        write_task(tmp_path / "bad", **args, tumour_free_share=1.5)

"""Dataset discovery and the errors a user gets for a broken raw folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.datasets import find_dataset, load_dataset, resolve_dataset_path
from autoseg.errors import DatasetError, ImageReadError
from autoseg.io import read_image, read_label, write_image
from tests.synthetic import SHARED_REAL, make_msd_task, make_nnunet_dataset


def test_msd_task_loads(msd_task: Path) -> None:
    ds = load_dataset(msd_task)
    assert ds.format == "msd" and ds.is_ct
    assert ds.labels == {0: "background", 1: "vessel", 2: "tumour"}
    assert [c.identifier for c in ds.cases] == ["hepaticvessel_000", "hepaticvessel_001", "hepaticvessel_002"]
    assert ds.num_classes == 3 and ds.foreground_labels == [1, 2]


def test_nnunet_dataset_loads(nnunet_dataset: Path) -> None:
    ds = load_dataset(nnunet_dataset)
    assert ds.format == "nnunet" and ds.labels == {0: "background", 1: "vessel", 2: "tumour"}
    assert ds.cases[0].images[0].name == "hv_000_0000.nii.gz" and ds.cases[0].label.name == "hv_000.nii.gz"


@pytest.mark.parametrize("spec", ["Task08", "8", "08", "Task08_HepaticVessel", "Dataset008_HepaticVessel"])
def test_dataset_names_resolve(tmp_path: Path, spec: str) -> None:
    raw = tmp_path / "raw"
    task = make_msd_task(raw)
    assert resolve_dataset_path(spec if spec != "Dataset008_HepaticVessel" else "8", raw) == task.resolve()
    assert resolve_dataset_path(str(task), tmp_path / "elsewhere") == task.resolve()


def test_unknown_dataset_lists_what_exists(msd_task: Path) -> None:
    with pytest.raises(DatasetError, match="Task08_HepaticVessel"):
        find_dataset("Task03", msd_task.parent)


def test_macos_dot_files_are_ignored(msd_task: Path) -> None:
    (msd_task / "imagesTr" / "._hepaticvessel_000.nii.gz").write_bytes(b"\x00\x05junk")
    assert len(load_dataset(msd_task).cases) == 3


def test_missing_dataset_json(msd_task: Path) -> None:
    (msd_task / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="no dataset.json"):
        load_dataset(msd_task)


def test_malformed_dataset_json(msd_task: Path) -> None:
    (msd_task / "dataset.json").write_text("{ not json")
    with pytest.raises(DatasetError, match="not valid JSON") as err:
        load_dataset(msd_task)
    assert "dataset.json" in str(err.value) and "Fix:" in str(err.value)


def test_labels_without_background(msd_task: Path) -> None:
    meta = json.loads((msd_task / "dataset.json").read_text())
    meta["labels"] = {"1": "vessel"}
    (msd_task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="background"):
        load_dataset(msd_task)


def test_image_without_label(msd_task: Path) -> None:
    (msd_task / "labelsTr" / "hepaticvessel_001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="without a label: hepaticvessel_001"):
        load_dataset(msd_task)


def test_label_without_image(msd_task: Path) -> None:
    (msd_task / "imagesTr" / "hepaticvessel_002.nii.gz").unlink()
    with pytest.raises(DatasetError, match="without an image: hepaticvessel_002"):
        load_dataset(msd_task)


def test_empty_dataset(tmp_path: Path) -> None:
    task = make_msd_task(tmp_path, n=1)
    for p in list((task / "imagesTr").iterdir()) + list((task / "labelsTr").iterdir()):
        p.unlink()
    with pytest.raises(DatasetError, match="no training cases"):
        load_dataset(task)


def test_nnunet_missing_channel_suffix(tmp_path: Path) -> None:
    ds = make_nnunet_dataset(tmp_path)
    (ds / "imagesTr" / "hv_000_0000.nii.gz").rename(ds / "imagesTr" / "hv_000.nii.gz")
    with pytest.raises(DatasetError, match="_0000"):
        load_dataset(ds)


@pytest.mark.parametrize("keep", [0.01, 0.5, -10])
def test_truncated_nifti_names_file(msd_task: Path, keep: float) -> None:
    """SimpleITK fills a truncated .nii.gz with zeros without a word; autoseg refuses it."""
    path = msd_task / "imagesTr" / "hepaticvessel_000.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep > 0 else int(keep)])
    with pytest.raises(ImageReadError, match="hepaticvessel_000.nii.gz: file is truncated"):
        read_image(path)


def test_truncated_plain_nifti(tmp_path: Path) -> None:
    from tests.synthetic import write_case

    path = write_case(tmp_path, "a.nii", np.zeros((4, 6, 8), np.int16))
    read_image(path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


def test_geometry_round_trip(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    from autoseg.io import Geometry

    geom = Geometry((6, 5, 4), (0.7, 0.8, 3.0), (1.5, -2.0, 30.0), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    write_image(tmp_path / "a.nrrd", arr, geom)
    back, g2 = read_label(tmp_path / "a.nrrd")
    assert np.array_equal(back, arr) and g2.same_grid(geom) and g2.spacing_zyx == (3.0, 0.8, 0.7)


def test_four_d_msd_image_gives_channels(tmp_path: Path) -> None:
    import SimpleITK as sitk

    arr = np.random.default_rng(0).integers(-100, 100, (2, 3, 4, 5)).astype(np.int16)
    img = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr])
    img.SetSpacing((0.8, 0.8, 2.5, 1.0))
    sitk.WriteImage(img, str(tmp_path / "mc.nii.gz"))
    data, geom = read_image(tmp_path / "mc.nii.gz")
    assert data.shape == (2, 3, 4, 5) and np.array_equal(data, arr) and np.allclose(geom.spacing_zyx, (2.5, 0.8, 0.8))


@pytest.mark.skipif(not (SHARED_REAL / "dcmqi_ct3slice").is_dir(), reason="shared real data absent")
def test_dicom_series_folder_reads_with_geometry() -> None:
    data, geom = read_image(SHARED_REAL / "dcmqi_ct3slice" / "ct-3slice")
    assert data.shape[0] == 1 and data.shape[1] == 3
    assert data.min() < -500  # Hounsfield units: air present
    assert len(geom.direction) == 9 and all(s > 0 for s in geom.spacing)


def test_2d_image_in_3d_task_is_refused(tmp_path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(ImageReadError, match="2D"):
        read_image(tmp_path / "slice.nii.gz")

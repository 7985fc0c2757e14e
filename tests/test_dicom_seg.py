"""DICOM-SEG output (``predict --output-format dicom-seg``, ``inference/dicom_seg.py``).

Every SEG written here is read back with highdicom (``hd.seg.segread``) and put on the label map's
grid through its per-frame positions in patient coordinates (not through any assumption about the
frame order), then compared voxel by voxel with the label map and by segment centroid in mm. The
synthetic series are also checked against where their structures truly are (boxes defined in
patient coordinates when the slices were written), so a mirror shared by the reader and the writer
would still fail; the real ones against anatomy (the liver on the patient's right) and, for dcmqi's
series, against dcmqi's own SEG of the same label map.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

hd = pytest.importorskip("highdicom", reason="highdicom is a runtime dependency: pip install -e . -c constraints.txt")
pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from autoseg.errors import AutosegError, ImageReadError  # noqa: E402
from autoseg.io import Geometry, read_case_images, read_label, read_label_on, read_sitk  # noqa: E402
from autoseg.plans import Plans  # noqa: E402
from autoseg.inference.dicom_seg import SEG_SOP_CLASS, build_dicom_seg, check_dicom_seg_input  # noqa: E402
from autoseg.inference.predictor import PredictOptions, predict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOLDEN_MODEL = REPO / "tests" / "golden" / "model.zip"
REAL = REPO.parent / "shared" / "data" / "real"
TOTALSEG = REAL / "totalsegmentator_example"
DCMQI = REAL / "dcmqi_ct3slice"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is absent (the shared real-data folder)")


def golden_plans(labels: dict[int, str] | None = None) -> Plans:
    plans = Plans.from_dict(json.loads(zipfile.ZipFile(GOLDEN_MODEL).read("plans.json")))
    return plans if labels is None else dataclasses.replace(plans, labels=labels)


# --- reading a SEG back -----------------------------------------------------------------------------

def grid_matrix(geometry: Geometry) -> np.ndarray:
    return np.array(geometry.direction).reshape(3, 3) * np.array(geometry.spacing)


def seg_on_grid(path: Path, geometry: Geometry) -> np.ndarray:
    """The SEG's segments as a label map ``(z, y, x)`` on ``geometry``: every set pixel of every frame
    is placed by its frame's ImagePositionPatient, the shared orientation and pixel spacing; each must
    land on a voxel centre of the grid (within 1% of a voxel)."""
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.SegmentationType == "BINARY"
    shared = seg.SharedFunctionalGroupsSequence[0]

    def group(item: Dataset, keyword: str) -> Dataset:  # a functional group, per frame or shared
        return (item if keyword in item else shared).get(keyword)[0]

    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    inverse = np.linalg.inv(grid_matrix(geometry))
    out = np.zeros(geometry.shape_zyx, np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        position = np.array(group(item, "PlanePositionSequence").ImagePositionPatient, dtype=float)
        iop = np.array(group(item, "PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
        d_row, d_col = (float(v) for v in group(item, "PixelMeasuresSequence").PixelSpacing)
        number = int(group(item, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        rows, cols = np.nonzero(frame)
        points = position + np.outer(cols * d_col, iop[:3]) + np.outer(rows * d_row, iop[3:])
        index = (points - np.array(geometry.origin)) @ inverse.T  # (x, y, z) indices
        assert np.abs(index - np.rint(index)).max(initial=0) < 0.01, "a SEG pixel is not on a voxel centre"
        index = np.rint(index).astype(int)
        assert (index >= 0).all() and (index < np.array(geometry.size)).all(), "a SEG pixel lies off the grid"
        out[index[:, 2], index[:, 1], index[:, 0]] = number
    return out


def centroids_mm(labels: np.ndarray, geometry: Geometry) -> dict[int, np.ndarray]:
    out = {}
    for c in (int(v) for v in np.unique(labels) if v):
        z, y, x = np.nonzero(labels == c)
        out[c] = np.array(geometry.origin) + np.stack([x, y, z], 1).mean(0) @ grid_matrix(geometry).T
    return out


def check_round_trip(seg_path: Path, labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The SEG equals the label map voxel by voxel, and every segment's centroid is within half a
    voxel of the label map's; returns the SEG on the grid."""
    back = seg_on_grid(seg_path, geometry)
    assert np.array_equal(back, labels), f"{int((back != labels).sum())} voxels differ"
    got, ref = centroids_mm(back, geometry), centroids_mm(labels, geometry)
    assert got.keys() == ref.keys()
    for c in ref:
        assert np.linalg.norm(got[c] - ref[c]) <= 0.5 * min(geometry.spacing), (c, got[c], ref[c])
    return back


def check_references(seg_path: Path, folder: Path) -> None:
    """Each frame references the source slice that lies at its position; study and frame of
    reference are the source's."""
    seg = hd.seg.segread(seg_path)
    sources = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        sources[str(uid)] = ds
    first = next(iter(sources.values()))
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    if first.get("StudyInstanceUID"):
        assert seg.StudyInstanceUID == first.StudyInstanceUID
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                           sources[ref].ImagePositionPatient, atol=1e-3)


# --- synthetic series -------------------------------------------------------------------------------

ROWS, COLS, PIXEL_SPACING = 10, 12, (0.8, 0.7)  # (between rows, between columns): unequal on purpose
#: structures in patient coordinates (LPS mm): class -> (low corner, high corner)
BOXES = {1: (np.array([-3.5, -2.5, 1.0]), np.array([0.0, 1.5, 8.0])),
         2: (np.array([0.5, -2.0, 4.0]), np.array([2.5, 0.0, 6.0]))}
HU = {0: -1000, 1: 60, 2: 300}


def truth(points: np.ndarray) -> np.ndarray:
    out = np.zeros(len(points), np.uint8)
    for c, (lo, hi) in BOXES.items():
        out[np.all((points >= lo) & (points <= hi), axis=1)] = c
    return out


def write_series(folder: Path, iop: list[float], positions: list[np.ndarray], reverse_files: bool = False,
                 tilt: float = 0.0, slices: np.ndarray | None = None,
                 pixel_spacing: tuple[float, float] = PIXEL_SPACING) -> None:
    """CT slices (``slices``: HU per slice, default HU[truth(position)] on ROWS x COLS), named so that
    the file order runs against the slice order when ``reverse_files``."""
    folder.mkdir(parents=True)
    rows, cols = (ROWS, COLS) if slices is None else slices.shape[1:]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    for k, position in enumerate(positions):
        points = (position + np.outer(c.ravel() * pixel_spacing[1], row_cos)
                  + np.outer(r.ravel() * pixel_spacing[0], col_cos))
        hu = np.vectorize(HU.get)(truth(points)).reshape(rows, cols) if slices is None else slices[k]
        pixels = (np.clip(hu, -1024, 3000) + 1024).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "CT", "P1", "Test^P", "", ""
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "", "", ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 3, k + 1, "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.PixelSpacing, ds.SliceThickness, ds.GantryDetectorTilt = list(pixel_spacing), 2.5, tilt
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels.tobytes()
        n = len(positions) - 1 - k if reverse_files else k
        ds.save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)


def stack(origin: list[float], normal: list[float], n: int = 6, step: float = 2.5) -> list[np.ndarray]:
    return [np.array(origin) + k * step * np.array(normal) for k in range(n)]


ORIENTATIONS = {
    # head first supine, the usual axial series
    "axial": ([1, 0, 0, 0, 1, 0], stack([-4, -3, 0], [0, 0, 1]), False),
    # feet first: the row direction runs to the patient's right, and the files run against the slices
    "feet_first_reversed_files": ([-1, 0, 0, 0, 1, 0], stack([3, -3, 12.5], [0, 0, -1]), True),
    # a flipped column direction cosine (rows run to the patient's front)
    "flipped_column_cosine": ([1, 0, 0, 0, -1, 0], stack([-4, 2, 12.5], [0, 0, -1]), False),
    # an oblique slice plane (rotated 20 degrees about x), slices stacked along its normal
    "oblique": ([1, 0, 0, 0, np.cos(0.35), np.sin(0.35)],
                stack([-4, -3, 0], [0, -np.sin(0.35), np.cos(0.35)]), False),
}


def labels_from_series(folder: Path) -> tuple[np.ndarray, Geometry]:
    """The label map a model would give: the class of each voxel's HU, on the grid autoseg reads."""
    image, geometry = read_case_images([folder])
    hu = image[0]
    return np.select([hu >= 200, hu >= 0], [2, 1], 0).astype(np.uint8), geometry


@pytest.mark.parametrize("case", sorted(ORIENTATIONS))
def test_synthetic_series_round_trip(tmp_path: Path, case: str) -> None:
    iop, positions, reverse = ORIENTATIONS[case]
    folder = tmp_path / case
    write_series(folder, iop, positions, reverse_files=reverse)
    labels, geometry = labels_from_series(folder)
    assert set(np.unique(labels)) == {0, 1, 2}
    check_dicom_seg_input(folder)
    seg_path = tmp_path / "out.seg.dcm"
    build_dicom_seg(labels, geometry, folder, golden_plans({0: "background", 1: "liver", 2: "tumour"})
                    ).save_as(seg_path)
    back = check_round_trip(seg_path, labels, geometry)
    check_references(seg_path, folder)
    # where the structures truly are, not where autoseg's reader put them
    z, y, x = np.indices(geometry.shape_zyx).reshape(3, -1)
    points = np.array(geometry.origin) + np.stack([x, y, z], 1) @ grid_matrix(geometry).T
    assert np.array_equal(back.ravel(), truth(points))


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    """Slices tilted 15 degrees but stacked along the table (z): no regular grid describes them."""
    t = np.radians(15)
    folder = tmp_path / "tilted"
    write_series(folder, [1, 0, 0, 0, np.cos(t), np.sin(t)], stack([-4, -3, 0], [0, 0, 1]), tilt=15.0)
    with pytest.raises(AutosegError, match="not stacked along their normal.*GantryDetectorTilt 15") as err:
        check_dicom_seg_input(folder)
    assert "untilted grid" in str(err.value)
    # the NIfTI path refuses it too: read on an orthogonal grid, the anatomy would be misplaced
    with pytest.raises(ImageReadError, match="gantry tilt of about 15.0 degrees") as err:
        labels_from_series(folder)
    assert err.value.path == folder and "dcm2niix" in str(err.value)


def test_segments_absent_from_the_prediction_are_listed_without_frames(tmp_path: Path) -> None:
    folder = tmp_path / "axial"
    iop, positions, _ = ORIENTATIONS["axial"]
    write_series(folder, iop, positions)
    labels, geometry = labels_from_series(folder)
    plans = golden_plans({0: "background", 1: "liver", 2: "hepatic vessel", 3: "liver tumour"})
    for kept in ({1}, set()):  # no vessel and no tumour; nothing at all
        seg_path = tmp_path / f"seg{len(kept)}.dcm"
        build_dicom_seg(np.where(np.isin(labels, list(kept)), labels, 0).astype(np.uint8), geometry, folder,
                        plans).save_as(seg_path)
        seg = hd.seg.segread(seg_path)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "hepatic vessel", "liver tumour"]
        codes = [(s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
                  s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence]
        assert codes == [("91723000", "10200004"), ("91723000", "59820001"), ("49755003", "108369006")]
        assert all(s.AnatomicRegionSequence[0].CodeValue == "10200004" for s in seg.SegmentSequence[1:])
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName.startswith("autoseg") and algorithm.AlgorithmVersion
        assert "plans_sha256" in algorithm.AlgorithmParameters
        check_round_trip(seg_path, np.where(np.isin(labels, list(kept)), labels, 0), geometry)


def test_non_dicom_input_is_refused_before_prediction(tmp_path: Path) -> None:
    nifti = REPO / "tests" / "golden" / "input" / "golden_ct.nii.gz"
    options = PredictOptions(outputs=("dicom-seg",))
    with pytest.raises(AutosegError, match="needs a DICOM series as input.*golden_ct.nii.gz is an image file") as err:
        predict(nifti, tmp_path / "out", None, options)  # type: ignore[arg-type]  # never reached
    assert "--output-format dicom-seg" in str(err.value)
    assert not (tmp_path / "out").exists()


# --- real series ------------------------------------------------------------------------------------

@needs_real
def test_totalsegmentator_jpeg2000_series(tmp_path: Path) -> None:
    """20 JPEG 2000 slices, anonymised (blank SOP, series and study UIDs in the data set), with a
    label map stored y-flipped: the liver (5) as a one-class map."""
    folder = TOTALSEG / "example_ct_dicom"
    geometry = Geometry.of(read_sitk(folder))
    labels, _ = read_label_on(TOTALSEG / "example_seg_dicom.nii.gz", geometry)
    labels = (labels == 5).astype(np.uint8)
    check_dicom_seg_input(folder)
    seg_path = tmp_path / "liver.seg.dcm"
    build_dicom_seg(labels, geometry, folder, golden_plans({0: "background", 1: "liver"})).save_as(seg_path)
    back = check_round_trip(seg_path, labels, geometry)
    check_references(seg_path, folder)
    assert centroids_mm(back, geometry)[1][0] < 0, "the liver lies on the patient's right (LPS x < 0)"


@needs_real
def test_dcmqi_3slice_series_matches_dcmqi_seg(tmp_path: Path) -> None:
    folder = DCMQI / "ct-3slice"
    geometry = Geometry.of(read_sitk(folder))
    labels, _ = read_label_on(DCMQI / "liver_seg.nrrd", geometry)
    labels = (labels == 1).astype(np.uint8)
    seg_path = tmp_path / "liver.seg.dcm"
    build_dicom_seg(labels, geometry, folder, golden_plans({0: "background", 1: "liver"})).save_as(seg_path)
    back = check_round_trip(seg_path, labels, geometry)
    check_references(seg_path, folder)
    # dcmqi's own SEG of this label map, read the same way, holds the same voxels
    assert np.array_equal(seg_on_grid(DCMQI / "liver_SEG.dcm", geometry), back)
    assert centroids_mm(back, geometry)[1][0] < 0


@needs_real
def test_a_dicom_seg_given_as_input_is_named_as_such(tmp_path: Path) -> None:
    folder = tmp_path / "seg_only"
    folder.mkdir()
    shutil.copy(DCMQI / "liver_SEG.dcm", folder)
    for given in (DCMQI / "liver_SEG.dcm", folder):
        with pytest.raises(ImageReadError, match="DICOM Segmentation object") as err:
            read_case_images([given])
        assert "8-bit" not in str(err.value) and "CT series it was made on" in str(err.value)
    with pytest.raises(AutosegError, match="needs a DICOM series as input|DICOM Segmentation object"):
        check_dicom_seg_input(folder)


# --- end to end -------------------------------------------------------------------------------------

def predict_dicom_seg(series: Path, tmp_path: Path) -> Path:
    """``autoseg predict --output-format dicom-seg`` with the golden model on a DICOM series folder, in
    a fresh process with its own folders under ``tmp_path``; the output folder."""
    env = {**os.environ, "AUTOSEG_RAW": str(tmp_path / "raw"), "AUTOSEG_PREPROCESSED": str(tmp_path / "pre"),
           "AUTOSEG_RESULTS": str(tmp_path / "res")}
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(series), "-o", str(out), "-m",
                          str(GOLDEN_MODEL), "--device", "cpu", "--output-format", "dicom-seg"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return out


def test_predict_writes_nifti_and_dicom_seg(tmp_path: Path) -> None:
    """``autoseg predict --output-format dicom-seg`` on the golden CT written as a DICOM series."""
    image, geometry = read_case_images([REPO / "tests" / "golden" / "input" / "golden_ct.nii.gz"])
    direction = np.array(geometry.direction).reshape(3, 3)
    folder = tmp_path / "golden_series"
    positions = [np.array(geometry.origin) + k * geometry.spacing[2] * direction[:, 2] for k in range(geometry.size[2])]
    write_series(folder, [*direction[:, 0], *direction[:, 1]], positions, reverse_files=True, slices=image[0],
                 pixel_spacing=(geometry.spacing[1], geometry.spacing[0]))
    out = predict_dicom_seg(folder, tmp_path)
    labels, label_geometry = read_label(out / "golden_series.nii.gz")
    assert label_geometry.same_grid(geometry)
    assert len(np.unique(labels)) > 1, "the golden model found nothing: this would test little"
    check_round_trip(out / "golden_series.seg.dcm", labels, label_geometry)
    check_references(out / "golden_series.seg.dcm", folder)
    report = json.loads((out / "golden_series.report.json").read_text())
    assert report["dicom_seg"] == "golden_series.seg.dcm"
    parameters = hd.seg.segread(out / "golden_series.seg.dcm").SegmentSequence[0] \
        .SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    provenance = report.get("provenance") or {}
    for key in ("plans_sha256", "weights_sha256"):
        if provenance.get(key):
            assert provenance[key] in parameters, key


@needs_real
@pytest.mark.parametrize("series", ["totalsegmentator_example/example_ct_dicom", "dcmqi_ct3slice/ct-3slice"])
def test_predict_on_the_real_series(tmp_path: Path, series: str) -> None:
    """``autoseg predict --output-format dicom-seg`` on each real DICOM series: the SEG reads back
    equal to the NIfTI written beside it (a class the model does not find there is an empty segment)."""
    folder = REAL / series
    out = predict_dicom_seg(folder, tmp_path)
    labels, geometry = read_label(out / f"{folder.name}.nii.gz")
    check_round_trip(out / f"{folder.name}.seg.dcm", labels, geometry)
    check_references(out / f"{folder.name}.seg.dcm", folder)
    assert len(hd.seg.segread(out / f"{folder.name}.seg.dcm").SegmentSequence) == 2

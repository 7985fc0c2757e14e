"""Clinical read-outs: lesion centroids, diameters and order, provenance, overlays in radiological
orientation, probabilities on the input grid, ``autoseg --version``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.artefacts import CaseReport
from autoseg.io import Geometry, image_from_array
from autoseg.inference.report import MIN_LESION_ML, index_to_mm, lesion_table, measure_case

ORIGIN = (-120.5, 35.25, -400.0)
SPACING = (0.7, 0.9, 2.0)  # x, y, z: anisotropic in plane


def _grid(shape_zyx: tuple[int, int, int], direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Geometry:
    return Geometry((shape_zyx[2], shape_zyx[1], shape_zyx[0]), SPACING, ORIGIN, direction)


def _lesions() -> tuple[np.ndarray, dict[str, tuple[float, float, float]]]:
    """A sphere (r 12 mm), an elongated in-plane ellipse at 30° (semi-axes 25 and 6 mm, 3 slices) and
    two tiny specks, on an anisotropic grid; returns the labels (2 = tumour, 1 = liver) and centres (zyx mm)."""
    shape = (40, 120, 150)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING[::-1])), indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[5:35, 5:115, 5:145] = 1
    sphere = (30.0, 30.0, 30.0)
    labels[((z - sphere[0]) ** 2 + (y - sphere[1]) ** 2 + (x - sphere[2]) ** 2) <= 12.0 ** 2] = 2
    ellipse = (50.0, 70.0, 65.0)
    t = np.deg2rad(30)
    u = (x - ellipse[2]) * np.cos(t) + (y - ellipse[1]) * np.sin(t)
    v = -(x - ellipse[2]) * np.sin(t) + (y - ellipse[1]) * np.cos(t)
    labels[(np.abs(z - ellipse[0]) <= 2.0) & ((u / 25.0) ** 2 + (v / 6.0) ** 2 <= 1)] = 2
    labels[10, 100, 20] = 2  # specks: 1.26 µL each, far under the minimum
    labels[20, 100, 130] = 2
    return labels, {"sphere": sphere, "ellipse": ellipse}


def test_index_to_mm_matches_simpleitk_with_a_direction() -> None:
    direction = (0, -1, 0, 1, 0, 0, 0, 0, -1)  # rotated in plane, z flipped
    geometry = _grid((4, 5, 6), direction)
    image = image_from_array(np.zeros((4, 5, 6), np.uint8), geometry)
    index_zyx = np.array([1.5, 2.25, 3.0])
    expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in index_zyx[::-1]))
    assert np.allclose(index_to_mm(geometry, index_zyx), expected)


def test_lesions_have_centroid_diameter_order_and_tiny_ones_are_counted_not_listed() -> None:
    labels, centres = _lesions()
    geometry = _grid(labels.shape)
    report = measure_case(labels, geometry, {1: "liver", 2: "tumour"}, 1.0, [0])
    tumours = report.tumours
    assert tumours is not None and tumours.count == 4 and tumours.below_minimum == 2
    assert tumours.min_listed_ml == MIN_LESION_ML and len(tumours.lesions) == 2
    sphere, ellipse = tumours.lesions  # largest first
    assert sphere.volume_ml > ellipse.volume_ml
    voxel = max(SPACING[:2])
    assert abs(sphere.axial_diameter_mm - 24.0) <= voxel  # type: ignore[operator]
    assert abs(ellipse.axial_diameter_mm - 50.0) <= voxel  # type: ignore[operator]
    for lesion, name in ((sphere, "sphere"), (ellipse, "ellipse")):
        zyx_mm = centres[name]
        expected = np.array(ORIGIN) + np.array(zyx_mm[::-1])  # identity direction: origin + (x, y, z)
        assert np.allclose(lesion.centroid_mm, expected, atol=0.5 * voxel)  # type: ignore[arg-type]
        assert np.allclose(np.array(lesion.centroid_zyx) * SPACING[::-1], zyx_mm, atol=0.5 * voxel)
    tumour_ml = labels[labels == 2].size * np.prod(SPACING) / 1000
    assert report.liver_volume_ml == pytest.approx(np.count_nonzero(labels) * np.prod(SPACING) / 1000, abs=1e-3)
    assert report.tumour_burden == pytest.approx(tumour_ml / report.liver_volume_ml, abs=1e-4)
    again = CaseReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report


def test_diameter_is_the_longest_axial_one_not_a_diagonal_through_slices() -> None:
    mask = np.zeros((10, 5, 5), bool)
    mask[:, 2, 2] = True  # a rod along z: 10 slices of one pixel
    _, (rod,) = lesion_table(mask, (5.0, 1.0, 1.0))
    assert rod.axial_diameter_mm == 1.0 and rod.extent_mm == (50.0, 1.0, 1.0)


def test_old_reports_without_the_new_fields_load() -> None:
    old = {"volumes_ml": {"tumour": 1.0}, "voxel_volume_ml": 0.001, "shape_zyx": [2, 2, 2],
           "spacing_zyx": [1.0, 1.0, 1.0], "folds": [0], "seconds": 1.0,
           "tumours": {"count": 1, "listed": "all", "lesions": [{"volume_ml": 1.0, "voxels": 1000,
                                                                  "extent_mm": [10.0, 10.0, 10.0]}]}}
    report = CaseReport.from_dict(old)
    assert report.provenance is None and report.tumours.lesions[0].centroid_mm is None  # type: ignore[union-attr]


def test_provenance_names_version_plans_weights_and_series(tmp_path: Path) -> None:
    import autoseg
    from autoseg.inference.provenance import plans_sha256, provenance, series_instance_uid
    from tests.test_schema import make_plans

    plans = make_plans()
    weights = tmp_path / "checkpoint_final.pt"
    weights.write_bytes(b"weights")

    class Fake:
        def __init__(self) -> None:
            self.plans, self.checkpoints, self.folder = plans, {0: weights}, tmp_path

    found = provenance(Fake(), tmp_path / "ct.nii.gz", ("autoseg", "predict"))
    assert found.autoseg_version == autoseg.__version__ and found.plans_sha256 == plans_sha256(plans)
    assert len(found.weights_sha256 or "") == 64 and found.command_line == ("autoseg", "predict")
    assert found.series_instance_uid is None and found.date and found.date.endswith("+00:00")
    weights.write_bytes(b"other weights!")
    assert provenance(Fake(), tmp_path, None).weights_sha256 != found.weights_sha256
    series = tmp_path / "series"
    series.mkdir()
    image = sitk.Image(4, 4, sitk.sitkInt16)
    for i in range(2):
        image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.42")
        image.SetMetaData("0020|0013", str(i + 1))
        image.SetMetaData("0020|0032", f"0\\0\\{i}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(series / f"{i}.dcm"))
        writer.Execute(image)
    assert series_instance_uid(series) == "1.2.826.0.1.3680043.2.1125.42"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import autoseg
    from autoseg.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"autoseg {autoseg.__version__}"


# --- overlays ------------------------------------------------------------------------------------------

def _stored(orientation: str) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One anatomy (a body, a marker on the patient's left-anterior) stored LPS or RAS."""
    lps = sitk.Image(40, 40, 6, sitk.sitkFloat32)
    lps.SetSpacing((1.0, 1.0, 3.0))
    lps.SetOrigin((-20.0, -20.0, 0.0))  # LPS: x to the left, y to posterior
    ct = np.full((6, 40, 40), -1000, np.float32)
    ct[:, 5:35, 5:35] = 40
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[3, 8:12, 28:32] = 1  # large x = patient's left, small y = anterior
    images = []
    for array in (ct, labels):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(lps)
        images.append(sitk.DICOMOrient(image, orientation))
    geometry = Geometry.of(images[0])
    return sitk.GetArrayFromImage(images[0]), sitk.GetArrayFromImage(images[1]), geometry


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "RAI"])
def test_overlay_is_radiological_whatever_the_storage(tmp_path: Path, orientation: str) -> None:
    from PIL import Image

    from autoseg.inference.display import colour_of
    from autoseg.inference.report import OVERLAY_SIDE, write_overlays
    from autoseg.layout import CaseOutputs

    ct, labels, geometry = _stored(orientation)
    if orientation == "RAS":
        assert geometry.direction[0] == -1 and geometry.direction[4] == -1  # really stored the other way
    paths = write_overlays(CaseOutputs(tmp_path, "ct"), ct, labels, geometry, {0: "background", 1: "tumour"},
                           n_slices=1)
    picture = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert picture.shape[1] == OVERLAY_SIDE and picture.shape[0] > OVERLAY_SIDE  # the legend is below
    image_part = picture[:OVERLAY_SIDE]
    ys, xs = np.nonzero(np.all(image_part == colour_of(1), axis=-1))
    assert len(ys)
    # radiological: anterior at the top, the patient's left on the image's right
    assert ys.max() < OVERLAY_SIDE / 2 and xs.min() > OVERLAY_SIDE / 2
    legend = picture[OVERLAY_SIDE:]
    assert np.all(legend == colour_of(1), axis=-1).sum() > 100  # the class's swatch


# --- probabilities on the input grid ---------------------------------------------------------------------

def test_saved_probabilities_are_on_the_input_grid_and_argmax_to_the_labels(tmp_path: Path) -> None:
    from scipy import ndimage

    from autoseg.inference.outputs import CasePrediction, write_prediction
    from autoseg.io import write_image
    from autoseg.layout import CaseOutputs
    from autoseg.preprocessing import labels_on_original_grid, preprocess_case
    from tests.test_preprocessing import make_plans

    ct = np.full((10, 40, 36), -1000, np.float32)
    ct[2:9, 6:34, 5:30] = 40  # a body: the crop is smaller than the image
    geometry = Geometry((36, 40, 10), (0.9, 0.8, 3.0), ORIGIN, (0, 1, 0, -1, 0, 0, 0, 0, 1))
    path = tmp_path / "ct.nii.gz"
    write_image(path, ct, geometry)
    plans = make_plans()
    pre = preprocess_case([path], None, plans, case_id="ct")
    rng = np.random.default_rng(0)
    logits = ndimage.gaussian_filter(rng.normal(size=(3, *pre.data.shape[1:])), (0, 1.5, 1.5, 1.5)) * 20
    probs = np.exp(logits - logits.max(0))
    probs = (probs / probs.sum(0)).astype(np.float32)
    labels = labels_on_original_grid(probs, pre.properties, keep_volume=False)  # not post-processed
    report = measure_case(labels, geometry, {1: "liver", 2: "tumour"}, 1.0, [0])
    result = CasePrediction("ct", path, labels, geometry, report, plans, label_table=dict(plans.labels),
                            outputs=("probabilities",), probabilities=probs, properties=pre.properties)
    outputs = CaseOutputs(tmp_path / "out", "ct")
    write_prediction(result, outputs)
    with np.load(outputs.probabilities) as saved:
        stored = saved["probabilities"]
        assert stored.dtype == np.float16 and stored.shape == (3, *labels.shape)
        assert Geometry.from_dict(json.loads(str(saved["geometry"]))) == geometry
        assert json.loads(str(saved["classes"])) == {"0": "background", "1": "liver", "2": "tumour"}
        assert json.loads(str(saved["properties"]))["original_shape"] == list(labels.shape)
    assert pre.properties.shape_after_crop != labels.shape  # really cropped and put back
    top2 = np.sort(stored.astype(np.float32), axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 2e-3  # float16 storage can only swap near-ties
    assert np.array_equal(stored.argmax(0)[clear], labels[clear]) and clear.mean() > 0.95
    assert np.allclose(stored.astype(np.float32).sum(0), 1.0, atol=5e-3)


# --- end to end: autoseg predict on a real DICOM series ----------------------------------------------------

from tests.test_predict_geometry import model  # noqa: E402,F401  (the fixture: a plan and two random folds)
from tests.synthetic import SHARED_REAL  # noqa: E402

UID_3SLICE = "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"


@pytest.mark.skipif(not (SHARED_REAL / "dcmqi_ct3slice" / "ct-3slice").is_dir(),
                    reason="needs ../shared/data/real")
def test_predict_records_provenance_and_writes_readable_outputs(model: Path, tmp_path: Path) -> None:  # noqa: F811
    from PIL import Image

    import autoseg
    from autoseg.cli import main
    from autoseg.inference.provenance import plans_sha256
    from autoseg.io import read_label
    from autoseg.plans import Plans

    series = SHARED_REAL / "dcmqi_ct3slice" / "ct-3slice"  # (TotalSegmentator's series has an empty UID)
    out = tmp_path / "out"
    argv = ["predict", "-i", str(series), "-o", str(out), "-m", str(model), "--overlays", "--save-probabilities",
            "--threads", "1"]
    assert main(argv) == 0
    report = CaseReport.load(out / "ct-3slice.report.json")
    found = report.provenance
    assert found is not None and found.autoseg_version == autoseg.__version__
    assert found.command_line == ("autoseg", *argv)
    assert found.plans_sha256 == plans_sha256(Plans.load(model / "plans.json"))
    assert found.weights_sha256 and found.series_instance_uid and found.series_instance_uid == UID_3SLICE
    labels, _ = read_label(out / "ct-3slice.nii.gz")
    with np.load(out / "ct-3slice.probabilities.npz") as saved:
        assert saved["probabilities"].shape[1:] == labels.shape
    assert report.overlays and max(Image.open(out / report.overlays[0]).size) >= 512


def test_an_image_thinner_than_a_quarter_of_the_patch_is_flagged(tmp_path: Path) -> None:
    """Three slices where the network's patch sees eight: the report warns that the labels lack
    context (dcmqi's 3-slice series gave the synthetic model one slice of its 3.9 mm grid and a
    liver Dice of 0.05); a case as deep as the patch is not flagged."""
    from autoseg.inference.predictor import context_warnings
    from autoseg.io import Geometry, write_image
    from autoseg.preprocessing import preprocess_case
    from tests.test_preprocessing import make_plans, phantom

    plans = make_plans(patch_size=(12, 16, 16), target_spacing=(2.5, 1.6, 1.6))
    image, _ = phantom(shape=(16, 48, 48))
    for slices, flagged in ((2, True), (16, False)):
        path = tmp_path / f"ct{slices}.nii.gz"
        write_image(path, image[:slices], Geometry((48, 48, slices), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0),
                                                   (1, 0, 0, 0, 1, 0, 0, 0, 1)))
        warnings = context_warnings(preprocess_case([path], None, plans).properties, plans)
        assert bool(warnings) == flagged
        if flagged:
            assert len(warnings) == 1 and "spans 5 mm along z" in warnings[0] and "30 mm" in warnings[0]

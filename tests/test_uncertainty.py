"""Calibration (temperature scaling fitted on CV predictions) and the uncertainty map (``predict --uncertainty``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.artefacts import Calibration, CaseReport
from autoseg.errors import AutosegError
from autoseg.layout import CaseOutputs, ModelFolder
from autoseg.plans import Estimates, NetworkPlan, Normalisation, Plans
from autoseg.preprocessing import labels_on_original_grid, preprocess_case
from autoseg.inference.outputs import OUTPUT_FORMATS, CasePrediction, write_prediction
from autoseg.inference.report import measure_case
from autoseg.inference.uncertainty import (expected_calibration_error, fit_temperature, load_calibration,
                                           normalised_entropy, temperature_scale)
from tests.synthetic import tiny_ct, write_case


def overconfident(n: int, k: int, power: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True class probabilities q (K, N), labels drawn from q, and over-confident p ∝ q^power."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (k, n))
    q = np.exp(logits) / np.exp(logits).sum(0)
    labels = (rng.random(n)[None] > np.cumsum(q, 0)).sum(0)
    p = q**power / (q**power).sum(0)
    return q.astype(np.float32), labels, p.astype(np.float32)


def test_fit_recovers_a_known_temperature_and_lowers_ece() -> None:
    q, labels, p = overconfident(40_000, 3, power=2.0)
    temperature = fit_temperature(p, labels)
    assert temperature == pytest.approx(2.0, rel=0.08)
    scaled = temperature_scale(p, temperature)
    np.testing.assert_allclose(scaled.sum(0), 1.0, atol=1e-5)
    before, after = expected_calibration_error(p, labels), expected_calibration_error(scaled, labels)
    assert before > 0.05 and after < 0.02 and after < before / 3
    # a calibrated model keeps T near 1, and T = 1 changes nothing
    assert fit_temperature(q, labels) == pytest.approx(1.0, rel=0.08)
    np.testing.assert_array_equal(temperature_scale(p, 1.0), p)


def test_entropy_is_0_for_a_certain_class_and_1_for_equal_classes() -> None:
    probs = np.zeros((3, 2, 2), np.float32)
    probs[1, 0] = 1.0          # certain
    probs[:, 1] = 1.0 / 3      # all equal
    entropy = normalised_entropy(probs)
    np.testing.assert_allclose(entropy[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(entropy[1], 1.0, atol=1e-5)
    assert entropy.dtype == np.float32
    # softening (T > 1) raises the entropy of an uncertain voxel, never above 1
    mixed = np.array([0.8, 0.15, 0.05], np.float32)[:, None]
    assert normalised_entropy(temperature_scale(mixed, 2.0))[0] > normalised_entropy(mixed)[0]


def test_find_best_fits_the_calibration_on_the_folds_validation_predictions(tmp_path: Path) -> None:
    from autoseg.inference.uncertainty import fit_calibration
    from autoseg.preprocessing.storage import write_case

    from autoseg.artefacts import EnsembleManifest
    from autoseg.layout import ResultsDataset

    results, data = ResultsDataset(tmp_path / "results"), tmp_path / "data"
    model, ensemble = results.model("a").root, results.ensemble(["a", "b"])
    data.mkdir()
    for fold in range(2):
        for case in range(2):
            name = f"case_{fold}{case}"
            q, labels, p = overconfident(6000, 3, power=2.5, seed=10 * fold + case)
            shape = (10, 20, 30)
            write_case(tmp_path, name, np.zeros((1, *shape), np.float32), labels.reshape(shape).astype(np.uint8), {})
            for member in ("a", "b"):  # two members with the same probabilities: their mean is the same
                pred = results.model(member).fold(fold).validation.prediction(name)
                pred.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(pred, labels=p.argmax(0).reshape(shape).astype(np.uint8),
                                    probabilities=np.round(p * 255).reshape(3, *shape).astype(np.uint8))
            pred = ensemble.fold(fold).validation.prediction(name)  # an ensemble keeps labels only
            pred.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(pred, labels=p.argmax(0).reshape(shape).astype(np.uint8))
    EnsembleManifest(members=("a", "b")).save(ensemble.ensemble_manifest)
    found = fit_calibration(model, data)
    assert found is not None and Calibration.load(ModelFolder(model).calibration) == found
    assert found.cases == 4 and found.temperature == pytest.approx(2.5, rel=0.15)
    assert found.ece_after < found.ece_before / 2 and found.nll_after < found.nll_before
    assert fit_calibration(ensemble.root, data) == found  # from the members' averaged probabilities
    assert fit_calibration(tmp_path / "untrained", data) is None


def make_plans() -> Plans:
    return Plans(dataset_name="Task08_Tiny", channel_names=("CT",), labels={0: "background", 1: "vessel", 2: "tumour"},
                 is_ct=True, target_spacing=(3.0, 1.3, 1.3), median_shape=(12, 24, 24), patch_size=(8, 16, 16),
                 batch_size=2, normalisation=(Normalisation("ct", (-160.0, 240.0), 60.0, 50.0),),
                 network=NetworkPlan("arunet", {}), estimates=Estimates("cpu", 1, 1))


def calibration(temperature: float = 2.0) -> Calibration:
    return Calibration(temperature=temperature, ece_before=0.1, ece_after=0.02, nll_before=0.7, nll_after=0.5,
                       cases=3, voxels=1000, bins=15, seed=0, rule="test")


@pytest.mark.parametrize("calibrated", [False, True])
def test_uncertainty_map_lands_on_the_input_grid_with_lesion_confidence(tmp_path: Path, calibrated: bool) -> None:
    image, labels = tiny_ct(0)
    img = write_case(tmp_path / "images", "case.nii.gz", image)
    plans = make_plans()
    pre = preprocess_case([img], None, plans)
    seg = preprocess_case([img], write_case(tmp_path / "labels", "case.nii.gz", labels), plans).seg
    # an over-confident softmax: 0.96 on the reference class, 0.02 on each other
    probs = np.full((3, *seg.shape), 0.02, np.float32)
    np.put_along_axis(probs, seg[None].astype(np.int64), 0.96, axis=0)
    geometry = pre.properties.original_geometry
    on_input = labels_on_original_grid(probs, pre.properties)
    report = measure_case(on_input, geometry, {1: "vessel", 2: "tumour"}, 1.0, (0,))
    result = CasePrediction("case", img, on_input, geometry, report, plans, outputs=("uncertainty",),
                            probabilities=probs, properties=pre.properties,
                            extras={"uncertainty": calibration() if calibrated else None})
    assert OUTPUT_FORMATS["uncertainty"].needs_probabilities
    outputs = CaseOutputs(tmp_path / "out", "case")
    written = write_prediction(result, outputs)

    label_map, entropy = sitk.ReadImage(str(outputs.labels)), sitk.ReadImage(str(outputs.uncertainty))
    assert entropy.GetSize() == label_map.GetSize()
    assert entropy.GetSpacing() == pytest.approx(label_map.GetSpacing())
    assert entropy.GetOrigin() == pytest.approx(label_map.GetOrigin())
    assert entropy.GetDirection() == pytest.approx(label_map.GetDirection())
    values = sitk.GetArrayFromImage(entropy)
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    scaled = temperature_scale(np.array([0.96, 0.02, 0.02], np.float32)[:, None], 2.0 if calibrated else 1.0)
    expected = float(normalised_entropy(scaled)[0])
    assert np.median(values[on_input > 0]) == pytest.approx(expected, abs=1e-3)
    assert values[0, 0, 0] == 0.0  # outside the body crop: background for certain

    unc = CaseReport.load(outputs.report).uncertainty
    assert unc is not None and written.uncertainty == unc
    assert unc.file == outputs.uncertainty.name and unc.calibrated is calibrated
    assert unc.temperature == (2.0 if calibrated else 1.0)
    assert report.tumours is not None and len(unc.lesions) == len(report.tumours.lesions) >= 1
    assert [lesion.voxels for lesion in unc.lesions] == [lesion.voxels for lesion in report.tumours.lesions]
    assert all(lesion.label == 2 for lesion in unc.lesions)
    # the lesion's confidence: the calibrated max probability of its voxels (boundaries a little lower)
    assert unc.lesions[0].confidence == pytest.approx(float(scaled.max()), abs=0.05)


def test_calibration_names_a_bad_field_when_hand_edited(tmp_path: Path) -> None:
    path = ModelFolder(tmp_path).calibration
    calibration().save(path)

    class Folder:
        folder = tmp_path

    assert load_calibration(Folder()) == calibration()
    data = json.loads(path.read_text())
    for key, value, words in [("temperature", -1.0, "temperature must be > 0"),
                              ("temperature", "hot", "temperature"),
                              ("ece_after", None, "ece_after"), ("calibration_version", 99, "newer autoseg")]:
        path.write_text(json.dumps({**data, key: value}))
        with pytest.raises(AutosegError, match=words) as info:
            load_calibration(Folder())
        assert str(path) in str(info.value) and "find_best" in str(info.value)
    path.unlink()
    assert load_calibration(Folder()) is None
    assert not math.isnan(calibration().temperature)

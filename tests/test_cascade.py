"""Linked models: a liver model gives the region of interest, the vessel/tumour model predicts only
inside its bounding box plus a margin (``autoseg predict --roi-model``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io import read_json, read_label
from autoseg.phantom import write_task

SPACING = ((4.0, 3.5, 3.5), (5.0, 4.0, 4.0))
PLAN = ["--cpu-gflops", "20", "-j", "1", "--step-time", "0.15"]


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Task08 and Task03 phantoms drawn from the same seed, so their images are identical: the
    Task03 test label is the liver of the Task08 test image. The liver model trains for 60 steps;
    the vessel/tumour model for 2, so it still scatters false positives over the whole body."""
    root = tmp_path_factory.mktemp("cascade")
    for task in ("Task08", "Task03"):
        write_task(root / "raw", task=task, num_training=5, num_test=1, seed=3, spacing_range=SPACING)
    env = {"AUTOSEG_RAW": str(root / "raw"), "AUTOSEG_PREPROCESSED": str(root / "pre"),
           "AUTOSEG_RESULTS": str(root / "res")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["plan_and_preprocess", "-d", "8", *PLAN]) == 0
        # the whole abdominal window for the liver model: planned with the window fitted to its
        # labels (liver and tumour) its 60 steps boxed the whole body (why is open)
        assert main(["plan_and_preprocess", "-d", "3", *PLAN, "--hu-window", "-160", "240"]) == 0
        assert main(["train", "-d", "8", "-f", "0", "--epochs", "1", "--iterations", "2", "-j", "0"]) == 0
        assert main(["train", "-d", "3", "-f", "0", "--epochs", "3", "--iterations", "20", "-j", "0",
                     "--recipe", "adam_poly"]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return root


def _predict(root: Path, out: Path, extra: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, dict]:
    for k, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        monkeypatch.setenv(k, str(root / sub))
    images = root / "raw" / "Task08_HepaticVessel" / "imagesTs"
    assert main(["predict", "-i", str(images), "-o", str(out), "-d", "8", "-f", "0", *extra]) == 0
    name = sorted(images.iterdir())[0].name
    labels, _ = read_label(out / name)
    return labels, read_json(out / name.replace(".nii.gz", ".report.json"))


def test_roi_model_limits_prediction_to_the_liver_region(cascade: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    plain, plain_report = _predict(cascade, tmp_path / "plain", [], monkeypatch)
    linked, report = _predict(cascade, tmp_path / "linked", ["--roi-model", "Task03", "--roi-margin-mm", "8"],
                              monkeypatch)
    liver_ref, _ = read_label(next((cascade / "raw" / "Task03_Liver" / "labelsTs").iterdir()))
    liver = liver_ref > 0
    box = report["roi"]["bbox"]
    assert box is not None and report["roi"]["foreground_ml"] > 0
    inside = np.zeros(linked.shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    # the liver model found the liver: its box (with margin) holds nearly all of the reference liver
    assert liver[inside].sum() >= 0.9 * liver.sum()
    # nothing is predicted outside the region of interest
    assert not np.any(linked[~inside])
    # fewer false positives outside the liver than the same model over the whole body
    outside_liver = ~liver
    assert np.count_nonzero(plain[outside_liver]) > 0, "the test needs a model that makes false positives"
    assert np.count_nonzero(linked[outside_liver]) < np.count_nonzero(plain[outside_liver])
    # faster: the vessel/tumour model sees a smaller region (fewer sliding-window tiles)
    assert np.prod(report["region_shape"]) < np.prod(plain_report["region_shape"])


def test_roi_model_must_exist(cascade: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    for k, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        monkeypatch.setenv(k, str(cascade / sub))
    images = cascade / "raw" / "Task08_HepaticVessel" / "imagesTs"
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "o"), "-d", "8", "-f", "0",
                 "--roi-model", "Task55"]) == 2
    assert "Task55" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

"""`autoseg predict` writes its label map on the input's exact grid (size, spacing, origin,
direction) for real CT (NIfTI, a JPEG 2000 DICOM series, a 3-slice DICOM series) and for an
anisotropic phantom with a rotated, flipped direction; labels land inside the body it was cropped
to. The folds are randomly initialised networks of a real plan: the geometry does not depend on
the weights."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.cli import main
from autoseg.cropping import body_bbox
from autoseg.io import Geometry, read_case_images, read_json, read_label, write_image
from autoseg.networks import build_network
from autoseg.phantom import generate_case, write_task
from autoseg.plans import Plans
from tests.synthetic import SHARED_REAL

SPACING = ((4.0, 3.5, 3.5), (5.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Task03 plan from coarse phantoms and two randomly initialised folds of its network."""
    root = tmp_path_factory.mktemp("geom")
    write_task(root / "raw", task="Task03", num_training=3, num_test=0, seed=5, spacing_range=SPACING)
    env = {"AUTOSEG_RAW": str(root / "raw"), "AUTOSEG_PREPROCESSED": str(root / "pre"),
           "AUTOSEG_RESULTS": str(root / "res")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["plan_and_preprocess", "-d", "3", "--cpu-gflops", "20", "--step-time", "0.2",
                     "--only", "fingerprint", "--only", "plan", "-j", "1"]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    plans = Plans.load(root / "pre" / "Task03_Liver" / "plans.json")
    folder = root / "model"
    plans.save(folder / "plans.json")
    for fold in (0, 1):
        torch.manual_seed(fold)
        kwargs = dict(plans.network.kwargs, deep_supervision=plans.recipe.deep_supervision)
        net = build_network(plans.network.name, kwargs, plans.num_channels, plans.num_classes)
        (folder / f"fold_{fold}").mkdir(parents=True)
        torch.save({"network": net.state_dict()}, folder / f"fold_{fold}" / "checkpoint_final.pt")
    return folder


def _rotated_anisotropic_phantom(path: Path) -> Path:
    """5 x 0.7 x 0.9 mm voxels, rotated 30 degrees about z with its y axis flipped, origin far off."""
    case = generate_case(21, "Task03", shape=(18, 150, 120), spacing=(5.0, 0.7, 0.9))
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    direction = (c, s, 0.0, s, -c, 0.0, 0.0, 0.0, 1.0)  # columns: rotated x, flipped rotated y, z
    geometry = Geometry(case.geometry.size, case.geometry.spacing, (-140.5, 63.25, 812.0), direction)
    write_image(path, case.image, geometry)
    return path


def _inputs(tmp_path: Path) -> dict[str, Path]:
    found = {"phantom": _rotated_anisotropic_phantom(tmp_path / "in" / "phantom.nii.gz")}
    if SHARED_REAL.is_dir():
        ts, dq = SHARED_REAL / "totalsegmentator_example", SHARED_REAL / "dcmqi_ct3slice"
        found["ts_nifti"] = ts / "example_ct.nii.gz"
        found["ts_dicom"] = ts / "example_ct_dicom"
        found["dcmqi"] = dq / "ct-3slice"
    return found


def test_predictions_lie_on_the_input_grid_and_inside_the_body(model: Path, tmp_path: Path) -> None:
    for name, source in _inputs(tmp_path).items():  # the phantom only where ../shared is absent
        out = tmp_path / "out" / name
        assert main(["predict", "-i", str(source), "-o", str(out), "-m", str(model)]) == 0
        assert read_json(out / "report.json")["cases"][0]["input"] == str(source)
        (labels_path,) = out.glob("*.nii.gz")
        pred, geometry = read_label(labels_path)
        image, input_geometry = read_case_images([source])
        reference = sitk.ReadImage(str(labels_path))
        assert geometry.size == input_geometry.size, name
        np.testing.assert_allclose(geometry.spacing, input_geometry.spacing, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(geometry.origin, input_geometry.origin, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(geometry.direction, input_geometry.direction, atol=1e-6, err_msg=name)
        assert reference.GetPixelID() == sitk.sitkUInt8 and set(np.unique(pred)) <= {0, 1, 2}, name
        assert pred.any(), f"{name}: a random network predicts some foreground somewhere"
        box = body_bbox(image, 0)
        inside = np.zeros(pred.shape, bool)
        inside[tuple(slice(max(0, a - 1), b + 1) for a, b in box)] = True
        assert not (pred.astype(bool) & ~inside).any(), f"{name}: labels outside the body's box"

"""benchmarks/lesion_sides.py: the side of the body a reference lesion lies on is read from the
image's geometry, so a RAS-stored copy of a case gives the same sides as its LPS original."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.io import Geometry, write_image
from tests.benchmark_modules import load_benchmark

sides = load_benchmark("lesion_sides")


def _case(folder: Path, ras: bool) -> tuple[Path, Path]:
    """A 20 x 30 x 40 body of 40 HU on air, a 4 mL lesion (label 2) near the patient's left edge
    (LPS x large) and a 0.064 mL one at the right edge; stored LPS, or RAS with the x axis reversed."""
    image = np.full((20, 30, 40), -1000.0, np.float32)
    image[:, 5:25, 5:35] = 40.0
    labels = np.zeros(image.shape, np.uint8)
    labels[5:15, 10:20, 28:33] = 2  # 500 voxels of 8 mm^3: 4 mL at array x 28-32 (LPS: patient's left)
    labels[5:7, 10:12, 6:8] = 2     # 8 voxels: 0.064 mL, under --min-ml
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    origin = (0.0, 0.0, 0.0)
    if ras:  # the same patient: array x reversed, x pointing to the patient's right
        image, labels = image[:, :, ::-1].copy(), labels[:, :, ::-1].copy()
        direction, origin = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), (78.0, 0.0, 0.0)
        image, labels = image[:, ::-1, :].copy(), labels[:, ::-1, :].copy()
    geometry = Geometry(size=(40, 30, 20), spacing=(2.0, 2.0, 2.0), origin=origin, direction=direction)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "img.nii.gz", image, geometry)
    write_image(folder / "lab.nii.gz", labels, geometry)
    return folder / "img.nii.gz", folder / "lab.nii.gz"


@pytest.mark.parametrize("ras", [False, True])
def test_a_lesion_on_the_patients_left_is_on_the_left_however_the_file_is_stored(tmp_path: Path, ras: bool) -> None:
    image, labels = _case(tmp_path, ras)
    lesions = sides.case_lesions(image, labels, 2, 0.5)
    assert len(lesions) == 1 and lesions[0]["ml"] == pytest.approx(4.0)
    # body from array x 5 to 34, lesion centre at 30: (30 - 5) / 29 - 0.5
    assert lesions[0]["side"] == pytest.approx(25 / 29 - 0.5)
    assert len(sides.case_lesions(image, labels, 2, 0.01)) == 2


def test_visibility_reads_contrast_and_noise_from_the_parenchyma_around_a_lesion() -> None:
    """A -40 HU lesion in 100 HU parenchyma with noise of SD 20 has CNR about 2; the fat and air
    beside the ring do not count, and a lesion of the parenchyma's own HU has CNR about 0."""
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, (30, 30, 30))
    image[:, :, :6] = -1000.0  # air beside the liver
    image[:, :, 6:9] = -100.0  # fat
    ref = np.zeros(image.shape, np.uint8)
    mask = np.zeros(image.shape, bool)
    mask[10:20, 10:20, 9:19] = True
    ref[mask] = 2
    image[mask] -= 40.0
    contrast, sd, cnr = sides.visibility(image, ref, mask)
    assert contrast == pytest.approx(-40.0, abs=3.0)
    assert sd == pytest.approx(20.0, rel=0.1)
    assert cnr == pytest.approx(2.0, rel=0.15)
    image[mask] += 40.0
    assert sides.visibility(image, ref, mask)[2] < 0.2

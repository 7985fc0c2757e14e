"""Golden-output regression test, as nnU-Net's and TotalSegmentator's CI run: the stored input is
predicted with the stored tiny model through the real ``autoseg predict`` command line and compared
with the stored prediction. A change that alters predictions fails here; if the change is deliberate,
regenerate the files with ``tests/golden/make_golden.py --overwrite`` (see its docstring)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from autoseg.io import read_label

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model.zip"
INPUT = HERE / "input" / "golden_ct.nii.gz"
EXPECTED = HERE / "expected" / "golden_ct.nii.gz"

#: Voxels a class's volume may differ by: float sums in another order (another thread count, BLAS
#: build or CPU instruction set) can flip the argmax of a voxel whose two best probabilities are
#: within rounding of each other. With OMP_NUM_THREADS 1, 2 and 4 no voxel of this input flipped;
#: 0.2 % of a class (at least 2 voxels) leaves room for such ties and is still far below what any
#: real change of the network, preprocessing or resampling moves (hundreds of voxels).
VOLUME_TOLERANCE = (2, 0.002)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def test_stored_model_predicts_the_stored_prediction(tmp_path: Path) -> None:
    for path in (MODEL, INPUT, EXPECTED):
        assert path.is_file(), f"{path} missing: run tests/golden/make_golden.py"
    env = {**os.environ, "AUTOSEG_RAW": str(tmp_path / "raw"), "AUTOSEG_PREPROCESSED": str(tmp_path / "pre"),
           "AUTOSEG_RESULTS": str(tmp_path / "res")}
    out = tmp_path / "pred"
    run = subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(INPUT), "-o", str(out),
                          "-m", str(MODEL), "--device", "cpu"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got, got_geom = read_label(out / INPUT.name)
    ref, ref_geom = read_label(EXPECTED)
    assert got_geom.same_grid(ref_geom) and got.shape == ref.shape
    classes = sorted(int(c) for c in np.unique(ref) if c)
    assert classes == [1, 2], "the stored prediction must hold every class, or it tests nothing"
    assert sorted(int(c) for c in np.unique(got) if c) == classes
    for c in classes:
        n_got, n_ref = int((got == c).sum()), int((ref == c).sum())
        assert dice(got == c, ref == c) > 0.99, f"class {c}: Dice {dice(got == c, ref == c):.4f}"
        allowed = max(VOLUME_TOLERANCE[0], VOLUME_TOLERANCE[1] * n_ref)
        assert abs(n_got - n_ref) <= allowed, f"class {c}: {n_got} voxels, stored {n_ref} (+-{allowed:.0f})"


def test_make_golden_refuses_to_replace_the_stored_files(tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in (MODEL, INPUT, EXPECTED)}
    run = subprocess.run([sys.executable, str(HERE / "make_golden.py")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "--overwrite" in run.stderr
    assert {p: p.read_bytes() for p in before} == before


"""`autoseg plan_and_preprocess` end to end: outputs, re-runs, filters, errors, real CT."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io import Geometry, read_json, read_label, write_image
from autoseg.plans import Plans
from autoseg.preprocessing import load_case
from tests.synthetic import SHARED_REAL, make_msd_task, make_nnunet_dataset

FAST = ["--cpu-gflops", "20", "-j", "1"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def test_plan_and_preprocess_writes_everything(env: Path) -> None:
    make_msd_task(env / "raw", n=3)
    assert main(["plan_and_preprocess", "-d", "Task08", *FAST]) == 0
    out = env / "pre" / "Task08_HepaticVessel"
    fp = read_json(out / "fingerprint.json")
    assert fp["num_cases"] == 3 and fp["is_ct"]
    assert fp["spacing"]["median"] == pytest.approx([2.5, 0.8, 0.8])
    assert fp["class_fractions"]["1"]["fraction_of_body"] < 0.01
    assert any("tiny" in w for w in fp["warnings"])
    assert (out / "slices.png").read_bytes()[:4] == b"\x89PNG"
    plans = Plans.load(out / "plans.json")
    assert plans.batch_size >= 2 and plans.network.name == "arunet"
    # the window narrows to the labelled voxels' 0.5-99.5 percentiles, inside the liver window
    stats = fp["intensity"]["0"]["foreground"]
    assert plans.normalisation[0].window == (max(-160.0, stats["percentile_00_5"]),
                                             min(240.0, stats["percentile_99_5"]))
    assert plans.normalisation[0].window != (-160.0, 240.0)
    assert any("HU window" in n for n in plans.estimates.notes)
    assert plans.estimates.memory_estimate_bytes > 0 and plans.estimates.notes
    assert sorted(p.name for p in (out / "data").glob("*.b2nd")) == [
        f"hepaticvessel_{i:03d}{s}.b2nd" for i in range(3) for s in ("", "_seg")]


def test_rerun_skips_current_outputs(env: Path) -> None:
    make_msd_task(env / "raw", n=2)
    assert main(["plan_and_preprocess", "-d", "8", *FAST]) == 0
    out = env / "pre" / "Task08_HepaticVessel"
    files = [out / "fingerprint.json", out / "plans.json", *sorted((out / "data").iterdir())]
    before = [f.stat().st_mtime_ns for f in files]
    assert main(["plan_and_preprocess", "-d", "8", *FAST]) == 0
    assert [f.stat().st_mtime_ns for f in files] == before


def test_hand_edited_plans_survive_and_drive_preprocessing(env: Path) -> None:
    make_msd_task(env / "raw", n=2)
    assert main(["plan_and_preprocess", "-d", "8", *FAST]) == 0
    out = env / "pre" / "Task08_HepaticVessel"
    data = json.loads((out / "plans.json").read_text())
    data["target_spacing"] = [5.0, 1.6, 1.6]
    (out / "plans.json").write_text(json.dumps(data))
    assert main(["plan_and_preprocess", "-d", "8", *FAST]) == 0
    assert Plans.load(out / "plans.json").target_spacing == (5.0, 1.6, 1.6)
    arr = load_case(out, "hepaticvessel_000")[0]
    props = read_json(out / "data" / "hepaticvessel_000.json")
    crop = props["shape_after_crop"] if "shape_after_crop" in props else props["cropped_shape"]
    assert arr.shape[1:] == tuple(int(round(c * s / t)) for c, s, t in zip(crop, (2.5, 0.8, 0.8), (5.0, 1.6, 1.6)))


def test_max_slices_filter_is_reported(env: Path) -> None:
    make_msd_task(env / "raw", n=3)
    img = env / "raw" / "Task08_HepaticVessel" / "imagesTr" / "hepaticvessel_002.nii.gz"
    lab = env / "raw" / "Task08_HepaticVessel" / "labelsTr" / "hepaticvessel_002.nii.gz"
    for path in (img, lab):
        arr, geom = read_label(path)
        big = np.concatenate([arr, arr], axis=0)
        write_image(path, big, Geometry((geom.size[0], geom.size[1], big.shape[0]), geom.spacing,
                                        geom.origin, geom.direction))
    assert main(["plan_and_preprocess", "-d", "8", "--max-slices", "20", *FAST]) == 0
    out = env / "pre" / "Task08_HepaticVessel"
    fp = read_json(out / "fingerprint.json")
    assert fp["num_cases"] == 2 and fp["excluded"][0]["case"] == "hepaticvessel_002"
    assert not (out / "data" / "hepaticvessel_002.b2nd").exists()


def test_nnunet_format_dataset(env: Path) -> None:
    make_nnunet_dataset(env / "raw", n=2)
    assert main(["plan_and_preprocess", "-d", "Dataset008_HepaticVessel", *FAST]) == 0
    assert (env / "pre" / "Dataset008_HepaticVessel" / "data" / "hv_001.b2nd").is_file()


def test_non_ct_dataset_warns_and_skips_hu_window(env: Path) -> None:
    task = make_msd_task(env / "raw", n=2)
    meta = json.loads((task / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI"}
    (task / "dataset.json").write_text(json.dumps(meta))
    assert main(["plan_and_preprocess", "-d", "8", *FAST]) == 0
    out = env / "pre" / "Task08_HepaticVessel"
    assert any("not CT" in w for w in read_json(out / "fingerprint.json")["warnings"])
    assert Plans.load(out / "plans.json").normalisation[0].scheme == "zscore"


def test_user_errors_exit_2_with_message(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan_and_preprocess", "-d", "Task42", *FAST]) == 2
    err = capsys.readouterr().err
    assert "Task42" in err and "Fix:" in err and "Traceback" not in err


def test_label_values_outside_dataset_json(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = make_msd_task(env / "raw", n=2)
    lab = task / "labelsTr" / "hepaticvessel_001.nii.gz"
    arr, geom = read_label(lab)
    arr[0, 0, 0] = 7
    write_image(lab, arr, geom)
    assert main(["plan_and_preprocess", "-d", "8", *FAST]) == 2
    err = capsys.readouterr().err
    assert "hepaticvessel_001" in err and "7" in err
    assert not (env / "pre" / "Task08_HepaticVessel" / "plans.json").exists()


def _real_task(root: Path) -> Path:
    """A Task03-like dataset from the shared real CT: NIfTI, a JPEG 2000 DICOM series, a 3-slice series."""
    ts = SHARED_REAL / "totalsegmentator_example"
    dq = SHARED_REAL / "dcmqi_ct3slice"
    task = root / "Task03_Liver"
    (task / "imagesTr").mkdir(parents=True)
    shutil.copy(ts / "example_ct.nii.gz", task / "imagesTr" / "ts_nifti.nii.gz")
    shutil.copytree(ts / "example_ct_dicom", task / "imagesTr" / "ts_dicom")
    shutil.copytree(dq / "ct-3slice", task / "imagesTr" / "dcmqi")
    for name, src, liver_id in (("ts_nifti", ts / "example_seg_fast_force_split.nii.gz", 5),
                                ("ts_dicom", ts / "example_seg_dicom.nii.gz", 5),
                                ("dcmqi", dq / "liver_seg.nrrd", 1)):
        arr, geom = read_label(src)
        write_image(task / "labelsTr" / f"{name}.nii.gz", (arr == liver_id).astype(np.uint8), geom)
    (task / "dataset.json").write_text(json.dumps(
        {"name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumour"},
         "numTraining": 3}))
    return task


@pytest.mark.skipif(not SHARED_REAL.is_dir(), reason="shared real CT absent")
def test_real_ct_keeps_geometry(env: Path) -> None:
    _real_task(env / "raw")
    assert main(["plan_and_preprocess", "-d", "Task03", *FAST]) == 0
    out = env / "pre" / "Task03_Liver"
    fp = read_json(out / "fingerprint.json")
    assert fp["num_cases"] == 3
    liver = fp["intensity"]["0"]["1"]
    assert 40 < liver["median"] < 140, liver  # real liver HU, so labels were aligned to the images
    props = read_json(out / "data" / "ts_dicom.json")
    geom = Geometry.from_dict(props["original_geometry"] if "original_geometry" in props else props["geometry"])
    assert geom.size == (512, 512, 20) and geom.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert geom.origin == pytest.approx((-249.51171875, -437.51171875, -804.5))
    props3 = read_json(out / "data" / "dcmqi.json")
    g3 = Geometry.from_dict(props3["original_geometry"] if "original_geometry" in props3 else props3["geometry"])
    assert g3.size == (512, 512, 3)

"""The remaining faults of issue 20: concurrent preprocessing, damaged or too short splits, exports
over existing files, DICOM series with a missing slice, misleading messages and full disks. Each is
refused with an error naming the file and the fix, and nothing is written, changed or left behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.cli import main
from autoseg.errors import AutosegError, ImageReadError
from autoseg.io import read_image, read_sitk
from tests.synthetic import SHARED_REAL
from tests.workspaces import lock_held_elsewhere, planned_workspace, use_workspace

DATASET = "Task08_HepaticVessel"
PLAN = ["plan_and_preprocess", "-d", "8", "--cpu-gflops", "20", "--step-time", "0.3", "--features", "8",
        "-j", "1"]
TRAIN = ["train", "-d", "8", "--steps", "2", "--iterations", "2", "--threads", "1", "-j", "0"]
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
DICOM_CT = SHARED_REAL / "totalsegmentator_example" / "example_ct_dicom"
DICOM_SEG = SHARED_REAL / "dcmqi_ct3slice" / "liver_SEG.dcm"


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three phantom cases, planned and preprocessed (three cases: fewer than the five folds)."""
    return planned_workspace(tmp_path_factory.mktemp("faults"), PLAN, num_training=3, seed=11)


@pytest.fixture
def env(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_workspace(workspace, monkeypatch)


# --- 1. one plan_and_preprocess per dataset at a time ---------------------------------------------

def test_a_dataset_being_preprocessed_elsewhere_is_refused_until_its_holder_ends(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = env / "pre" / DATASET
    with lock_held_elsewhere(out) as holder:
        before = _snapshot(out)
        assert main([*PLAN, "--force"]) == 2
        err = capsys.readouterr().err
        assert f"{out}: the preprocessed folder of {DATASET} is in use by process {holder.pid}" in err
        assert "Fix: wait for that run to end" in err and "Traceback" not in err
        assert _snapshot(out) == before  # nothing re-planned or re-written
    assert main(PLAN) == 0  # the kernel released the dead holder's lock


# --- 2. splits ----------------------------------------------------------------------------------


def test_fewer_cases_than_folds_refuses_the_folds_that_would_repeat(env: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    splits_path = env / "pre" / DATASET / "splits.json"
    splits_path.unlink(missing_ok=True)
    assert main([*TRAIN, "-f", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{splits_path}:" in err and "3 training cases give only 3 distinct folds" in err
    assert "Fix: add training cases" in err and "-f 0 1 2" in err and "Traceback" not in err
    written = json.loads(splits_path.read_text())  # the 3 distinct folds only, no repeats stored
    assert len(written) == 3 and sorted(c for s in written for c in s["val"]) == sorted(
        written[0]["train"] + written[0]["val"])
    assert not (env / "res" / DATASET / "arunet" / "fold_3").exists()


def test_old_splits_with_repeated_folds_are_refused_for_the_repeats(tmp_path: Path) -> None:
    from autoseg.training.splits import load_or_create_splits

    path = tmp_path / "splits.json"
    folds = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a", "c"], "val": ["b"]},
             {"train": ["a", "b"], "val": ["c"]}]
    path.write_text(json.dumps(folds + folds[:2]))  # as autoseg wrote them for 3 cases before
    before = path.read_bytes()
    splits = load_or_create_splits(path, ["a", "b", "c"], 0)
    assert splits[2] == folds[2]
    with pytest.raises(AutosegError, match="splits.json: fold 4 in the splits file repeats fold 1") as err:
        splits[4]
    assert err.value.path == path and "add training cases" in str(err.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", ["{not json", "[]", '[{"train": ["a"]}]', '{"train": [], "val": []}'])
def test_a_damaged_splits_file_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    from autoseg.training.splits import load_or_create_splits

    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(AutosegError) as err:
        load_or_create_splits(path, ["a", "b", "c", "d", "e", "f"], 0)
    assert err.value.path == path and "delete this file to regenerate" in str(err.value)
    assert path.read_text() == content


def test_a_splits_file_with_too_few_folds_is_refused_for_the_missing_ones(tmp_path: Path) -> None:
    from autoseg.training.splits import load_or_create_splits

    path = tmp_path / "splits.json"
    cases = [f"c{i}" for i in range(6)]
    path.write_text(json.dumps([{"train": cases[2:], "val": cases[:2]}, {"train": cases[:2], "val": cases[2:]}]))
    splits = load_or_create_splits(path, cases, 0)
    assert splits[1]["val"] == cases[2:]
    wanted = "splits.json: the splits file holds 2 fold\\(s\\), so fold 3 does not exist"
    with pytest.raises(AutosegError, match=wanted) as err:
        splits[3]
    assert err.value.path == path and "delete this file to regenerate" in str(err.value)


# --- 3. export never replaces a file unasked -------------------------------------------------------


def test_export_refuses_an_existing_archive_or_a_non_empty_onnx_folder(
        env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TRAIN, "-f", "0", "--force"]) == 0
    archive = tmp_path / "model.zip"
    archive.write_bytes(b"someone's archive")
    assert main(["export", "-d", "8", "-f", "0", "-o", str(archive)]) == 2
    err = capsys.readouterr().err
    assert f"{archive}: the archive already exists" in err and "--overwrite" in err
    assert archive.read_bytes() == b"someone's archive"
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "notes.txt").write_text("mine")
    assert main(["export", "-d", "8", "-f", "0", "--onnx", "-o", str(onnx)]) == 2
    assert f"{onnx}: the ONNX export folder is not empty" in capsys.readouterr().err
    assert _snapshot(onnx) == {"notes.txt": b"mine"}
    assert main(["export", "-d", "8", "-f", "0", "--onnx", "-o", str(archive)]) == 2
    assert "an ONNX export is a folder, but this is a file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip", "onnx"]
    assert main(["export", "-d", "8", "-f", "0", "-o", str(archive), "--overwrite"]) == 0
    assert archive.read_bytes()[:2] == b"PK"


# --- 4. DICOM series with a missing slice --------------------------------------------------------

needs_dicom = pytest.mark.skipif(not DICOM_CT.is_dir(), reason=f"real DICOM not available ({DICOM_CT} "
                                 "is absent: /work/shared/data/real is not mounted here)")


@needs_dicom
def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    complete, gapped = tmp_path / "complete", tmp_path / "gapped"
    shutil.copytree(DICOM_CT, complete)
    shutil.copytree(DICOM_CT, gapped)
    image = read_sitk(complete)
    assert image.GetSize()[2] == 20 and image.GetSpacing()[2] == pytest.approx(2.0)
    slices = sorted(gapped.iterdir(), key=lambda p: float(_tag(p, "0020|0032").split("\\")[2]))
    slices[9].unlink()
    before = _snapshot(gapped)
    with pytest.raises(ImageReadError, match="not evenly spaced") as err:
        read_sitk(gapped)
    message = str(err.value)
    assert err.value.path == gapped and "a slice is missing" in message and "4 mm between slice positions" in message
    assert "Fix: export the complete series" in message
    assert _snapshot(gapped) == before


def _tag(path: Path, key: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData(key)


def test_slice_position_check_finds_uneven_steps_and_duplicates_on_an_oblique_series() -> None:
    from autoseg.io import check_slice_positions

    c, s = np.cos(0.3), np.sin(0.3)
    orient = f"1\\0\\0\\0\\{c}\\{s}"  # tilted rows: the normal is (0, -s, c)
    normal = np.array([0.0, -s, c])

    def tags(depths: list[float]) -> list[tuple[str, str]]:
        return [("\\".join(f"{v:.6f}" for v in d * normal + [5.0, 0.0, 0.0]), orient) for d in depths]

    check_slice_positions(Path("even"), tags([0, 2.5, 5, 7.5, 10]))
    with pytest.raises(ImageReadError, match="the first 3 mm between slice positions 5.00 and 8.00"):
        check_slice_positions(Path("uneven"), tags([0, 2.5, 5, 8, 10.5, 13]))
    with pytest.raises(ImageReadError, match="4 slices at only 2 distinct positions"):
        check_slice_positions(Path("dup"), tags([0, 0, 2, 2]))


# --- 5. messages that say what is wrong ----------------------------------------------------------


def test_a_non_gzip_file_named_nii_gz_is_not_called_truncated(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.full((4, 5, 6), -1000, np.int16))
    sitk.WriteImage(image, str(tmp_path / "plain.nii"))
    misnamed = tmp_path / "ct.nii.gz"
    (tmp_path / "plain.nii").rename(misnamed)
    with pytest.raises(ImageReadError, match="not gzip-compressed: it is an uncompressed NIfTI") as err:
        read_image(misnamed)
    assert err.value.path == misnamed and "rename it to ct.nii" in str(err.value)
    assert "truncated" not in str(err.value)
    other = tmp_path / "scan.nii.gz"
    other.write_bytes(b"<html>not found</html>" * 30)
    with pytest.raises(ImageReadError, match="not gzip-compressed NIfTI") as err:
        read_image(other)
    assert "truncated" not in str(err.value)


def _predict(inp: Path, out: Path, model: Path = GOLDEN / "model.zip") -> int:
    return main(["predict", "-i", str(inp), "-o", str(out), "-m", str(model), "--device", "cpu"])


def test_a_label_map_given_to_predict_is_called_a_label_map(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "in" / "labels.nii.gz"
    labels.parent.mkdir()
    shutil.copyfile(GOLDEN / "expected" / "golden_ct.nii.gz", labels)
    assert _predict(labels, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{labels}: looks like a segmentation or label map" in err and "3 distinct whole-number" in err
    assert "Fix: pass the CT image itself" in err and "8-bit picture" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.skipif(not DICOM_SEG.is_file(), reason=f"real DICOM-SEG not available ({DICOM_SEG} is absent)")
def test_a_dicom_seg_given_to_predict_is_named_a_segmentation(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "seg"
    folder.mkdir()
    shutil.copyfile(DICOM_SEG, folder / DICOM_SEG.name)
    assert _predict(folder, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{folder}: is a DICOM Segmentation object (SEG)" in err and "8-bit picture" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.nii.gz"))


def test_predict_channel_error_names_the_model_not_dataset_json(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ct = sitk.ReadImage(str(GOLDEN / "input" / "golden_ct.nii.gz"))
    path = tmp_path / "two.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([ct, ct]), str(path))  # a 4D file: two channels
    assert _predict(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "has 2 channel(s)" in err and "but 1 are expected" in err and "the model's plans.json" in err
    assert "dataset.json declares" not in err


def test_patch_size_edited_in_plans_is_named_as_the_cause(env: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = env / "res" / DATASET / "arunet"
    if not (model / "fold_0" / "checkpoint_final.pt").is_file():
        assert main([*TRAIN, "-f", "0", "--force"]) == 0
    plans_path = model / "plans.json"
    original = plans_path.read_text()
    plans = json.loads(original)
    plans["patch_size"] = [p + 1 for p in plans["patch_size"]]
    plans_path.write_text(json.dumps(plans))
    try:
        image = next((env / "raw" / DATASET / "imagesTr").glob("*.nii.gz"))
        assert _predict(image, tmp_path / "out", model) == 2
    finally:
        plans_path.write_text(original)
    err = capsys.readouterr().err
    assert "not divisible by the network's total stride" in err and "patch_size" in err
    assert "plans.json" in err and "autoseg plan_and_preprocess --only plan --force" in err


# --- 6. a full disk while preprocessing and training ---------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@pytest.fixture
def temporaries_on_full_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write's temporary file becomes a link to /dev/full: writes fail with a real
    ENOSPC from the kernel, as on a full disk."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)
        return os.open(name, os.O_WRONLY), name
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@needs_dev_full
def test_no_space_while_writing_a_preprocessed_case(tmp_path: Path, temporaries_on_full_device: None) -> None:
    from autoseg.preprocessing.storage import write_case

    data = np.zeros((1, 20, 30, 40), np.float32)
    with pytest.raises(AutosegError, match="No space left on device") as err:
        write_case(tmp_path, "case_0", data, np.zeros(data.shape[1:], np.uint8), {"x": 1})
    assert err.value.path == tmp_path / "data" and "free space on that disk" in str(err.value)
    assert list((tmp_path / "data").iterdir()) == []


_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from autoseg.errors import AutosegError
from autoseg.preprocessing.storage import write_case
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
noise = np.random.default_rng(0).normal(size=(1, 40, 40, 40)).astype(np.float32)  # 256 kB, incompressible
try:
    write_case(Path(sys.argv[1]), "case_0", noise, None, {})
except AutosegError as exc:
    print(exc.path)
    print(exc)
"""


def test_a_file_larger_than_the_limit_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    """A file larger than the file system allows (FAT32's 4 GiB) or than a file-size limit: the write
    stops part-way with EFBIG; the error names the folder and the fix, and nothing is left behind."""
    run = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines and lines[0] == str(tmp_path / "data"), run.stderr[-2000:]
    assert "File too large" in run.stdout and "FAT32" in run.stdout and "ulimit -f" in run.stdout
    assert list((tmp_path / "data").iterdir()) == []


@needs_dev_full
@pytest.mark.parametrize("numel", [10, 100_000])
def test_no_space_while_saving_a_checkpoint(tmp_path: Path, temporaries_on_full_device: None, numel: int) -> None:
    from autoseg.checkpoint import save_checkpoint

    target = tmp_path / "fold_0" / "checkpoint_latest.pt"
    with pytest.raises(AutosegError, match="No space left on device") as err:
        save_checkpoint(target, {"network": {"w": torch.zeros(numel)}})
    assert err.value.path == target.parent and "basic_ios" not in str(err.value)
    assert list(target.parent.iterdir()) == []

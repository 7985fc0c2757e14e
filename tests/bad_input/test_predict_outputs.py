"""`autoseg predict` never writes over an input or an existing output unasked, names its outputs
without collisions, and on a failing case stops (or with --keep-going goes on) with a report.json
of what was done (issue 20). The model is test_predict_geometry's: a real Task03 plan with randomly
initialised folds (nothing trained)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.inference.predictor import find_inputs
from autoseg.io import read_json, read_label
from tests.synthetic import SHARED_REAL, tiny_ct, write_case
from tests.test_predict_geometry import model  # noqa: F401  (the module-scoped model fixture)

SPACING = (4.5, 3.8, 3.8)  # near the plan's target spacing: a small grid to slide over


def _ct(folder: Path, name: str, seed: int = 0) -> Path:
    image, _ = tiny_ct(seed, shape=(10, 24, 28))
    return write_case(folder, name, image, SPACING)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _predict(inputs: Path, output: Path, model_dir: Path, *extra: str) -> int:
    return main(["predict", "-i", str(inputs), "-o", str(output), "-m", str(model_dir), "-f", "0", *extra])


# --- 1. never over an input ----------------------------------------------------------------------

def test_a_file_input_is_never_overwritten_by_its_label_map(model: Path, tmp_path: Path,  # noqa: F811
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "d"
    ct = _ct(folder, "ct.nii.gz")
    before = _snapshot(folder)
    assert _predict(ct, folder, model) == 2
    err = capsys.readouterr().err
    assert f"the label map ct.nii.gz would overwrite the input image {ct}" in err
    assert "write the segmentations to another folder" in err
    assert _snapshot(folder) == before  # the CT's bytes, and no report, no .tmp-* file


def test_a_folder_input_and_a_dicom_folder_input_are_never_written_into(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    folder = tmp_path / "images"
    _ct(folder, "a.nii.gz")
    inputs = [folder]
    if (SHARED_REAL / "dcmqi_ct3slice" / "ct-3slice").is_dir():
        inputs.append(Path(shutil.copytree(SHARED_REAL / "dcmqi_ct3slice" / "ct-3slice", tmp_path / "series")))
    for source in inputs:
        before = _snapshot(source)
        for output in (source, source / "out"):
            assert _predict(source, output, model) == 2
            err = capsys.readouterr().err
            assert "output folder is inside the input folder" in err and str(output) in err
        assert _snapshot(source) == before and not (source / "out").exists()


def test_output_naming_an_existing_file_is_a_clear_error(model: Path, tmp_path: Path,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ct = _ct(tmp_path / "in", "ct.nii.gz")
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for output in (target, target / "sub"):
        assert _predict(ct, output, model) == 2
        err = capsys.readouterr().err
        assert f"{output}: -o names" in err and "must be a folder" in err and "Traceback" not in err
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes.txt"]


# --- 3. names unique by construction -------------------------------------------------------------

def test_numbered_names_keep_their_number(tmp_path: Path) -> None:
    _ct(tmp_path, "patient_0001.nii.gz")
    _ct(tmp_path, "patient_0002.nii.gz")
    assert [name for name, _ in find_inputs(tmp_path)] == ["patient_0001", "patient_0002"]


def test_the_channel_suffix_is_dropped_only_when_every_input_has_it(tmp_path: Path) -> None:
    nnunet, mixed = tmp_path / "nnunet", tmp_path / "mixed"
    for name in ("liver_1_0000.nii.gz", "liver_2_0000.nrrd"):
        _ct(nnunet, name)
    for name in ("liver_1_0000.nii.gz", "liver_2.nii.gz"):
        _ct(mixed, name)
    assert [n for n, _ in find_inputs(nnunet)] == ["liver_1", "liver_2"]
    assert [n for n, _ in find_inputs(mixed)] == ["liver_1_0000", "liver_2"]
    assert [n for n, _ in find_inputs(nnunet / "liver_1_0000.nii.gz")] == ["liver_1"]


@pytest.mark.parametrize("names", [("case.nii.gz", "case.nrrd"), ("Case.mha", "case.nii.gz")])
def test_two_inputs_with_one_output_are_refused_before_any_work(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], names: tuple[str, str]) -> None:  # noqa: F811
    folder = tmp_path / "in"
    for name in names:
        _ct(folder, name)
    out = tmp_path / "out"
    assert _predict(folder, out, model) == 2
    err = capsys.readouterr().err
    first, second = sorted(names)
    assert f"inputs {first} and {second} would both be written as" in err and "rename one of them" in err
    assert not out.exists()
    with pytest.raises(AutosegError, match="would both be written"):
        find_inputs(folder)


# --- 3. no output overwritten unasked; --keep-going ----------------------------------------------

def test_a_rerun_skips_finished_cases_and_overwrite_predicts_them_again(
        model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    ct = _ct(tmp_path / "in", "ct.nii.gz")
    out = tmp_path / "out"
    assert _predict(ct, out, model) == 0
    labels = (out / "ct.nii.gz").stat()
    first = _snapshot(out)
    with caplog.at_level(logging.INFO):
        assert _predict(ct, out, model) == 0
    assert "ct.nii.gz and its report exist; skipped" in caplog.text
    report = read_json(out / "report.json")
    assert report["cases"] == [] and report["skipped"] == [{"case": "ct", "input": str(ct),
                                                            "reason": "outputs exist"}]
    assert {k: v for k, v in _snapshot(out).items() if k != "report.json"} == \
        {k: v for k, v in first.items() if k != "report.json"}
    assert (out / "ct.nii.gz").stat().st_mtime_ns == labels.st_mtime_ns
    assert _predict(ct, out, model, "--overwrite") == 0
    report = read_json(out / "report.json")
    assert [c["input"] for c in report["cases"]] == [str(ct)] and report["skipped"] == []
    assert (out / "ct.nii.gz").stat().st_mtime_ns != labels.st_mtime_ns
    assert not list(out.glob(".tmp-*"))


def test_an_output_without_its_report_is_not_overwritten_unasked(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    ct = _ct(tmp_path / "in", "ct.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ct.nii.gz").write_bytes(b"someone else's file")
    assert _predict(ct, out, model) == 2
    err = capsys.readouterr().err
    assert "ct.nii.gz exist(s) without the case's other output" in err and "--overwrite" in err
    assert _snapshot(out) == {"ct.nii.gz": b"someone else's file"}


def _batch_with_a_bad_case(tmp_path: Path) -> tuple[Path, Path, Path]:
    """a_good.nii.gz (CT) and b_bad.nii.gz (an 8-bit picture, refused as not CT), in that order."""
    folder = tmp_path / "in"
    good = _ct(folder, "a_good.nii.gz")
    picture = np.random.default_rng(1).integers(0, 256, (10, 24, 28)).astype(np.uint8)
    bad = write_case(folder, "b_bad.nii.gz", picture, SPACING)
    return folder, good, bad


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_failing_case_leaves_a_report_of_the_batch(model: Path, tmp_path: Path, keep_going: bool,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder, good, bad = _batch_with_a_bad_case(tmp_path)
    if keep_going:  # a third case after the bad one is still predicted
        _ct(folder, "c_good.nii.gz", seed=2)
    before = _snapshot(folder)
    out = tmp_path / "out"
    assert _predict(folder, out, model, *(["--keep-going"] if keep_going else [])) == 2
    err = capsys.readouterr().err
    report = read_json(out / "report.json")
    error = report["failed"][0]["error"]
    assert error.startswith(f"{bad}: intensities") and "Fix: use the original CT" in error
    assert (error in err) != keep_going  # the batch stops with the case's error, or goes on and sums up
    assert ("1 case(s) failed (b_bad.nii.gz)" in err) == keep_going
    done = ["a_good", "c_good"] if keep_going else ["a_good"]
    assert [Path(c["input"]).name.replace(".nii.gz", "") for c in report["cases"]] == done
    assert [f["case"] for f in report["failed"]] == ["b_bad"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json"] + [f"{n}{e}" for n in done for e in (".nii.gz", ".report.json")])
    assert read_label(out / "a_good.nii.gz")[0].shape == (10, 24, 28)
    assert _snapshot(folder) == before

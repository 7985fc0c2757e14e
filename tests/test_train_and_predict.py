"""`autoseg train` and `autoseg predict` end to end on tiny phantoms: outputs, resume after a kill,
skip/force, errors, and predictions written back on the input grid."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.io import read_json, read_label
from autoseg.preprocessing.storage import load_labels
from tests.optional import requires_extra
from tests.workspaces import planned_workspace, use_workspace

PLAN = ["plan_and_preprocess", "-d", "8", "--cpu-gflops", "20", "-j", "1", "--step-time", "0.3"]
TINY = ["--epochs", "2", "--iterations", "3", "-j", "0"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planned_workspace(tmp_path_factory.mktemp("ws"), PLAN, num_training=5, seed=3, num_test=1)


@pytest.fixture
def env(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_workspace(workspace, monkeypatch)


def _fold_dir(root: Path, fold: int) -> Path:
    return root / "res" / "Task08_HepaticVessel" / "arunet" / f"fold_{fold}"


def test_train_one_fold_writes_checkpoints_log_and_curves(env: Path) -> None:
    assert main(["train", "-d", "8", "-f", "0", *TINY, "--force"]) == 0
    fold = _fold_dir(env, 0)
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt", "progress.png", "log.jsonl"):
        assert (fold / name).is_file(), name
    lines = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [0, 1]
    assert set(lines[0]["val_dice"]) == {"vessel", "tumour"}  # never a background Dice
    assert lines[1]["lr"] < lines[0]["lr"]  # poly schedule decays
    assert 0 <= lines[0]["data_wait_share"] <= 1
    state = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert state["epoch"] == 2 and state["steps"] == 6
    assert (env / "pre" / "Task08_HepaticVessel" / "splits.json").is_file()


def test_fold_end_validation_predicts_whole_held_out_cases(env: Path) -> None:
    """Run after the test above: fold 0's held-out cases are predicted whole and scored."""
    fold = _fold_dir(env, 0)
    splits = read_json(env / "pre" / "Task08_HepaticVessel" / "splits.json")
    val_cases = splits[0]["val"]
    summary = read_json(fold / "validation" / "summary.json")
    assert sorted(summary["cases"]) == sorted(val_cases)
    assert set(summary["mean_dice"]) == {"vessel", "tumour"}  # background never scored
    for case in val_cases:
        scores = summary["cases"][case]
        assert all(v is None or 0.0 <= v <= 1.0 for v in scores.values())
        pred, geometry = read_label(fold / "validation" / f"{case}.nii.gz")
        image = next((env / "raw" / "Task08_HepaticVessel" / "imagesTr").glob(f"{case}*"))
        _, raw_geometry = read_label(image)
        assert pred.shape == raw_geometry.shape_zyx and geometry.same_grid(raw_geometry)
        assert set(np.unique(pred)) <= {0, 1, 2}
        assert (fold / "validation" / f"{case}.pred.npz").is_file()  # kept for the post-processing decision


def test_finished_fold_is_skipped_unless_forced(env: Path) -> None:
    assert main(["train", "-d", "8", "-f", "1", *TINY]) == 0
    final = _fold_dir(env, 1) / "checkpoint_final.pt"
    before = final.stat().st_mtime_ns
    assert main(["train", "-d", "8", "-f", "1", *TINY]) == 0
    assert final.stat().st_mtime_ns == before


def test_bad_train_requests(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "-d", "8", "-f", "7", *TINY]) == 2
    assert "folds must be 0-4" in capsys.readouterr().err
    assert main(["train", "-d", "8", "-f", "0", "--network", "unet3", *TINY]) == 2
    assert "arunet" in capsys.readouterr().err
    assert main(["train", "-d", "Task03", *TINY]) == 2
    assert "plan_and_preprocess" in capsys.readouterr().err


def test_openvino_validation_without_openvino_is_refused_before_training(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    results = env / "res"
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*")} if results.exists() else {}
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the openvino extra were not installed
    assert main(["train", "-d", "8", "-f", "3", *TINY, "--force", "--device", "cpu",
                 "--validation-runtime", "openvino"]) == 2
    err = capsys.readouterr().err
    assert "pip install openvino" in err and "--validation-runtime torch" in err
    after = {p: p.stat().st_mtime_ns for p in results.rglob("*")} if results.exists() else {}
    assert after == before, "nothing trained, nothing written"


def test_corrupt_checkpoint_is_a_clear_error(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "-d", "8", "-f", "2", *TINY, "--force"]) == 0
    (_fold_dir(env, 2) / "checkpoint_latest.pt").write_bytes(b"garbage")
    (_fold_dir(env, 2) / "checkpoint_final.pt").unlink()
    assert main(["train", "-d", "8", "-f", "2", *TINY, "--continue"]) == 2
    assert "cannot be loaded" in capsys.readouterr().err


def test_resume_after_sigkill_matches_uninterrupted_run(env: Path) -> None:
    """Kill a training process mid-run with SIGKILL, resume with --continue, compare schedules."""
    args = ["train", "-d", "8", "-f", "3", "--epochs", "6", "--iterations", "4", "-j", "0", "--force"]
    proc = subprocess.Popen([sys.executable, "-m", "autoseg", *args], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = _fold_dir(env, 3) / "checkpoint_latest.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and len((_fold_dir(env, 3) / "log.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    time.sleep(0.5)  # let it get into the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (_fold_dir(env, 3) / "checkpoint_final.pt").exists()
    assert main(args[:-1] + ["--continue"]) == 0
    resumed = [json.loads(line) for line in (_fold_dir(env, 3) / "log.jsonl").read_text().splitlines()]
    assert main(["train", "-d", "8", "-f", "4", "--epochs", "6", "--iterations", "4", "-j", "0", "--force"]) == 0
    straight = [json.loads(line) for line in (_fold_dir(env, 4) / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed] == list(range(6)) == [r["epoch"] for r in straight]
    assert [round(r["lr"], 12) for r in resumed] == [round(r["lr"], 12) for r in straight]
    assert [r["steps"] for r in resumed] == [r["steps"] for r in straight]
    state = torch.load(_fold_dir(env, 3) / "checkpoint_final.pt", weights_only=True)
    assert state["steps"] == 24


def test_predict_writes_labels_on_input_grid_and_reports(env: Path) -> None:
    for f in (0, 1):
        if not (_fold_dir(env, f) / "checkpoint_final.pt").is_file():
            assert main(["train", "-d", "8", "-f", str(f), *TINY]) == 0
    images = env / "raw" / "Task08_HepaticVessel" / "imagesTs"
    out = env / "pred"
    assert main(["predict", "-i", str(images), "-o", str(out), "-d", "8", "-f", "0", "1", "--overlays"]) == 0
    case = sorted(images.iterdir())[0]
    name = case.name.replace(".nii.gz", "")
    pred, geom = read_label(out / f"{name}.nii.gz")
    _, ref_geom = read_label(case)
    assert geom.same_grid(ref_geom) and pred.shape == ref_geom.shape_zyx
    assert set(np.unique(pred)) <= {0, 1, 2}
    report = read_json(out / f"{name}.report.json")
    assert set(report["volumes_ml"]) == {"vessel", "tumour"} and report["folds"] == [0, 1]
    stages = report["stage_seconds"]
    assert 0 < stages["network_forward"] <= stages["sliding_window"] <= report["seconds"]
    tumours = report["tumours"]
    assert len(tumours["lesions"]) == min(tumours["count"], 100)
    assert report["overlays"] and (out / report["overlays"][0]).read_bytes()[:4] == b"\x89PNG"
    assert read_json(out / "report.json")["cases"][0]["input"] == str(case)


def test_predict_bad_inputs(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = env / "raw" / "Task08_HepaticVessel" / "imagesTs"
    assert main(["predict", "-i", str(images), "-o", str(images / "out"), "-d", "8", "-f", "0"]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "-i", str(empty), "-o", str(tmp_path / "o"), "-d", "8", "-f", "0"]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "o"), "-m", str(tmp_path)]) == 2
    assert "plans.json" in capsys.readouterr().err
    for share in ("1.5", "nan", "-0.1"):
        assert main(["predict", "-i", str(images), "-o", str(tmp_path / "o"), "-d", "8", "--edge-context", share]) == 2
        assert "a share of the patch from 0 to 1" in capsys.readouterr().err and not (tmp_path / "o").exists()


def _probabilities(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*.probabilities.npz"))
    assert files
    return np.load(files[0])["probabilities"].astype(np.float32)


@requires_extra("export")
def test_export_archive_and_onnx_predict_like_the_training_folder(env: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    if not (_fold_dir(env, 0) / "checkpoint_final.pt").is_file():
        assert main(["train", "-d", "8", "-f", "0", *TINY]) == 0
    images = env / "raw" / "Task08_HepaticVessel" / "imagesTs"
    archive, onnx_dir = tmp_path / "model.zip", tmp_path / "onnx"
    assert main(["export", "-d", "8", "-f", "0", "-o", str(archive)]) == 0
    assert main(["export", "-d", "8", "-f", "0", "--onnx", "-o", str(onnx_dir)]) == 0
    assert read_json(onnx_dir / "manifest.json")["max_abs_diff_vs_pytorch"]["fold_0.onnx"] < 1e-3
    outputs = {}
    for name, source in (("folder", ["-d", "8"]), ("zip", ["-m", str(archive)]), ("onnx", ["-m", str(onnx_dir)])):
        outputs[name] = tmp_path / f"pred_{name}"
        # fixed threads: the comparison below is bit for bit, and a thread count that followed the
        # machine's load (the default) would change the order of the sums between the three runs
        assert main(["predict", "-i", str(images), "-o", str(outputs[name]), *source, "-f", "0",
                     "--save-probabilities", "--precision", "fp32", "--threads", "2"]) == 0  # ONNX: fp32
    reference = _probabilities(outputs["folder"])
    assert read_json(outputs["onnx"] / "report.json")["cases"][0]["precision"] == "fp32"
    assert [read_json(outputs[n] / "report.json")["cases"][0]["runtime"] for n in ("folder", "onnx")] == \
        ["torch", "onnxruntime"]
    from autoseg.networks.openvino_runtime import openvino_available
    if openvino_available():  # the openvino extra: the same model run by OpenVINO (fp32)
        assert main(["predict", "-i", str(images), "-o", str(tmp_path / "pred_ov"), "-d", "8", "-f", "0",
                     "--save-probabilities", "--precision", "fp32", "--threads", "2", "--runtime", "openvino"]) == 0
        assert read_json(tmp_path / "pred_ov" / "report.json")["cases"][0]["runtime"] == "openvino"
        assert np.abs(_probabilities(tmp_path / "pred_ov") - reference).max() < 2e-3
    assert np.array_equal(_probabilities(outputs["zip"]), reference)
    assert np.abs(_probabilities(outputs["onnx"]) - reference).max() < 2e-3  # float16 storage
    # an ONNX graph is fixed to its patch: larger tiles are refused up front, naming the export
    capsys.readouterr()
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "tiles"), "-m", str(onnx_dir), "-f", "0",
                 "--tile-scale", "2"]) != 0
    assert "exported at" in capsys.readouterr().err and not (tmp_path / "tiles").exists()
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "tiles"), "-m", str(archive), "-f", "0",
                 "--tile-scale", "2"]) == 0  # the PyTorch archive takes them
    # a damaged archive is caught by its checksums, not loaded
    data = bytearray(archive.read_bytes())
    damaged = tmp_path / "damaged.zip"
    import zipfile
    with zipfile.ZipFile(archive) as zin, zipfile.ZipFile(damaged, "w") as zout:
        for item in zin.infolist():
            payload = zin.read(item)
            if item.filename == "fold_0.pt":
                payload = payload[:-10] + b"0123456789"
            zout.writestr(item, payload)
    assert data  # the original is untouched
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "x"), "-m", str(damaged)]) == 2
    assert "checksum" in capsys.readouterr().err


def test_find_best_decides_post_processing_that_predict_applies(env: Path, tmp_path: Path) -> None:
    if not (_fold_dir(env, 0) / "checkpoint_final.pt").is_file():
        assert main(["train", "-d", "8", "-f", "0", *TINY]) == 0
    assert main(["find_best", "-d", "8"]) == 0
    model = env / "res" / "Task08_HepaticVessel" / "arunet"
    decision = read_json(model / "postprocessing.json")
    assert decision["cases"] >= 1 and set(decision["evidence"]) == {"all foreground", "vessel", "tumour"}
    for ev in decision["evidence"].values():
        chosen = (ev["label"] in decision["keep_largest_component"]
                  or str(ev["label"]) in decision["min_component_ml"]
                  or str(ev["label"]) in decision["min_component_confidence"]
                  or str(ev["label"]) in decision["inside_parent"]
                  or (ev["label"] == 0 and decision["keep_largest_foreground"]))
        assert ev["enabled"] == chosen and ev["dice_after"] >= ev["dice_before"]
    images = env / "raw" / "Task08_HepaticVessel" / "imagesTs"
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "p"), "-d", "8", "-f", "0"]) == 0
    report = read_json(tmp_path / "p" / "report.json")["cases"][0]
    assert report["postprocessing"] == {k: decision[k] for k in ("keep_largest_component", "min_component_ml",
                                                                 "keep_largest_foreground", "min_component_confidence",
                                                                 "inside_parent")}


def test_find_best_scores_ensembles_of_networks_and_predict_runs_them(env: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from autoseg.layout import ResultsDataset

    for network in ("arunet", "plain_unet"):
        for f in range(5):
            fold = env / "res" / "Task08_HepaticVessel" / network / f"fold_{f}"
            if not (fold / "validation" / "summary.json").is_file():
                assert main(["train", "-d", "8", "-f", str(f), "--network", network, *TINY, "--force"]) == 0
    assert main(["find_best", "-d", "8"]) == 0
    dataset = env / "res" / "Task08_HepaticVessel"
    ens = ResultsDataset(dataset).ensemble(["arunet", "plain_unet"]).root
    assert read_json(ens / "ensemble.json")["members"] == ["arunet", "plain_unet"]
    cv = read_json(dataset / "cv_summary.json")["networks"]
    assert cv[ens.name]["folds"] == [0, 1, 2, 3, 4] and cv[ens.name]["recipe"] == "ensemble"
    best = read_json(dataset / "best.json")
    assert best["mean_foreground_dice"] == max(c["mean_foreground_dice"] for c in best["candidates"].values())
    # the ensemble's CV score of a case is the Dice of the averaged member probabilities
    summary = read_json(ens / "fold_0" / "validation" / "summary.json")
    case, scores = next(iter(summary["cases"].items()))
    probs = [np.load(dataset / n / "fold_0" / "validation" / f"{case}.pred.npz")["probabilities"].astype(np.float32)
             for n in ("arunet", "plain_unet")]
    pred = ((probs[0] + probs[1]) / 2).argmax(0)
    ref = load_labels(env / "pre" / "Task08_HepaticVessel" / "data", case)
    for k, name in ((1, "vessel"), (2, "tumour")):
        denom = (pred == k).sum() + (ref == k).sum()
        expected = None if denom == 0 else 2 * ((pred == k) & (ref == k)).sum() / denom
        assert scores[name] == pytest.approx(expected) if expected is not None else scores[name] is None
    # predict with the ensemble folder: both networks' folds, labels on the input grid
    images = env / "raw" / "Task08_HepaticVessel" / "imagesTs"
    out = tmp_path / "ens"
    assert main(["predict", "-i", str(images), "-o", str(out), "-m", str(ens), "-f", "0", "1"]) == 0
    case_image = sorted(images.iterdir())[0]
    pred_img, geom = read_label(out / case_image.name)
    assert geom.same_grid(read_label(case_image)[1]) and set(np.unique(pred_img)) <= {0, 1, 2}
    assert read_json(out / "report.json")["cases"][0]["folds"] == [0, 1]
    capsys.readouterr()
    assert main(["export", "-m", str(ens), "-o", str(tmp_path / "e.zip")]) == 2
    assert "ensemble" in capsys.readouterr().err and not (tmp_path / "e.zip").exists()


def test_train_precision_override_is_recorded_and_checked(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autoseg.precision import resolve_precision

    planned = read_json(env / "pre" / "Task08_HepaticVessel" / "plans.json")["recipe"]["precision"]
    assert planned == resolve_precision("auto", "cpu")  # the planner wrote a concrete precision
    assert main(["train", "-d", "8", "-f", "0", "--network", "resenc_unet", "--precision", "fp32",
                 *TINY, "--force"]) == 0
    folder = env / "res" / "Task08_HepaticVessel" / "resenc_unet"
    assert read_json(folder / "plans.json")["recipe"]["precision"] == "fp32"
    log_lines = (folder / "fold_0" / "log.jsonl").read_text().splitlines()
    assert np.isfinite([r["train_loss"] for r in map(json.loads, log_lines)]).all()
    capsys.readouterr()
    assert main(["train", "-d", "8", "-f", "1", "--network", "resenc_unet", "--precision", "fp16", *TINY]) == 2
    assert "fp16 autocast is for CUDA" in capsys.readouterr().err

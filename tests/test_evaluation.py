"""Evaluation metrics against MedPy, the empty-mask conventions (a class absent from reference and
prediction is left out, in evaluate and summarize alike), medians and seeded bootstrap intervals,
lesion detection, `autoseg evaluate` end to end, and `summarize` / `find_best` on a fake results
tree. The surface metrics (NSD, HD95) are checked in tests/test_surface.py."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from autoseg.cli import main, model_folder
from autoseg.errors import EvaluationError
from autoseg.artefacts import FoldSummary
from autoseg.evaluation import class_summary, lesion_scores, score_masks
from autoseg.metrics import bootstrap_interval, case_dice
from autoseg.io import Geometry, write_image
from autoseg.plans import RECIPES, NetworkPlan
from autoseg.settings import Settings
from tests.test_plans import make_plans

SPACING_ZYX = (2.5, 0.8, 1.1)


def _blob(shape: tuple[int, ...], seed: int, threshold: float = 0.6) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma=(1.0, 2.5, 2.5))
    return smooth > threshold * smooth.std()


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _shape_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = [(_blob((14, 40, 36), seed), _blob((14, 40, 36), seed + 100)) for seed in range(3)]
    shape = (24, 48, 48)  # hand-made: an ellipsoid and a shifted, larger one, deep inside a larger image
    pairs.append((_ball(shape, (12, 22, 24), (5, 10, 9)), _ball(shape, (13, 25, 23), (6, 11, 10))))
    cube = np.zeros(shape, bool)
    cube[4:10, 10:30, 12:20] = True
    pairs.append((cube, np.roll(cube, (2, -3), axis=(0, 2)) | _ball(shape, (18, 35, 35), (2, 4, 4))))
    return pairs


@pytest.mark.parametrize("index", range(5))
def test_overlap_agrees_with_medpy(index: int) -> None:
    pred, ref = _shape_pairs()[index]
    assert pred.any() and ref.any() and not np.array_equal(pred, ref)
    scores = score_masks(pred, ref, SPACING_ZYX)
    assert scores["dice"] == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-6)
    assert scores["iou"] == pytest.approx(medpy_binary.jc(pred, ref), abs=1e-6)
    assert scores["precision"] == pytest.approx(medpy_binary.precision(pred, ref), abs=1e-6)
    assert scores["recall"] == pytest.approx(medpy_binary.recall(pred, ref), abs=1e-6)
    assert scores["accuracy"] == pytest.approx(np.mean(pred == ref))
    assert scores["hd95_mm"] > 0 and 0 < scores["nsd"] < 1


def test_empty_mask_conventions() -> None:
    empty = np.zeros((6, 8, 8), bool)
    blob = empty.copy()
    blob[2:4, 2:6, 3:6] = True
    scores = ("dice", "iou", "precision", "recall", "accuracy", "nsd", "hd95_mm", "rel_volume_diff",
              "lesion_recall", "lesion_precision")
    absent = score_masks(empty, empty, SPACING_ZYX)  # not scored: every score undefined
    assert all(math.isnan(absent[k]) for k in scores)
    assert absent["volume_ref_ml"] == absent["volume_pred_ml"] == absent["abs_volume_diff_ml"] == 0.0
    assert absent["ref_lesions"] == absent["pred_lesions"] == 0

    false_alarm = score_masks(blob, empty, SPACING_ZYX)  # reference empty, prediction not
    assert false_alarm["dice"] == 0.0 and false_alarm["precision"] == 0.0 and false_alarm["recall"] == 0.0
    assert false_alarm["nsd"] == 0.0 and false_alarm["lesion_recall"] == 0.0
    assert math.isnan(false_alarm["hd95_mm"]) and math.isnan(false_alarm["rel_volume_diff"])
    voxel_ml = np.prod(SPACING_ZYX) / 1000
    assert false_alarm["abs_volume_diff_ml"] == pytest.approx(blob.sum() * voxel_ml)

    miss = score_masks(empty, blob, SPACING_ZYX)  # prediction empty, reference not
    assert miss["dice"] == 0.0 and miss["precision"] == 0.0 and miss["recall"] == 0.0 and miss["nsd"] == 0.0
    assert math.isnan(miss["hd95_mm"]) and miss["rel_volume_diff"] == -1.0
    assert miss["lesion_recall"] == 0.0 and miss["lesion_precision"] == 0.0

    hit = score_masks(blob, blob, SPACING_ZYX)
    summary = class_summary([hit, false_alarm, miss, absent]).mean
    assert summary["n_cases"] == 3 and summary["n_absent"] == 1  # the absent case is left out
    assert summary["undefined"] == {"hd95_mm": 2, "rel_volume_diff": 1}
    assert summary["hd95_mm"] == 0.0  # mean of the defined ones: the hit only
    assert summary["dice"] == pytest.approx(1 / 3)
    only_absent = class_summary([absent, absent])
    assert only_absent.mean["n_cases"] == 0 and math.isnan(only_absent.mean["dice"])
    assert math.isnan(only_absent.median["dice"]) and only_absent.ci95["dice"] is None


def test_medians_and_bootstrap_intervals_are_seeded() -> None:
    values = [0.91, 0.35, None, 0.78, 0.66, float("nan"), 0.88, 0.12, 0.95, 0.7]
    low, high = bootstrap_interval(values, seed=3) or (0.0, 0.0)
    defined = [v for v in values if v is not None and not math.isnan(v)]
    assert low < np.mean(defined) < high and 0.12 <= low and high <= 0.95
    assert bootstrap_interval(values, seed=3) == (low, high)  # the same seed, the same interval
    assert bootstrap_interval(values, seed=4) != (low, high)
    assert bootstrap_interval([0.5, None]) == (0.5, 0.5) and bootstrap_interval([None]) is None
    rows = [score_masks(*pair, SPACING_ZYX) for pair in _shape_pairs()]
    first, again = class_summary(rows, seed=7), class_summary(rows, seed=7)
    assert first == again
    assert first.median["dice"] == pytest.approx(np.median([r["dice"] for r in rows]))
    lo, hi = first.ci95["dice"] or (0.0, 0.0)
    assert lo <= first.mean["dice"] <= hi and lo < hi


def test_lesion_detection_on_hand_made_components() -> None:
    ref = np.zeros((10, 20, 20), bool)
    ref[1:3, 1:4, 1:4] = True            # lesion A, found
    ref[5, 5, 5] = ref[6, 6, 6] = True   # lesion B: two voxels touching at a corner (26-connected), found
    ref[2:4, 14:17, 14:17] = True        # lesion C, missed
    pred = np.zeros_like(ref)
    pred[2, 2, 2] = True                 # one voxel inside A
    pred[6:8, 6:8, 6:8] = True           # overlaps B at (6, 6, 6)
    pred[8:10, 15:18, 1:3] = True        # a false positive
    scores = lesion_scores(pred, ref)
    assert scores["ref_lesions"] == 3 and scores["pred_lesions"] == 3
    assert scores["detected_lesions"] == 2 and scores["matched_pred_lesions"] == 2
    assert scores["lesion_recall"] == pytest.approx(2 / 3)
    assert scores["lesion_precision"] == pytest.approx(2 / 3)
    # one predicted component spanning two reference lesions detects both and counts once
    bridge = np.zeros_like(ref)
    bridge[1:7, 2, 2] = True
    bridge[6, 2:7, 2:7] = True
    scores = lesion_scores(bridge, ref)
    assert scores["detected_lesions"] == 2 and scores["pred_lesions"] == 1 and scores["lesion_precision"] == 1.0


# --- autoseg evaluate ------------------------------------------------------------------------------

GEOMETRY = Geometry(size=(16, 14, 8), spacing=(1.1, 0.8, 2.5), origin=(-10.0, 5.0, 30.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _label_map(seed: int) -> np.ndarray:
    labels = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    labels[_blob(GEOMETRY.shape_zyx, seed, 0.8)] = 1
    labels[_ball(GEOMETRY.shape_zyx, (4, 7, 8), (1.5, 3, 3 + seed % 3))] = 2
    return labels


def _write_case_folders(root: Path, n: int = 3) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    pred_dir, ref_dir = root / "pred", root / "ref"
    arrays = {}
    for i in range(n):
        case = f"case_{i:03d}"
        ref, pred = _label_map(i), _label_map(i + 50)
        if i == 1:
            ref[ref == 2] = 0  # no tumour in this reference: its predicted tumour is a false alarm
        suffix = ".nrrd" if i == 2 else ".nii.gz"  # matched by case name whatever the format
        write_image(ref_dir / f"{case}{suffix}", ref, GEOMETRY)
        write_image(pred_dir / f"{case}.nii.gz", pred, GEOMETRY)
        (pred_dir / f"{case}.report.json").write_text("{}")
        arrays[case] = (pred, ref)
    (pred_dir / "report.json").write_text("{}")
    return pred_dir, ref_dir, arrays


def test_evaluate_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, ref_dir, arrays = _write_case_folders(tmp_path)
    assert main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "--tolerance-mm", "1.5"]) == 0
    printed = capsys.readouterr().out
    assert "label_1" in printed and "label_2" in printed and "mean foreground Dice" in printed
    assert "median" in printed and "95% CI" in printed
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    assert metrics["tolerance_mm"] == 1.5 and set(metrics["cases"]) == set(arrays)
    assert metrics["labels"] == {"1": "label_1", "2": "label_2"} and "absent" in metrics["conventions"]
    for case, (pred, ref) in arrays.items():
        scored = metrics["cases"][case]["classes"]
        assert set(scored) == {"label_1", "label_2"}  # never the background
        for lab in (1, 2):
            if (ref == lab).any():
                assert scored[f"label_{lab}"]["dice"] == pytest.approx(medpy_binary.dc(pred == lab, ref == lab))
    dice_1 = [metrics["cases"][c]["classes"]["label_1"]["dice"] for c in arrays]
    assert metrics["median"]["label_1"]["dice"] == pytest.approx(np.median(dice_1))
    low, high = metrics["ci95"]["label_1"]["dice"]
    assert low <= metrics["mean"]["label_1"]["dice"] <= high and metrics["bootstrap"]["seed"] == 0
    for seed in (0, 11):  # the same seed gives the same intervals; the seed is recorded
        out = tmp_path / str(seed)
        assert main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "--tolerance-mm", "1.5", "-o", str(out),
                     "--seed", str(seed)]) == 0
        again = json.loads((out / "metrics.json").read_text())
        assert again["bootstrap"]["seed"] == seed and again["mean"] == metrics["mean"]
        assert seed != 0 or again["ci95"] == metrics["ci95"]
    false_alarm = metrics["cases"]["case_001"]["classes"]["label_2"]
    assert false_alarm["dice"] == 0.0 and false_alarm["hd95_mm"] is None
    tumour = metrics["mean"]["label_2"]
    assert tumour["undefined"]["hd95_mm"] == 1
    assert tumour["dice"] == pytest.approx(np.mean([metrics["cases"][c]["classes"]["label_2"]["dice"]
                                                    for c in arrays]))
    rows = list(csv.DictReader((pred_dir / "metrics.csv").open()))
    assert len(rows) == 3 * 2 and {r["name"] for r in rows} == {"label_1", "label_2"}
    row = next(r for r in rows if r["case"] == "case_001" and r["label"] == "2")
    assert row["hd95_mm"] == "" and float(row["dice"]) == 0.0


def test_evaluate_takes_labels_and_names_from_dataset_json(tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = _write_case_folders(tmp_path / "Task08_HepaticVessel", n=2)
    meta = {"name": "x", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "vessel", "2": "tumour",
                                                             "3": "cyst"}, "training": [], "test": []}
    (ref_dir / "dataset.json").write_text(json.dumps(meta))  # metadata beside the labels
    out = tmp_path / "eval"
    assert main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == {"1": "vessel", "2": "tumour", "3": "cyst"}
    cyst = metrics["mean"]["cyst"]  # in no reference and no prediction: not scored anywhere
    assert cyst["dice"] is None and cyst["hd95_mm"] is None and cyst["n_cases"] == 0 and cyst["n_absent"] == 2
    assert metrics["ci95"]["cyst"]["dice"] is None
    assert all(metrics["cases"][c]["absent"] == ["cyst"] for c in metrics["cases"])
    assert metrics["cases"]["case_000"]["classes"]["cyst"]["dice"] is None
    assert metrics["mean_foreground_dice"] == pytest.approx(np.mean([metrics["mean"][k]["dice"]
                                                                     for k in ("vessel", "tumour")]))
    assert main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-o", str(out), "--labels", "2"]) == 0
    assert json.loads((out / "metrics.json").read_text())["labels"] == {"2": "tumour"}


def test_evaluate_unmatched_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, ref_dir, _ = _write_case_folders(tmp_path, n=2)
    write_image(ref_dir / "case_lonely.nii.gz", _label_map(9), GEOMETRY)
    assert main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir)]) == 2
    err = capsys.readouterr().err
    assert "case_lonely" in err and "--allow-unmatched" in err
    assert not (pred_dir / "metrics.json").exists()
    assert main(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "--allow-unmatched"]) == 0
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    assert metrics["unmatched"]["missing_prediction"] == ["case_lonely"] and len(metrics["cases"]) == 2


@pytest.mark.parametrize("change", [
    {"spacing": (1.1, 0.8, 3.0)},
    {"origin": (-10.0, 5.0, 31.0)},
    {"size": (16, 14, 9)},
    {"direction": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)},
])
def test_evaluate_refuses_different_grids(tmp_path: Path, capsys: pytest.CaptureFixture, change: dict) -> None:
    import dataclasses

    other = dataclasses.replace(GEOMETRY, **change)
    write_image(tmp_path / "ref" / "c.nii.gz", _label_map(0), GEOMETRY)
    write_image(tmp_path / "pred" / "c.nii.gz", np.zeros(other.shape_zyx, np.uint8), other)
    assert main(["evaluate", "-p", str(tmp_path / "pred"), "-r", str(tmp_path / "ref")]) == 2
    err = capsys.readouterr().err
    assert "different grids" in err and str(tmp_path / "pred" / "c.nii.gz") in err
    assert str(tmp_path / "ref" / "c.nii.gz") in err


def test_evaluate_reorders_a_prediction_saved_with_flipped_axes(tmp_path: Path) -> None:
    labels = _label_map(0)
    flipped = Geometry(GEOMETRY.size, GEOMETRY.spacing,  # the same voxels, rows stored bottom-up
                       (GEOMETRY.origin[0], GEOMETRY.origin[1] + (GEOMETRY.size[1] - 1) * GEOMETRY.spacing[1],
                        GEOMETRY.origin[2]), (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    write_image(tmp_path / "ref" / "c.nii.gz", labels, GEOMETRY)
    write_image(tmp_path / "pred" / "c.nii.gz", labels[:, ::-1].copy(), flipped)
    assert main(["evaluate", "-p", str(tmp_path / "pred"), "-r", str(tmp_path / "ref")]) == 0
    metrics = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    assert all(metrics["mean"][k]["dice"] == 1.0 for k in ("label_1", "label_2"))


# --- summarize, find_best and predict's network ------------------------------------------------------
# The results tree below is fake: summary.json files written by hand in the format fold validation
# writes, so that the cross-validation bookkeeping is tested without training anything.

DATASET = "Task08_HepaticVessel"


def _fake_fold(results: Path, network: str, fold: int, dice: tuple[float, float | None]) -> None:
    folder = results / DATASET / network
    if not (folder / "plans.json").is_file():
        recipe = "adam_poly" if network == "arunet" else "sgd_poly"
        make_plans(network=NetworkPlan(network, {}), recipe=RECIPES[recipe]).save(folder / "plans.json")
    cases = {f"hv_{fold}{i}": {"vessel": dice[0], "tumour": dice[1]} for i in range(2)}
    summary = {"checkpoint": "final", "cases": cases, "mean_dice": {"vessel": dice[0], "tumour": dice[1]},
               "mean_foreground_dice": dice[0] if dice[1] is None else (dice[0] + dice[1]) / 2}
    path = folder / f"fold_{fold}" / "validation" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))


def _settings(root: Path) -> Settings:
    return Settings(raw=root / "raw", preprocessed=root / "pre", results=root / "res")


def _env(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, path in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        monkeypatch.setenv(name, str(root / path))


def test_summarize_and_find_best_on_a_fake_results_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    _env(tmp_path, monkeypatch)
    res = tmp_path / "res"
    for fold in range(5):
        _fake_fold(res, "arunet", fold, (0.5, 0.6 if fold else None))      # tumour null in fold 0
        _fake_fold(res, "resenc_unet", fold, (0.7, 0.7))
    for fold in range(3):
        _fake_fold(res, "plain_unet", fold, (0.9, 0.9))                  # best, but only 3 folds
    assert main(["summarize", "-d", "Task08"]) == 0
    printed = capsys.readouterr().out
    assert "resenc_unet" in printed and "adam_poly" in printed
    cv = json.loads((res / DATASET / "cv_summary.json").read_text())
    arunet = cv["networks"]["arunet"]
    assert arunet["folds"] == [0, 1, 2, 3, 4] and arunet["num_cases"] == 10 and arunet["recipe"] == "adam_poly"
    assert arunet["mean_dice"] == {"vessel": pytest.approx(0.5), "tumour": pytest.approx(0.6)}
    assert arunet["mean_foreground_dice"] == pytest.approx(0.55)
    assert cv["networks"]["plain_unet"]["folds"] == [0, 1, 2]

    assert main(["find_best", "-d", "8"]) == 0
    best = json.loads((res / DATASET / "best.json").read_text())
    assert best["network"] == "resenc_unet" and best["folds"] == [0, 1, 2, 3, 4]
    assert best["mean_foreground_dice"] == pytest.approx(0.7)
    assert set(best["candidates"]) == {"arunet", "resenc_unet", "plain_unet"}
    assert best["candidates"]["plain_unet"]["eligible"] is False


def test_find_best_without_complete_networks_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    _env(tmp_path, monkeypatch)
    for fold in range(3):
        _fake_fold(tmp_path / "res", "arunet", fold, (0.4, 0.4))
        _fake_fold(tmp_path / "res", "resenc_unet", fold, (0.6, 0.4))
    _fake_fold(tmp_path / "res", "plain_unet", 0, (0.9, 0.9))
    with caplog.at_level(logging.WARNING):
        assert main(["find_best", "-d", DATASET]) == 0
    assert "no network has all 5 folds" in caplog.text
    best = json.loads((tmp_path / "res" / DATASET / "best.json").read_text())
    assert best["network"] == "resenc_unet" and best["all_folds_validated"] is False


def test_summarize_without_validated_folds_says_train_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    _env(tmp_path, monkeypatch)
    assert main(["summarize", "-d", "Task08"]) == 2
    assert "train first" in capsys.readouterr().err
    (tmp_path / "res" / DATASET / "arunet" / "fold_0").mkdir(parents=True)  # trained, never validated
    assert main(["find_best", "-d", "Task08"]) == 2
    assert "train first" in capsys.readouterr().err


def test_predict_uses_the_network_of_best_json(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_plans().save(settings.preprocessed / DATASET / "plans.json")  # planned network: arunet
    args = argparse.Namespace(model=None, dataset="Task08", network=None)
    assert model_folder(args, settings) == settings.results / DATASET / "arunet"
    (settings.results / DATASET).mkdir(parents=True)
    (settings.results / DATASET / "best.json").write_text(json.dumps({"network": "resenc_unet"}))
    assert model_folder(args, settings) == settings.results / DATASET / "resenc_unet"
    args.network = "plain_unet"  # --network still overrides
    assert model_folder(args, settings) == settings.results / DATASET / "plain_unet"
    (settings.results / DATASET / "best.json").write_text("{}")
    args.network = None
    with pytest.raises(EvaluationError, match="find_best"):
        model_folder(args, settings)


def test_evaluate_and_summarize_leave_an_absent_class_out_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    # One case whose vessel Dice is 8/9 and whose tumour is in neither reference nor prediction: it
    # used to read 0.944 in `evaluate` (the absent tumour scored 1) and 0.889 in `summarize`.
    ref = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    ref[3, 4, 2:7] = 1  # 5 voxels
    pred = ref.copy()
    pred[3, 4, 6] = 0   # 4 of them: Dice 2*4 / (4 + 5)
    cases = {"hv_solo": (pred, ref)}
    _, _, more = _write_case_folders(tmp_path / "more", n=3)
    cases.update(more)
    for case, (p, r) in cases.items():
        write_image(tmp_path / "pred" / f"{case}.nii.gz", p, GEOMETRY)
        write_image(tmp_path / "ref" / f"{case}.nii.gz", r, GEOMETRY)
    names = {1: "vessel", 2: "tumour"}
    (tmp_path / "ref" / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "vessel",
                                                                          "2": "tumour"}}))
    assert main(["evaluate", "-p", str(tmp_path / "pred"), "-r", str(tmp_path / "ref")]) == 0
    metrics = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    solo = metrics["cases"]["hv_solo"]
    assert solo["classes"]["vessel"]["dice"] == pytest.approx(8 / 9) and solo["classes"]["tumour"]["dice"] is None
    assert solo["absent"] == ["tumour"]

    _env(tmp_path, monkeypatch)  # the same cases as one fold's validation, scored as fold validation does
    model = tmp_path / "res" / DATASET / "arunet"
    make_plans(network=NetworkPlan("arunet", {}), recipe=RECIPES["adam_poly"]).save(model / "plans.json")
    per_case = {case: case_dice(p, r, names) for case, (p, r) in cases.items()}
    FoldSummary.from_cases(per_case, names).save(model / "fold_0" / "validation" / "summary.json")
    assert per_case["hv_solo"]["mean_foreground"] == pytest.approx(8 / 9)
    assert main(["summarize", "-d", "Task08"]) == 0
    assert "median" in capsys.readouterr().out
    cv = json.loads((tmp_path / "res" / DATASET / "cv_summary.json").read_text())["networks"]["arunet"]
    for cls in names.values():
        assert cv["mean_dice"][cls] == pytest.approx(metrics["mean"][cls]["dice"], abs=1e-12)
        assert cv["median_dice"][cls] == pytest.approx(metrics["median"][cls]["dice"], abs=1e-12)
        assert cv["dice_ci95"][cls] == pytest.approx(metrics["ci95"][cls]["dice"], abs=1e-12)  # one seed
        assert cv["dice_cases"][cls] == metrics["mean"][cls]["n_cases"]
    # only the solo case has the tumour in neither (case_001's predicted tumour is a false alarm: 0)
    assert cv["dice_cases"]["tumour"] == len(cases) - 1 and metrics["mean"]["tumour"]["n_absent"] == 1
    assert cv["mean_foreground_dice"] == pytest.approx(metrics["mean_foreground_dice"], abs=1e-12)

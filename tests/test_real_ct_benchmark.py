"""benchmarks/real_ct.py: the liver figures of a prediction against a real CT's reference.

The scoring is checked on small arrays whose answers are known by construction (a cube predicted
shifted by a known number of voxels, false positives placed on named organ labels, a stray
component); the script's plumbing (files skipped when absent, the predicted label map found where
``autoseg predict`` writes it, read on the image grid, the results file) with a stand-in for
``autoseg predict``, so no trained model is needed. One test reads the real references, when the
shared real-data folder is present, and checks that each lands on its image grid with a plausible
liver.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from autoseg.io import Geometry, read_image, write_image
from tests.benchmark_modules import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is absent (the shared real-data folder)")


rc = load_benchmark("real_ct")

SPACING = (2.0, 1.0, 1.5)  # (z, y, x) mm: one voxel is 3 mm3 = 0.003 mL
ML = 0.003


def shifted_cube_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prediction, reference liver and organ map of known answers on a 12^3 grid.

    Reference liver: the cube [2:8]^3 (216 voxels). Prediction: that cube shifted by 2 voxels along
    x (label 1), holding a vessel (2, 8 voxels) and a tumour (3, 4 voxels) inside the overlap, plus a
    stray 2x2x2 liver blob (8 voxels) in a corner. So TP 144, FP 72 + 8 = 80, FN 72. The organ map
    (a TotalSegmentator-like reference) has the liver as 5, a spleen (1) on 24 of the shifted-out
    voxels and a pancreas (7) on the other 48; the blob lies on unlabelled voxels (0).
    """
    shape = (12, 12, 12)
    ref = np.zeros(shape, bool)
    ref[2:8, 2:8, 2:8] = True
    pred = np.zeros(shape, np.int16)
    pred[2:8, 2:8, 4:10] = 1
    pred[4:6, 4:6, 4:6] = 2
    pred[2:3, 2:4, 6:8] = 3
    pred[10:12, 10:12, 0:2] = 1
    organs = np.zeros(shape, np.int16)
    organs[ref] = 5
    organs[2:8, 2:4, 8:10] = 1
    organs[2:8, 4:8, 8:10] = 7
    return pred, ref, organs


def test_score_case_of_a_shifted_cube_gives_the_known_figures() -> None:
    pred, ref, organs = shifted_cube_case()
    s = rc.score_case(pred, ref, SPACING, organs, {1: "spleen", 5: "liver", 7: "pancreas"}, surface=False)
    assert s["dice"] == pytest.approx(2 * 144 / (2 * 144 + 80 + 72), abs=1e-12)  # 36/55: vessel, tumour count
    assert s["ref_liver_ml"] == pytest.approx(216 * ML, abs=1e-12)
    assert s["pred_liver_ml"] == pytest.approx(224 * ML, abs=1e-12)
    assert s["rel_volume_error"] == pytest.approx(8 / 216, abs=1e-12)
    assert s["tp_ml"] == pytest.approx(144 * ML, abs=1e-12)
    assert s["fp_ml"] == pytest.approx(80 * ML, abs=1e-12)
    assert s["fp_share_of_ref"] == pytest.approx(80 / 216, abs=1e-12)
    assert s["fn_ml"] == pytest.approx(72 * ML, abs=1e-12)
    assert s["fn_share_of_ref"] == pytest.approx(1 / 3, abs=1e-12)
    assert s["pred_components"] == 2
    assert s["pred_ml_outside_largest_component"] == pytest.approx(8 * ML, abs=1e-12)
    assert s["vessel_ml"] == pytest.approx(8 * ML, abs=1e-12)
    assert s["tumour_ml"] == pytest.approx(4 * ML, abs=1e-12)
    assert s["ref_liver_at_volume_edge"] == []
    assert "hd95_mm" not in s
    # where the 80 false-positive voxels lie: largest first, label 0 named "unlabelled"
    assert [(r["label"], r["organ"], r["voxels"]) for r in s["fp_by_organ"]] == [
        (7, "pancreas", 48), (1, "spleen", 24), (0, "unlabelled", 8)]
    assert [r["ml"] for r in s["fp_by_organ"]] == pytest.approx([48 * ML, 24 * ML, 8 * ML], abs=1e-12)
    assert s["fp_by_organ_rest_ml"] == 0


def test_missed_liver_by_third_runs_foot_to_head_whichever_way_the_slices_run() -> None:
    """A reference liver on slices 2-10 (three slices a third), missed on slices 2-3 and 9: 2 and 1
    slices of 4 voxels, in the lower third and the upper one when the slice index grows to the head."""
    ref = np.zeros((12, 4, 4), bool)
    ref[2:11, 1:3, 1:3] = True
    pred = ref.astype(np.int16)
    pred[2:4] = 0
    pred[9] = 0
    s = rc.score_case(pred, ref, SPACING, surface=False, head_last=True)
    assert s["fn_ml_by_third"] == pytest.approx({"lower": 8 * ML, "middle": 0.0, "upper": 4 * ML}, abs=1e-12)
    s = rc.score_case(pred, ref, SPACING, surface=False, head_last=False)
    assert s["fn_ml_by_third"] == pytest.approx({"lower": 4 * ML, "middle": 0.0, "upper": 8 * ML}, abs=1e-12)
    assert rc.score_case(pred, ref, SPACING, surface=False)["fn_ml_by_third"] is None  # orientation unknown


def test_fp_by_organ_lists_the_largest_and_sums_the_rest() -> None:
    pred, ref, organs = shifted_cube_case()
    fp = rc.liver_of(pred) & ~ref
    rows, rest = rc.fp_by_organ(fp, organs, {7: "pancreas"}, ML, top=2)
    assert [(r["label"], r["organ"], r["voxels"]) for r in rows] == [(7, "pancreas", 48), (1, "label 1", 24)]
    assert rest == pytest.approx(8 * ML, abs=1e-12)


@pytest.mark.parametrize(("axis", "shift", "hd95"), [(0, 1, 2.0), (2, 2, 3.0)])
def test_hd95_of_a_shifted_cube_is_the_shift_in_mm(axis: int, shift: int, hd95: float) -> None:
    """Shifting a cube along one axis moves its two end faces by the shift, which carry more than
    5 % of the surface: HD95 is the shift in mm (1 voxel of 2 mm along z, 2 voxels of 1.5 mm along x)."""
    ref = np.zeros((10, 10, 10), bool)
    ref[3:6, 3:6, 3:6] = True
    pred = np.roll(ref, shift, axis=axis).astype(np.int16)
    s = rc.score_case(pred, ref, SPACING)
    assert s["hd95_mm"] == pytest.approx(hd95, abs=1e-9)
    assert s["dice"] == pytest.approx((27 - 9 * shift) / 27, abs=1e-12)


def test_empty_masks_and_edges() -> None:
    empty = np.zeros((4, 5, 6), np.int16)
    s = rc.score_case(empty, empty.astype(bool), SPACING)
    assert s["dice"] is None and s["hd95_mm"] is None and s["rel_volume_error"] is None
    assert s["fp_share_of_ref"] is None and s["pred_components"] == 0
    ref = np.zeros((4, 5, 6), bool)
    ref[3, 1:3, 0] = True  # on the last z slice and the first x column
    s = rc.score_case(empty, ref, SPACING)
    assert s["dice"] == 0.0 and s["hd95_mm"] is None and s["rel_volume_error"] == -1.0
    assert s["ref_liver_at_volume_edge"] == ["z last", "x first"]
    with pytest.raises(ValueError, match="differ in shape"):
        rc.score_case(empty, np.zeros((4, 5, 5), bool), SPACING)
    with pytest.raises(ValueError, match="organ map"):
        rc.score_case(empty, ref, SPACING, organ_map=np.zeros((1, 1, 1), np.int16))


def test_label_check_warns_when_label_1_is_not_the_liver() -> None:
    assert rc.label_check({"0": "background", "1": "liver", "2": "vessel", "3": "tumour"}) is None
    assert rc.label_check(None) is None
    warning = rc.label_check({"0": "background", "1": "vessel", "2": "tumour"})  # a Task08 model
    assert warning is not None and "not a liver prediction" in warning


# --- the script ------------------------------------------------------------------------------------

def test_absent_real_folder_scores_nothing_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "real_ct.json"
    assert rc.main(["--model", "synthetic", "--real", str(tmp_path / "none"), "--out", str(out)]) == 0
    assert "is absent" in capsys.readouterr().out and not out.exists()


def test_absent_case_files_are_skipped_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "real").mkdir()
    out = tmp_path / "real_ct.json"
    assert rc.main(["--model", str(tmp_path / "no_model"), "--real", str(tmp_path / "real"), "--out", str(out),
                    "--work", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    for case in rc.CASES:
        assert f"{case.name}: skipped (absent: {tmp_path / 'real' / case.image}" in printed
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_case_is_predicted_read_and_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The TotalSegmentator-like case laid out as in the real folder, on a flipped (LPS from RAS)
    grid; a stand-in for ``autoseg predict`` writes where predict writes a prediction of known
    figures (the liver shifted by one voxel along x, the spleen taken for liver)."""
    real = tmp_path / "real"
    folder = real / "totalsegmentator_example"
    folder.mkdir(parents=True)
    geometry = Geometry(size=(10, 8, 6), spacing=(3.0, 3.0, 3.0), origin=(10.0, -5.0, 7.0),
                        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    ct = np.full(geometry.shape_zyx, -100, np.int16)
    organs = np.zeros(geometry.shape_zyx, np.int16)
    organs[1:4, 2:5, 2:5] = 5  # liver: 27 voxels of 27 mm3
    organs[1:3, 1:3, 7:9] = 1  # spleen: 8 voxels
    write_image(folder / "example_ct.nii.gz", ct, geometry)
    write_image(folder / "example_seg_fast_force_split.nii.gz", organs, geometry)
    (folder / "label_map_total.json").write_text(json.dumps({"1": "spleen", "5": "liver"}))
    calls = []

    def fake_predict(command: list[str], log: Path) -> tuple[int, float]:
        assert command[:4] == [sys.executable, "-m", "autoseg", "predict"]
        assert command[command.index("-m", 2) + 1] == "synthetic" and "--overwrite" in command
        image, out = Path(command[command.index("-i") + 1]), Path(command[command.index("-o") + 1])
        assert read_image(image)[1].same_grid(geometry)
        written = rc.case_outputs(image, out)
        assert written.labels == out / "example_ct.nii.gz"
        pred = np.zeros(geometry.shape_zyx, np.int16)
        pred[1:4, 2:5, 3:6] = 1
        pred[organs == 1] = 1
        write_image(written.labels, pred, geometry)
        written.report.write_text(json.dumps({"label_table": {"0": "background", "1": "liver", "2": "vessel",
                                                              "3": "tumour"}, "seconds": 0.5}))
        log.write_text("predicted\n")
        calls.append(image)
        return 0, 0.25

    monkeypatch.setattr(rc, "run_predict", fake_predict)
    out = tmp_path / "results" / "real_ct.json"
    assert rc.main(["--model", "synthetic", "--real", str(real), "--out", str(out),
                    "--work", str(tmp_path / "work")]) == 0
    assert calls == [folder / "example_ct.nii.gz"]
    run = json.loads(out.read_text())[-1]
    assert run["model"] == "synthetic" and run["cpu"] and "not manual" in run["references"]
    first, *others = run["cases"]
    assert [c["status"] for c in others] == ["skipped", "skipped"]
    assert first["status"] == "scored" and first["predict_wall_s"] == 0.25 and "label_warning" not in first
    s = first["scores"]
    ml = 27 / 1000
    assert s["dice"] == pytest.approx(2 * 18 / (2 * 18 + 17 + 9), abs=1e-12)  # TP 18, FP 9 + 8, FN 9
    assert s["fp_ml"] == pytest.approx(17 * ml, abs=1e-12) and s["fn_ml"] == pytest.approx(9 * ml, abs=1e-12)
    assert [(r["organ"], r["voxels"]) for r in s["fp_by_organ"]] == [("unlabelled", 9), ("spleen", 8)]
    assert s["pred_components"] == 2
    assert not (tmp_path / "work" / "totalsegmentator_ct").exists()  # removed without --keep
    printed = capsys.readouterr().out
    assert "| totalsegmentator_ct | 0.581 |" in printed and "not a manual label" in printed


# --- the real references ---------------------------------------------------------------------------

#: Liver volume (mL) a reference should hold, given what each image covers: TotalSegmentator's example
#: CT holds the liver up to where the field of view cuts its dome (an adult liver is 1-2 L); its DICOM
#: series is a 40 mm slab (20 slices, 2 mm) through the liver, at most ~300 cm2 a slice; dcmqi's is
#: 3 slices 1 mm apart.
PLAUSIBLE_ML = {"totalsegmentator_ct": (800.0, 2500.0), "totalsegmentator_dicom": (100.0, 1200.0),
                "dcmqi_ct3slice": (20.0, 90.0)}


@needs_real
@pytest.mark.parametrize("case", rc.CASES, ids=lambda c: c.name)
def test_real_references_lie_on_their_image_grids(case: object) -> None:
    """Each reference lands on its image's grid (the DICOM one reordered from its y-flip) with a
    liver of plausible volume, on the patient's right (LPS x < 0), over soft-tissue HU."""
    assert isinstance(case, rc.RealCase)
    image, geometry = read_image(REAL / case.image)
    liver = rc.labels_on(REAL / case.reference, geometry, "reference") == case.liver_label
    ml = int(liver.sum()) * rc.voxel_ml(geometry.spacing_zyx)
    low, high = PLAUSIBLE_ML[case.name]
    assert low <= ml <= high, f"{case.name}: liver {ml:.1f} mL"
    z, y, x = np.nonzero(liver)
    matrix = np.array(geometry.direction).reshape(3, 3) * np.array(geometry.spacing)
    centroid = np.array(geometry.origin) + matrix @ np.array([x.mean(), y.mean(), z.mean()])
    assert centroid[0] < 0, f"{case.name}: the liver's centroid {centroid} is not on the patient's right"
    assert 20 <= float(np.median(image[0][liver])) <= 150, f"{case.name}: liver HU not soft tissue"

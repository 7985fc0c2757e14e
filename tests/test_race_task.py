"""benchmarks/race.py --task: the race on any MSD task folder with held-out imagesTs/labelsTs,
seeded draws, and lesion-wise figures per case (benchmarks/race_task.py). nnU-Net is not needed:
the end-to-end run races autoseg alone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoseg.io import read_label, write_image
from autoseg.metrics import dice_per_class
from autoseg.phantom import case_seed, generate_case, write_task
from autoseg.phantom_anatomy import TISSUES
from tests.benchmark_modules import load_benchmark
from tests.synthetic import make_msd_task, tiny_ct, write_case
from tests.workspaces import SMALL_SPACINGS

ROOT = Path(__file__).resolve().parent.parent


rt = load_benchmark("race_task")


def _box(mask: np.ndarray, z: int, y: int, x: int, size: tuple[int, int, int]) -> None:
    mask[z:z + size[0], y:y + size[1], x:x + size[2]] = True


def test_lesions_found_false_positives_and_size_bins() -> None:
    """On a 1 mm grid (1000 voxels a mL): reference lesions of 0.2, 1 and 5 mL; the prediction
    touches the 1 and 5 mL ones and adds a 27-voxel blob elsewhere."""
    ref = np.zeros((40, 60, 60), bool)
    pred = np.zeros_like(ref)
    _box(ref, 1, 1, 1, (5, 5, 8))        # 200 voxels, 0.2 mL: missed
    _box(ref, 10, 10, 10, (10, 10, 10))  # 1 mL: found by one voxel
    _box(ref, 10, 30, 30, (10, 20, 25))  # 5 mL: found
    pred[15, 15, 15] = True
    _box(pred, 12, 32, 32, (4, 4, 4))
    _box(pred, 30, 50, 50, (3, 3, 3))    # a false lesion of 0.027 mL
    labels_ref, labels_pred = ref.astype(np.uint8) * 2, pred.astype(np.uint8) * 2
    out = rt.case_lesions(labels_pred, labels_ref, (1.0, 1.0, 1.0), {2: "tumour"})["tumour"]
    assert (out["ref_lesions"], out["found"], out["pred_lesions"], out["fp_lesions"]) == (3, 2, 3, 1)
    assert out["fp_ml"] == pytest.approx(0.027) and out["ref_ml"] == pytest.approx(6.2)
    assert out["size_bins"] == {"<0.5 mL": [0, 1], "0.5-3 mL": [1, 1], ">3 mL": [1, 1]}


def _row(seed: int, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    classes = {1: "vessel", 2: "tumour"}
    lesions = {c: rt.case_lesions(p, r, (2.0, 1.0, 1.0), classes) for c, (p, r) in cases.items()}
    dice = {c: {classes[k]: None if np.isnan(v) else float(v) for k, v in dice_per_class(p, r, [1, 2]).items()}
            for c, (p, r) in cases.items()}
    means = {n: float(np.mean([d[n] for d in dice.values() if d[n] is not None])) for n in classes.values()}
    return {"contestant": "autoseg" if seed == 1 else f"autoseg[draw{seed}]", "base": "autoseg", "seed": seed,
            "budget": "3steps", "steps": 3, "test_dice": means, "test_cases": dice, "lesions": lesions}


def test_a_tumour_free_case_with_a_false_tumour_is_a_false_positive_in_the_tables() -> None:
    _, ref_a = tiny_ct(0)
    ref_b = np.where(ref_a == 2, 0, ref_a).astype(np.uint8)  # the same case without its tumour
    pred_b = ref_b.copy()
    pred_b[5:8, 5:10, 5:10] = 2  # 75 voxels of 2 mm^3: 0.15 mL of false tumour
    results = {"task": {"path": "/data/Task99_Demo", "classes": {"1": "vessel", "2": "tumour"},
                        "training_cases": ["a", "b"], "test_cases": ["case_a", "case_b"]},
               "runs": {"autoseg@3steps": _row(1, {"case_a.nii.gz": (ref_a, ref_a), "case_b.nii.gz": (pred_b, ref_b)}),
                        "autoseg[draw2]@3steps": _row(2, {"case_a.nii.gz": (ref_a, ref_a),
                                                          "case_b.nii.gz": (ref_b, ref_b)})}}
    text = rt.report(results)
    cases = text.split("## Every test case")[1]
    assert "| case_b | tumour | 0, 0.00 | autoseg@3steps | 0.000 | – | 1 | 0.15 |" in cases
    assert "| case_b | tumour | 0, 0.00 | autoseg[draw2]@3steps | – | – | 0 | 0.00 |" in cases
    draws = text.split("## Each draw")[1].split("## Spread")[0]
    assert "| 3steps | autoseg | 1 | 3 | tumour | 0.500 | 1 of 1 (1.00) | 0.50 | 1 of 1, 0.15 mL |" in draws
    assert "| 3steps | autoseg[draw2] | 2 | 3 | tumour | 1.000 | 1 of 1 (1.00) | 0.00 | 0 of 1, 0.00 mL |" in draws
    spread = text.split("## Spread over seeded draws")[1].split("## Paired")[0]
    assert "| 3steps | autoseg | tumour | 2 (1, 2) | 0.500, 1.000 | 0.750, 0.354 |" in spread


def test_the_plan_line_gives_the_retimed_medians_and_their_ratio_to_nnunet() -> None:
    timing = {"autoseg": {"wall_s": 32.0}, "autoseg_cached": {"wall_s": 9.0}, "nnunet": {"wall_s": 18.0},
              "repeats": 3, "time": "2026-12-07 14:55", "machine": {"cpu": "AMD EPYC"}}
    results = {"task": {"autoseg_plan_args": ""}, "plan_and_preprocess": {"autoseg": {"wall_s": 38.0}},
               "plan_and_preprocess_retimed": timing}
    line = rt.plan_timing(results)
    assert line.startswith("Plan + preprocess: autoseg 38.0 s (the race's first run")
    assert ("Timed again (3 rounds, 2026-12-07 14:55, AMD EPYC, medians): autoseg as a first run (it calibrates "
            "the CPU) 32.0 s, with the calibration cached 9.0 s, nnU-Net 18.0 s; autoseg's time over nnU-Net's "
            "1.78 as a first run, 0.50 calibrated.") in line
    results["task"]["autoseg_plan_args"] = "--cpu-gflops 20"  # nothing calibrates: neither run is called so
    line = rt.plan_timing(results)
    assert "calibrat" not in line.split("Timed again")[1] and "1.78 and 0.50." in line
    assert rt.plan_timing({"task": {}}) == ("Plan + preprocess: ? (the race's first run: autoseg calibrates the CPU "
                                            "in it unless its plan arguments give --cpu-gflops).")


def test_paired_difference_over_cases_and_seeds() -> None:
    a = {1: {"x": {"t": 0.9}, "y": {"t": 0.5}, "z": {"t": None}},
         2: {"x": {"t": 0.8}, "y": {"t": 0.6}, "z": {"t": 0.4}}}
    b = {1: {"x": {"t": 0.7}, "y": {"t": 0.6}, "z": {"t": 0.1}},
         2: {"x": {"t": 0.7}, "y": {"t": 0.4}, "z": {"t": 0.4}},
         3: {"x": {"t": 0.0}, "y": {"t": 0.0}, "z": {"t": 0.0}}}  # seed 3 has no partner: left out
    d = rt.paired_over_draws(a, b, "t")
    diffs = [0.2, -0.1, 0.1, 0.2, 0.0]  # (x, 1), (y, 1), (x, 2), (y, 2), (z, 2); (z, 1) undefined
    assert d["mean"] == pytest.approx(np.mean(diffs)) and d["pairs"] == 5 and d["seeds"] == [1, 2]
    assert (d["wins"], d["losses"], d["cases"]) == (3, 1, 3)
    assert d["low"] < d["mean"] < d["high"]
    assert rt.paired_over_draws(a, b, "t") == d  # seeded
    same = rt.paired_over_draws(a, {s: {c: {"t": (v["t"] - 0.1 if v["t"] is not None else None)} for c, v in cs.items()}
                                     for s, cs in a.items()}, "t")
    assert (same["mean"], same["low"], same["high"]) == pytest.approx((0.1, 0.1, 0.1))


def _tiny_task(root: Path, test_cases: int) -> Path:
    task = make_msd_task(root, n=3)
    for i in range(test_cases):
        image, labels = tiny_ct(10 + i)
        write_case(task / "imagesTs", f"hepaticvessel_{10 + i:03d}.nii.gz", image)
        write_case(task / "labelsTs", f"hepaticvessel_{10 + i:03d}.nii.gz", labels)
    return task


def test_the_task_is_refused_without_paired_held_out_cases(tmp_path: Path) -> None:
    task = make_msd_task(tmp_path / "a", n=3)
    with pytest.raises(SystemExit, match=r"imagesTs: is missing.*Fix: .*imagesTs/ and labelsTs/"):
        rt.load_task(task)
    (task / "imagesTs").mkdir()
    with pytest.raises(SystemExit, match=r"imagesTs: holds no \.nii\.gz images"):
        rt.load_task(task)
    task = _tiny_task(tmp_path / "b", 2)
    (task / "labelsTs" / "hepaticvessel_011.nii.gz").unlink()
    with pytest.raises(SystemExit, match=r"labelsTs: no label map for test case\(s\) hepaticvessel_011.*Fix: add"):
        rt.load_task(task)
    task = _tiny_task(tmp_path / "c", 1)
    loaded = rt.load_task(task)
    assert loaded.classes == {1: "vessel", 2: "tumour"} and loaded.test == ("hepaticvessel_010",)
    phantom_results = tmp_path / "race.json"  # the phantom race's results are never overwritten by a task's
    phantom_results.write_text(json.dumps({"task": "10 training + 6 test phantoms, seed 2026", "runs": {"x": {}}}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "race.py"), "--task", str(task), "--results",
                           str(phantom_results), "--contestants", "autoseg"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "holds the phantom race; give this task its own file" in done.stderr
    assert json.loads(phantom_results.read_text())["runs"] == {"x": {}}


def test_race_on_a_tiny_msd_task_with_two_seeds(tmp_path: Path) -> None:
    """3 training and 2 test phantoms, the second test case without tumour, classes renamed in
    dataset.json; autoseg alone, 3 training steps a draw, seeds 1 and 2."""
    task = write_task(tmp_path / "raw", "Task08", num_training=3, num_test=2, seed=5, spacing_range=SMALL_SPACINGS)
    free = "hepaticvessel_004.nii.gz"
    case = generate_case(case_seed(5, 4), "Task08", spacing_range=SMALL_SPACINGS)
    image, labels = case.image.copy(), case.labels.copy()
    image[labels == 2] = np.median(image[case.tissues == TISSUES["liver"]])
    labels[labels == 2] = 0
    write_image(task / "imagesTs" / free, image, case.geometry)
    write_image(task / "labelsTs" / free, labels, case.geometry)
    meta = json.loads((task / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "vein", "2": "mass"}
    (task / "dataset.json").write_text(json.dumps(meta))
    results = tmp_path / "race.json"

    def race(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "race.py"), "--task", str(task),
                               "--work", str(tmp_path / "work"), "--autoseg-plan-args",
                               "--cpu-gflops 20 --step-time 0.3 -j 1", *args],
                              capture_output=True, text=True, timeout=600)

    draws = ("--contestants", "autoseg", "--budgets", "3steps", "--seeds", "1", "2", "--results", str(results))
    done = race(*draws)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(results.read_text())["runs"]
    assert sorted(runs) == ["autoseg@3steps", "autoseg[draw2]@3steps"]
    assert [runs[k]["seed"] for k in sorted(runs)] == [1, 2] and all(r["steps"] == 3 for r in runs.values())
    assert all(r["autoseg_commit"] for r in runs.values())  # each row names the code that ran it
    report = results.with_suffix(".md").read_text()
    assert "| 3steps | autoseg | mass | 2 (1, 2) |" in report  # the spread over the two draws
    cases = report.split("## Every test case")[1]
    for key, row in runs.items():
        assert set(row["test_dice"]) == {"vein", "mass"}
        pred, geometry = read_label(Path(row["predictions"]) / free)
        mass_ml = np.count_nonzero(pred == 2) * np.prod(geometry.spacing_zyx) / 1000
        figures = row["lesions"][free]["mass"]
        assert figures["ref_lesions"] == 0 and figures["pred_ml"] == pytest.approx(mass_ml, abs=1e-3)
        assert figures["fp_ml"] == pytest.approx(mass_ml, abs=1e-3)  # all of it is false
        dice = "0.000" if mass_ml else "–"  # a false tumour scores 0; none at all is not scored
        line = f"| hepaticvessel_004 | mass | 0, 0.00 | {key} | {dice} | – | {figures['fp_lesions']} | {mass_ml:.2f} |"
        assert line in cases
    assert "false-positive lesions per case" in report and "found <0.5 mL" in report
    # --postprocess: each trained draw decides its post-processing from its own held-out case and
    # predicts the test cases with it, as rows autoseg[pp] and autoseg[pp][draw2]; nothing trains again
    done = race(*draws, "--postprocess")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = json.loads(results.read_text())["runs"]
    assert sorted(after) == ["autoseg@3steps", "autoseg[draw2]@3steps", "autoseg[pp]@3steps",
                             "autoseg[pp][draw2]@3steps"]
    assert {k: after[k] for k in runs} == runs  # the raw rows as they were
    for raw, pp in (("autoseg", "autoseg[pp]"), ("autoseg[draw2]", "autoseg[pp][draw2]")):
        row = after[f"{pp}@3steps"]
        assert row["seed"] == after[f"{raw}@3steps"]["seed"] and row["base"] == "autoseg[pp]"
        model = next((tmp_path / "work" / "autoseg_results" / f"{raw}_3steps").glob("*/*/postprocessing.json"))
        decision = json.loads(model.read_text())
        assert row["postprocessing"]["min_component_ml"] == decision["min_component_ml"]
        assert set(row["test_dice"]) == {"vein", "mass"} and row["predictions"] != after[f"{raw}@3steps"]["predictions"]
    assert "| 3steps | autoseg[pp] | mass | 2 (1, 2) |" in results.with_suffix(".md").read_text()
    refused = race("--contestants", "autoseg", "--budgets", "3steps", "--seeds", "3", "--postprocess",
                   "--results", str(results))
    assert refused.returncode != 0 and "no trained row autoseg[draw3]@3steps" in refused.stderr
    # --also: a variant raced into its own results file joins the report, paired with these rows
    variant = json.loads(results.read_text())
    renamed = {}
    for key, row in variant["runs"].items():
        if "[pp]" not in key:
            renamed[key.replace("autoseg", "autoseg[v]", 1)] = dict(
                row, base="autoseg[v]", contestant=row["contestant"].replace("autoseg", "autoseg[v]", 1))
    variant["runs"] = renamed
    other = tmp_path / "race_variant.json"
    other.write_text(json.dumps(variant))
    report = race("--report", "--results", str(results), "--also", str(other))
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| 3steps | autoseg minus autoseg[v] | mass | +0.000 [+0.000, +0.000] |" in report.stdout
    clash = race("--report", "--results", str(results), "--also", str(results))
    assert clash.returncode != 0 and "are in two files" in clash.stderr
    # --retime-plans: plan + preprocess timed again in a scratch folder (autoseg alone: no nnU-Net
    # contestant named), beside the rows, which stay as they were; nothing trains
    before = json.loads(results.read_text())
    race_plan = next((tmp_path / "work" / "autoseg_pre").glob("*/plans.json"))
    plan_bytes = race_plan.read_bytes()
    done = race("--contestants", "autoseg", "--retime-plans", "1", "--results", str(results))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = json.loads(results.read_text())
    assert after["runs"] == before["runs"] and after["plan_and_preprocess"] == before["plan_and_preprocess"]
    again = after["plan_and_preprocess_retimed"]
    assert {"autoseg", "autoseg_cached"} <= set(again) and "nnunet" not in again and again["repeats"] == 1
    assert all(again[k]["wall_s"] > 0 for k in ("autoseg", "autoseg_cached"))
    assert not (tmp_path / "work" / "retime").exists() and "Timed again (1 round, " in done.stdout
    assert race_plan.read_bytes() == plan_bytes  # the race's own plan is not touched
    assert "autoseg (CPU speed given, first run)" in results.with_suffix(".md").read_text()  # the report, rewritten
    other_plan = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "race.py"), "--task", str(task),
                                 "--work", str(tmp_path / "work"), "--contestants", "autoseg", "--retime-plans", "1",
                                 "--results", str(results)], capture_output=True, text=True, timeout=120)
    assert other_plan.returncode != 0 and "give the retiming its own file" in other_plan.stderr
    assert json.loads(results.read_text()) == after
    # a file that holds only a retiming: the race into it plans (it has no plan of its own) and keeps the retiming
    fresh = tmp_path / "race_retimed.json"
    assert race("--contestants", "autoseg", "--retime-plans", "1", "--results", str(fresh)).returncode == 0
    retimed = json.loads(fresh.read_text())["plan_and_preprocess_retimed"]
    done = race("--contestants", "autoseg", "--budgets", "3steps", "--seeds", "1", "--results", str(fresh))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    raced = json.loads(fresh.read_text())
    assert "autoseg" in raced["plan_and_preprocess"] and raced["plan_and_preprocess_retimed"] == retimed
    assert list(raced["runs"]) == ["autoseg@3steps"]

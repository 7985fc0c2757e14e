"""benchmarks/growth.py's own parts: the size-N tasks cut from one pool, the disk count and the picture
(the race it runs per size is tested in test_race_task.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoseg.phantom import write_task

from .benchmark_modules import load_benchmark
from .workspaces import SMALL_SPACINGS


@pytest.fixture(scope="module")
def growth():
    return load_benchmark("growth")


def test_a_size_n_task_holds_the_pools_first_n_cases_and_all_its_test_cases(tmp_path: Path, growth) -> None:
    pool = write_task(tmp_path / "pool", "Task08", num_training=3, num_test=1, seed=4, spacing_range=SMALL_SPACINGS)
    tests = write_task(tmp_path / "tests", "Task08", num_training=1, num_test=1, seed=5, spacing_range=SMALL_SPACINGS)
    apart = growth.subset_task(pool, tmp_path / "apart" / pool.name, 2, tests)
    assert sorted(p.name for p in (apart / "imagesTs").iterdir()) == ["test_hepaticvessel_001.nii.gz"]
    assert sorted(p.name for p in (apart / "labelsTs").iterdir()) == ["test_hepaticvessel_001.nii.gz"]
    assert json.loads((apart / "dataset.json").read_text())["test"] == ["./imagesTs/test_hepaticvessel_001.nii.gz"]
    task = growth.subset_task(pool, tmp_path / "n2" / pool.name, 2)
    meta = json.loads((task / "dataset.json").read_text())
    pool_meta = json.loads((pool / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["training"] == pool_meta["training"][:2]
    first = pool / meta["training"][0]["image"]
    assert (task / meta["training"][0]["image"]).stat().st_ino == first.stat().st_ino  # a link, not a copy
    names = [sorted(p.name for p in (folder / "imagesTs").iterdir()) for folder in (task, pool)]
    assert names[0] == names[1]
    assert len(list((task / "imagesTr").iterdir())) == 2
    stamp = (task / "dataset.json").stat().st_mtime_ns
    assert growth.subset_task(pool, task, 2) == task and (task / "dataset.json").stat().st_mtime_ns == stamp
    # a file and its hard link are counted once
    both = tmp_path / "both"
    both.mkdir()
    (both / "a").write_bytes(b"x" * 1000)
    os.link(both / "a", both / "b")
    assert growth.folder_bytes(both) == 1000 and growth.folder_bytes(tmp_path / "missing") == 0
    with pytest.raises(SystemExit, match="has 3 training cases, not 5"):
        growth.subset_task(pool, tmp_path / "n5", 5)


def test_the_picture_is_drawn_from_the_rows(tmp_path: Path, growth) -> None:
    tool = {"plan_and_preprocess_s": 10.0, "plan_and_preprocess_gib": 1.0, "train_s": 60.0, "train_gib": 2.0,
            "predict_s": 80.0, "predict_gib": 1.5, "preprocessed_bytes": 1e8, "steps": 50, "steps_s": 25.0}
    rows = [{"cases": n, "autoseg": dict(tool), "nnunet": dict(tool)} for n in (10, 40)]
    growth.plot(rows, tmp_path / "growth.png")
    assert (tmp_path / "growth.png").stat().st_size > 10_000


def test_a_size_is_raced_again_unless_its_rows_of_this_budget_and_cases_are_there(
        tmp_path: Path, growth, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import race_task as rt

    task = write_task(tmp_path / "t", "Task08", num_training=2, num_test=1, seed=6, spacing_range=SMALL_SPACINGS)
    calls: list[list[str]] = []

    def row(steps: int) -> dict:
        return {"train_wall_s": float(steps), "train_peak_rss_gib": 1.0, "steps": steps, "median_step_s": 0.5,
                "predict_wall_s": 2.0, "predict_peak_rss_gib": 1.0}

    def fake_race(cmd: list[str], check: bool) -> None:
        calls.append(cmd)
        steps = int(cmd[cmd.index("--budgets") + 1].removesuffix("steps"))
        runs = {f"{c}@{s}steps": row(s) for c in ("autoseg", "nnunet_small") for s in (steps, 999)}
        (tmp_path / "race_n2.json").write_text(json.dumps({
            "task": rt.load_task(task).describe(""), "runs": runs,
            "plan_and_preprocess": {t: {"wall_s": 1.0, "peak_rss_gib": 1.0} for t in ("autoseg", "nnunet")}}))

    monkeypatch.setattr(growth.subprocess, "run", fake_race)
    args = argparse.Namespace(steps=50, redo=False)
    first = growth.race_size(task, 2, args, tmp_path)
    assert len(calls) == 1 and first["autoseg"]["steps"] == 50 and first["nnunet"]["train_s"] == 50.0
    assert first["nnunet"]["steps_s"] == 25.0 and first["autoseg"]["fold_validation_s"] is None
    summary = tmp_path / "race_n2" / "autoseg_results" / "autoseg_50steps" / "Task08_x" / "arunet" / "fold_0"
    summary = summary / "validation"
    summary.mkdir(parents=True)
    (summary / "summary.json").write_text(json.dumps({"seconds": 12.5}))
    again = growth.race_size(task, 2, args, tmp_path)
    assert again["autoseg"]["steps"] == 50 and len(calls) == 1  # reused
    assert again["autoseg"]["fold_validation_s"] == 12.5  # the end-of-fold validation, apart from the steps
    growth.race_size(task, 2, argparse.Namespace(steps=60, redo=False), tmp_path)
    assert len(calls) == 2  # another budget: raced again
    stored = json.loads((tmp_path / "race_n2.json").read_text())
    stored["task"]["test_cases"] = ["another"]
    (tmp_path / "race_n2.json").write_text(json.dumps(stored))
    growth.race_size(task, 2, argparse.Namespace(steps=60, redo=False), tmp_path)
    assert len(calls) == 3  # other cases: raced again

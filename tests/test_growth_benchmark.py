"""benchmarks/growth.py's own parts: the size-N tasks cut from one pool, the disk count and the picture
(the race it runs per size is tested in test_race_task.py)."""
from __future__ import annotations

import json
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
    # hard links are counted once: the pool and a task cut from it hold the pool's bytes
    assert growth.folder_bytes(tmp_path) == growth.folder_bytes(pool) + (task / "dataset.json").stat().st_size
    with pytest.raises(SystemExit, match="has 3 training cases, not 5"):
        growth.subset_task(pool, tmp_path / "n5", 5)


def test_the_picture_is_drawn_from_the_rows(tmp_path: Path, growth) -> None:
    tool = {"plan_and_preprocess_s": 10.0, "plan_and_preprocess_gib": 1.0, "train_s": 60.0, "train_gib": 2.0,
            "predict_s": 80.0, "predict_gib": 1.5, "preprocessed_bytes": 1e8, "steps": 50}
    rows = [{"cases": n, "autoseg": dict(tool), "nnunet": dict(tool)} for n in (10, 40)]
    growth.plot(rows, tmp_path / "growth.png")
    assert (tmp_path / "growth.png").stat().st_size > 10_000

"""Regenerate the golden-output fixtures of ``tests/golden/test_golden.py``.

Rerun this only when a deliberate change alters predictions (the network code, preprocessing,
resampling, the export format): the stored prediction is the reference that every other change must
reproduce, so regenerating it to make a failing golden test pass hides the regression it caught.
Commit the new files together with the change that explains them.

It trains a tiny ARUNet for real (3 stages, 8 base features; a few minutes of one CPU core) on
phantoms made by :mod:`autoseg.phantom`, exports it with ``autoseg export`` and predicts the stored
input with ``autoseg predict``, all through the CLI in a temporary folder. It refuses to replace the
stored files unless given ``--overwrite``.

    python tests/golden/make_golden.py [--overwrite] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model.zip"
INPUT = HERE / "input" / "golden_ct.nii.gz"
EXPECTED = HERE / "expected" / "golden_ct.nii.gz"
RECORD = HERE / "golden.json"
OUTPUTS = (MODEL, INPUT, EXPECTED, RECORD)

PHANTOMS = {"task": "Task08", "num_training": 5, "num_test": 1, "seed": 3,
            "spacing_range": ((4.0, 3.5, 3.5), (5.0, 4.0, 4.0))}
PLAN = ["--cpu-gflops", "20", "--step-time", "0.3", "--features", "8", "-j", "1"]
STAGES = 3  # a 3-stage network keeps the archive at a few hundred KB

log = logging.getLogger("make_golden")


def autoseg(args: list[str], env: dict[str, str]) -> None:
    """Run one ``autoseg`` command as a user would; stop on failure."""
    log.info("autoseg %s", " ".join(args))
    subprocess.run([sys.executable, "-m", "autoseg", *args], env=env, check=True)


def shrink_network(plans_path: Path, stages: int) -> None:
    """Hand-edit plans.json (as a user may) to keep the first ``stages`` stages of the network."""
    plans = json.loads(plans_path.read_text())
    kwargs = plans["network"]["kwargs"]
    kwargs["n_stages"] = stages
    for key in ("features_per_stage", "strides", "kernel_sizes", "n_blocks_per_stage"):
        kwargs[key] = kwargs[key][:stages]
    kwargs["n_blocks_per_stage_decoder"] = kwargs["n_blocks_per_stage_decoder"][:stages - 1]
    plans_path.write_text(json.dumps(plans, indent=2) + "\n")


def build(work: Path, steps: int) -> dict[str, Path | str]:
    """Train, export and predict in ``work``; returns the files to store and the commands run."""
    from autoseg.phantom import write_task

    env = {**os.environ, "AUTOSEG_RAW": str(work / "raw"), "AUTOSEG_PREPROCESSED": str(work / "pre"),
           "AUTOSEG_RESULTS": str(work / "res")}
    task = write_task(work / "raw", **PHANTOMS)
    autoseg(["plan_and_preprocess", "-d", "8", "--only", "fingerprint", "--only", "plan", *PLAN], env)
    shrink_network(work / "pre" / task.name / "plans.json", STAGES)
    autoseg(["plan_and_preprocess", "-d", "8", "--only", "preprocess", "-j", "1"], env)
    train = ["train", "-d", "8", "-f", "0", "--steps", str(steps), "--threads", "1", "-j", "0", "--seed", "0"]
    autoseg(train, env)
    autoseg(["export", "-d", "8", "-f", "0", "-o", str(work / "model.zip")], env)
    image = next((task / "imagesTs").glob("*.nii.gz"))
    (work / "input").mkdir()
    shutil.copyfile(image, work / "input" / INPUT.name)
    predict = ["predict", "-i", str(work / "input" / INPUT.name), "-o", str(work / "pred"), "-m",
               str(work / "model.zip"), "--device", "cpu"]
    autoseg(predict, env)
    return {"model": work / "model.zip", "input": work / "input" / INPUT.name,
            "expected": work / "pred" / INPUT.name, "train": " ".join(train),
            "source_image": f"{task.name}/imagesTs/{image.name}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overwrite", action="store_true", help="replace the stored golden files")
    parser.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    existing = [p for p in OUTPUTS if p.exists()]
    if existing and not args.overwrite:
        log.error("refusing to replace the stored golden files %s; regenerate them only for a deliberate "
                  "change of predictions, with --overwrite", [str(p.relative_to(HERE)) for p in existing])
        return 2
    with tempfile.TemporaryDirectory(prefix="autoseg-golden-") as tmp:
        made = build(Path(tmp), args.steps)
        for src, dst in ((made["model"], MODEL), (made["input"], INPUT), (made["expected"], EXPECTED)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    record = {"made_by": "tests/golden/make_golden.py", "phantoms": PHANTOMS, "plan": PLAN,
              "network_stages": STAGES, "train": made["train"], "input_from": made["source_image"],
              "predict": "autoseg predict -i input/golden_ct.nii.gz -o OUT -m model.zip --device cpu"}
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s", ", ".join(str(p.relative_to(HERE)) for p in OUTPUTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())

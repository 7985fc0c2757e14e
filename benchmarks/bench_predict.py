"""Prediction time and peak memory on one clinical-size CT on the CPU: one fold and the five folds.

Run: ``.venv/bin/python benchmarks/bench_predict.py [--slices 100] [--work benchmarks/work/predict]``

Writes a Task08 phantom of 512x512xN voxels at 0.8x0.8x2.5 mm (and four smaller training phantoms at
the same spacing so the planner sees that spacing), plans it for this CPU (``plan_and_preprocess``),
saves five randomly initialised folds of the planned network (time and memory do not depend on the
weights) and times ``autoseg predict`` in a fresh process with one fold and with five, reporting
wall time (process start included), the report's time for the case and peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from autoseg.io import write_image
from autoseg.networks import build_network
from autoseg.phantom import generate_case, write_task
from autoseg.plans import Plans

SPACING = (2.5, 0.8, 0.8)


def prepare(work: Path, slices: int) -> tuple[Path, Path]:
    env = {**os.environ, "AUTOSEG_RAW": str(work / "raw"), "AUTOSEG_PREPROCESSED": str(work / "pre"),
           "AUTOSEG_RESULTS": str(work / "res")}
    write_task(work / "raw", task="Task08", num_training=4, num_test=0, seed=11,
               spacing_range=(SPACING, SPACING))
    subprocess.run([sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", "8", "-j", "1"],
                   env=env, check=True)
    case = generate_case(99, "Task08", shape=(slices, 512, 512), spacing=SPACING)
    image = work / "input" / "case_0000.nii.gz"
    image.parent.mkdir(parents=True, exist_ok=True)
    write_image(image, case.image, case.geometry)
    plans = Plans.load(work / "pre" / "Task08_HepaticVessel" / "plans.json")
    model = work / "res" / "Task08_HepaticVessel" / plans.network.name
    plans.save(model / "plans.json")
    for fold in range(5):
        torch.manual_seed(fold)
        net = build_network(plans.network.name, dict(plans.network.kwargs), plans.num_channels,
                            plans.num_classes)
        (model / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        torch.save({"network": net.state_dict()}, model / f"fold_{fold}" / "checkpoint_final.pt")
    return image, model


def timed_predict(image: Path, model: Path, folds: list[int], out: Path) -> dict:
    """Wall time and peak resident memory of ``autoseg predict`` in a fresh process."""
    argv = ["predict", "-i", str(image), "-o", str(out), "-m", str(model), "-f", *map(str, folds)]
    code = ("import resource, sys\nfrom autoseg.cli import main\nrc = main(%r)\n"
            "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)" % argv)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kib = int(proc.stdout.split("MAXRSS_KIB")[1].split()[0])
    report = json.loads((out / "report.json").read_text())["cases"][0]
    return {"folds": len(folds), "wall_s": round(wall, 1), "predict_case_s": report["seconds"],
            "peak_rss_gib": round(peak_kib / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/predict"))
    args = p.parse_args()
    image, model = prepare(args.work, args.slices)
    plans = Plans.load(model / "plans.json")
    rows = [timed_predict(image, model, [0], args.work / "out1"),
            timed_predict(image, model, [0, 1, 2, 3, 4], args.work / "out5")]
    result = {"machine": f"{platform.node()} {os.cpu_count()} cores", "torch": torch.__version__,
              "case": f"512x512x{args.slices} at 0.8x0.8x2.5 mm", "patch": list(plans.patch_size),
              "target_spacing": list(plans.target_spacing), "network": plans.network.name,
              "features": plans.network.kwargs["features_per_stage"], "runs": rows,
              "time": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "predict.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

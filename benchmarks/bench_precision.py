"""Does bf16 (or another autocast) change what a trained model predicts, and how much faster is it?

Run: ``.venv/bin/python benchmarks/bench_precision.py --model demo_work/results/Task08_HepaticVessel/arunet``

Writes fresh phantoms the model has never seen (``--cases``, seed 777, the demo's spacing range),
predicts each with the model's folds once per precision (``--precisions``, default fp32 and bf16)
through the same code as ``autoseg predict``, and reports per precision: seconds per case and the
Dice of each class against the phantom's labels; and between the precisions: the share of voxels
whose label differs and the per-class Dice of one prediction against the other. Results go to
``benchmarks/results/precision.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.inference.model import open_model
from autoseg.inference.predictor import PredictOptions, find_inputs, predict_case
from autoseg.io import read_label
from autoseg.metrics import dice_per_class
from autoseg.phantom import write_task
from autoseg.cpu_share import configure_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a trained model folder (results/<dataset>/<network>)")
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--folds", type=int, nargs="+", default=None)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/precision"))
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "precision.json")
    args = p.parse_args()
    configure_threads("cpu")
    model = open_model(args.model, tuple(args.folds) if args.folds else None)
    task = write_task(args.work / "raw", task="Task08", num_training=1, num_test=args.cases, seed=777)
    names = {k: v for k, v in model.plans.labels.items() if k != 0}
    preds: dict[str, dict[str, np.ndarray]] = {}
    rows: dict[str, dict] = {}
    for precision in args.precisions:
        out = args.work / precision
        out.mkdir(parents=True, exist_ok=True)
        options = PredictOptions(precision=precision)
        seconds, dice = [], {n: [] for n in names.values()}
        preds[precision] = {}
        for name, image in find_inputs(task / "imagesTs"):
            t0 = time.perf_counter()
            predict_case(model, name, image, out, options)
            seconds.append(time.perf_counter() - t0)
            pred, _ = read_label(out / f"{name}.nii.gz")
            ref, _ = read_label(task / "labelsTs" / image.name)
            preds[precision][name] = pred
            for k, v in dice_per_class(pred, ref, sorted(names)).items():
                dice[names[k]].append(v)
        rows[precision] = {"seconds_per_case": round(float(np.mean(seconds)), 2),
                           "dice": {n: round(float(np.nanmean(v)), 4) for n, v in dice.items()}}
        print(precision, rows[precision], flush=True)
    base = args.precisions[0]
    agreement = {}
    for other in args.precisions[1:]:
        differ, between = [], {n: [] for n in names.values()}
        for case, a in preds[base].items():
            b = preds[other][case]
            differ.append(float(np.mean(a != b)))
            for k, v in dice_per_class(b, a, sorted(names)).items():
                between[names[k]].append(v)
        agreement[f"{other}_vs_{base}"] = {
            "voxels_differing": float(np.mean(differ)),
            "dice_between": {n: round(float(np.nanmean(v)), 4) for n, v in between.items()}}
    result = {"machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
              "torch": torch.__version__, "model": str(args.model), "folds": sorted(model.checkpoints),
              "cases": args.cases, "patch": list(model.plans.patch_size), "per_precision": rows,
              "agreement": agreement, "time": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=2))
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

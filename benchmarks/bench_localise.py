"""Localised prediction against whole-case prediction: time per case and paired Dice on held-out
phantoms, with one trained model.

Writes ``--cases`` Task08 phantoms the model never saw (``--seed``, the spacing range of
``bench_preprocess.py``'s clinical-size phantoms unless ``--small``; or takes the held-out cases of
any MSD task with ``--task PATH``), predicts them with
``autoseg predict`` twice, in fresh processes (the whole case, as by default, then
``--localise``), and reports per class the Dice of each run, the paired difference
(localised minus whole) with a seeded 95% bootstrap interval, the largest single-case difference,
and the seconds per case and the share of the grid the folds slid over. ``--variant NAME=FLAGS``
adds other ways of predicting, each scored against the whole case the same way (tile size and
overlap, issue 23). Not run by CI::

    .venv/bin/python benchmarks/bench_localise.py --model results/Task08_HepaticVessel/arunet -f 0 --cases 12
    .venv/bin/python benchmarks/bench_localise.py --model M -f 0 --variant "tile2=--tile-scale 2" \
        "tile2_o25=--tile-scale 2 --overlap 0.25" "fast=--localise --tile-scale 2 --overlap 0.25"
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402
from bench_preprocess import FULL_SPACING, SMALL_SPACING  # noqa: E402

from autoseg.io import read_label  # noqa: E402
from autoseg.metrics import bootstrap_interval, dice_per_class, mean_present  # noqa: E402
from autoseg.phantom import write_task  # noqa: E402
from autoseg.plans import Plans  # noqa: E402

RUNS = {"whole": [], "localised": ["--localise"]}



def predict(images: Path, out: Path, model: Path, folds: list[str], extra: list[str], reuse: bool) -> float | None:
    """Seconds of one ``autoseg predict`` run over the folder (None: kept from an earlier run)."""
    if reuse and (out / "report.json").is_file():
        return None
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(images), "-o", str(out), "-m", str(model),
                    *(["-f", *folds] if folds else []), *extra], check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a trained model folder")
    p.add_argument("-f", "--folds", nargs="+", default=[], help="folds to predict with (default: all)")
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=4242, help="phantom seed (not the model's training seed)")
    p.add_argument("--small", action="store_true", help="coarse phantoms (~240 voxels in-plane)")
    p.add_argument("--task", type=Path, default=None, metavar="PATH",
                   help="predict this MSD task's imagesTs and score against its labelsTs (e.g. the race's "
                        "held-out phantoms) instead of writing --cases phantoms")
    p.add_argument("--work", type=Path, default=BENCH / "work" / "localise")
    p.add_argument("--output", type=Path, default=BENCH / "results" / "localise.json")
    p.add_argument("--variant", nargs="*", default=[], metavar="NAME=FLAGS",
                   help="more runs, each NAME with these predict flags, scored against the whole case")
    p.add_argument("--reuse", nargs="*", default=[],
                   help="keep these runs' predictions from an earlier run in --work (same model and cases)")
    args = p.parse_args(argv)
    runs = dict(RUNS)
    for spec in args.variant:
        name, sep, flags = spec.partition("=")
        if not sep or not name or name in runs:
            raise SystemExit(f"--variant {spec!r}: give NAME=FLAGS with a new NAME (taken: {', '.join(runs)})")
        runs[name] = shlex.split(flags)
    unknown = sorted(set(args.reuse) - set(runs))
    if unknown:
        raise SystemExit(f"--reuse {', '.join(unknown)}: no such run (runs: {', '.join(runs)})")

    if args.task is not None:
        task = args.task.resolve()
        if not (task / "imagesTs").is_dir() or not (task / "labelsTs").is_dir():
            raise SystemExit(f"--task {task}: needs imagesTs/ and labelsTs/ (held-out cases with their labels)")
    else:
        task = write_task(args.work / "raw", "Task08", num_training=1, num_test=args.cases, seed=args.seed,
                          spacing_range=SMALL_SPACING if args.small else FULL_SPACING)
    images, labels = task / "imagesTs", task / "labelsTs"
    names = {int(k): v for k, v in Plans.load(args.model / "plans.json").labels.items() if int(k)}
    load_start = os.getloadavg()
    wall = {name: predict(images, args.work / name, args.model, args.folds, extra, name in args.reuse)
            for name, extra in runs.items()}
    cases = sorted(p.name for p in labels.glob("*.nii.gz"))
    rows: list[dict[str, Any]] = []
    for case in cases:
        ref = read_label(labels / case)[0]
        row: dict[str, Any] = {"case": case}
        for run in runs:
            pred = read_label(args.work / run / case)[0]
            row[run] = {names[k]: v for k, v in dice_per_class(pred, ref, sorted(names)).items()}
            report = json.loads((args.work / run / case.replace(".nii.gz", ".report.json")).read_text())
            row[f"{run}_seconds"] = report["seconds"]
            row[f"{run}_share"] = report.get("localised_share")
            row[f"{run}_tiles"] = report.get("localised_tiles")
            row[f"{run}_by"] = report.get("localised_by")
        rows.append(row)
    summary: dict[str, Any] = {}
    for cls in names.values():
        summary[cls] = {"whole": mean_present([r["whole"][cls] for r in rows])}
        for run in (r for r in runs if r != "whole"):
            diffs = [None if r[run][cls] is None or r["whole"][cls] is None
                     or np.isnan(r[run][cls]) or np.isnan(r["whole"][cls])
                     else r[run][cls] - r["whole"][cls] for r in rows]
            summary[cls][run] = mean_present([r[run][cls] for r in rows])
            summary[cls][f"{run}_minus_whole"] = {
                "paired_difference": mean_present(diffs), "ci95": bootstrap_interval(diffs, seed=0),
                "largest_case_difference": max((abs(d) for d in diffs if d is not None), default=None)}
    seconds = {run: float(np.median([r[f"{run}_seconds"] for r in rows])) for run in runs}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
              "cores": os.cpu_count(), "load_average": [load_start, os.getloadavg()], "model": str(args.model),
              "folds": args.folds or "all", "cases": len(rows),
              "test_set": str(args.task) if args.task is not None else f"phantoms, seed {args.seed}",
              "runs": {name: extra for name, extra in runs.items()}, "summary": summary,
              "median_seconds_per_case": seconds, "wall_s": wall,
              "median_localised_share": float(np.median([r["localised_share"] or 0 for r in rows])), "rows": rows}
    for cls, s in summary.items():
        for run in (r for r in runs if r != "whole"):
            d = s[f"{run}_minus_whole"]
            print(f"{cls:10s} whole {s['whole']:.4f}  {run} {s[run]:.4f}  paired {d['paired_difference']:+.4f} "
                  f"{d['ci95']}  largest case {d['largest_case_difference']}")
    print(f"median seconds per case: {seconds}; median share of the grid slid over: "
          f"{result['median_localised_share']:.3f}; load {result['load_average']}")
    append_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

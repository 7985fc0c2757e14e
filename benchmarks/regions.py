"""Region outputs against the softmax on Task03 phantoms (liver, tumour inside it), paired by seed.

Issue 22 (item 4): ``autoseg train --regions`` trains one sigmoid per region (liver + tumour, tumour)
as nnU-Net does for nested structures. This writes a Task03 task of phantoms (``--family`` 1 or 2),
plans it once (the default plan, volume-keeping label resampling), then per seed trains fold 0 twice
with the same steps, seed and plans: the softmax model and the region model, and predicts the
held-out test phantoms with each. Per class it reports the mean Dice over test cases and seeds, the
paired difference regions - softmax with a bootstrap interval over cases (the seeds' mean per case),
per seed, and the tumour volume predicted in tumour-free livers. Wall times are reported beside
(the step counts are equal). ``--arms`` adds variants, each against the softmax: ``regions_dice_ce``
trains the regions with plain Dice + BCE (nnU-Net's region loss) instead of the planned recipe's
rarity-weighted, annealed BCE. Not run by CI::

    .venv/bin/python benchmarks/regions.py --steps 600 --seeds 0 1 --family 1
    .venv/bin/python benchmarks/regions.py --steps 600 --seeds 0 1 --family 1 --arms softmax regions regions_dice_ce
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model, run_autoseg as autoseg  # noqa: E402

from autoseg.io import read_label  # noqa: E402
from autoseg.metrics import bootstrap_interval, dice_from_counts, mean_present  # noqa: E402
from autoseg.phantom import write_task  # noqa: E402

DEFAULT_OUT = BENCH / "results" / "regions.json"
TASK_SEED = 3302  # patients of their own: not the tests', the race's or merged_model.py's
ARMS = {"softmax": [], "regions": ["--regions"], "regions_dice_ce": ["--regions", "--loss", "dice_ce"]}
#: Arms whose models live in results_seed<S>/ (the first two); the others in results_seed<S>_<arm>/.
SHARED_RESULTS = ("softmax", "regions")
CLASSES = {"liver": 1, "tumour": 2}


def dice(pred: np.ndarray, ref: np.ndarray, value: int, region: bool) -> float:
    """Dice of class ``value``; ``region``: liver scored as liver or tumour (nnU-Net's LiTS regions)."""
    values = [value, 2] if region else [value]
    p, r = np.isin(pred, values), np.isin(ref, values)
    tp = int(np.count_nonzero(p & r))
    return dice_from_counts(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cases", type=int, default=10, help="training phantoms")
    p.add_argument("--test", type=int, default=8, help="test phantoms")
    p.add_argument("--family", type=int, choices=(1, 2), default=1)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=["softmax", "regions"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="default: benchmarks/work/regions_family<F>")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    work = (args.work or BENCH / "work" / f"regions_family{args.family}").resolve()
    raw = work / "raw"
    if not list(raw.glob("Task03_*")):
        write_task(raw, "Task03", num_training=args.cases, num_test=args.test, seed=TASK_SEED, family=args.family)
    env = dict(os.environ, AUTOSEG_RAW=str(raw), AUTOSEG_PREPROCESSED=str(work / "preprocessed"))
    autoseg(["plan_and_preprocess", "-d", "Task03"], env, work / "plan.log")
    task = next(raw.glob("Task03_*"))
    rows: dict[str, dict[str, dict[str, dict[str, float]]]] = {}  # arm -> case -> class -> seed -> value
    if "softmax" not in args.arms:
        raise SystemExit("--arms must include softmax, the arm the others are compared with")
    timings: dict[str, list[float]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        log = work / f"seed{seed}.log"
        for arm in args.arms:
            flags = ARMS[arm]
            results = work / (f"results_seed{seed}" if arm in SHARED_RESULTS else f"results_seed{seed}_{arm}")
            run_env = dict(env, AUTOSEG_RESULTS=str(results))
            folder = results / task.name / ("arunet_regions" if "--regions" in flags else "arunet")
            if (folder / "fold_0" / "validation" / "summary.json").is_file():
                timings[arm].append(float("nan"))  # finished before an interruption: reused
            else:
                timings[arm].append(autoseg(["train", "-d", "Task03", "-f", "0", "--steps", str(args.steps),
                                             "--threads", str(args.threads), "--seed", str(seed), *flags],
                                            run_env, log))
            out = work / f"pred_seed{seed}" / arm
            autoseg(["predict", "-i", str(task / "imagesTs"), "-o", str(out), "-d", "Task03", "-f", "0",
                     "--network", folder.name, "--threads", str(args.threads), "--overwrite"], run_env, log)
            collect(rows.setdefault(arm, {}), task / "labelsTs", out, seed, task)
    report = summarise(rows, args, timings)
    print(json.dumps(report["summary"], indent=1))
    append_result(args.out, report)
    return 0


def collect(rows: dict[str, dict[str, dict[str, float]]], refs: Path, preds: Path, seed: int, task: Path) -> None:
    """Per test case: liver (as its own class and as liver + tumour), tumour Dice and, where the
    reference has no tumour, the predicted tumour volume in mL."""
    for ref_file in sorted(refs.glob("*.nii.gz")):
        ref, geometry = read_label(ref_file)
        pred, _ = read_label(preds / ref_file.name)
        case = rows.setdefault(ref_file.name, {})
        for name, value in CLASSES.items():
            case.setdefault(name, {})[str(seed)] = dice(pred, ref, value, region=False)
        case.setdefault("liver region", {})[str(seed)] = dice(pred, ref, 1, region=True)
        if not np.any(ref == 2):
            voxel_ml = float(np.prod(geometry.spacing_zyx)) / 1000.0
            case.setdefault("false tumour mL", {})[str(seed)] = float(np.count_nonzero(pred == 2)) * voxel_ml


def summarise(rows: dict[str, dict[str, dict[str, dict[str, float]]]], args: argparse.Namespace,
              timings: dict[str, list[float]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in ("liver", "liver region", "tumour", "false tumour mL"):
        cases = [c for c in rows["softmax"] if name in rows["softmax"][c]]
        if not cases:
            continue
        per_seed = {arm: {s: mean_present([rows[arm][c][name][str(s)] for c in cases]) for s in args.seeds}
                    for arm in rows}
        per_case = {arm: [mean_present(list(rows[arm][c][name].values())) for c in cases] for arm in rows}
        summary[name] = {**{arm: mean_present(per_case[arm]) for arm in rows}, "per_seed": per_seed, "cases": len(cases)}
        for arm in (a for a in rows if a != "softmax"):
            diffs = [None if a is None or b is None else a - b for a, b in zip(per_case[arm], per_case["softmax"])]
            summary[name][f"{arm}_minus_softmax"] = mean_present(diffs)
            summary[name][f"{arm}_interval"] = bootstrap_interval(diffs)
    return {"benchmark": "regions", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "benchmarks/regions.py " + " ".join(sys.argv[1:]), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "steps": args.steps, "seeds": args.seeds, "arms": args.arms, "cases": args.cases,
            "test": args.test, "family": args.family, "train_seconds": timings, "summary": summary,
            "per_case": rows}


if __name__ == "__main__":
    raise SystemExit(main())

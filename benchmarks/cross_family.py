"""A model trained on one phantom family, tested on held-out phantoms of each family: Dice and the
lesion-wise figures of the race (lesions found, false positives, false tumour volume on tumour-free
livers).

Writes ``--cases`` test phantoms per family (``--seed``, the clinical-size spacing range of
``bench_preprocess.py`` unless ``--small``; family 2 with its tumour-free share), predicts them with
``autoseg predict`` and scores them with ``race_task.case_lesions``. Not run by CI::

    .venv/bin/python benchmarks/cross_family.py --model results/Task08_HepaticVessel/arunet -f 0 --cases 6
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result  # noqa: E402
from bench_preprocess import FULL_SPACING, SMALL_SPACING  # noqa: E402
from race_task import case_lesions, draw_summary  # noqa: E402

from autoseg.io import read_label  # noqa: E402
from autoseg.metrics import bootstrap_interval, dice_per_class, mean_present  # noqa: E402
from autoseg.phantom import write_task  # noqa: E402
from autoseg.plans import Plans  # noqa: E402


def family_scores(model: Path, folds: list[str], family: int, cases: int, seed: int, small: bool,
                  work: Path) -> dict[str, Any]:
    task = write_task(work / f"family{family}", "Task08", num_training=1, num_test=cases, seed=seed,
                      spacing_range=SMALL_SPACING if small else FULL_SPACING, family=family)
    out = work / f"pred{family}"
    if not (out / "report.json").is_file():
        subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(task / "imagesTs"), "-o", str(out),
                        "-m", str(model), *(["-f", *folds] if folds else [])], check=True)
    classes = {int(k): v for k, v in Plans.load(model / "plans.json").labels.items() if int(k)}
    dice: dict[str, list[float]] = {name: [] for name in classes.values()}
    lesions: dict[str, dict[str, dict[str, Any]]] = {}
    for label in sorted((task / "labelsTs").glob("*.nii.gz")):
        ref, geometry = read_label(label)
        pred = read_label(out / label.name)[0]
        for k, v in dice_per_class(pred, ref, sorted(classes)).items():
            dice[classes[k]].append(v)
        lesions[label.name] = case_lesions(pred, ref, geometry.spacing_zyx, classes)
    return {"family": family, "cases": len(lesions),
            "dice": {c: {"mean": mean_present(v), "ci95": bootstrap_interval(v), "per_case": v} for c, v in dice.items()},
            "lesions": {c: draw_summary(lesions, c) for c in classes.values()}, "per_case": lesions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("-f", "--folds", nargs="+", default=[])
    p.add_argument("--families", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=5150)
    p.add_argument("--small", action="store_true")
    p.add_argument("--work", type=Path, default=BENCH / "work" / "cross_family")
    p.add_argument("--output", type=Path, default=BENCH / "results" / "cross_family.json")
    args = p.parse_args(argv)
    load = os.getloadavg()
    runs = [family_scores(args.model, args.folds, f, args.cases, args.seed, args.small, args.work)
            for f in args.families]
    for run in runs:
        print(f"family {run['family']} ({run['cases']} cases)")
        for cls, d in run["dice"].items():
            les = run["lesions"][cls]
            print(f"  {cls:8s} Dice {d['mean']:.3f} {d['ci95']}  found {les['found']}/{les['ref_lesions']}  "
                  f"FP/case {les['fp_per_case']:.1f}  cases without {les['cases_without']}, with a false "
                  f"{cls} {les['false_cases']} ({les['false_ml']} mL)  by size {les['size_bins']}")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": str(args.model),
              "folds": args.folds or "all", "seed": args.seed, "load_average": [load, os.getloadavg()],
              "runs": runs}
    append_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

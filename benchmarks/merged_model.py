"""One model for liver, vessels and tumours against two separate models, at the same CPU budget.

Issue 22 (item 3): ``plan_and_preprocess -d Task03 -d Task08 --merge LiverVesselTumour`` trains one
network on both tasks with partial labels. This writes a Task03 task (liver, tumour) and a Task08
task (vessel, tumour) of phantoms from different seeds (different patients, as in the MSD), then per
seed trains fold 0 of:

- the pair: a Task03 model and a Task08 model, ``--steps`` steps each;
- the merged model: ``2 x --steps`` steps on the merged dataset (the same total number of steps);

and predicts each task's held-out test phantoms with the model(s) that know its classes. Scores use
each task's own labels: on Task03 the merged model's liver is its liver or vessel (Task03's liver
label covers the vessels in it), on Task08 its vessel and tumour. Per class it reports the mean over
test cases and seeds, and the paired difference merged - pair with a bootstrap interval over cases
(the seeds' mean per case). Training wall time of each arm is reported too: the step counts are
equal, the plans (and so the step times) need not be. Not run by CI::

    .venv/bin/python benchmarks/merged_model.py --steps 600 --seeds 0 1
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
from autoseg.merge import class_key  # noqa: E402
from autoseg.metrics import bootstrap_interval, dice_from_counts, mean_present  # noqa: E402
from autoseg.phantom import write_task  # noqa: E402

DEFAULT_OUT = BENCH / "results" / "merged_model.json"
TASK_SEEDS = {"Task03": 3301, "Task08": 801}  # other patients per task, neither the tests' nor the race's
MERGED = "LiverVesselTumour"


def task_classes(raw: Path, task: str) -> dict[str, int]:
    """The task's class name (as merged: liver, vessel, tumour) -> its label value."""
    folder = next(raw.glob(f"{task}_*"))
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    return {class_key(v): int(k) for k, v in labels.items() if int(k) != 0}


def score(pred: np.ndarray, ref: np.ndarray, ref_value: int, pred_values: list[int]) -> float:
    """Dice of the reference label ``ref_value`` against the prediction's ``pred_values``."""
    p, r = np.isin(pred, pred_values), ref == ref_value
    tp = int(np.count_nonzero(p & r))
    return dice_from_counts(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp)


def merged_values(name: str, merged_labels: dict[str, int]) -> list[int]:
    """The merged model's classes that make up a task's ``name``: liver is liver or vessel (the
    Task03 convention), the others themselves."""
    return [merged_labels["liver"], merged_labels["vessel"]] if name == "liver" else [merged_labels[name]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="steps of each single-task model (merged: twice)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cases", type=int, default=10, help="training phantoms per task")
    p.add_argument("--test", type=int, default=6, help="test phantoms per task")
    p.add_argument("--family", type=int, choices=(1, 2), default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=BENCH / "work" / "merged_model")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    work = args.work.resolve()
    raw = work / "raw"
    for task, seed in TASK_SEEDS.items():
        if not list(raw.glob(f"{task}_*")):
            write_task(raw, task, num_training=args.cases, num_test=args.test, seed=seed, family=args.family)
    env = dict(os.environ, AUTOSEG_RAW=str(raw), AUTOSEG_PREPROCESSED=str(work / "preprocessed"))
    plan_log = work / "plan.log"
    for task in TASK_SEEDS:
        autoseg(["plan_and_preprocess", "-d", task], env, plan_log)
    autoseg(["plan_and_preprocess", "-d", "Task03", "-d", "Task08", "--merge", MERGED], env, plan_log)
    merged_labels = {v: int(k) for k, v in json.loads(next(raw.glob(f"*_{MERGED}")).joinpath(
        "dataset.json").read_text())["labels"].items()}
    rows: dict[str, dict[str, dict[str, dict[str, float]]]] = {}  # arm -> task/case -> class -> seed -> dice
    timings: dict[str, list[float]] = {"pair": [], "merged": []}
    for seed in args.seeds:
        results = work / f"results_seed{seed}"
        run_env = dict(env, AUTOSEG_RESULTS=str(results))
        log = work / f"seed{seed}.log"
        common = ["-f", "0", "--threads", str(args.threads), "--seed", str(seed)]
        pair_time = sum(train(t, args.steps, common, results, run_env, log) for t in TASK_SEEDS)
        merged_time = train(MERGED, 2 * args.steps, common, results, run_env, log)
        timings["pair"].append(pair_time)
        timings["merged"].append(merged_time)
        for task in TASK_SEEDS:
            images = next(raw.glob(f"{task}_*")) / "imagesTs"
            for arm, dataset in (("pair", task), ("merged", MERGED)):
                out = work / f"pred_seed{seed}" / arm / task
                autoseg(["predict", "-i", str(images), "-o", str(out), "-d", dataset, "-f", "0",
                         "--threads", str(args.threads), "--overwrite"], run_env, log)
                collect(rows.setdefault(arm, {}), task, images.parent / "labelsTs", out, seed,
                        task_classes(raw, task), merged_labels if arm == "merged" else None)
    report = summarise(rows, args, timings)
    print(json.dumps(report["summary"], indent=1))
    append_result(args.out, report)
    return 0


def train(dataset: str, steps: int, common: list[str], results: Path, env: dict[str, str], log: Path) -> float:
    """Train fold 0 unless a finished fold of this seed is there (a re-run after an interruption);
    the wall time (NaN when reused)."""
    done = list(results.glob(f"*{dataset}*/*/fold_0/validation/summary.json"))
    if done:
        return float("nan")
    return autoseg(["train", "-d", dataset, "--steps", str(steps), *common], env, log)


def collect(rows: dict[str, dict[str, dict[str, float]]], task: str, refs: Path, preds: Path, seed: int,
            classes: dict[str, int], merged_labels: dict[str, int] | None) -> None:
    """Each test case's Dice per class of ``task``, under ``rows[task/case][class][seed]``."""
    for ref_file in sorted(refs.glob("*.nii.gz")):
        ref, _ = read_label(ref_file)
        pred, _ = read_label(preds / ref_file.name)
        for name, value in classes.items():
            wanted = [value] if merged_labels is None else merged_values(name, merged_labels)
            rows.setdefault(f"{task}/{ref_file.name}", {}).setdefault(name, {})[str(seed)] = score(pred, ref, value,
                                                                                                   wanted)


def summarise(rows: dict[str, dict[str, dict[str, dict[str, float]]]], args: argparse.Namespace,
              timings: dict[str, list[float]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for task in TASK_SEEDS:
        for name in ("liver", "vessel", "tumour"):
            cases = [c for c in rows["pair"] if c.startswith(task) and name in rows["pair"][c]]
            if not cases:
                continue
            per_seed = {arm: {s: mean_present([rows[arm][c][name][str(s)] for c in cases]) for s in args.seeds}
                        for arm in rows}
            per_case = {arm: [mean_present(list(rows[arm][c][name].values())) for c in cases] for arm in rows}
            diffs = [None if a is None or b is None else a - b for a, b in zip(per_case["merged"], per_case["pair"])]
            summary[f"{task} {name}"] = {
                "pair": mean_present(per_case["pair"]), "merged": mean_present(per_case["merged"]),
                "per_seed": per_seed, "merged_minus_pair": mean_present(diffs),
                "interval": bootstrap_interval(diffs), "cases": len(cases)}
    return {"benchmark": "merged_model", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "benchmarks/merged_model.py " + " ".join(sys.argv[1:]), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "steps_single": args.steps, "steps_merged": 2 * args.steps,
            "seeds": args.seeds, "cases_per_task": args.cases, "test_per_task": args.test, "family": args.family,
            "train_seconds": timings, "summary": summary, "cases": rows}


if __name__ == "__main__":
    raise SystemExit(main())

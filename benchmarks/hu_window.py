"""The CT window on the liver task: autoseg planned with its default window (fitted to the labelled
voxels' 0.5-99.5 percentiles inside [-160, 240]) against the published [-160, 240] window, on a
Task03-like phantom, with the same split, CPU calibration and training budget.

Run from the repository root::

    .venv/bin/python benchmarks/hu_window.py --budget 10m          # results/hu_window.json
    .venv/bin/python benchmarks/hu_window.py --budget 1m --test 4  # a quick check of the script

What runs, each command in a fresh process tree (``bench_preprocess.run_measured``): a Task03
phantom (``-n`` training cases, ``--test`` held-out cases; with the race's seed and ``-n`` its
images are the race's images, labelled liver and tumour instead of vessel and tumour), then for
each arm ``autoseg plan_and_preprocess -d 3`` (the second arm reuses the first's CPU calibration
and split, so only the window differs), ``autoseg train -d 3 -f 0 --time-budget B`` and ``autoseg
predict`` of the held-out cases with fold 0's final weights. Per-case Dice of liver and tumour and
the paired difference (95 % bootstrap interval over cases) of the default arm to the published one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import machine_info  # noqa: E402
from race import BENCH, autoseg_env, fold_log, paired_difference, score, step_figures, timed  # noqa: E402

TASK = "Task03_Liver"
CLASSES = {1: "liver", 2: "tumour"}
#: (arm, plan_and_preprocess arguments); the first arm calibrates the CPU for both.
ARMS = (("fitted", []), ("published", ["--hu-window", "-160", "240"]))
AUTOSEG = [sys.executable, "-m", "autoseg"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="10m", help="training budget of fold 0 in each arm (default 10m)")
    p.add_argument("-n", "--num-training", type=int, default=10)
    p.add_argument("--test", type=int, default=36, help="held-out test cases (default 36)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--work", type=Path, default=BENCH / "work" / "hu_window")
    p.add_argument("--results", type=Path, default=BENCH / "results" / "hu_window.json")
    return p.parse_args(argv)


def _env(work: Path, name: str) -> dict[str, str]:
    return autoseg_env(work, work / f"results_{name}", f"pre_{name}")


def plan_arms(work: Path) -> dict[str, float]:
    """Plan and preprocess every arm (wall seconds each); the first calibrates the CPU and the others
    reuse its calibration, so that only their arguments differ."""
    first = work / f"pre_{ARMS[0][0]}" / "cpu_calibration.json"
    walls = {}
    for i, (name, plan_args) in enumerate(ARMS):
        pre = work / f"pre_{name}"
        shutil.rmtree(pre, ignore_errors=True)
        if i:
            pre.mkdir(parents=True)
            shutil.copy(first, pre / first.name)
        walls[name] = timed(f"{name} plan", [*AUTOSEG, "plan_and_preprocess", "-d", "3", "-j", "2", *plan_args],
                            _env(work, name), work / "logs" / f"{name}_plan.log")["wall_s"]
        if not first.is_file():
            raise SystemExit(f"the first plan wrote no CPU calibration ({first}): the machine was busy "
                             f"while it calibrated (see {work / 'logs' / f'{name}_plan.log'}); run again when it is idle")
    return walls


def train_and_score(name: str, work: Path, budget: str, budget_s: float) -> dict[str, Any]:
    """Train fold 0 of one arm, predict the held-out cases, score them."""
    env, logs = _env(work, name), work / "logs"
    results, out = work / f"results_{name}", work / f"predictions_{name}"
    splits = work / f"pre_{ARMS[0][0]}" / TASK / "splits.json"  # written by the first arm's training
    if name != ARMS[0][0]:
        shutil.copy(splits, work / f"pre_{name}" / TASK / "splits.json")
    shutil.rmtree(results, ignore_errors=True)
    train = timed(f"{name} train", [*AUTOSEG, "train", "-d", "3", "-f", "0", "--time-budget", budget], env,
                  logs / f"{name}_train.log", 4 * budget_s + 3600)
    shutil.rmtree(out, ignore_errors=True)
    predict = timed(f"{name} predict", [*AUTOSEG, "predict", "-i", str(work / "msd" / TASK / "imagesTs"),
                                        "-o", str(out), "-d", "3", "-f", "0"], env, logs / f"{name}_predict.log")
    model = next(results.glob(f"{TASK}/*/plans.json")).parent
    plans = json.loads((model / "plans.json").read_text())
    steps, step_s = step_figures(fold_log(model))
    return {"window": plans["normalisation"][0]["window"], "patch_size": plans["patch_size"],
            "window_note": next((n for n in plans["estimates"].get("notes", []) if n.startswith("HU window")), None),
            "steps": steps, "median_step_s": round(step_s, 3),
            "train_wall_s": train["wall_s"], "predict_wall_s": predict["wall_s"],
            **score(out, work / "msd" / TASK, CLASSES)}


def main(argv: list[str] | None = None) -> int:
    from autoseg.phantom import write_task
    from autoseg.cli import parse_duration

    args = parse_args(argv)
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "msd", ignore_errors=True)
    write_task(work / "msd", "Task03", num_training=args.num_training, num_test=args.test, seed=args.seed)
    machine = {k: v for k, v in machine_info(Path(sys.executable)).items() if k != "nnunet_venv"}
    plan_walls = plan_arms(work)
    arms = {name: {"plan_wall_s": plan_walls[name], **train_and_score(name, work, args.budget, parse_duration(args.budget))}
            for name, _ in ARMS}
    a, b = (arms[name]["test_cases"] for name, _ in ARMS)
    result = {"task": f"Task03 phantom, {args.num_training} training + {args.test} test cases, seed {args.seed}",
              "budget": args.budget, "machine": machine, "time": time.strftime("%Y-%m-%d %H:%M"),
              "arms": arms, "paired_fitted_minus_published": {c: paired_difference(a, b, c) for c in CLASSES.values()}}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    for name, row in arms.items():
        print(f"{name:10s} window {row['window']} patch {row['patch_size']} {row['steps']} steps at "
              f"{row['median_step_s']} s: " + ", ".join(f"{c} {d:.3f}" for c, d in row["test_dice"].items()))
    for c, d in result["paired_fitted_minus_published"].items():
        print(f"fitted - published, {c}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], "
              f"{d['wins']} won, {d['losses']} lost of {d['cases']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

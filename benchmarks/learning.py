"""What makes training learn on a CPU budget: recipe variants on the same fold, plan and step count.

Run (after ``autoseg plan_and_preprocess``, e.g. the demo's ``demo_work/preprocessed``)::

    .venv/bin/python benchmarks/learning.py --preprocessed demo_work/preprocessed/Task08_HepaticVessel \\
        --fold 0 --steps 300 --variant '{}' --variant '{"initial_lr": 1e-3}'

Each variant is a JSON object of ``Recipe`` fields (``optimizer``, ``initial_lr``, ``loss``,
``oversample_foreground``, ``deep_supervision`` ...) or plans fields (``patch_size``,
``batch_size``) applied over ``plans.json``. Every variant trains the same fold from the same seed
for the same number of steps (so the comparison does not depend on how busy the machine is), then
predicts the fold's held-out cases whole (``validation/summary.json``). One JSON line per variant
is appended to ``--out``; a table is printed at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from autoseg.layout import ModelFolder
from autoseg.plans import Plans
from autoseg.preprocessing.storage import case_ids
from autoseg.cpu_share import configure_threads
from autoseg.training.loop import FoldTrainer, TrainOptions
from autoseg.training.splits import load_or_create_splits

PLANS_FIELDS = ("patch_size", "batch_size")


def apply_variant(plans: Plans, variant: dict, steps: int, iterations: int) -> Plans:
    recipe_changes = {k: v for k, v in variant.items() if k not in PLANS_FIELDS}
    epochs = max(1, steps // iterations)
    recipe = dataclasses.replace(plans.recipe, epochs=epochs, iterations_per_epoch=iterations,
                                 time_budget_s=None, **recipe_changes)
    plans_changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in variant.items() if k in PLANS_FIELDS}
    return dataclasses.replace(plans, recipe=recipe, **plans_changes)


def run_variant(pre: Path, fold: int, variant: dict, steps: int, iterations: int, workers: int) -> dict:
    plans = apply_variant(Plans.load(pre / "plans.json"), variant, steps, iterations)
    cases = case_ids(pre)
    split = load_or_create_splits(pre / "splits.json", cases, plans.seed)[fold]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = FoldTrainer(plans, pre / "data", ModelFolder(Path(tmp)).fold(fold), split["train"], split["val"],
                              TrainOptions(workers=workers))
        t0 = time.perf_counter()
        record = trainer.run()
        seconds = time.perf_counter() - t0
        summary = json.loads((Path(tmp) / f"fold_{fold}" / "validation" / "summary.json").read_text())
    return {"variant": variant, "steps": trainer.steps, "seconds": round(seconds, 1),
            "step_time_s": round(record.get("step_time_s", float("nan")), 3),
            "final_train_loss": record.get("train_loss"), "val_dice": summary["mean_dice"],
            "mean_foreground_dice": summary["mean_foreground_dice"], "fold": fold,
            "patch_size": list(plans.patch_size), "batch_size": plans.batch_size,
            "machine": f"{platform.node()} {os.cpu_count()} cores", "time": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preprocessed", type=Path, required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--iterations", type=int, default=50, help="steps per epoch")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--variant", action="append", default=[], help="JSON object of recipe/plans overrides")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "learning.jsonl")
    args = p.parse_args()
    configure_threads("cpu")
    rows = []
    for text in args.variant or ["{}"]:
        row = run_variant(args.preprocessed, args.fold, json.loads(text), args.steps, args.iterations,
                          args.workers)
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(f"\n{'variant':60s} {'steps':>5s} {'s/step':>6s}  per-class validation Dice")
    for r in rows:
        dice = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in r["val_dice"].items())
        print(f"{json.dumps(r['variant']):60s} {r['steps']:5d} {r['step_time_s']:6.2f}  {dice}")


if __name__ == "__main__":
    main()

"""Does starting from the synthetic model pay? Fine-tuning against training from scratch, paired.

Issue 25: a user with a few labelled CTs can start from the built-in model (``train --init
synthetic``); it should reach a given Dice in fewer steps. This writes a Task03 task (liver, tumour)
of phantoms the model never saw (family 2 by default: other anatomy, phases, lesions and noise than
the trunk phantoms it learnt from), plans it once with ``--plans-from MODEL`` (so both arms train the
same network on the same grid), then trains fold 0 twice per seed for ``--steps`` steps: from random
weights and from the model's (``--init MODEL``). It reports, per arm and seed, the steps each took to
reach a liver patch-validation Dice of ``--target`` (None: never), the last epoch's patch Dice, and
the fold-end Dice of the whole held-out cases, with the paired differences. Not run by CI::

    .venv/bin/python benchmarks/finetune_synthetic.py --model synthetic --steps 400 --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model, run_autoseg as autoseg  # noqa: E402

from autoseg.phantom import write_task  # noqa: E402

DEFAULT_OUT = BENCH / "results" / "finetune_synthetic.json"
DATA_SEED = 4242  # the task's phantoms: neither the trunk recipe's nor the tests'


def steps_to(log_file: Path, target: float, cls: str = "liver") -> int | None:
    """Training steps after which the patch-validation Dice of ``cls`` first reached ``target``."""
    steps = 0
    for line in log_file.read_text().splitlines():
        record = json.loads(line)
        steps += int(record.get("steps", 0))
        if (record.get("val_dice") or {}).get(cls, 0.0) >= target:
            return steps
    return None


def fold_figures(fold: Path, target: float) -> dict[str, Any]:
    records = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    return {"steps_to_target": steps_to(fold / "log.jsonl", target), "last_patch_dice": records[-1]["val_dice"],
            "validation_mean_dice": summary.get("mean_dice"), "epochs": len(records)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="synthetic", help="what `autoseg train --init` takes (default synthetic)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cases", type=int, default=10, help="training phantoms (fold 0 holds out a fifth)")
    p.add_argument("--family", type=int, choices=(1, 2), default=2)
    p.add_argument("--target", type=float, default=0.9, help="liver patch-validation Dice to reach")
    p.add_argument("--work", type=Path, default=BENCH / "work" / "finetune_synthetic")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    work = args.work.resolve()
    write_task(work / "raw", "Task03", num_training=args.cases, num_test=0, seed=DATA_SEED, family=args.family)
    base = dict(os.environ, AUTOSEG_RAW=str(work / "raw"), AUTOSEG_PREPROCESSED=str(work / "preprocessed"))
    autoseg(["plan_and_preprocess", "-d", "Task03", "--plans-from", args.model], base, work / "plan.log")
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for arm, extra in (("scratch", []), ("init", ["--init", args.model])):
            results = work / f"results_{arm}_{seed}"
            env = dict(base, AUTOSEG_RESULTS=str(results))
            seconds = autoseg(["train", "-d", "Task03", "-f", "0", "--steps", str(args.steps), "--seed", str(seed),
                               "--threads", "2", "--force", *extra], env, work / f"train_{arm}_{seed}.log")
            fold = results / "Task03_Liver" / "arunet" / "fold_0"
            runs.append({"arm": arm, "seed": seed, "seconds": round(seconds, 1), **fold_figures(fold, args.target)})
            print(json.dumps(runs[-1]))
    pairs = []
    for seed in args.seeds:
        a, b = (next(r for r in runs if r["arm"] == arm and r["seed"] == seed) for arm in ("scratch", "init"))
        pairs.append({k: (b["validation_mean_dice"][k] or 0.0) - (a["validation_mean_dice"][k] or 0.0)
                      for k in a["validation_mean_dice"]})
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
              "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]), "model": args.model,
              "family": args.family, "cases": args.cases, "steps": args.steps, "target": args.target,
              "runs": runs, "paired_validation_difference_init_minus_scratch": pairs}
    append_result(args.out, result)
    print("| seed | arm | steps to liver patch Dice >= %.2f | validation Dice liver / tumour |" % args.target)
    print("|---|---|---|---|")
    for r in runs:
        v = r["validation_mean_dice"]
        fmt = " / ".join(f"{v[k]:.3f}" if v.get(k) is not None else "-" for k in ("liver", "tumour"))
        print(f"| {r['seed']} | {r['arm']} | {r['steps_to_target'] or 'not reached'} | {fmt} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make demo``: the whole workflow on the embedded synthetic task, in one folder.

Writes a Task08-like phantom task, plans and preprocesses it, trains the five folds on a short
budget and reports their validation Dice. Everything stays in ``--workdir`` to be opened afterwards.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autoseg.cli import main as cli_main

log = logging.getLogger("autoseg.demo")


def run(workdir: Path, num_training: int, epochs: int, iterations: int, train: bool) -> int:
    workdir = workdir.resolve()
    env = {"AUTOSEG_RAW": workdir / "raw", "AUTOSEG_PREPROCESSED": workdir / "preprocessed",
           "AUTOSEG_RESULTS": workdir / "results"}
    import os

    for key, value in env.items():
        os.environ[key] = str(value)
    steps = [["phantom", "-o", str(env["AUTOSEG_RAW"]), "--task", "Task08", "-n", str(num_training),
              "--test", "2"],
             ["plan_and_preprocess", "-d", "Task08"]]
    if train:
        steps.append(["train", "-d", "Task08", "--epochs", str(epochs), "--iterations", str(iterations)])
    for argv in steps:
        print(f"\n$ autoseg {' '.join(argv)}", flush=True)
        code = cli_main(argv)
        if code:
            return code
    print(f"\nDemo outputs are in {workdir}: raw/ (phantom task), preprocessed/ (fingerprint.json, "
          "plans.json, slices.png, data/)" + (", results/ (folds, log.jsonl, progress.png)" if train else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("demo_work"))
    p.add_argument("-n", "--num-training", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--no-train", action="store_true", help="stop after preprocessing")
    args = p.parse_args(argv)
    return run(args.workdir, args.num_training, args.epochs, args.iterations, not args.no_train)


if __name__ == "__main__":
    sys.exit(main())

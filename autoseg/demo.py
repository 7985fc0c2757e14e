"""``make demo``: the whole workflow on the embedded synthetic task, in one folder.

Writes a Task08-like phantom task, plans and preprocesses it (for 0.4 s training steps, so each
fold gets a few hundred steps), trains the five folds for two minutes of calibrated compute each
(``--compute-budget``: the steps the plan's step time fits in two idle minutes; a busy machine
takes longer for them but trains the same model), prints the
cross-validation table and decides the post-processing (``find_best``), predicts the two held-out
phantoms with the five-fold ensemble (label maps, reports, overlays) and prints their Dice against
the phantom's labels. Everything stays in ``--workdir`` to be opened afterwards.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from autoseg.cli import main as cli_main
from autoseg.layout import RawDataset

log = logging.getLogger("autoseg.demo")


def run(workdir: Path, num_training: int, fold_budget: str, train: bool) -> int:
    workdir = workdir.resolve()
    env = {"AUTOSEG_RAW": workdir / "raw", "AUTOSEG_PREPROCESSED": workdir / "preprocessed",
           "AUTOSEG_RESULTS": workdir / "results"}
    import os

    for key, value in env.items():
        os.environ[key] = str(value)
    steps = [["phantom", "-o", str(env["AUTOSEG_RAW"]), "--task", "Task08", "-n", str(num_training),
              "--test", "2"],
             ["plan_and_preprocess", "-d", "Task08", "--step-time", "0.4"]]
    predictions = workdir / "predictions"
    if train:
        steps.append(["train", "-d", "Task08", "--compute-budget", fold_budget, "--iterations", "50"])
        steps.append(["find_best", "-d", "Task08"])  # cross-validation table and post-processing
        steps.append(["predict", "-i", str(RawDataset(env["AUTOSEG_RAW"] / "Task08_HepaticVessel").images_ts),
                      "-o", str(predictions), "-d", "Task08", "--overlays"])
    for argv in steps:
        print(f"\n$ autoseg {' '.join(argv)}", flush=True)
        code = cli_main(argv)
        if code:
            return code
    if train:
        print_test_dice(RawDataset(env["AUTOSEG_RAW"] / "Task08_HepaticVessel").labels_ts, predictions)
    print(f"\nDemo outputs are in {workdir}: raw/ (phantom task), preprocessed/ (fingerprint.json, "
          "plans.json, slices.png, data/)" + (", results/ (folds, log.jsonl, progress.png)" if train else ""))
    return 0


def print_test_dice(references: Path, predictions: Path) -> None:
    """Dice of the ensemble's test predictions against the phantom's own labels, per class."""
    from autoseg.io import read_label
    from autoseg.metrics import dice_per_class

    names = {1: "vessel", 2: "tumour"}
    print("\nTest-set Dice of the five-fold ensemble (phantom labels as reference):")
    for ref_path in sorted(references.glob("*.nii.gz")):
        ref, _ = read_label(ref_path)
        pred, _ = read_label(predictions / ref_path.name)
        scores = dice_per_class(pred, ref, sorted(names))
        print(f"  {ref_path.name}: " + ", ".join(f"{names[k]} {'absent' if math.isnan(v) else f'{v:.3f}'}"
                                                 for k, v in scores.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("demo_work"))
    p.add_argument("-n", "--num-training", type=int, default=10)
    p.add_argument("--fold-budget", default="2m",
                   help="calibrated compute per fold (default: 2m; autoseg train --compute-budget)")
    p.add_argument("--no-train", action="store_true", help="stop after preprocessing")
    args = p.parse_args(argv)
    return run(args.workdir, args.num_training, args.fold_budget, not args.no_train)


if __name__ == "__main__":
    sys.exit(main())

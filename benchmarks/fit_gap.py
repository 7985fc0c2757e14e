"""How well a trained fold fits its own training cases against its validation cases.

A model whose whole-case Dice on the cases it trained on is far above its validation Dice is
limited by the data (too few cases to generalise from); one that scores about the same on both is
limited by what it can learn from the images (capacity, label ambiguity, the recipe). Run from the
repository root::

    .venv/bin/python benchmarks/fit_gap.py MODEL_FOLDER PREPROCESSED_TASK [--checkpoint final|best]

Each case is predicted whole on its preprocessed grid (the sliding window of ``autoseg predict``,
no mirroring) and compared with its preprocessed label map, as fold validation does. Prints one
JSON line per set (train, validation): mean per-class Dice and per-case Dice.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autoseg.inference.model import TrainedModel  # noqa: E402
from autoseg.preprocessing.storage import case_ids  # noqa: E402
from autoseg.sliding_window import WindowOptions  # noqa: E402
from autoseg.training.data import CaseStore  # noqa: E402
from autoseg.training.fold_validation import validate_fold  # noqa: E402
from autoseg.training.splits import load_or_create_splits  # noqa: E402


def fit_gap(model_folder: Path, preprocessed: Path, fold: int = 0, checkpoint: str = "final") -> dict[str, dict]:
    model = TrainedModel.open(model_folder, (fold,), checkpoint)
    cases = case_ids(preprocessed)
    split = load_or_create_splits(preprocessed / "splits.json", cases, model.plans.seed)[fold]
    network = model.network(fold)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("train", "val"):
            store = CaseStore(preprocessed / "data", list(split[name]))
            summary = validate_fold(network, model.plans, store, Path(tmp) / name,
                                    WindowOptions(precision=model.plans.recipe.precision), write_predictions=False)
            out[name] = summary
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a model folder written by autoseg train (plans.json, fold_N/)")
    p.add_argument("preprocessed", type=Path, help="the preprocessed task folder it trained on (data/, splits.json)")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--checkpoint", default="final", choices=["final", "best"])
    args = p.parse_args(argv)
    for name, summary in fit_gap(args.model, args.preprocessed, args.fold, args.checkpoint).items():
        print(json.dumps({"set": name, "model": str(args.model), "checkpoint": args.checkpoint,
                          "mean": summary["mean_dice"], "cases": summary["cases"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

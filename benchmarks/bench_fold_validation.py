"""End-of-fold validation with PyTorch and with OpenVINO (``train --validation-runtime``, issue 23).

The fold validation predicts every held-out case of a fold whole; on clinical-size CT it is the part
of ``autoseg train`` that grows with the dataset (``growth.py``: about 45 s a case on 2 cores). This
runs :func:`autoseg.training.fold_validation.validate_fold` on a trained fold's validation cases with
each runtime, in the order A B B A (``--repeats 2``) so that drift of the machine falls on both, each
OpenVINO run with an empty graph cache (the export is paid once per fold in training too), and
reports the seconds, the per-case Dice of each and their largest difference.

Run (a trained model folder and its preprocessed dataset; nothing is written beside them)::

    .venv/bin/python benchmarks/bench_fold_validation.py --model RESULTS/Task08_HepaticVessel/arunet \\
        --preprocessed PREPROCESSED/Task08_HepaticVessel -f 0 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench_common import append_result, cpu_model

from autoseg.inference.model import TrainedModel
from autoseg.precision import resolve_precision
from autoseg.sliding_window import WindowOptions
from autoseg.training.data import CaseStore
from autoseg.training.fold_validation import validate_fold

RESULTS = Path(__file__).resolve().parent / "results" / "fold_validation.json"


def run(model: TrainedModel, fold: int, store: CaseStore, runtime: str, precision: str) -> dict:
    """One validation of ``store``'s cases by ``runtime`` into a scratch folder (its own empty graph
    cache for OpenVINO); seconds and per-case Dice."""
    network = model.network(fold)
    with tempfile.TemporaryDirectory(prefix="fold-validation-") as scratch:
        os.environ["AUTOSEG_CACHE"] = str(Path(scratch) / "cache")
        window = WindowOptions(device="cpu", precision=precision, runtime=runtime)
        t0 = time.perf_counter()
        summary = validate_fold(network, model.plans, store, Path(scratch) / "validation", window)
        seconds = time.perf_counter() - t0
    return {"runtime": runtime, "seconds": round(seconds, 2), "cases": summary.cases,
            "mean_dice": summary.mean_dice}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a trained model folder (plans.json, fold_K/)")
    p.add_argument("--preprocessed", type=Path, required=True, help="its preprocessed dataset (splits.json, data/)")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--cases", type=int, default=None, help="at most this many of the fold's validation cases")
    p.add_argument("--repeats", type=int, default=2, help="1: torch, openvino; 2: torch, openvino, openvino, torch")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    model = TrainedModel.open(args.model, (args.fold,))
    cases = json.loads((args.preprocessed / "splits.json").read_text())[args.fold]["val"][:args.cases]
    store = CaseStore(args.preprocessed / "data", cases)
    precision = resolve_precision(model.plans.recipe.precision, "cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    order = ["torch", "openvino", "openvino", "torch"][:2 * args.repeats]
    cache, load = os.environ.get("AUTOSEG_CACHE"), list(os.getloadavg())
    try:
        runs = [run(model, args.fold, store, runtime, precision) for runtime in order]
    finally:
        if cache is None:
            os.environ.pop("AUTOSEG_CACHE", None)
        else:
            os.environ["AUTOSEG_CACHE"] = cache
    seconds = {r: [x["seconds"] for x in runs if x["runtime"] == r] for r in ("torch", "openvino")}
    torch_run = next(x for x in runs if x["runtime"] == "torch")
    diffs = [abs(a - b) for x in runs if x["runtime"] == "openvino" for c, scores in x["cases"].items()
             for k, a in scores.items() if a is not None and (b := torch_run["cases"][c][k]) is not None]
    result = {"benchmark": "fold validation by runtime", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_before": load, "model": str(args.model), "fold": args.fold,
              "cases": cases, "patch": list(model.plans.patch_size), "precision": precision, "runs": runs,
              "median_seconds": {r: sorted(v)[len(v) // 2] for r, v in seconds.items()},
              "openvino_over_torch": round(sum(seconds["openvino"]) / sum(seconds["torch"]), 3),
              "largest_case_dice_difference": round(max(diffs), 4) if diffs else None}
    append_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

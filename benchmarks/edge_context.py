"""Paired Dice of ``predict --edge-context F`` against F = 0 on a model's held-out phantoms.

The held-out phantoms are the validation cases of fold 0 in an ``autoseg pretrain`` work folder (the
trunk phantoms the model was not trained on, many with a field of view that ends inside the liver).
A model of several folds (the synthetic recipe since 2026-12-07, night: folds 0 and 1) has trained
on fold 0's validation cases in its other folds: score such a model here only through one fold's
export (``autoseg export -f 0``), or the figures leak.
Each share F is one ``autoseg predict`` run over all of them in a fresh process; liver (union of the
model's labels 1-3), vessel (2) and tumour (3) Dice per case by the project's one Dice path, then
the mean and a paired bootstrap interval of each share's difference to the first. This is the data
the edge-context default is chosen on; the real CT is only reported. Not run by CI::

    AUTOSEG_CACHE=... .venv/bin/python benchmarks/edge_context.py --work benchmarks/work/synthetic_v3 \\
        --model benchmarks/work/cache_s43/models/synthetic.zip --shares 0 0.125 0.25 0.5
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402
from synthetic_phantoms import dice  # noqa: E402

from autoseg.io import read_label  # noqa: E402
from autoseg.metrics import bootstrap_interval, mean_present  # noqa: E402

DATASET = "Task100_LiverVesselTumour"
CLASSES = {"liver": None, "vessel": 2, "tumour": 3}


def case_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    return {name: dice(pred > 0, ref > 0) if label is None else dice(pred == label, ref == label)
            for name, label in CLASSES.items()}


def paired(a: dict[str, dict[str, float | None]], b: dict[str, dict[str, float | None]], cases: list[str],
           key: str) -> dict[str, Any]:
    """``key``'s per-case difference ``a`` - ``b`` over the cases both score: its mean, bootstrap
    interval, the cases it counts, and those more than 0.01 better or worse."""
    diffs = [a[c][key] - b[c][key] for c in cases if a[c][key] is not None and b[c][key] is not None]
    ci = bootstrap_interval(diffs) or (float("nan"), float("nan"))
    return {"n": len(diffs), "paired_difference": mean_present(diffs), "ci95": list(ci),
            "better": sum(d > 0.01 for d in diffs), "worse": sum(d < -0.01 for d in diffs)}


def pair_with(results: Path, model: str, scores: dict[float, dict[str, dict[str, float | None]]],
              cases: list[str]) -> dict[str, Any]:
    """Each share's liver, vessel and tumour Dice against the latest stored run of ``model`` at its
    first share, paired by case (the other run must have scored the same cases)."""
    runs = [r for r in json.loads(results.read_text()) if r["model"] == model and r["cases"] == cases]
    if not runs:
        sys.exit(f"no stored run of {model} on these cases in {results}")
    other = runs[-1]["scores"][next(iter(runs[-1]["scores"]))]
    out: dict[str, Any] = {"model": model}
    for share, per_case in scores.items():
        row = {k: {f: v for f, v in paired(per_case, other, cases, k).items() if f != "n"} for k in CLASSES}
        out[str(share)] = row
        print(f"against {model}: share {share}: " + ", ".join(
            f"{k} {v['paired_difference']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for k, v in row.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="an `autoseg pretrain` work folder")
    p.add_argument("--model", required=True, help="what `autoseg predict -m` takes: the model made in --work")
    p.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25], help="edge-context shares; the first "
                                                                                "is the baseline")
    p.add_argument("--out", type=Path, default=BENCH / "results" / "edge_context.json")
    p.add_argument("--scratch", type=Path, default=BENCH / "work" / "edge_context")
    p.add_argument("--pair-with", default=None, metavar="MODEL",
                   help="also pair each share against the latest stored run of this model (same --work, so the "
                        "same held-out cases), at its first share")
    args = p.parse_args(argv)
    raw = args.work / "raw" / DATASET
    cases = json.loads((args.work / "preprocessed" / DATASET / "splits.json").read_text())[0]["val"]
    inputs = args.scratch / "inputs"
    shutil.rmtree(args.scratch, ignore_errors=True)
    inputs.mkdir(parents=True)
    for case in cases:
        shutil.copy(raw / "imagesTr" / f"{case}.nii.gz", inputs / f"{case}.nii.gz")
    scores: dict[float, dict[str, dict[str, float | None]]] = {}
    seconds: dict[float, float] = {}
    for share in args.shares:
        out = args.scratch / f"share_{share}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(inputs), "-o", str(out), "-m",
                        args.model, "--edge-context", str(share)], check=True, capture_output=True)
        seconds[share] = time.perf_counter() - t0
        scores[share] = {}
        for case in cases:
            ref, _ = read_label(raw / "labelsTr" / f"{case}.nii.gz")
            pred, _ = read_label(out / f"{case}.nii.gz")
            scores[share][case] = case_scores(pred, ref)
    base = args.shares[0]
    summary: dict[str, Any] = {}
    print(f"| share | seconds | {' | '.join(f'{k} mean, paired difference [95 % CI]' for k in CLASSES)} |")
    print("|---|---|" + "---|" * len(CLASSES))
    for share in args.shares:
        row: dict[str, Any] = {"seconds": round(seconds[share], 1)}
        cells = []
        for k in CLASSES:
            pair = paired(scores[share], scores[base], cases, k)
            mean = mean_present([scores[share][c][k] for c in cases if scores[base][c][k] is not None])
            ci = pair["ci95"]
            row[k] = {"n": pair["n"], "mean": mean, "paired_difference": pair["paired_difference"], "ci95": ci,
                      "cases_worse": pair["worse"], "cases_better": pair["better"]}
            cells.append(f"{mean:.3f}, {row[k]['paired_difference']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
                         if mean is not None else "-")
        summary[str(share)] = row
        print(f"| {share} | {seconds[share]:.0f} | {' | '.join(cells)} |")
    if args.pair_with:
        summary["paired_with"] = pair_with(args.out, args.pair_with, scores, cases)
    append_result(args.out, {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "model": args.model,
        "work": str(args.work), "cases": cases, "scores": {str(k): v for k, v in scores.items()}, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

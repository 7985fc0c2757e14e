"""Two runs of ``false_tumours.py`` side by side: each arm's summary per seed, and the paired
differences (B minus A) of per-case tumour Dice (tumour-bearing cases) and vessel Dice, pooled over
the seeds both ran, with a bootstrap interval over those (case, seed) pairs.

    .venv/bin/python benchmarks/compare_false_tumours.py \\
        "benchmarks/results/false_tumours_sampler.json#0+benchmarks/results/false_tumours_mirror.json:--mirror all" \\
        benchmarks/results/false_tumours_mirror.json: --family 2

A run is ``FILE:PLAN_ARGS`` (the run of that file whose ``plan_args`` is that text; empty: the
default plan) or ``FILE#N`` (the file's N-th run), or several of them joined by ``+``. Where several
runs match, each seed is taken from the last run that has it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("raw", "postprocessed")


def runs_of(spec: str) -> list[dict[str, Any]]:
    if "+" in spec:  # several runs pooled: their seeds together
        return [r for part in spec.split("+") for r in runs_of(part)]
    if "#" in spec:
        path, index = spec.rsplit("#", 1)
        return [json.loads(Path(path).read_text())[int(index)]]
    path, plan_args = spec.split(":", 1)
    return [r for r in json.loads(Path(path).read_text()) if r.get("plan_args", "") == plan_args]


def seeds_of(runs: list[dict[str, Any]], family: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        out.update(run["families"].get(family, {}))
    return out


def interval(diffs: list[float], seed: int = 0, draws: int = 10000) -> tuple[float, float, float]:
    d = np.asarray(diffs, dtype=float)
    means = d[np.random.default_rng(seed).integers(0, len(d), (draws, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def line(name: str, s: dict[str, Any]) -> str:
    free = ", ".join(f"{v:.2f}" for v in s["false_tumour_ml_per_free_case"])
    found, total = s["lesions_from_0_5_ml"]
    small = s["recall_by_size"]["<0.5 mL"]
    return (f"| {name} | {s['tumour_dice_tumour_bearing']:.3f} | {s['vessel_dice']:.3f} | {free} | "
            f"{found} of {total} | {small[0]} of {small[1]} | {s['fp_lesions_per_case']:.1f} ({s['fp_ml_per_case']:.2f}) |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the reference run (FILE:PLAN_ARGS or FILE#N)")
    p.add_argument("b", help="the run compared with it")
    p.add_argument("--family", default="2")
    args = p.parse_args(argv)
    a, b = seeds_of(runs_of(args.a), args.family), seeds_of(runs_of(args.b), args.family)
    print("| run, seed, arm | tumour Dice, tumour-bearing | vessel Dice | \"tumour\" mL in each healthy liver | "
          "recall from 0.5 mL | lesions < 0.5 mL found | false lesions per case (mL) |")
    print("|---|---|---|---|---|---|---|")
    for label, seeds in (("A", a), ("B", b)):
        for seed, run in sorted(seeds.items()):
            for arm in ARMS:
                print(line(f"{label}, seed {seed}, {arm}", run["arms"][arm]["summary"]))
    both = sorted(set(a) & set(b))
    print(f"\npaired B - A over seeds {both} (bootstrap 95 % interval over case x seed pairs):")
    for arm in ARMS:
        for cls, only_sick in (("tumour", True), ("vessel", False)):
            diffs = []
            for seed in both:
                ca, cb = a[seed]["arms"][arm]["cases"], b[seed]["arms"][arm]["cases"]
                for case, ra in ca.items():
                    if only_sick and ra["tumour"]["ref_lesions"] == 0:
                        continue
                    da, db = ra["dice"][cls], cb[case]["dice"][cls]
                    if da is not None and db is not None:
                        diffs.append(db - da)
            if diffs:
                mean, lo, hi = interval(diffs)
                print(f"  {arm:13s} {cls}: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] ({len(diffs)} pairs)")
        fa = [x for s in both for x in a[s]["arms"][arm]["summary"]["false_tumour_ml_per_free_case"]]
        fb = [x for s in both for x in b[s]["arms"][arm]["summary"]["false_tumour_ml_per_free_case"]]
        print(f"  {arm:13s} healthy livers' false tumour mL: A {sum(fa):.2f} in {len(fa)}, B {sum(fb):.2f}; "
              f"under 0.5 mL: A {sum(x < 0.5 for x in fa)}, B {sum(x < 0.5 for x in fb)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How well the planner's CPU cost model predicts real training steps.

Run on an idle machine::

    .venv/bin/python benchmarks/cost_model.py --networks arunet uca_net --precisions bf16 fp32

For each network and precision it times real training steps (``measure_step_seconds``: fastest of
3 after a warm-up, batch 2) on a grid of 8- and 16-feature networks and patches, fits the current
model (``FLOPs / rate + voxels * cost``, from the calibration points the planner uses) and the
FLOPs-only model of calibration version 1 (``overhead + FLOPs / rate``, fitted to the two 8-feature
calibration points), and prints both models' relative errors on every grid point. Rows are appended
to ``benchmarks/results/cost_model.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from autoseg.planners.cost import fit_time_model, measure_step_seconds, training_flops
from autoseg.planners.planner import CALIBRATION_POINTS, MIN_BATCH, PlannerOptions, Pricer, plan_topology

GRID = ((16, 48, 48), (32, 96, 96), (40, 64, 80), (48, 96, 128), (64, 128, 160))
OUT = Path(__file__).parent / "results" / "cost_model.jsonl"


def kwargs_for(network: str, patch: tuple[int, ...], base: int, classes: int) -> dict:
    """The network arguments the planner prices for this patch and width (``Pricer.candidate``)."""
    fingerprint = {"channel_names": ["CT"], "labels": {str(k): str(k) for k in range(classes)}}
    pricer = Pricer(fingerprint, PlannerOptions(device="cpu", network=network))
    topology = plan_topology(patch, (1.0, 1.0, 1.0), pricer.options.max_stages)
    return pricer.candidate(topology, base, MIN_BATCH).network_kwargs


def measure(network: str, precision: str, classes: int, max_seconds: float) -> list[dict]:
    rows = []
    for base in (8, 16):
        for patch in GRID:
            kwargs = kwargs_for(network, patch, base, classes)
            flops = training_flops(network, kwargs, 1, classes, patch, MIN_BATCH)
            if rows and flops / max(r["flops"] / r["seconds"] for r in rows) > max_seconds:
                continue  # would take longer than --max-seconds per step
            seconds = measure_step_seconds(network, kwargs, 1, classes, patch, MIN_BATCH, precision=precision)
            rows.append({"base": base, "patch": list(patch), "flops": flops,
                         "voxels": math.prod(patch) * MIN_BATCH, "seconds": seconds})
            print(f"  {network} {precision} {base:2d} {patch}: {flops / 1e9:6.1f} GFLOP {seconds:.3f} s", flush=True)
    return rows


def errors(network: str, precision: str, rows: list[dict]) -> dict:
    calib = [r for r in rows if (r["base"], tuple(r["patch"])) in CALIBRATION_POINTS]
    rate, per_voxel = fit_time_model([(r["flops"], r["voxels"], r["seconds"]) for r in calib])
    old_points = [(8, (16, 48, 48)), (8, (32, 96, 96))]  # calibration version 1
    (f1, t1), (f2, t2) = [(r["flops"], r["seconds"]) for r in rows if (r["base"], tuple(r["patch"])) in old_points]
    old_rate = (f2 - f1) / (t2 - t1) if t2 > t1 else f2 / t2
    old_overhead = max(0.0, t1 - f1 / old_rate)
    for r in rows:
        r["error_v2"] = round((r["flops"] / rate + r["voxels"] * per_voxel) / r["seconds"] - 1, 3)
        r["error_v1"] = round((old_overhead + r["flops"] / old_rate) / r["seconds"] - 1, 3)
    return {"network": network, "precision": precision, "gflops_v2": round(rate / 1e9, 1),
            "ns_per_voxel_v2": round(per_voxel * 1e9, 1), "gflops_v1": round(old_rate / 1e9, 1),
            "max_abs_error_v2": max(abs(r["error_v2"]) for r in rows),
            "max_abs_error_v1": max(abs(r["error_v1"]) for r in rows), "points": rows,
            "machine": f"{platform.processor() or platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
            "time": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", nargs="+", default=["arunet"])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=4.0, help="skip grid points slower than this")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print("| network | precision | base | patch | GFLOP | measured s | v2 error | v1 error |")
    print("|---|---|---|---|---|---|---|---|")
    for network in args.networks:
        for precision in args.precisions:
            result = errors(network, precision, measure(network, precision, args.classes, args.max_seconds))
            for r in result["points"]:
                print(f"| {network} | {precision} | {r['base']} | {'x'.join(map(str, r['patch']))} | "
                      f"{r['flops'] / 1e9:.1f} | {r['seconds']:.3f} | {r['error_v2']:+.0%} | {r['error_v1']:+.0%} |")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

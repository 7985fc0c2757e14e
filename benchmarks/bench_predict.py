"""Prediction time and peak memory on one clinical-size CT on the CPU: one fold and the five folds,
and nnU-Net v2's predictor on the same case.

Run: ``.venv/bin/python benchmarks/bench_predict.py [--slices 100] [--nnunet] [--precision auto]``

Writes a Task08 phantom of 512x512xN voxels at 0.8x0.8x2.5 mm (and four smaller training phantoms at
the same spacing so the planner sees that spacing), plans it for this CPU (``plan_and_preprocess``),
saves five randomly initialised folds of the planned network (time and memory do not depend on the
weights) and times ``autoseg predict`` in a fresh process with one fold and with five, reporting
wall time (process start included), the report's time for the case and its stages, and peak memory:
the process's own maximum resident set, and the summed resident set of its process tree sampled at
10 Hz (the measure nnU-Net gets, whose predictor runs worker processes).

``--nnunet`` also plans the same four training phantoms with nnU-Net v2 (its default 3d_fullres
plan, ``benchmarks/setup_nnunet.sh`` first), writes randomly initialised folds of its network and
times ``nnUNetv2_predict`` on the same case with one fold and no mirroring (``--disable_tta``).

``--busy-neighbour`` times every run beside one busy loop (a Python process spinning on one core,
started before the first run and outside the timed process trees): the laptop that is never idle.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_common import cpu_model
from contention import neighbours, stop
from bench_preprocess import run_measured

from autoseg.io import write_image
from autoseg.networks import build_network
from autoseg.phantom import generate_case, write_task
from autoseg.plans import Plans

SPACING = (2.5, 0.8, 0.8)


def use_trained(trained: Path, work: Path) -> Path:
    """A model folder in ``work`` with ``trained``'s plans and checkpoints; folds it lacks get its
    first fold's weights (time and memory do not depend on the weights, but localised prediction's
    region does, and a trained first fold finds the region a trained ensemble would)."""
    plans = Plans.load(trained / "plans.json")
    model = work / "trained" / plans.network.name
    plans.save(model / "plans.json")
    found = sorted(trained.glob("fold_*/checkpoint_final.pt"))
    if not found:
        raise SystemExit(f"{trained} has no fold_K/checkpoint_final.pt")
    for fold in range(5):
        source = trained / f"fold_{fold}" / "checkpoint_final.pt"
        (model / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source if source.is_file() else found[0], model / f"fold_{fold}" / "checkpoint_final.pt")
    return model


def prepare(work: Path, slices: int) -> tuple[Path, Path]:
    env = {**os.environ, "AUTOSEG_RAW": str(work / "raw"), "AUTOSEG_PREPROCESSED": str(work / "pre"),
           "AUTOSEG_CACHE": str(work / "pre"),
           "AUTOSEG_RESULTS": str(work / "res")}
    write_task(work / "raw", task="Task08", num_training=4, num_test=0, seed=11,
               spacing_range=(SPACING, SPACING))
    subprocess.run([sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", "8", "-j", "1"],
                   env=env, check=True)
    case = generate_case(99, "Task08", shape=(slices, 512, 512), spacing=SPACING)
    image = work / "input" / "case_0000.nii.gz"
    image.parent.mkdir(parents=True, exist_ok=True)
    write_image(image, case.image, case.geometry)
    plans = Plans.load(work / "pre" / "Task08_HepaticVessel" / "plans.json")
    model = work / "res" / "Task08_HepaticVessel" / plans.network.name
    plans.save(model / "plans.json")
    for fold in range(5):
        torch.manual_seed(fold)
        net = build_network(plans.network.name, dict(plans.network.kwargs), plans.num_channels,
                            plans.num_classes)
        (model / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        torch.save({"network": net.state_dict()}, model / f"fold_{fold}" / "checkpoint_final.pt")
    return image, model


def timed_predict(image: Path, model: Path, folds: list[int], out: Path, precision: str,
                  extra: tuple[str, ...] = ()) -> dict:
    """Wall time and peak resident memory of ``autoseg predict`` in a fresh process."""
    if out.exists():
        shutil.rmtree(out)
    argv = ["predict", "-i", str(image), "-o", str(out), "-m", str(model), "-f", *map(str, folds),
            "--precision", precision, *extra]
    code = ("import resource, sys\nfrom autoseg.cli import main\nrc = main(%r)\n"
            "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)" % argv)
    run = run_measured("autoseg", [sys.executable, "-c", code], dict(os.environ), out.parent / f"{out.name}.log",
                       {}, timeout=3600)
    if run.returncode:
        raise SystemExit(f"autoseg predict failed: see {out.parent / f'{out.name}.log'}")
    log_text = (out.parent / f"{out.name}.log").read_text()
    peak_kib = int(log_text.split("MAXRSS_KIB")[1].split()[0])
    report = json.loads((out / "report.json").read_text())["cases"][0]
    stages = report["stage_seconds"]
    return {"tool": "autoseg", "folds": len(folds), "options": list(extra), "precision": report["precision"],
            "localised_share": report.get("localised_share"), "localised_by": report.get("localised_by"),
            "wall_s": run.wall_s,
            "predict_case_s": report["seconds"], "stage_seconds": stages,
            "outside_forward_share": round(1 - stages["network_forward"] / report["seconds"], 3),
            "peak_rss_gib": round(peak_kib / 2**20, 2), "peak_rss_tree_gib": round(run.peak_rss_bytes / 2**30, 2)}


def nnunet_predict(work: Path, image: Path) -> dict:
    """nnU-Net v2's default plan for the same training phantoms, random weights, one fold, no TTA."""
    import nnunet_tool as nn
    from bench_preprocess import to_nnunet_raw

    nn.require_venv()
    root = work / "nnunet"
    to_nnunet_raw(work / "raw" / "Task08_HepaticVessel", root / "raw")
    cfg = nn.configuration(nn.plan(root))
    model, params = nn.write_random_model(root, [0])
    out = root / "out"
    run = run_measured("nnunet", nn.predict_command(image.parent, out, [0]), nn.env(root), root / "predict.log",
                       {}, timeout=3600)
    if run.returncode:
        raise SystemExit(f"nnUNetv2_predict failed: see {root / 'predict.log'}")
    return {"tool": "nnunet", "folds": 1, "tta": False, "wall_s": run.wall_s,
            "peak_rss_tree_gib": round(run.peak_rss_bytes / 2**30, 2), "plan": cfg, "parameters": params}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/predict"))
    p.add_argument("--runs", type=int, nargs="+", default=[1, 5], help="fold counts to time (default: 1 5)")
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "predict.json")
    p.add_argument("--precision", default="auto", help="autoseg predict --precision (default: auto)")
    p.add_argument("--nnunet", action="store_true", help="also time nnU-Net v2's predictor (one fold, no TTA)")
    p.add_argument("--model", type=Path, default=None,
                   help="a trained model folder to time instead of random weights (missing folds get fold 0's)")
    p.add_argument("--localise", action="store_true",
                   help="also time each fold count with --localise (localised prediction)")
    p.add_argument("--variant", nargs="*", default=[], metavar="FLAGS",
                   help="also time each fold count with these predict flags, e.g. '--localise --overlap 0.25'")
    p.add_argument("--busy-neighbour", action="store_true",
                   help="time every run beside one busy loop (a process spinning on one core)")
    args = p.parse_args()
    args.work = args.work.resolve()  # the timed commands run in benchmarks/work
    (Path(__file__).parent / "work").mkdir(exist_ok=True)
    image, model = prepare(args.work, args.slices)
    if args.model is not None:
        model = use_trained(args.model.resolve(), args.work)
    plans = Plans.load(model / "plans.json")
    variants = [(), ("--localise",)] if args.localise else [()]
    variants += [tuple(shlex.split(flags)) for flags in args.variant]
    busy = neighbours("busy1" if args.busy_neighbour else "idle", args.work)
    try:
        rows = [timed_predict(image, model, list(range(n)), args.work / f"out{n}_{i}", args.precision, v)
                for n in args.runs for i, v in enumerate(variants)]
        ref = nnunet_predict(args.work, image) if args.nnunet else None
    finally:
        stop(busy)
    params = sum(t.numel() for t in torch.load(model / "fold_0" / "checkpoint_final.pt",
                                               weights_only=True)["network"].values())
    result = {"machine": f"{platform.node()} {os.cpu_count()} cores", "cpu": cpu_model(), "torch": torch.__version__,
              "neighbour": "one busy loop" if args.busy_neighbour else None,
              "case": f"512x512x{args.slices} at 0.8x0.8x2.5 mm", "patch": list(plans.patch_size),
              "target_spacing": list(plans.target_spacing), "network": plans.network.name,
              "features": plans.network.kwargs["features_per_stage"], "parameters": params, "runs": rows,
              "trained_model": str(args.model) if args.model else None, "load_average": os.getloadavg(),
              "time": time.strftime("%Y-%m-%d %H:%M")}
    if ref is not None:
        result["nnunet"] = ref
        one = next((r for r in rows if r["folds"] == 1), None)
        if one:
            result["ratio_one_fold_wall"] = round(one["wall_s"] / ref["wall_s"], 3)
            result["ratio_one_fold_peak_tree"] = round(one["peak_rss_tree_gib"] / ref["peak_rss_tree_gib"], 3)
    print(json.dumps(result, indent=2))
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The GPU path, run: one prepared command for a machine with a CUDA GPU (issue 23, part 5).

Run on the GPU machine (planned to take under 8 minutes on one GPU; 100 steps per plan)::

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

and on any machine, as CI does, to check the script itself (CPU, tiny, under a minute)::

    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json

What it does, in a temporary work folder:

1. writes a Task08 phantom and fingerprints it;
2. for each GPU memory budget (default 8, 24 and 80 GB) plans with ``--device cuda --gpu-memory B``,
   preprocesses, trains fold 0 for ``--steps`` steps with AMP (the plan's precision, fp16 on CUDA)
   and records the plan (patch, batch, features), its memory estimate, the measured peak
   (``torch.cuda.max_memory_allocated``) and the median step time;
3. trains the middle budget's plan (trained last) again with ``--compile`` (compile time and step
   time);
4. predicts a 512x512x300 CT (a phantom resampled to 0.8 x 0.8 x 1.0 mm) with five folds (the
   fold-0 checkpoint copied to folds 1-4: the same arithmetic as five trained folds) and records the
   time and the peak memory;
5. writes everything to one JSON and prints it.

nnU-Net's default plan is not run here: the GPU machine has no network to install it from. A step
that fails is recorded in the JSON with its error and the check goes on, so one run shows every
problem of the GPU path at once.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from autoseg.cli import main as autoseg  # noqa: E402
from autoseg.io import read_json  # noqa: E402
from autoseg.layout import NUM_FOLDS, PreprocessedDataset, RawDataset, ResultsDataset  # noqa: E402
from autoseg.plans import Plans  # noqa: E402

TASK = "Task08_HepaticVessel"


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                            "cuda_available": torch.cuda.is_available(), "machine": platform.machine()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def step(results: dict[str, Any], name: str, work: Callable[[], dict[str, Any]]) -> None:
    """Run one part of the check; record its figures, or its error and traceback, and go on."""
    t0 = time.perf_counter()
    try:
        results[name] = {**work(), "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as exc:  # the check records every failure of the GPU path, then goes on
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:],
                         "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{name}: {json.dumps(results[name], default=str)[:400]}", flush=True)


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def run(argv: list[str]) -> None:
    try:
        code = autoseg(argv)
    except SystemExit as exc:  # argparse refusing the arguments
        code = exc.code if isinstance(exc.code, int) else 2
    if code != 0:
        raise RuntimeError(f"autoseg {' '.join(argv)} exited with {code}")


def plan_and_train(work: Path, device: str, budget_gb: float, steps: int, compile_: bool,
                   plan_flags: list[str], workers: int) -> dict[str, Any]:
    """Plan under ``budget_gb``, preprocess, train fold 0 for ``steps`` steps; the plan and what it cost."""
    if not compile_:  # the compiled run trains the plan the previous call made
        run(["plan_and_preprocess", "-d", "8", "--only", "plan", "--force", "--device", device,
             "--gpu-memory", str(budget_gb), *plan_flags])
        run(["plan_and_preprocess", "-d", "8", "--only", "preprocess"])
    plans = Plans.load(PreprocessedDataset(work / "pre" / TASK).plans)
    reset_peak(device)
    run(["train", "-d", "8", "-f", "0", "--steps", str(steps), "--iterations", str(min(steps, 50)), "--force",
         "--device", device, "-j", str(workers), *(["--compile"] if compile_ else [])])
    fold = ResultsDataset(work / "res" / TASK).model(plans.network.name).fold(0)
    log = [json.loads(line) for line in fold.log.read_text().splitlines()]
    step_times = [r["step_time_s"] for r in log]
    est = plans.estimates
    measured = peak_gb(device)
    return {"budget_gb": budget_gb, "patch": list(plans.patch_size), "batch": plans.batch_size,
            "features": plans.network.kwargs["features_per_stage"][0], "precision": plans.recipe.precision,
            "memory_estimate_gb": round(est.memory_estimate_bytes / 2**30, 3),
            "memory_budget_gb": round(est.memory_budget_bytes / 2**30, 3), "measured_peak_gb": measured,
            "estimate_over_measured": round(est.memory_estimate_bytes / 2**30 / measured, 3) if measured else None,
            "epochs": len(log), "steps": steps,
            "step_time_s_median": round(statistics.median(step_times[1:] or step_times), 4),
            "step_time_s_first_epoch": round(step_times[0], 4),
            "final_validation": read_json(fold.validation.summary).get("mean_dice") if fold.validation.summary.is_file() else None}


def gpu_plan(work: Path, budget_gb: float) -> dict[str, Any]:
    """The plan ``--device cuda --gpu-memory budget_gb`` makes (planning only)."""
    run(["plan_and_preprocess", "-d", "8", "--only", "plan", "--force", "--device", "cuda",
         "--gpu-memory", str(budget_gb)])
    plans = Plans.load(PreprocessedDataset(work / "pre" / TASK).plans)
    return {"patch": list(plans.patch_size), "batch": plans.batch_size, "precision": plans.recipe.precision,
            "memory_estimate_gb": round(plans.estimates.memory_estimate_bytes / 2**30, 3)}


def big_ct(work: Path, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]) -> Path:
    """A phantom CT resampled onto a clinical grid (linear), as one NIfTI."""
    import SimpleITK as sitk

    source = sorted(RawDataset(work / "raw" / TASK).images_ts.glob("*.nii.gz"))[0]
    image = sitk.ReadImage(str(source))
    size = image.GetSize()
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    out_size = [shape_zyx[2], shape_zyx[1], shape_zyx[0]]
    out_spacing = [spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]]
    origin = [c - (n - 1) / 2 * s for c, n, s in zip(centre, out_size, out_spacing)]
    resampled = sitk.Resample(image, out_size, sitk.Transform(), sitk.sitkLinear, origin, out_spacing,
                              image.GetDirection(), -1000.0, image.GetPixelID())
    path = work / "big" / "ct_0000.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(resampled, str(path))
    return path


def predict_five_folds(work: Path, device: str, shape_zyx: tuple[int, int, int]) -> dict[str, Any]:
    plans = Plans.load(PreprocessedDataset(work / "pre" / TASK).plans)
    model = ResultsDataset(work / "res" / TASK).model(plans.network.name)
    for k in range(1, NUM_FOLDS):  # the same weights five times: five folds' arithmetic
        model.fold(k).root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.fold(0).final, model.fold(k).final)
    ct = big_ct(work, shape_zyx, (1.0, 0.8, 0.8))
    reset_peak(device)
    t0 = time.perf_counter()
    run(["predict", "-i", str(ct), "-o", str(work / "big_out"), "-m", str(model.root), "--device", device,
         "--overwrite"])
    seconds = time.perf_counter() - t0
    report = read_json(work / "big_out" / "ct.report.json")
    return {"shape_zyx": list(shape_zyx), "folds": report["folds"], "predict_s": round(seconds, 2),
            "stage_seconds": report.get("stage_seconds"), "precision": report.get("precision"),
            "measured_peak_gb": peak_gb(device)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, a tiny phantom and plan: checks the script")
    p.add_argument("--budgets", nargs="+", type=float, default=[8, 24, 80], help="GPU memory budgets, GB")
    p.add_argument("--steps", type=int, default=100, help="training steps per plan (default: 100)")
    p.add_argument("-j", "--workers", type=int, default=8, help="augmentation workers on the GPU machine (default: 8)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = p.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    budgets = [0.5] if args.dry_run else args.budgets
    steps = 2 if args.dry_run else args.steps
    big = (40, 64, 64) if args.dry_run else (300, 512, 512)
    # dry run: no CPU calibration (a fixed throughput) and a tiny step-time target, so it stays small
    plan_flags = ["--cpu-gflops", "20", "--step-time", "0.05"] if args.dry_run else []
    work = Path(tempfile.mkdtemp(prefix="gpu_check-")) if args.keep is None else args.keep
    import os

    os.environ.update(AUTOSEG_RAW=str(work / "raw"), AUTOSEG_PREPROCESSED=str(work / "pre"),
                      AUTOSEG_RESULTS=str(work / "res"), AUTOSEG_CACHE=str(work / "cache"))
    results: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "dry_run": args.dry_run,
                               "environment": environment(device),
                               "nnunet": "not run: the GPU machine cannot install it (no network)"}
    t0 = time.perf_counter()
    try:
        phantom = ["phantom", "-o", str(work / "raw"), "--task", "Task08", "-n", "4" if args.dry_run else "8",
                   "--test", "1"]
        step(results, "phantom_and_fingerprint",
             lambda: (run(phantom), run(["plan_and_preprocess", "-d", "8", "--only", "fingerprint"]), {})[-1])
        if args.dry_run:  # the GPU planner itself needs no GPU: check it too, without training its plan
            step(results, "gpu_plan_8gb", lambda: gpu_plan(work, 8.0))
        middle = budgets[len(budgets) // 2]
        workers = 1 if args.dry_run else args.workers
        for budget in [b for b in budgets if b != middle] + [middle]:  # the middle last: compiled next
            step(results, f"plan_train_{budget:g}gb",
                 lambda b=budget: plan_and_train(work, device, b, steps, False, plan_flags, workers))
        if not args.dry_run:
            step(results, f"compiled_{middle:g}gb",
                 lambda: plan_and_train(work, device, middle, steps, True, plan_flags, workers))
        step(results, "predict_five_folds", lambda: predict_five_folds(work, device, big))
    finally:
        results["total_seconds"] = round(time.perf_counter() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    print(f"gpu_check: wrote {args.out} in {results['total_seconds']} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every step ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

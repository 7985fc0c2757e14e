"""Training steps and prediction beside other busy processes: the fixed thread count autoseg used
before (every core, OpenMP threads spinning) against the thread count that follows the cores other
processes leave free (``autoseg.cpu_share.CoreShare``, the default now).

Run: ``.venv/bin/python benchmarks/contention.py [--work DIR] [--full-predict]``

It writes a Task08 phantom at clinical spacing (0.8 x 0.8 x 2.5 mm, four training cases), plans it
for this CPU, and measures, for each neighbourhood (idle; one and two Python busy loops; a second
``autoseg train`` of the same data), two workloads in both thread modes:

- ``train``: real training steps of the planned network, patch and batch (forward, backward, SGD
  update, as the calibration times them);
- ``predict``: forward passes of the planned batch of patches under ``no_grad``: what the sliding
  window of ``autoseg predict`` repeats for every case.

Between steps the adaptive mode calls ``CoreShare.adapt()`` exactly as training and prediction do.
Each measurement warms up for 3 s (so the adaptive mode has looked at the machine), then takes up to
15 steps or 25 s. Neighbours are started outside this process's tree (as an unrelated program
would be) 3 s before. ``--full-predict`` also times ``autoseg predict`` of one fold on a
512x512x100 CT, idle and beside one busy loop, in a fresh process.

Prints the CPU model and a table of median seconds per step and the ratio to the idle step of the
same workload in the fixed mode (today's behaviour); writes benchmarks/results/contention.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from autoseg.cpu_share import CoreShare, others_busy_cores, sample_cpu, usable_cores
from autoseg.phantom import generate_case, write_task
from autoseg.plans import Plans
from autoseg.planners.cost import StepTimer, cpu_model
from autoseg.precision import autocast

SPACING = (2.5, 0.8, 0.8)
RESULTS = Path(__file__).parent / "results" / "contention.json"
WARMUP_S, CAP_S, MAX_STEPS = 3.0, 25.0, 15


def env_for(work: Path) -> dict[str, str]:
    return {**os.environ, "AUTOSEG_RAW": str(work / "raw"), "AUTOSEG_PREPROCESSED": str(work / "pre"),
            "AUTOSEG_CACHE": str(work / "pre"),
            "AUTOSEG_RESULTS": str(work / "res")}


def prepare(work: Path) -> Plans:
    plans_path = work / "pre" / "Task08_HepaticVessel" / "plans.json"
    if not plans_path.is_file():
        write_task(work / "raw", task="Task08", num_training=4, num_test=0, seed=11,
                   spacing_range=(SPACING, SPACING))
        subprocess.run([sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", "8", "-j", "1"],
                       env=env_for(work), check=True)
    return Plans.load(plans_path)


def spawn_outside_tree(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``argv`` re-parented away from this process (double fork); returns its PID."""
    import shlex

    cmd = " ".join(shlex.quote(a) for a in argv)
    out = subprocess.run(["sh", "-c", f"{cmd} >/dev/null 2>&1 & echo $!"], env=env, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.strip())


def neighbours(kind: str, work: Path) -> list[int]:
    busy = [sys.executable, "-c", "while True: pass"]
    if kind == "idle":
        return []
    if kind == "busy1":
        return [spawn_outside_tree(busy)]
    if kind == "busy2":
        return [spawn_outside_tree(busy), spawn_outside_tree(busy)]
    if kind == "train1":
        # a results folder of its own each time, so that a re-plan in between cannot make it refuse
        env = {**env_for(work), "AUTOSEG_RESULTS": str(work / "res_neighbour" / str(time.time_ns()))}
        return [spawn_outside_tree([sys.executable, "-m", "autoseg", "train", "-d", "8", "-f", "0",
                                    "--steps", "100000"], env)]
    raise ValueError(kind)


def stop(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)  # autoseg train's augmentation worker dies with it
        except ProcessLookupError:
            pass
    time.sleep(1.0)


class PredictTimer:
    """Forward passes of the plan's batch of patches, as the sliding window runs them."""

    def __init__(self, plans: Plans):
        from autoseg.networks import build_network

        kwargs = dict(plans.network.kwargs, deep_supervision=False)
        self.net = build_network(plans.network.name, kwargs, plans.num_channels, plans.num_classes).eval()
        self.x = torch.randn((plans.batch_size, plans.num_channels, *plans.patch_size))
        self.precision = plans.recipe.precision

    @torch.no_grad()
    def step(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        with autocast("cpu", self.precision):
            out = self.net(self.x)
        torch.softmax(out.float(), 1)
        return time.perf_counter() - t0, 0.0


def measure(timer, adaptive: bool) -> dict:
    cores = CoreShare(enabled=adaptive)
    start = time.monotonic()
    while time.monotonic() - start < WARMUP_S:
        cores.adapt()
        timer.step()
    times: list[float] = []
    start = time.monotonic()
    while len(times) < MAX_STEPS and time.monotonic() - start < CAP_S:
        cores.adapt()
        times.append(timer.step()[0])
    torch.set_num_threads(len(usable_cores()))
    return {"median_s": statistics.median(times), "min_s": min(times), "steps": len(times),
            "threads_end": cores.threads, "others_end": round(cores.others, 2)}


def others_now(seconds: float = 1.0) -> float:
    before = sample_cpu(usable_cores())
    time.sleep(seconds)
    return round(others_busy_cores(before, sample_cpu(usable_cores())) or 0.0, 2)


def full_predict(work: Path, plans: Plans, kind: str) -> dict:
    """``autoseg predict`` of one fold on a 512x512x100 CT in a fresh process, beside ``kind``."""
    from autoseg.io import write_image
    from autoseg.networks import build_network

    image = work / "input512" / "case_0000.nii.gz"
    model = work / "res" / "Task08_HepaticVessel" / "predict_model"
    if not image.is_file():
        case = generate_case(99, "Task08", shape=(100, 512, 512), spacing=SPACING)
        write_image(image, case.image, case.geometry)
        plans.save(model / "plans.json")
        torch.manual_seed(0)
        net = build_network(plans.network.name, dict(plans.network.kwargs), plans.num_channels, plans.num_classes)
        from autoseg.checkpoint import save_checkpoint

        save_checkpoint(model / "fold_0" / "checkpoint_final.pt", {"network": net.state_dict()})
    pids = neighbours(kind, work)
    time.sleep(3)
    out = work / f"pred512_{kind}_{time.time_ns()}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(image.parent), "-o", str(out),
                    "-m", str(model), "-f", "0"], env=env_for(work), check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    stop(pids)
    return {"neighbours": kind, "wall_s": round(seconds, 1)}


def table(rows: list[dict], kinds: list[str], workloads: list[str]) -> str:
    """Markdown: median seconds per step of each neighbourhood, workload and mode (the median over
    rounds), and its ratio to the idle step of the same workload with fixed threads."""
    idle = {w: statistics.median(r["median_s"] for r in rows if (r["neighbours"], r["workload"], r["mode"])
                                 == ("idle", w, "fixed")) for w in workloads}
    lines = ["| neighbours | others' busy cores | workload | fixed threads (before) | adaptive (now) |",
             "|---|---|---|---|---|"]
    for kind in dict.fromkeys(kinds):
        for workload in workloads:
            cells = []
            for mode in ("fixed", "adaptive"):
                rs = [r for r in rows if (r["neighbours"], r["workload"], r["mode"]) == (kind, workload, mode)]
                med = statistics.median(r["median_s"] for r in rs)
                cells.append(f"{med:.3f} s ({med / idle[workload]:.2f}x, {rs[-1]['threads_end']} thr)")
            before = statistics.median(r["others_before"] for r in rows if r["neighbours"] == kind)
            lines.append(f"| {kind} | {before:.1f} | {workload} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/autoseg_contention"))
    p.add_argument("--kinds", nargs="+", default=["idle", "busy1", "busy2", "train1", "idle"])
    p.add_argument("--full-predict", action="store_true")
    p.add_argument("--report", action="store_true", help="print the table of the last results and stop")
    args = p.parse_args()
    if args.report:
        saved = json.loads(RESULTS.read_text())
        print(f"CPU: {saved['cpu']}, {saved['cores']} cores, {saved['date']}")
        print(table(saved["rows"], [r["neighbours"] for r in saved["rows"]], ["train", "predict"]))
        print("\n".join(json.dumps(f) for f in saved["full_predict"]))
        return 0
    plans = prepare(args.work)
    print(f"CPU: {cpu_model()}, {len(usable_cores())} usable cores, torch {torch.__version__}; "
          f"plan: {plans.network.name} patch {plans.patch_size} batch {plans.batch_size} "
          f"{plans.recipe.precision}, estimated {plans.estimates.step_time_estimate_s:.2f} s/step", flush=True)
    workloads = {"train": StepTimer(plans.network.name, dict(plans.network.kwargs), plans.num_channels,
                                    plans.num_classes, plans.patch_size, plans.batch_size, "cpu",
                                    plans.recipe.precision),
                 "predict": PredictTimer(plans)}
    rows = []
    for kind in args.kinds:
        pids = neighbours(kind, args.work)
        time.sleep(3)
        others = others_now()
        for workload, timer in workloads.items():
            for adaptive in (False, True):
                row = {"neighbours": kind, "others_before": others, "workload": workload,
                       "mode": "adaptive" if adaptive else "fixed", **measure(timer, adaptive)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        stop(pids)
    print("\n" + table(rows, args.kinds, list(workloads)))
    full = []
    if args.full_predict:
        for kind in ("idle", "busy1"):
            full.append(full_predict(args.work, plans, kind))
            print(json.dumps(full[-1]), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu": cpu_model(), "cores": len(usable_cores()), "torch": torch.__version__,
                                   "date": time.strftime("%Y-%m-%d %H:%M"), "plan": {
                                       "patch": plans.patch_size, "batch": plans.batch_size,
                                       "precision": plans.recipe.precision},
                                   "rows": rows, "full_predict": full}, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plans of one dataset made idle and beside busy processes, each from a fresh CPU calibration:
are they the same plan?

Run: ``.venv/bin/python benchmarks/plan_repro.py [--work DIR] [--rounds 2]``

Uses the dataset of ``benchmarks/contention.py`` (a Task08 phantom at 0.8 x 0.8 x 2.5 mm, four
cases). Two parts:

- ``fresh``: each round re-plans it with ``--recalibrate`` (the calibration measured again, not read
  from the cache) idle, beside one Python busy loop and beside a second ``autoseg train`` of the same
  data, the neighbours started outside this process's tree 3 s before: how far apart independent
  calibrations land, and whether the plans still agree.
- ``cached``: as a user's machine goes: the cache is deleted, the first plan is made beside a busy
  loop (calibrating under load), the later ones idle and beside a second training read the cache. Prints, per plan, the patch, batch, base features, the step-time estimate and the
calibration (one-thread throughput, per-voxel cost, speedup and whether it was measured or
assumed), whether every plan equals the first idle one, and the real idle step time of that plan
next to its estimate. Writes benchmarks/results/plan_repro.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from contention import cpu_model, env_for, neighbours, others_now, prepare, stop

from autoseg.cpu_share import usable_cores
from autoseg.io import read_json
from autoseg.plans import Plans
from autoseg.planners.cost import measure_step_seconds

RESULTS = Path(__file__).parent / "results" / "plan_repro.json"


def replan(work: Path, kind: str, recalibrate: bool = True) -> dict:
    pids = neighbours(kind, work)
    time.sleep(3)
    others = others_now()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", "8", "--only", "plan",
                    "--force", *(["--recalibrate"] if recalibrate else [])], env=env_for(work), check=True,
                   capture_output=True)
    seconds = time.perf_counter() - t0
    stop(pids)
    plans = Plans.load(work / "pre" / "Task08_HepaticVessel" / "plans.json")
    [cal] = read_json(work / "pre" / "cpu_calibration.json").values()
    return {"neighbours": kind, "calibration": "fresh" if recalibrate else "cached", "others_busy_before": others,
            "plan_seconds": round(seconds, 1), "patch": list(plans.patch_size),
            "batch": plans.batch_size, "features": plans.network.kwargs["features_per_stage"][0],
            "estimate_s": round(plans.estimates.step_time_estimate_s, 3),
            "one_thread_gflops": round(cal["flops_per_s"] / 1e9, 1),
            "ns_per_voxel": round(cal["seconds_per_voxel"] * 1e9), "speedup": round(cal["speedup"], 2),
            "speedup_source": cal["speedup_source"], "plans": plans.to_dict()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/autoseg_contention"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--kinds", nargs="+", default=["idle", "busy1", "train1"])
    p.add_argument("--parts", nargs="+", choices=("fresh", "cached"), default=["fresh", "cached"])
    args = p.parse_args()
    prepare(args.work)
    print(f"CPU: {cpu_model()}, {len(usable_cores())} usable cores", flush=True)
    rows = []
    for _ in range(args.rounds if "fresh" in args.parts else 0):
        for kind in args.kinds:
            rows.append({"part": "fresh", **replan(args.work, kind)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "plans"}), flush=True)
    if "cached" in args.parts:
        (args.work / "pre" / "cpu_calibration.json").unlink(missing_ok=True)
        for kind, fresh in (("busy1", True), ("idle", False), ("train1", False)):
            rows.append({"part": "cached", **replan(args.work, kind, recalibrate=fresh)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "plans"}), flush=True)
    for part in ("fresh", "cached"):
        group = [r for r in rows if r["part"] == part]
        for r in group:
            r["same_plan_as_first"] = r["plans"] == group[0]["plans"]
    plans = Plans.from_dict(rows[-1]["plans"])
    for r in rows:
        r.pop("plans")
    real = measure_step_seconds(plans.network.name, dict(plans.network.kwargs), plans.num_channels,
                                plans.num_classes, plans.patch_size, plans.batch_size, repeats=5,
                                precision=plans.recipe.precision)
    print("\n| part | neighbours (busy cores) | calibration | patch | batch | features | estimate | one thread "
          "| speedup | same plan as the part's first |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['neighbours']} ({r['others_busy_before']}) | {r['calibration']} | "
              f"{tuple(r['patch'])} | {r['batch']} | {r['features']} | {r['estimate_s']:.3f} s | "
              f"{r['one_thread_gflops']} GFLOP/s + {r['ns_per_voxel']} ns/voxel | {r['speedup']} "
              f"({r['speedup_source']}) | {'yes' if r['same_plan_as_first'] else 'NO'} |")
    print(f"\nreal idle step of the last plan: {real:.3f} s (estimate {rows[-1]['estimate_s']:.3f} s)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu": cpu_model(), "cores": len(usable_cores()),
                                   "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
                                   "real_idle_step_of_last_plan_s": round(real, 3)}, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

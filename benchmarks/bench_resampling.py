"""Resampling benchmark: autoseg's resample_image / resample_labels against nnU-Net v2's resampling.

One CT-sized volume, 1 x 100 x 512 x 512 at 2.5 x 0.8 x 0.8 mm (z, y, x), resampled to 2.5 x 1.6 x 1.6
mm with each tool's 3d_fullres defaults (image: cubic in-plane, z separately with order 0 because the
source is anisotropic; labels: 3 classes, linear, with one-voxel-wide lines of label 2; autoseg
keeping class volumes, its default, and as ``labels_argmax`` without). Each tool runs in a fresh
process of its own venv; the figures are the wall time of each call and the peak resident memory
the call added on top of the process before it (VmHWM after minus VmRSS before), plus the
process's total peak.

Not run by CI. nnU-Net comes from ``benchmarks/.venv-nnunet`` (``benchmarks/setup_nnunet.sh``); without
it only autoseg is measured. From the repository root::

    .venv/bin/python benchmarks/bench_resampling.py [--threads 1] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NNUNET_PY = REPO / "benchmarks" / ".venv-nnunet" / "bin" / "python"

WORKER = r'''
import json, statistics, sys, time
import numpy as np, torch
tool, threads, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
src, dst = (2.5, 0.8, 0.8), (2.5, 1.6, 1.6)
shape, new_shape = (100, 512, 512), (100, 256, 256)
rng = np.random.default_rng(0)
data = rng.standard_normal((1, *shape), dtype=np.float32)
seg = np.zeros(shape, np.uint8)
seg[20:80, 100:400, 100:400] = 1
seg[40:60, 200:260, 200:260] = 2
for i in range(12):  # one-voxel-wide vessels, which label resampling must not thin away
    seg[22 + 5 * i, 110 + 24 * i, 110:390] = 2
    seg[24 + 5 * i, 110:390, 105 + 24 * i] = 2
if tool == "autoseg":
    from autoseg.plans import Resampling
    from autoseg.preprocessing.resampling import resample_image, resample_labels
    image_fn = lambda: resample_image(data, src, dst, Resampling(order_image=3, order_z=0))
    label_fn = lambda: resample_labels(seg, src, dst, num_classes=3)
    argmax_fn = lambda: resample_labels(seg, src, dst, num_classes=3, keep_volume=False)
else:
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape as r
    image_fn = lambda: r(data, new_shape, src, dst, is_seg=False, order=3, order_z=0, force_separate_z=None)
    label_fn = lambda: r(seg[None], new_shape, src, dst, is_seg=True, order=1, order_z=0,
                         force_separate_z=None)
out = {}
fns = [("image", image_fn), ("labels", label_fn)] + ([("labels_argmax", argmax_fn)] if tool == "autoseg" else [])
for name, fn in fns:
    before = status("VmRSS")
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        del result
    out[name] = {"first_s": round(times[0], 3), "median_s": round(statistics.median(times), 3),
                 "added_peak_mib": round((status("VmHWM") - before) / 2**20, 1)}
out["process_peak_mib"] = round(status("VmHWM") / 2**20, 1)
print(json.dumps(out))
'''


def run(python: Path, tool: str, threads: int, repeat: int) -> dict:
    proc = subprocess.run([str(python), "-c", WORKER, tool, str(threads), str(repeat)], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (nnU-Net's resize is single-threaded)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"$ {' '.join(sys.argv)}\nmachine: {platform.processor() or platform.machine()}, "
          f"{platform.platform()}, python {platform.python_version()}")
    results = {"autoseg": run(Path(sys.executable), "autoseg", args.threads, args.repeat)}
    if NNUNET_PY.exists():
        results["nnunet"] = run(NNUNET_PY, "nnunet", args.threads, args.repeat)
    print(json.dumps(results, indent=2))
    if "nnunet" in results:
        for part in ("image", "labels"):
            a, n = results["autoseg"][part], results["nnunet"][part]
            print(f"{part}: time ratio autoseg/nnU-Net {a['median_s'] / n['median_s']:.3f}, added peak "
                  f"memory ratio {a['added_peak_mib'] / max(n['added_peak_mib'], 0.1):.3f}")


if __name__ == "__main__":
    main()

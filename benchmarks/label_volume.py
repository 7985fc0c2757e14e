"""What resampling does to thin label structures: volume kept and round-trip Dice, per class.

Each label map of a raw MSD task folder is resampled to a target spacing (the plans' if given,
else the median of the label maps' spacings) and back to its own grid, once with plain linear +
arg-max (``label_volume: argmax``) and once keeping each class's volume (``keep``, the default).
Printed per mode and class: the volume after the first resampling as a share of the original
(mean, min), the Dice of the round trip against the original (mean, min) with its precision and
recall, and the time of all resamplings. The way back goes through
``probabilities_to_labels`` on the one-hot map, as predictions do.

Not run by CI. From the repository root::

    .venv/bin/python benchmarks/label_volume.py benchmarks/work/race/msd/Task08_HepaticVessel \\
        --plans benchmarks/work/race/autoseg_pre/Task08_HepaticVessel/plans.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from autoseg.io import read_label
    from autoseg.metrics import dice_per_class
    from autoseg.plans import Plans
    from autoseg.preprocessing.resampling import probabilities_to_labels, resample_labels

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", type=Path, help="raw MSD task folder (labelsTr/, optionally labelsTs/)")
    p.add_argument("--plans", type=Path, default=None, help="plans.json whose target spacing to use")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    files = sorted(args.task.glob("labelsTr/*.nii.gz")) + sorted(args.task.glob("labelsTs/*.nii.gz"))
    if not files:
        raise SystemExit(f"no label maps under {args.task}/labelsTr or labelsTs")
    cases = []
    for f in files:
        labels, geom = read_label(f)
        cases.append((labels, tuple(geom.spacing_zyx)))
    classes = sorted({int(k) for labels, _ in cases for k in np.unique(labels) if k})
    num_classes = max(classes) + 1
    if args.plans:
        target = tuple(Plans.load(args.plans).target_spacing)
    else:
        target = tuple(float(s) for s in np.median([s for _, s in cases], axis=0))
    print(f"{len(cases)} label maps from {args.task}, target spacing (z, y, x) {target} mm; "
          f"{platform.processor() or platform.machine()}, {args.threads} threads")
    result = {"task": str(args.task), "target_spacing": target, "cases": len(cases), "modes": {}}
    for mode in ("argmax", "keep"):
        keep = mode == "keep"
        stats: dict[int, dict[str, list[float]]] = {k: {"volume": [], "dice": [], "p": [], "r": []} for k in classes}
        t0 = time.perf_counter()
        for labels, spacing in cases:
            there = resample_labels(labels, spacing, target, num_classes, keep_volume=keep, num_threads=args.threads)
            onehot = np.stack([there == k for k in range(num_classes)]).astype(np.float32)
            back = probabilities_to_labels(onehot, labels.shape, keep_volume=keep, num_threads=args.threads)
            voxel_ratio = np.prod(target) / np.prod(spacing)
            for k in classes:
                ref, moved, pred = labels == k, there == k, back == k
                if not ref.any():
                    continue
                tp = float(np.logical_and(ref, pred).sum())
                stats[k]["volume"].append(moved.sum() * voxel_ratio / ref.sum())
                stats[k]["dice"].append(dice_per_class(back, labels, [k])[k])  # autoseg's one Dice
                stats[k]["p"].append(tp / max(pred.sum(), 1))
                stats[k]["r"].append(tp / ref.sum())
        seconds = time.perf_counter() - t0
        rows = {}
        for k in classes:
            s = {key: np.asarray(v) for key, v in stats[k].items()}
            rows[k] = {"volume_mean": round(float(s["volume"].mean()), 3), "volume_min": round(float(s["volume"].min()), 3),
                       "dice_mean": round(float(s["dice"].mean()), 3), "dice_min": round(float(s["dice"].min()), 3),
                       "precision": round(float(s["p"].mean()), 3), "recall": round(float(s["r"].mean()), 3)}
            print(f"{mode:6s} label {k}: volume kept {rows[k]['volume_mean']:.3f} (min {rows[k]['volume_min']:.3f}), "
                  f"round-trip Dice {rows[k]['dice_mean']:.3f} (min {rows[k]['dice_min']:.3f}), "
                  f"precision {rows[k]['precision']:.3f}, recall {rows[k]['recall']:.3f}")
        print(f"{mode:6s} {2 * len(cases)} resamplings in {seconds:.2f} s")
        result["modes"][mode] = {"classes": rows, "seconds": round(seconds, 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which side of the body each reference lesion lies on, how visible it is, and whether predictions found it.

A model trained without left-right mirroring (the planner's decision where the classes lie on one
side, docs/planning.md) sees a lesion in the left lobe of the liver only where its training cases
have one. This lists, for a task folder's held-out cases (``imagesTs``/``labelsTs``), every reference
lesion of a class (26-connected component, at least ``--min-ml``) with its side: the LPS x of its
centre of mass relative to the body's extent along x (-0.5 the patient's right edge, +0.5 the left;
the body is every voxel above -300 HU), and whether each prediction folder touches it (as
``race_task.case_lesions`` counts a lesion found); then the recall per side, and the sides of the
training cases' lesions (``labelsTr``).

Visibility, to tell a lesion the model cannot see from one it has not learnt: its contrast is the
median HU of its core (the lesion less one voxel of rim, where that leaves any) minus the median of
a ring around it (one to three voxels out, background label, soft tissue -30 to 300 HU: no air, fat or
bone); its CNR is that contrast over the ring's robust SD (from its median absolute deviation), which
holds noise and texture: the same ring and SD as ``train --class-contrast`` draws its CNR against.
Each prediction's coverage is the share of the lesion's voxels it labels with the class. Where a
prediction folder also holds ``<case>.probabilities.npz`` (``predict --save-probabilities``), each
lesion gets that prediction's highest and median probability of the class inside it: a missed lesion
with a highest probability of 0.3 is one a lower threshold would find, one with 0.01 is not. Not run by
CI::

    .venv/bin/python benchmarks/lesion_sides.py benchmarks/work/race_tasks/family2/Task08_HepaticVessel \\
        benchmarks/work/race_f2/predictions/autoseg_20m benchmarks/work/race_f2/predictions/nnunet_small_20m
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.evaluation import components
from autoseg.io import Geometry, read_image, read_label
from autoseg.training.data import median_and_robust_sd, ring_around

BODY_HU = -300.0
#: The soft-tissue HU range of a lesion's surrounding ring (excludes air, fat and bone).
RING_HU = (-30.0, 300.0)
#: CNR bands of the recall table.
CNR_BANDS = ((0.0, 1.0), (1.0, 2.0), (2.0, float("inf")))


def visibility(image: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """Contrast (HU), the ring's robust SD (HU) and CNR of lesion ``mask`` against its surroundings."""
    from scipy import ndimage

    core = ndimage.binary_erosion(mask)
    if not core.any():
        core = mask
    ring = ring_around(mask) & (ref == 0) & (image > RING_HU[0]) & (image < RING_HU[1])
    if not ring.any():
        return float("nan"), float("nan"), float("nan")
    around, sd = median_and_robust_sd(image[ring])
    contrast = float(np.median(image[core])) - around
    return contrast, sd, abs(contrast) / max(sd, 1e-6)


def lps_x(geometry: Geometry, index_x: float) -> float:
    """LPS x (mm) of the array column ``index_x`` of an image whose x axis is the left-right axis
    (``geometry.direction[0]``, ITK's row-major matrix, is then +1 or -1)."""
    return float(geometry.origin[0] + geometry.direction[0] * index_x * geometry.spacing[0])


def case_lesions(image_file: Path, label_file: Path, label: int, min_ml: float) -> list[dict[str, Any]]:
    """Each reference lesion of ``label`` of at least ``min_ml``: its mask, volume, side and visibility."""
    image, geometry = read_image(image_file)
    image = image[0]
    ref, _ = read_label(label_file)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    if np.count_nonzero(np.abs(direction) > 1e-3) != 3 or abs(abs(direction[0, 0]) - 1) > 1e-3:
        raise SystemExit(f"{image_file}: the array's x axis is not the patient's left-right axis; this tool "
                         "reads sides from axis-aligned images stored with x left-right only")
    body = np.flatnonzero((image > BODY_HU).any(axis=(0, 1)))
    if body.size == 0:
        return []
    left_edge, right_edge = sorted((lps_x(geometry, body[0]), lps_x(geometry, body[-1])))
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    labelled, n = components(ref == label)
    out = []
    for i in range(1, n + 1):
        mask = labelled == i
        volume = float(np.count_nonzero(mask)) * voxel_ml
        if volume < min_ml:
            continue
        x = lps_x(geometry, float(np.nonzero(mask)[2].mean()))
        side = (x - left_edge) / max(right_edge - left_edge, 1e-6) - 0.5  # LPS: larger x is the patient's left
        contrast, sd, cnr = visibility(image, ref, mask)
        out.append({"mask": mask, "ml": volume, "side": side, "contrast": contrast, "ring_sd": sd, "cnr": cnr})
    return out


def class_probability(folder: Path, case_file: str, label: int) -> np.ndarray | None:
    """The probability of ``label`` on the case's grid from ``<case>.probabilities.npz`` in ``folder``
    (``predict --save-probabilities``), or None where there is none."""
    path = folder / (case_file.removesuffix(".nii.gz") + ".probabilities.npz")
    if not path.is_file():
        return None
    with np.load(path) as data:
        return np.asarray(data["probabilities"][label], dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", type=Path, help="MSD task folder with imagesTs/labelsTs (and imagesTr/labelsTr)")
    p.add_argument("predictions", type=Path, nargs="*", help="prediction folders (label maps named like the cases)")
    p.add_argument("--label", type=int, default=2, help="the lesion class's value (default 2, Task08's tumour)")
    p.add_argument("--min-ml", type=float, default=0.5, help="smallest lesion counted (default 0.5 mL)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    training = [les["side"] for f in sorted((args.task / "labelsTr").glob("*.nii.gz"))
                for les in case_lesions(args.task / "imagesTr" / f.name, f, args.label, args.min_ml)]
    print(f"training lesions from {args.min_ml} mL: {sum(s > 0 for s in training)} of {len(training)} on the "
          f"patient's left")
    rows = []
    for ref_file in sorted((args.task / "labelsTs").glob("*.nii.gz")):
        lesions = case_lesions(args.task / "imagesTs" / ref_file.name, ref_file, args.label, args.min_ml)
        preds = [read_label(folder / ref_file.name)[0] for folder in args.predictions]
        probs = [class_probability(folder, ref_file.name, args.label) for folder in args.predictions]
        for les in lesions:
            covered = [float(np.mean(pred[les["mask"]] == args.label)) for pred in preds]
            row = {"case": ref_file.name, "ml": round(les["ml"], 2), "side": round(les["side"], 3),
                   "contrast": round(les["contrast"], 1), "ring_sd": round(les["ring_sd"], 1),
                   "cnr": round(les["cnr"], 2), "found": [c > 0 for c in covered],
                   "covered": [round(c, 3) for c in covered]}
            if any(prob is not None for prob in probs):
                row["probability_max"] = [None if prob is None else round(float(prob[les["mask"]].max()), 3)
                                          for prob in probs]
                row["probability_median"] = [None if prob is None else round(float(np.median(prob[les["mask"]])), 3)
                                             for prob in probs]
            rows.append(row)
    for row in sorted(rows, key=lambda r: r["side"]):
        marks = " ".join(f"found {c:.2f}" if f else "missed" for f, c in zip(row["found"], row["covered"]))
        if "probability_max" in row:
            marks += "  p max " + " ".join("-" if v is None else f"{v:.2f}" for v in row["probability_max"])
        print(f"{row['case']}  {row['ml']:7.2f} mL  side {row['side']:+.2f}  contrast {row['contrast']:+6.1f} HU  "
              f"CNR {row['cnr']:5.2f}  {marks}")
    summary = {}
    for k, folder in enumerate(args.predictions):
        per_side = {}
        for name, keep in (("right", lambda s: s <= 0), ("left", lambda s: s > 0)):
            chosen = [r["found"][k] for r in rows if keep(r["side"])]
            per_side[name] = [sum(chosen), len(chosen)]
        for lo, hi in CNR_BANDS:
            chosen = [r["found"][k] for r in rows if lo <= r["cnr"] < hi]
            per_side[f"cnr {lo:g}-{hi:g}"] = [sum(chosen), len(chosen)]
        summary[str(folder)] = per_side
        print(f"{folder}: " + ", ".join(f"{name} {n} of {m}" for name, (n, m) in per_side.items()))
    if args.json:
        args.json.write_text(json.dumps({"task": str(args.task), "min_ml": args.min_ml, "training_sides": training,
                                         "lesions": rows, "recall_by_side_and_cnr": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

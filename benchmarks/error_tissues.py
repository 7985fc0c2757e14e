"""Where a model's errors on phantom test cases lie, by the tissue the phantom painted there.

The phantom generator is deterministic, so the tissue map behind each test case (liver, stomach,
gallbladder, bowel...) can be drawn again from the task's ``phantom.json``. For each prediction
folder this prints, per foreground class: the false-positive voxels of components that touch no
reference voxel of the class, by the majority tissue of the component, and how many cases have
such components; the false-positive voxels on the border of a found object; and the false
negatives. Run from the repository root::

    .venv/bin/python benchmarks/error_tissues.py TASK_FOLDER PREDICTIONS [PREDICTIONS ...]

``TASK_FOLDER`` is a phantom task (``imagesTs``, ``labelsTs``, ``phantom.json``); each
``PREDICTIONS`` folder holds one label map per test case, named as in ``labelsTs``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import cc3d
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autoseg.io import read_json, read_label  # noqa: E402
from autoseg.phantom import TASKS, case_seed, generate_case  # noqa: E402
from autoseg.phantom_anatomy import TISSUES  # noqa: E402
from autoseg.phantom_family2 import generate_case as generate_case2, tumour_free_indices  # noqa: E402
from autoseg.phantom_family2_shapes import TISSUES2  # noqa: E402

TISSUE_NAMES = {v: k for k, v in TISSUES.items()}
#: Tissue value -> name, per phantom family.
FAMILY_TISSUE_NAMES = {1: TISSUE_NAMES, 2: {v: k for k, v in TISSUES2.items()}}


def tissue_maps(task: Path, only: set[str] | None = None) -> dict[str, np.ndarray]:
    """The phantom's tissue map of every test case of ``task`` (or of those named in ``only``), drawn
    again from its parameters (families 1 and 2)."""
    params = read_json(task / "phantom.json")
    family = int(params.get("family", 1))
    if family not in FAMILY_TISSUE_NAMES:
        raise SystemExit(f"{task}: phantom family {family} has no tissue map here (families 1 and 2)")
    prefix = TASKS[params["task"]].prefix
    spacing_range = tuple(tuple(v) for v in params["spacing_range"]) if params["spacing_range"] else None
    shape = tuple(params["shape"]) if params["shape"] else None
    free = (tumour_free_indices(params["seed"], params["num_training"], params["num_test"], params["tumour_free_share"])
            if family == 2 else set())
    out = {}
    for ref in sorted((task / "labelsTs").glob("*.nii.gz")):
        if only is not None and ref.name not in only:
            continue
        index = int(ref.name[len(prefix) + 1:].split(".")[0])
        seed = case_seed(params["seed"], index)
        case = (generate_case2(seed, params["task"], shape=shape, spacing_range=spacing_range, tumour_free=index in free)
                if family == 2 else generate_case(seed, params["task"], shape=shape, spacing_range=spacing_range))
        out[ref.name] = case.tissues
    return out


def tissue_names(task: Path) -> dict[int, str]:
    """Tissue value -> name for the phantom family of ``task``."""
    return FAMILY_TISSUE_NAMES[int(read_json(task / "phantom.json").get("family", 1))]


def error_tissues(task: Path, predictions: Path, tissues: dict[str, np.ndarray],
                  labels: dict[int, str]) -> dict[str, dict]:
    """Per class: false-positive component voxels by tissue, cases with any, border FP, FN."""
    names = tissue_names(task)
    out = {}
    for label, name in labels.items():
        by_tissue: collections.Counter = collections.Counter()
        cases_with_fp, border_fp, fn = 0, 0, 0
        for case, tis in tissues.items():
            ref, _ = read_label(task / "labelsTs" / case)
            pred, _ = read_label(predictions / case)
            if pred.shape != tis.shape:
                raise SystemExit(f"{predictions / case}: shape {pred.shape}, the phantom's is {tis.shape}")
            fp = (pred == label) & (ref != label)
            fn += int(((ref == label) & (pred != label)).sum())
            components = cc3d.connected_components(pred == label, connectivity=26)
            touching = np.unique(components[(ref == label) & (components > 0)])
            stray = fp & (components > 0) & ~np.isin(components, touching)
            border_fp += int((fp & ~stray).sum())
            if stray.any():
                cases_with_fp += 1
                for comp in np.unique(components[stray]):
                    m = components == comp
                    by_tissue[names[int(np.bincount(tis[m].ravel()).argmax())]] += int(m.sum())
        out[name] = {"stray_fp_by_tissue": dict(by_tissue.most_common()), "cases_with_stray_fp": cases_with_fp,
                     "border_fp": border_fp, "fn": fn, "cases": len(tissues)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", type=Path)
    p.add_argument("predictions", type=Path, nargs="+")
    args = p.parse_args(argv)
    dataset = read_json(args.task / "dataset.json")
    labels = {int(k): v for k, v in dataset["labels"].items() if int(k) != 0}
    tissues = tissue_maps(args.task)
    for folder in args.predictions:
        print(json.dumps({"predictions": str(folder), **error_tissues(args.task, folder, tissues, labels)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-of-fold validation: sliding-window prediction of the fold's held-out cases, per-class Dice.

Patch-based validation during training is a cheap trend; this is the score that counts. Each
validation case is predicted whole on its preprocessed grid (Gaussian-weighted sliding window, as
``autoseg predict`` does), compared with its preprocessed label map, and written back on the
case's original grid as ``validation/<case>.nii.gz`` so that ``autoseg evaluate`` can score it
against the raw labels (and kept on the preprocessed grid as ``<case>.pred.npz``, from which
``autoseg find_best`` decides the post-processing). ``validation/summary.json`` holds per-case and mean per-class Dice; the
mean never includes the background, and a class absent from both reference and prediction of a
case is left out of that case's mean (reported as null).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.io import Geometry, atomic_path, write_image, write_json
from autoseg.metrics import dice_per_class, mean_foreground
from autoseg.plans import Plans
from autoseg.preprocessing.preprocess import restore_to_original
from autoseg.sliding_window import predict_sliding_window
from autoseg.training.data import CaseStore

log = logging.getLogger(__name__)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def validate_fold(network: torch.nn.Module, plans: Plans, store: CaseStore, out_dir: Path,
                  device: str = "cpu", write_predictions: bool = True) -> dict[str, Any]:
    """Predict every case of ``store`` and write ``out_dir/summary.json``; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {int(k): v for k, v in plans.labels.items() if int(k) != 0}
    was_ds = getattr(network, "deep_supervision", False)
    network.deep_supervision = False
    network.eval()
    per_case: dict[str, dict[str, float | None]] = {}
    t0 = time.perf_counter()
    try:
        for case in store.cases:
            array = store.array(case)
            probs = predict_sliding_window(network, np.asarray(array[:-1]), plans.patch_size,
                                           plans.num_classes, 0.5, plans.batch_size, (), device)
            pred = probs.argmax(0).astype(np.uint8)
            ref = np.asarray(array[-1]).round().astype(np.uint8)
            scores = dice_per_class(pred, ref, sorted(names))
            per_case[case] = {names[k]: _nan_to_none(v) for k, v in scores.items()}
            per_case[case]["mean_foreground"] = _nan_to_none(mean_foreground(scores))
            if write_predictions:
                _write_on_original_grid(pred, store.properties(case), out_dir / f"{case}.nii.gz")
                with atomic_path(out_dir / f"{case}.pred.npz") as tmp:  # for post-processing decisions
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, labels=pred)
    finally:
        network.deep_supervision = was_ds
    mean = {name: _mean([per_case[c][name] for c in per_case]) for name in names.values()}
    summary = {"checkpoint": "final", "cases": per_case, "mean_dice": mean,
               "mean_foreground_dice": _mean([v for v in mean.values()]),
               "seconds": round(time.perf_counter() - t0, 2),
               "space": "preprocessed grid (target spacing, body crop)"}
    write_json(out_dir / "summary.json", summary)
    log.info("validation of %d cases: %s", len(per_case), {k: v and round(v, 3) for k, v in mean.items()})
    return summary


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _write_on_original_grid(pred: np.ndarray, properties: dict[str, Any], path: Path) -> None:
    labels = restore_to_original(pred, properties)
    write_image(path, labels, Geometry.from_dict(properties["original_geometry"]))

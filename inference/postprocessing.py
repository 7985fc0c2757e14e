"""Post-processing decided from cross-validation and stored with the model.

The candidate, per foreground class: keep only the class's largest connected component (26-
connectivity), which removes scattered false positives of a class that is one object per patient
(the liver) and harms a class with several objects (tumours, vessel trees). It is enabled for a
class only where it raises that class's mean Dice over all cross-validation cases (the folds'
validation predictions on the preprocessed grid against the preprocessed labels). The decision and
its evidence go to ``postprocessing.json`` in the model folder; ``autoseg predict`` applies it and
``autoseg export`` ships it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import cc3d
import numpy as np

from autoseg.io import read_json, write_json
from autoseg.metrics import dice_per_class

log = logging.getLogger(__name__)

FILE = "postprocessing.json"
PREDICTION_SUFFIX = ".pred.npz"  # fold validation's prediction on the preprocessed grid


def keep_largest_component(labels: np.ndarray, label: int) -> np.ndarray:
    """``labels`` with every component of ``label`` but the largest set to background (a copy)."""
    out = labels.copy()
    mask = labels == label
    if not mask.any():
        return out
    components = cc3d.connected_components(mask, connectivity=26)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out[mask & (components != int(sizes.argmax()))] = 0
    return out


def apply_postprocessing(labels: np.ndarray, decision: dict[str, Any] | None) -> np.ndarray:
    """Apply a decision read from ``postprocessing.json`` (None: unchanged)."""
    for label in (decision or {}).get("keep_largest_component", []):
        labels = keep_largest_component(labels, int(label))
    return labels


def _cv_pairs(model_dir: Path, data_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for pred_file in sorted(model_dir.glob(f"fold_*/validation/*{PREDICTION_SUFFIX}")):
        case = pred_file.name[: -len(PREDICTION_SUFFIX)]
        array_file = data_dir / f"{case}.npy"
        if not array_file.is_file():
            log.warning("no preprocessed case for %s; left out of the post-processing decision", pred_file)
            continue
        pred = np.load(pred_file)["labels"]
        ref = np.asarray(np.load(array_file, mmap_mode="r")[-1]).round().astype(np.uint8)
        pairs.append((case, pred, ref))
    return pairs


def _mean_dice(pairs: list[tuple[np.ndarray, np.ndarray]], label: int) -> float:
    values = [dice_per_class(p, r, [label])[label] for p, r in pairs]
    present = [v for v in values if not math.isnan(v)]
    return float(np.mean(present)) if present else math.nan


def determine_postprocessing(model_dir: Path, data_dir: Path, labels: dict[int, str]) -> dict[str, Any] | None:
    """Decide per class from the folds' validation predictions; write and return the decision.

    Returns None (and writes nothing) when no fold has validation predictions.
    """
    cases = _cv_pairs(model_dir, data_dir)
    if not cases:
        return None
    pairs = [(p, r) for _, p, r in cases]
    enabled, evidence = [], {}
    for label, name in sorted(labels.items()):
        if label == 0:
            continue
        before = _mean_dice(pairs, label)
        after = _mean_dice([(keep_largest_component(p, label), r) for p, r in pairs], label)
        better = not math.isnan(before) and after > before
        evidence[name] = {"label": label, "dice_before": before, "dice_after": after, "enabled": better}
        if better:
            enabled.append(label)
    decision = {"keep_largest_component": enabled, "evidence": evidence, "cases": len(cases),
                "rule": "keep the largest component of a class where that raises its mean CV Dice"}
    write_json(model_dir / FILE, decision)
    log.info("post-processing from %d CV cases: keep the largest component of %s", len(cases),
             [labels[k] for k in enabled] or "no class")
    return decision


def load_postprocessing(model: Any) -> dict[str, Any] | None:
    """The decision stored with a model folder, an ONNX export or an archive (None if absent)."""
    members = getattr(model, "members", None)
    if members is not None:
        import json

        return json.loads(members[FILE]) if FILE in members else None
    path = Path(model.folder) / FILE
    return read_json(path) if path.is_file() else None

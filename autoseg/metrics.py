"""Overlap metrics per foreground class. Background is never averaged in: a Dice that counts the
background is dominated by it and reads near 1 for a network that predicts nothing."""
from __future__ import annotations

import math

import numpy as np


def confusion(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, tuple[int, int, int]]:
    """True positives, false positives and false negatives of each label in ``labels``."""
    out = {}
    for lab in labels:
        p, r = pred == lab, ref == lab
        tp = int(np.count_nonzero(p & r))
        out[lab] = (tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp)
    return out


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice; NaN when both reference and prediction are empty (callers decide how to report it)."""
    denom = 2 * tp + fp + fn
    return math.nan if denom == 0 else 2 * tp / denom


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, float]:
    return {lab: dice_from_counts(*c) for lab, c in confusion(pred, ref, labels).items()}


def mean_foreground(scores: dict[int, float]) -> float:
    """Mean over foreground classes, ignoring NaN (class absent in both); NaN if all absent."""
    values = [v for k, v in scores.items() if k != 0 and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def mean_present(values: list[float | None]) -> float | None:
    """Mean of the values that are neither None nor NaN; None when there are none."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(present)) if present else None


def case_dice(pred: np.ndarray, ref: np.ndarray, names: dict[int, str]) -> dict[str, float | None]:
    """Dice of each named foreground class and their mean (``mean_foreground``); None, not NaN, for
    a class absent from both, so the result is JSON."""
    scores = dice_per_class(pred, ref, sorted(names))
    out: dict[str, float | None] = {names[k]: mean_present([v]) for k, v in scores.items()}
    out["mean_foreground"] = mean_present([mean_foreground(scores)])
    return out

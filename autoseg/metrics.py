"""Overlap metrics per foreground class, and the statistics of a metric over cases.

The one Dice of autoseg: ``autoseg evaluate``, fold validation, ``summarize``, ``find_best``, the
ensembles, the post-processing decision, the training loop's patch validation and the benchmarks
all compute it with :func:`dice_from_counts`, under one convention (docs/evaluation.md, "A class
absent from reference and prediction"): a class absent from both the reference and the prediction
of a case is **not scored** in that case (NaN here, null in JSON) and is left out of every mean,
median and interval over cases, as nnU-Net and MONAI do. Background is never averaged in: a Dice
that counts the background is dominated by it and reads near 1 for a network that predicts nothing.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autoseg.partial_labels import LabelSpace

#: Bootstrap of the mean over cases: resamples, interval level, and the seed used unless told.
BOOTSTRAP_RESAMPLES = 2000
INTERVAL_LEVEL = 0.95
DEFAULT_SEED = 0
INTERVAL_METHOD = (f"{INTERVAL_LEVEL:.0%} percentile bootstrap of the mean over cases (cases resampled with "
                   f"replacement, {BOOTSTRAP_RESAMPLES} resamples, numpy default_rng(seed))")


def confusion(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, tuple[int, int, int]]:
    """True positives, false positives and false negatives of each label in ``labels``."""
    out = {}
    for lab in labels:
        p, r = pred == lab, ref == lab
        tp = int(np.count_nonzero(p & r))
        out[lab] = (tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp)
    return out


def ratio(num: float, den: float, absent: bool) -> float:
    """``num / den`` of a class in a case: NaN when the class is absent from reference and prediction
    (not scored), 0 when only the denominator is zero (a miss or a false alarm scores zero)."""
    if absent:
        return math.nan
    return 0.0 if den == 0 else float(num) / float(den)


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice 2TP / (2TP + FP + FN); NaN when reference and prediction are both empty (not scored).

    >>> dice_from_counts(3, 1, 2), dice_from_counts(0, 0, 4), dice_from_counts(0, 0, 0)
    (0.6666666666666666, 0.0, nan)
    """
    return ratio(2 * tp, 2 * tp + fp + fn, tp + fp + fn == 0)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: list[int],
                   space: LabelSpace | None = None) -> dict[int, float]:
    """Dice of each label; with a ``space`` holding partial labels (:mod:`autoseg.partial_labels`),
    each class is scored as the reference annotates it and is NaN (not scored) where it is not."""
    if space is not None and space.is_partial:
        counts = space.confusion(pred, ref, labels)
        return {lab: math.nan if c is None else dice_from_counts(*c) for lab, c in counts.items()}
    return {lab: dice_from_counts(*c) for lab, c in confusion(pred, ref, labels).items()}


def mean_foreground(scores: dict[int, float]) -> float:
    """Mean over foreground classes, ignoring NaN (class absent in both); NaN if all absent."""
    values = [v for k, v in scores.items() if k != 0 and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def scored(values: Sequence[float | None]) -> list[float]:
    """The values that are neither None nor NaN: the cases in which a metric is defined."""
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def mean_present(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are neither None nor NaN; None when there are none."""
    present = scored(values)
    return float(np.mean(present)) if present else None


def median_present(values: Sequence[float | None]) -> float | None:
    """Median of the values that are neither None nor NaN; None when there are none."""
    present = scored(values)
    return float(np.median(present)) if present else None


def bootstrap_interval(values: Sequence[float | None], seed: int = DEFAULT_SEED,
                       resamples: int = BOOTSTRAP_RESAMPLES,
                       level: float = INTERVAL_LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of the defined values (None/NaN left out): the cases
    are resampled with replacement ``resamples`` times from ``numpy.random.default_rng(seed)``. The
    same values and seed give the same interval. None when no value is defined.

    >>> bootstrap_interval([0.5, None, 0.5])
    (0.5, 0.5)
    """
    present = np.asarray(scored(values))
    if present.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = present[rng.integers(0, present.size, (resamples, present.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def case_dice(pred: np.ndarray, ref: np.ndarray, names: dict[int, str],
              space: LabelSpace | None = None) -> dict[str, float | None]:
    """Dice of each named foreground class and their mean (``mean_foreground``); None, not NaN, for
    a class absent from both (or, with partial labels, not annotated in ``ref``), so the result is JSON."""
    scores = dice_per_class(pred, ref, sorted(names), space)
    out: dict[str, float | None] = {names[k]: mean_present([v]) for k, v in scores.items()}
    out["mean_foreground"] = mean_present([mean_foreground(scores)])
    return out

"""benchmarks/model_ensemble.py: averaging models' probabilities and scoring the result.

Checked on small probability maps whose answers are known by construction: averaging two members
decides voxels neither decides alone the same way, a stray foreground component is dropped after
the average, and each reference convention scores the classes it labels.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_modules import load_benchmark

me = load_benchmark("model_ensemble")


def softmax_of(labels: np.ndarray, confidence: float, classes: int = 4) -> np.ndarray:
    """Probabilities ``(K, *labels.shape)`` that put ``confidence`` on each voxel's label."""
    rest = (1.0 - confidence) / (classes - 1)
    out = np.full((classes, *labels.shape), rest, dtype=np.float16)
    for k in range(classes):
        out[k][labels == k] = confidence
    return out


def test_the_average_decides_and_one_organ_is_kept() -> None:
    shape = (4, 8, 8)
    sure, unsure = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    sure[1:3, 2:6, 2:6] = 1  # one member: a liver block, sure of it
    unsure[1:3, 2:6, 2:4] = 2  # the other: half of it vessel, barely
    unsure[1:3, 2:6, 4:6] = 1
    unsure[0, 0, 7] = 1  # and a stray voxel of liver far away, which the other member is as sure of
    stray = sure.copy()
    stray[0, 0, 7] = 1
    a, b = softmax_of(stray, 0.9), softmax_of(unsure, 0.4)
    labels = me.ensemble_labels([a, b])
    assert set(np.unique(labels)) == {0, 1}  # the sure member outweighs the unsure vessel
    assert np.array_equal(labels > 0, sure > 0)  # the stray voxel is not the largest component: dropped
    single = me.ensemble_labels([b])
    assert (single == 2).sum() == 16 and single[0, 0, 7] == 0  # alone, the unsure member's own arg-max


def test_each_reference_convention_scores_its_classes() -> None:
    pred = np.zeros((2, 4, 4), np.uint8)
    pred[0] = 1
    pred[1, :2] = 3
    lvt = pred.copy()
    task03 = np.where(pred == 3, 2, pred).astype(np.uint8)
    assert me.case_scores(pred, lvt, "lvt") == {"liver": 1.0, "vessel": None, "tumour": 1.0}
    assert me.case_scores(pred, task03, "task03") == {"liver": 1.0, "tumour": 1.0}
    assert me.case_scores(pred, lvt > 0, "liver") == {"liver": 1.0}
    half = lvt.copy()
    half[0, :2] = 0  # the reference's liver is 16 voxels, all predicted; the prediction's is 24
    assert me.case_scores(pred, half, "lvt")["liver"] == pytest.approx(2 * 16 / (24 + 16))


def test_sets_are_named_with_their_convention() -> None:
    assert me.parse_set("dev=a/img:a/lab") == ("dev", me.Path("a/img"), me.Path("a/lab"), "lvt")
    assert me.parse_set("f1=i:l:task03")[3] == "task03"
    for bad in ("dev=a", "dev=a:b:other", "=a:b"):
        with pytest.raises(SystemExit, match="NAME=IMAGES:LABELS"):
            me.parse_set(bad)

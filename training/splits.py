"""Five seeded cross-validation folds, written once to ``splits.json`` and reused (editable by hand)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io import read_json, write_json

NUM_FOLDS = 5


def make_splits(cases: list[str], seed: int, num_folds: int = NUM_FOLDS) -> list[dict[str, list[str]]]:
    """Shuffle the sorted case list with ``seed`` and deal it into ``num_folds`` validation sets."""
    if len(cases) < 2:
        raise AutosegError(f"cross-validation needs at least 2 cases, found {len(cases)}",
                           fix="add training cases to the dataset")
    order = sorted(cases)
    perm = np.random.default_rng(seed).permutation(len(order))
    folds = min(num_folds, len(order))
    val_sets = [sorted(order[i] for i in perm[f::folds]) for f in range(folds)]
    splits = [{"train": sorted(set(order) - set(v)), "val": v} for v in val_sets]
    while len(splits) < num_folds:  # fewer cases than folds: repeat folds so every index exists
        splits.append(splits[len(splits) % folds])
    return splits


def load_or_create_splits(path: Path, cases: list[str], seed: int) -> list[dict[str, list[str]]]:
    """Read ``splits.json`` if present (checking it names known cases), else create and write it."""
    if path.is_file():
        splits = read_json(path)
        known = set(cases)
        if not isinstance(splits, list) or not all({"train", "val"} <= set(s) for s in splits):
            raise AutosegError("splits.json must be a list of {\"train\": [...], \"val\": [...]}", path,
                               "repair it or delete it to recreate the default 5 folds")
        unknown = sorted({c for s in splits for c in s["train"] + s["val"]} - known)
        if unknown:
            raise AutosegError(f"splits.json names cases that are not preprocessed: {unknown[:5]}", path,
                               "delete splits.json or re-run plan_and_preprocess")
        return splits
    splits = make_splits(cases, seed)
    write_json(path, splits)
    return splits

"""Five seeded cross-validation folds, written once to ``splits.json`` and reused (editable by hand).

With fewer training cases than folds there are only as many distinct folds as cases: ``splits.json``
then holds that many, and training a fold beyond them is refused (naming the case count) rather than
silently repeating an earlier fold, as autoseg did before. nnU-Net stops with scikit-learn's KFold error
when it has to create 5 folds from fewer cases, and answers a fold beyond its split file with a seeded
random 80:20 split, which for so few cases is again a repeat of another fold; a clear refusal is better.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io import read_json, write_json
from autoseg.layout import NUM_FOLDS

REGENERATE_FIX = "delete this file to regenerate the default folds, or repair it by hand"


class Splits(list):
    """The folds of ``splits.json``. Asking for a fold that the file lacks, that has no validation
    cases or that repeats an earlier fold's validation set raises an :class:`AutosegError` instead of
    an ``IndexError`` or a silent repeat."""

    def __init__(self, folds: list[dict[str, list[str]]], path: Path, num_cases: int):
        super().__init__(folds)
        self.path = path
        self.num_cases = num_cases

    def __getitem__(self, fold: Any) -> Any:
        if not isinstance(fold, int):
            return super().__getitem__(fold)
        distinct = min(NUM_FOLDS, self.num_cases)
        if not 0 <= fold < len(self):
            if len(self) < distinct:
                raise AutosegError(f"the splits file holds {len(self)} fold(s), so fold {fold} does not exist",
                                   self.path, REGENERATE_FIX)
            raise _too_few_cases(fold, self.num_cases, self.path)
        split = list.__getitem__(self, fold)
        if not split["val"]:
            raise AutosegError(f"fold {fold} in the splits file has no validation cases", self.path,
                               REGENERATE_FIX if len(self) < distinct else _more_cases(self.num_cases))
        earlier = [f for f in range(fold) if sorted(list.__getitem__(self, f)["val"]) == sorted(split["val"])]
        if earlier:
            problem = f"fold {fold} in the splits file repeats fold {earlier[0]} (same validation cases)"
            if self.num_cases < NUM_FOLDS:
                raise _too_few_cases(fold, self.num_cases, self.path, problem)
            raise AutosegError(problem, self.path, REGENERATE_FIX)
        return split


def _more_cases(num_cases: int) -> str:
    return (f"add training cases (5 or more give 5 distinct folds), or train only folds 0-{num_cases - 1} "
            f"(-f {' '.join(str(f) for f in range(num_cases))})")


def _too_few_cases(fold: int, num_cases: int, path: Path, problem: str = "") -> AutosegError:
    return AutosegError(f"{problem + '; ' if problem else ''}{num_cases} training cases give only "
                        f"{num_cases} distinct folds, so fold {fold} would have no validation cases of "
                        "its own", path, _more_cases(num_cases))


def make_splits(cases: list[str], seed: int, num_folds: int = NUM_FOLDS) -> list[dict[str, list[str]]]:
    """Shuffle the sorted case list with ``seed`` and deal it into ``min(num_folds, cases)``
    validation sets."""
    if len(cases) < 2:
        raise AutosegError(f"cross-validation needs at least 2 cases, found {len(cases)}",
                           fix="add training cases to the dataset")
    order = sorted(cases)
    perm = np.random.default_rng(seed).permutation(len(order))
    folds = min(num_folds, len(order))
    val_sets = [sorted(order[i] for i in perm[f::folds]) for f in range(folds)]
    return [{"train": sorted(set(order) - set(v)), "val": v} for v in val_sets]


def _read_splits(path: Path) -> list[dict[str, list[str]]]:
    """``splits.json`` parsed and checked for shape; damage is an error naming the file."""
    try:
        splits = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AutosegError(f"the splits file cannot be read ({type(exc).__name__}: {str(exc)[:120]})", path,
                           REGENERATE_FIX) from None
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and {"train", "val"} <= set(s) and isinstance(s["train"], list)
            and isinstance(s["val"], list) and all(isinstance(c, str) for c in s["train"] + s["val"])
            for s in splits):
        raise AutosegError("the splits file must be a non-empty list of {\"train\": [case, ...], \"val\": "
                           "[case, ...]}", path, REGENERATE_FIX)
    return splits


def load_or_create_splits(path: Path, cases: list[str], seed: int) -> Splits:
    """Read ``splits.json`` if present (checking it names known cases), else create and write it."""
    if path.is_file():
        splits = _read_splits(path)
        unknown = sorted({c for s in splits for c in s["train"] + s["val"]} - set(cases))
        if unknown:
            raise AutosegError(f"the splits file names cases that are not preprocessed: {unknown[:5]}", path,
                               "delete the file or re-run plan_and_preprocess")
        return Splits(splits, path, len(cases))
    splits = make_splits(cases, seed)
    write_json(path, splits)
    return Splits(splits, path, len(cases))

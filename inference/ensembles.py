"""Ensembles of networks chosen by cross-validation, as ``autoseg find_best`` builds them.

Every fold's validation keeps its softmax on the preprocessed grid (``<case>.pred.npz``,
``probabilities`` quantised to uint8). For every combination of two or more networks of a dataset
that have all folds validated and share their preprocessing (target spacing, crop, normalisation:
their probability maps lie on the same grid), the members' probabilities of each cross-validation
case are averaged and scored exactly like a single network's fold validation. The result is an
ensemble folder ``<dataset>/ensemble__<a>__<b>/`` holding ``ensemble.json`` (the members) and the
same ``fold_K/validation/summary.json`` and ``<case>.pred.npz`` (labels) a network folder holds, so
``summarize`` lists it, ``find_best`` can choose it, post-processing is decided for it like for a
network, and ``predict -d`` / ``predict -m`` run it (:class:`EnsembleModel`).

An ensemble is scored from the uint8 probabilities, a single network's fold validation from float32
ones: the arg-max can differ only where two classes lie within 1/255 of each other.
"""
from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io import atomic_path, read_json, write_json
from autoseg.metrics import case_dice
from autoseg.plans import Plans
from autoseg.preprocessing.storage import load_labels
from autoseg.training.fold_validation import write_summary
from autoseg.training.splits import NUM_FOLDS

log = logging.getLogger(__name__)

PREFIX = "ensemble__"
MANIFEST = "ensemble.json"
PREDICTION_SUFFIX = ".pred.npz"
#: Networks beyond this many are not combined (2^n - n - 1 candidate ensembles).
MAX_NETWORKS = 5


def ensemble_name(members: list[str]) -> str:
    return PREFIX + "__".join(members)


def is_ensemble_folder(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def _preprocessing_key(plans: Plans) -> str:
    data = plans.to_dict()
    return repr({k: data.get(k) for k in ("target_spacing", "normalisation", "resampling", "crop_to_body",
                                          "channel_names", "labels")})


def _eligible_networks(dataset_dir: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Networks (not ensembles) with every fold validated and probabilities kept for every case."""
    found = {}
    for name, entry in summary["networks"].items():
        folder = dataset_dir / name
        if name.startswith(PREFIX) or len(entry["folds"]) < NUM_FOLDS:
            continue
        preds = sorted(folder.glob(f"fold_*/validation/*{PREDICTION_SUFFIX}"))
        if preds and all("probabilities" in np.load(p).files for p in preds):
            found[name] = folder
        else:
            log.info("%s: validation probabilities not kept (trained before they were); not ensembled", name)
    return dict(sorted(found.items(), key=lambda kv: -(summary["networks"][kv[0]]["mean_foreground_dice"] or 0))
                [:MAX_NETWORKS])


def _groups_by_preprocessing(networks: dict[str, Path]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for name, folder in networks.items():
        groups.setdefault(_preprocessing_key(Plans.load(folder / "plans.json")), []).append(name)
    return [sorted(g) for g in groups.values() if len(g) >= 2]


def _load_probabilities(folder: Path, fold: int, case: str) -> np.ndarray:
    return np.load(folder / f"fold_{fold}" / "validation" / f"{case}{PREDICTION_SUFFIX}")["probabilities"]


def plans_of(folder: Path) -> Plans:
    """The plans of a network folder, or of the first member of an ensemble folder (the members
    share their preprocessing, which is what callers read)."""
    if is_ensemble_folder(folder):
        folder = folder.parent / read_json(folder / MANIFEST)["members"][0]
    return Plans.load(folder / "plans.json")


def build_ensembles(dataset_dir: Path, preprocessed: Path, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Score every ensemble of eligible networks; write their folders; return what was built.

    ``preprocessed`` is ``$AUTOSEG_PREPROCESSED`` (the validation cases' labels are read there).
    Ensemble folders of earlier runs that are not rebuilt (a member was removed) are deleted.
    """
    networks = _eligible_networks(dataset_dir, summary)
    data_dir = (preprocessed / plans_of(next(iter(networks.values()))).dataset_name / "data"
                if networks else preprocessed)
    combos = [list(c) for group in _groups_by_preprocessing(networks)
              for r in range(2, len(group) + 1) for c in itertools.combinations(group, r)]
    built: dict[str, dict[str, Any]] = {}
    for members in combos:
        built[ensemble_name(members)] = _build_one(dataset_dir, data_dir, members, networks)
    for stale in dataset_dir.glob(f"{PREFIX}*"):
        if stale.is_dir() and stale.name not in built and is_ensemble_folder(stale):
            log.info("removing ensemble %s (its networks are no longer all validated)", stale.name)
            shutil.rmtree(stale)
    return built


def _build_one(dataset_dir: Path, data_dir: Path, members: list[str], networks: dict[str, Path]) -> dict[str, Any]:
    out = dataset_dir / ensemble_name(members)
    first = networks[members[0]]
    plans = Plans.load(first / "plans.json")
    names = {int(k): v for k, v in plans.labels.items() if int(k) != 0}
    for fold in range(NUM_FOLDS):
        cases = [p.name[: -len(PREDICTION_SUFFIX)]
                 for p in sorted((first / f"fold_{fold}" / "validation").glob(f"*{PREDICTION_SUFFIX}"))]
        per_case: dict[str, dict[str, float | None]] = {}
        fold_dir = out / f"fold_{fold}" / "validation"
        fold_dir.mkdir(parents=True, exist_ok=True)
        for case in cases:
            probs = [_load_probabilities(networks[m], fold, case) for m in members]
            if len({p.shape for p in probs}) != 1:
                raise AutosegError(f"validation probabilities of {case} differ in shape between "
                                   f"{', '.join(members)}", dataset_dir,
                                   "retrain the folds of these networks from the same preprocessed data")
            pred = np.mean([p.astype(np.float32) for p in probs], axis=0).argmax(0).astype(np.uint8)
            ref = load_labels(data_dir, case)
            per_case[case] = case_dice(pred, ref, names)
            with atomic_path(fold_dir / f"{case}{PREDICTION_SUFFIX}") as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, labels=pred)
        write_summary(fold_dir, per_case, names, ensemble=members)
    write_json(out / MANIFEST, {"members": members, "rule": "mean of the members' fold-averaged softmax"})
    return {"members": members, "folder": str(out)}


@dataclass(frozen=True)
class EnsembleModel:
    """Several trained networks whose fold-averaged probabilities are averaged (same preprocessing)."""

    folder: Path
    parts: tuple[Any, ...]

    @property
    def plans(self) -> Plans:
        return self.parts[0].plans

    @property
    def checkpoints(self) -> dict[int, Path]:
        """Folds every member has (for reports); each member predicts with its own folds."""
        common = set.intersection(*(set(p.checkpoints) for p in self.parts))
        return {f: self.parts[0].checkpoints[f] for f in sorted(common)}

    @classmethod
    def open(cls, folder: Path, folds: tuple[int, ...] | None = None, checkpoint: str = "final") -> EnsembleModel:
        from autoseg.inference.model import TrainedModel

        manifest = read_json(folder / MANIFEST)
        members = manifest.get("members") if isinstance(manifest, dict) else None
        if not isinstance(members, list) or len(members) < 2:
            raise AutosegError("ensemble.json does not list two or more member networks", folder / MANIFEST,
                               "run `autoseg find_best` again")
        missing = [m for m in members if not (folder.parent / m / "plans.json").is_file()]
        if missing:
            raise AutosegError(f"ensemble members {missing} are not in {folder.parent}", folder,
                               "retrain them, or run `autoseg find_best` again to choose without them")
        parts = tuple(TrainedModel.open(folder.parent / m, folds, checkpoint) for m in members)
        keys = {_preprocessing_key(p.plans) for p in parts}
        if len(keys) != 1:
            raise AutosegError("ensemble members were planned with different preprocessing", folder,
                               "run `autoseg find_best` again (it only combines networks on the same grid)")
        return cls(folder, parts)

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

from autoseg.artefacts import CvSummary, EnsembleManifest, FoldSummary
from autoseg.errors import AutosegError
from autoseg.inference.model import TrainedModel
from autoseg.io import atomic_path
from autoseg.layout import NUM_FOLDS, CheckpointKind, ModelFolder, PreprocessedDataset, ResultsDataset
from autoseg.metrics import case_dice
from autoseg.plans import Plans
from autoseg.precision import Resolved
from autoseg.preprocessing import load_labels
from autoseg.sliding_window import WindowOptions

log = logging.getLogger(__name__)

#: Networks beyond this many are not combined (2^n - n - 1 candidate ensembles).
MAX_NETWORKS = 5


def is_ensemble_folder(folder: Path) -> bool:
    return ModelFolder(folder).is_ensemble


def _preprocessing_key(plans: Plans) -> str:
    data = plans.to_dict()
    return repr({k: data.get(k) for k in ("target_spacing", "normalisation", "resampling", "crop_to_body",
                                          "channel_names", "labels", "orientation")})


def _eligible_networks(dataset_dir: Path, summary: CvSummary) -> dict[str, Path]:
    """Networks (not ensembles) with every fold validated and probabilities kept for every case."""
    found = {}
    for name, entry in summary.networks.items():
        folder = ResultsDataset(dataset_dir).model(name)
        if name.startswith(ModelFolder.ENSEMBLE_PREFIX) or len(entry.folds) < NUM_FOLDS:
            continue
        preds = folder.validation_predictions()
        if preds and all("probabilities" in np.load(p).files for p in preds):
            found[name] = folder.root
        else:
            log.info("%s: validation probabilities not kept (trained before they were); not ensembled", name)
    return dict(sorted(found.items(), key=lambda kv: -(summary.networks[kv[0]].mean_foreground_dice or 0))
                [:MAX_NETWORKS])


def _groups_by_preprocessing(networks: dict[str, Path]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for name, folder in networks.items():
        groups.setdefault(_preprocessing_key(Plans.load(ModelFolder(folder).plans)), []).append(name)
    return [sorted(g) for g in groups.values() if len(g) >= 2]


def _load_probabilities(folder: Path, fold: int, case: str) -> np.ndarray:
    return np.load(ModelFolder(folder).fold(fold).validation.prediction(case))["probabilities"]


def plans_of(folder: Path) -> Plans:
    """The plans of a network folder, or of the first member of an ensemble folder (the members
    share their preprocessing, which is what callers read)."""
    model = ModelFolder(folder)
    if model.is_ensemble:
        model = ModelFolder(folder.parent / EnsembleManifest.load(model.ensemble_manifest).members[0])
    return Plans.load(model.plans)


def build_ensembles(dataset_dir: Path, preprocessed: Path, summary: CvSummary) -> dict[str, dict[str, Any]]:
    """Score every ensemble of eligible networks; write their folders; return what was built.

    ``preprocessed`` is ``$AUTOSEG_PREPROCESSED`` (the validation cases' labels are read there).
    Ensemble folders of earlier runs that are not rebuilt (a member was removed) are deleted.
    """
    networks = _eligible_networks(dataset_dir, summary)
    data_dir = (PreprocessedDataset(preprocessed / plans_of(next(iter(networks.values()))).dataset_name).data
                if networks else preprocessed)
    combos = [list(c) for group in _groups_by_preprocessing(networks)
              for r in range(2, len(group) + 1) for c in itertools.combinations(group, r)]
    built: dict[str, dict[str, Any]] = {}
    for members in combos:
        built[ResultsDataset(dataset_dir).ensemble(members).name] = _build_one(dataset_dir, data_dir, members, networks)
    for stale in ResultsDataset(dataset_dir).ensembles():
        if stale.name not in built and stale.is_ensemble:
            log.info("removing ensemble %s (its networks are no longer all validated)", stale.name)
            shutil.rmtree(stale.root)
    return built


def _build_one(dataset_dir: Path, data_dir: Path, members: list[str], networks: dict[str, Path]) -> dict[str, Any]:
    out = ResultsDataset(dataset_dir).ensemble(members)
    first = ModelFolder(networks[members[0]])
    plans = Plans.load(first.plans)
    names = {int(k): v for k, v in plans.labels.items() if int(k) != 0}
    for fold in range(NUM_FOLDS):
        cases = first.fold(fold).validation.predicted_cases()
        per_case: dict[str, dict[str, float | None]] = {}
        validation = out.fold(fold).validation
        validation.root.mkdir(parents=True, exist_ok=True)
        for case in cases:
            probs = [_load_probabilities(networks[m], fold, case) for m in members]
            if len({p.shape for p in probs}) != 1:
                raise AutosegError(f"validation probabilities of {case} differ in shape between "
                                   f"{', '.join(members)}", dataset_dir,
                                   "retrain the folds of these networks from the same preprocessed data")
            pred = np.mean([p.astype(np.float32) for p in probs], axis=0).argmax(0).astype(np.uint8)
            ref = load_labels(data_dir, case)
            per_case[case] = case_dice(pred, ref, names, plans.label_space)
            with atomic_path(validation.prediction(case)) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, labels=pred)
        FoldSummary.from_cases(per_case, names, ensemble=tuple(members)).save(validation.summary)
    EnsembleManifest(members=tuple(members)).save(out.ensemble_manifest)
    return {"members": members, "folder": str(out.root)}


def member_plans(model: Any) -> tuple[Plans, ...]:
    """The plans of each network ``model`` averages: an ensemble's members', else its own."""
    parts = getattr(model, "parts", None)
    return tuple(p.plans for p in parts) if parts else (model.plans,)


@dataclass(frozen=True)
class EnsembleModel:
    """Several trained networks whose fold-averaged probabilities are averaged (same preprocessing)."""

    folder: Path
    parts: tuple[TrainedModel, ...]
    fixed_precision: Resolved | None = None

    @property
    def plans(self) -> Plans:
        return self.parts[0].plans

    @property
    def folds(self) -> tuple[int, ...]:
        """Folds every member has (for reports); each member predicts with its own folds."""
        return tuple(sorted(set.intersection(*(set(p.folds) for p in self.parts))))

    def probabilities(self, data: np.ndarray, options: WindowOptions,
                      timings: dict[str, float] | None = None, where: np.ndarray | None = None) -> np.ndarray:
        """The mean of the members' fold-averaged softmax (the members share their grid)."""
        mean = self.parts[0].probabilities(data, options, timings, where)
        for part in self.parts[1:]:
            mean += part.probabilities(data, options, timings, where)
        mean /= len(self.parts)
        return mean

    def scout(self, data: np.ndarray, options: WindowOptions,
              timings: dict[str, float] | None = None, keep_network: bool = False) -> np.ndarray:
        """The first member's scout (its network kept for its own folds' pass, which comes first)."""
        return self.parts[0].scout(data, options, timings, keep_network)

    @classmethod
    def open(cls, folder: Path, folds: tuple[int, ...] | None = None,
             checkpoint: CheckpointKind = "final") -> EnsembleModel:
        members = EnsembleManifest.load(ModelFolder(folder).ensemble_manifest).members
        missing = [m for m in members if not ModelFolder(folder.parent / m).plans.is_file()]
        if missing:
            raise AutosegError(f"ensemble members {missing} are not in {folder.parent}", folder,
                               "retrain them, or run `autoseg find_best` again to choose without them")
        parts = tuple(TrainedModel.open(folder.parent / m, folds, checkpoint) for m in members)
        keys = {_preprocessing_key(p.plans) for p in parts}
        if len(keys) != 1:
            raise AutosegError("ensemble members were planned with different preprocessing", folder,
                               "run `autoseg find_best` again (it only combines networks on the same grid)")
        return cls(folder, parts)

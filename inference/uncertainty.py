"""Calibrated probabilities and the per-voxel uncertainty map (``predict --uncertainty``).

**Calibration.** The networks' outputs are fold-averaged softmax probabilities, not logits, and
are over-confident. ``autoseg find_best`` fits one temperature ``T`` on the chosen model's
cross-validation predictions (:func:`fit_calibration`): ``p_T ∝ p^(1/T)`` (the log-probabilities
divided by ``T`` and renormalised; ``T > 1`` softens), ``T`` minimising the negative
log-likelihood of a seeded voxel sample of every validation case (all its foreground voxels and as
many background voxels of the body crop). The expected calibration error (ECE, 15 equal-width bins
of the max probability) on the same sample before and after is stored with ``T`` as
:class:`~autoseg.artefacts.Calibration` (``ModelFolder.calibration``); ``autoseg export`` ships it.

**Uncertainty map.** ``<case>_uncertainty.nii.gz`` (``CaseOutputs.uncertainty``) holds, per voxel of
the input grid, the normalised predictive entropy ``-sum_k p_k log p_k / log K`` of the calibrated
probabilities as float32 in 0..1 (0: one class certain, 1: all classes equally likely; 0 outside
the body crop, where prediction is background by construction). It is computed on the preprocessed
grid and brought to the input grid by linear resampling, as the probabilities are
(``restore_to_original``). The report's ``uncertainty`` field gives the temperature, whether it
came from a calibration, and per tumour lesion (largest first, as the tumour table) the mean
calibrated max-probability inside it (its confidence). Without a calibration file ``T = 1`` and the
report says ``calibrated: false``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoseg.artefacts import Calibration, EnsembleManifest, LesionConfidence, UncertaintyReport
from autoseg.io import write_image
from autoseg.layout import CaseOutputs, ExportNames, ModelFolder, ResultsDataset
from autoseg.partial_labels import LabelSpace
from autoseg.preprocessing import load_labels, restore_to_original
from autoseg.inference.model import stored_artefact
from autoseg.inference.postprocessing import cv_predictions
from autoseg.inference.report import MAX_LISTED_LESIONS

if TYPE_CHECKING:  # outputs.py registers this module's writer
    from autoseg.inference.outputs import CasePrediction

log = logging.getLogger(__name__)

ECE_BINS = 15
#: Bounds of the temperature search (a golden-section search on log T).
T_RANGE = (0.05, 20.0)
#: Voxels of the calibration sample at most (foreground first; a seeded subsample above this).
MAX_SAMPLE = 4_000_000
#: Probabilities stored as uint8 (p*255): a 0 stands for anything under half a step.
UINT8_FLOOR = 0.5 / 255
FLOAT_FLOOR = 1e-7
RULE = ("p_T ∝ p^(1/T) on the fold-averaged softmax; T minimises the NLL of all foreground voxels of every "
        "CV case plus as many seeded background voxels of its body crop; ECE: 15 bins of the max probability, "
        "on the same sample")


# --- the arithmetic ------------------------------------------------------------------------------------
def temperature_scale(probs: np.ndarray, temperature: float, floor: float = FLOAT_FLOOR) -> np.ndarray:
    """``p^(1/T)`` renormalised over axis 0 (classes first), float32; ``T = 1`` returns ``probs`` as float32."""
    probs = np.asarray(probs, dtype=np.float32)
    if temperature == 1.0:
        return probs
    logp = np.log(np.maximum(probs, floor)) / np.float32(temperature)
    logp -= logp.max(axis=0, keepdims=True)
    out = np.exp(logp)
    out /= out.sum(axis=0, keepdims=True)
    return out


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """``-sum_k p_k log p_k / log K`` over axis 0, float32 in 0..1 (0 log 0 = 0)."""
    probs = np.asarray(probs, dtype=np.float32)
    k = probs.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    entropy = -terms.sum(axis=0) / np.float32(math.log(k))
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0, floor: float = FLOAT_FLOOR,
        allowed: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of ``labels`` (N,) under ``probs`` (K, N) scaled by ``temperature``.
    ``allowed`` (stored values x K, a label space's partial labels): a label's likelihood is that of
    the classes its value allows."""
    logp = np.log(np.maximum(probs.astype(np.float64), floor)) / temperature
    logp -= logp.max(axis=0, keepdims=True)
    log_norm = np.log(np.exp(logp).sum(axis=0))
    if allowed is None:
        picked = logp[labels.astype(np.int64), np.arange(labels.size)]
    else:
        picked = np.log((np.exp(logp) * allowed[labels.astype(np.int64)].T).sum(axis=0))
    return float(np.mean(log_norm - picked))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS,
                               allowed: np.ndarray | None = None) -> float:
    """ECE of ``probs`` (K, N) against ``labels`` (N,): the voxel-weighted mean over ``bins`` equal-width
    bins of the max probability of |accuracy - mean confidence| (``allowed``: as :func:`nll`; a
    prediction the label's value allows is correct)."""
    confidence = probs.max(axis=0).astype(np.float64)
    winner = probs.argmax(axis=0)
    correct = winner == labels if allowed is None else allowed[labels.astype(np.int64), winner]
    index = np.clip((confidence * bins).astype(np.int64), 0, bins - 1)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    return float(np.abs(acc_sum - conf_sum).sum() / max(1, labels.size))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, floor: float = FLOAT_FLOOR,
                    allowed: np.ndarray | None = None) -> float:
    """The temperature minimising :func:`nll` (golden-section search on log T within :data:`T_RANGE`)."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(probs, labels, math.exp(a), floor, allowed), nll(probs, labels, math.exp(b), floor, allowed)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(probs, labels, math.exp(a), floor, allowed)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(probs, labels, math.exp(b), floor, allowed)
    return math.exp((lo + hi) / 2)


def voxel_sample(labels: np.ndarray, rng: np.random.Generator,
                 maybe_background: np.ndarray | None = None) -> np.ndarray:
    """Flat indices of every foreground voxel and as many (at least 1000) background voxels, seeded.
    ``maybe_background`` (per stored value): the values that may be background (partial labels)."""
    flat = labels.ravel()
    is_bg = flat == 0 if maybe_background is None else maybe_background[flat]
    foreground = np.flatnonzero(~is_bg)
    background = np.flatnonzero(is_bg)
    n_bg = min(background.size, max(foreground.size, 1000))
    return np.concatenate([foreground, rng.choice(background, n_bg, replace=False)])


# --- find_best: fit on the cross-validation predictions -------------------------------------------------
def validation_probabilities(model_dir: Path, fold: int, case: str) -> np.ndarray | None:
    """A fold's validation probabilities of a case as float32 on the uint8 scale (0..255); an ensemble
    folder keeps labels only, so its members' are averaged, as ``find_best`` scored it. None: not kept."""
    folder = ModelFolder(model_dir)
    pred_file = folder.fold(fold).validation.prediction(case)
    if pred_file.is_file():
        with np.load(pred_file) as pred:
            if "probabilities" in pred.files:
                return pred["probabilities"].astype(np.float32)
    if not folder.is_ensemble:
        return None
    members = [validation_probabilities(ResultsDataset(model_dir.parent).model(m).root, fold, case)
               for m in EnsembleManifest.load(folder.ensemble_manifest).members]
    if any(p is None for p in members) or len({p.shape for p in members if p is not None}) != 1:
        return None
    return np.mean(np.stack(members), axis=0)  # type: ignore[arg-type]


def calibration_sample(model_dir: Path, data_dir: Path, seed: int = 0,
                       space: LabelSpace | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(probabilities (K, N) float32, labels (N,), cases) of the seeded sample of every fold's validation
    predictions (uint8 probabilities on the preprocessed grid) against the preprocessed labels (stored
    values: partial ones too, with ``space``)."""
    maybe_bg = space.allowed[:, 0] if space is not None and space.is_partial else None
    rng = np.random.default_rng(seed)
    probs, labels, cases = [], [], 0
    for fold, case, pred_file in cv_predictions(model_dir, data_dir, "calibration"):
        p = validation_probabilities(Path(model_dir), fold, case)
        if p is None:
            log.warning("%s holds no probabilities; left out of the calibration", pred_file)
            continue
        ref = load_labels(data_dir, case)
        if p.shape[1:] != ref.shape:
            log.warning("%s: shape %s does not match the preprocessed labels %s; left out of the calibration",
                        pred_file, p.shape[1:], ref.shape)
            continue
        idx = voxel_sample(ref, rng, maybe_bg)
        probs.append(p.reshape(p.shape[0], -1)[:, idx] / np.float32(255))
        labels.append(ref.ravel()[idx])
        cases += 1
    if not cases:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.uint8), 0
    all_probs, all_labels = np.concatenate(probs, axis=1), np.concatenate(labels)
    if all_labels.size > MAX_SAMPLE:
        keep = np.sort(rng.choice(all_labels.size, MAX_SAMPLE, replace=False))
        all_probs, all_labels = all_probs[:, keep], all_labels[keep]
    return all_probs, all_labels, cases


def fit_calibration(model_dir: Path, data_dir: Path, seed: int = 0,
                    space: LabelSpace | None = None) -> Calibration | None:
    """Fit and write the model's :class:`Calibration` from its folds' validation predictions; None
    (nothing written) when there are none with probabilities. ``space``: the plans' label space (a
    partial label's likelihood is its allowed classes')."""
    probs, labels, cases = calibration_sample(model_dir, data_dir, seed, space)
    if not cases:
        return None
    allowed = space.allowed if space is not None and space.is_partial else None
    temperature = fit_temperature(probs, labels, UINT8_FLOOR, allowed)
    scaled = temperature_scale(probs, temperature, UINT8_FLOOR)
    calibration = Calibration(
        temperature=round(temperature, 4),
        ece_before=round(expected_calibration_error(probs, labels, allowed=allowed), 5),
        ece_after=round(expected_calibration_error(scaled, labels, allowed=allowed), 5),
        nll_before=round(nll(probs, labels, 1.0, UINT8_FLOOR, allowed), 5),
        nll_after=round(nll(probs, labels, temperature, UINT8_FLOOR, allowed), 5),
        cases=cases, voxels=int(labels.size), bins=ECE_BINS, seed=seed, rule=RULE)
    calibration.save(ModelFolder(model_dir).calibration)
    return calibration


def load_calibration(model: Any) -> Calibration | None:
    """The calibration stored with a model folder, an ONNX export or an archive (None if absent), checked."""
    return stored_artefact(model, Calibration, ExportNames.CALIBRATION)


# --- predict: the output format --------------------------------------------------------------------
def tumour_labels(names: dict[int, str]) -> list[int]:
    """The labels whose lesions the report lists (the tumour table's rule)."""
    return [k for k, n in names.items() if k != 0 and any(w in n.lower() for w in ("tumo", "lesion", "cancer"))]


def lesion_confidences(labels: np.ndarray, confidence: np.ndarray, label: int, spacing_zyx: tuple[float, ...],
                       limit: int = MAX_LISTED_LESIONS) -> list[LesionConfidence]:
    """Per 26-connected component of ``label`` (the ``limit`` largest, largest first), its size and the
    mean of ``confidence`` inside it."""
    import cc3d

    components = cc3d.connected_components((labels == label).astype(np.uint8), connectivity=26)
    counts = np.bincount(components.ravel())
    sums = np.bincount(components.ravel(), weights=confidence.ravel().astype(np.float64))
    order = [i + 1 for i in np.argsort(-counts[1:], kind="stable") if counts[i + 1] > 0][:limit]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    return [LesionConfidence(label=label, voxels=int(counts[i]), volume_ml=round(int(counts[i]) * voxel_ml, 4),
                             confidence=round(float(sums[i] / counts[i]), 4)) for i in order]


def write_uncertainty(result: CasePrediction, outputs: CaseOutputs) -> dict[str, Any]:
    """Write ``<case>_uncertainty.nii.gz`` on the input grid; return the report's ``uncertainty``."""
    assert result.probabilities is not None and result.properties is not None  # needs_probabilities
    calibration: Calibration | None = result.extras.get("uncertainty")
    temperature = calibration.temperature if calibration is not None else 1.0
    calibrated = temperature_scale(result.probabilities, temperature)
    # channel 0: max probability (1 outside the crop), channel 1: entropy (0 outside), as restored
    stacked = np.stack([calibrated.max(axis=0), normalised_entropy(calibrated)])
    del calibrated
    restored = restore_to_original(stacked, result.properties)
    entropy = np.clip(restored[1], 0.0, 1.0).astype(np.float32)
    write_image(outputs.uncertainty, entropy, result.geometry)
    names = {int(k): v for k, v in (result.label_table or result.plans.labels).items()}
    # the lesions the tumour table lists: its largest, so a prefix of the components by size
    listed = len(result.report.tumours.lesions) if result.report.tumours is not None else MAX_LISTED_LESIONS
    lesions = [c for k in tumour_labels(names)
               for c in lesion_confidences(result.labels, restored[0], k, result.geometry.spacing_zyx, listed)]
    foreground = result.labels > 0
    return {"uncertainty": UncertaintyReport(
        file=outputs.uncertainty.name, temperature=float(temperature), calibrated=calibration is not None,
        measure="normalised predictive entropy of the calibrated probabilities, float32 0..1",
        mean_foreground_entropy=round(float(entropy[foreground].mean()), 4) if foreground.any() else None,
        lesions=tuple(lesions))}

"""Segmentation metrics per case and foreground class, and ``autoseg evaluate`` over two folders.

Every metric (:data:`METRICS`) compares one foreground class of a prediction with the same class of
a reference label map, in physical units from the image spacing (anisotropic spacings honoured);
the background is never scored. Dice is :func:`autoseg.metrics.dice_from_counts`, the one Dice of
autoseg; NSD and HD95 come from surface elements weighted by their area (:mod:`autoseg.surface`,
as DeepMind's ``surface-distance`` and MONAI's subvoxel surface Dice). The conventions
(:data:`CONVENTIONS`; docs/evaluation.md states them once): a class absent from both reference and
prediction of a case is not scored there (its scores are NaN here, null in ``metrics.json``) and
is left out of the class's mean, median and interval; where only one mask is empty a ratio is 0 and
HD95 is undefined. Per class, :func:`class_summary` gives the mean, median and a seeded 95 %
bootstrap interval of the mean over the cases in which it is scored.
"""
from __future__ import annotations

import csv
import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np

from autoseg import surface
from autoseg.errors import EvaluationError
from autoseg.io import Geometry, atomic_path, is_image_file, read_label, strip_image_suffix, write_json
from autoseg.datasets import partial_labels_of
from autoseg.layout import EvaluationFiles, RawDataset
from autoseg.partial_labels import LabelSpace
from autoseg.metrics import (BOOTSTRAP_RESAMPLES, DEFAULT_SEED, INTERVAL_LEVEL, INTERVAL_METHOD,
                             bootstrap_interval, dice_from_counts, ratio, scored)

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_MM = 2.0
#: Metric name -> one-line definition, in the column order of ``metrics.csv``.
METRICS: dict[str, str] = {
    "dice": "2|P&R| / (|P| + |R|)",
    "iou": "|P&R| / |P|R| (Jaccard)",
    "precision": "|P&R| / |P|",
    "recall": "|P&R| / |R| (sensitivity)",
    "accuracy": "voxels agreeing on this class / all voxels of the image",
    "hd95_mm": "max of the two directed 95th percentiles of the area-weighted surface distances (mm)",
    "nsd": "surface area within the tolerance of the other surface / all surface area (Nikolov et al. 2021)",
    "volume_ref_ml": "reference volume (ml)",
    "volume_pred_ml": "predicted volume (ml)",
    "abs_volume_diff_ml": "|Vp - Vr| (ml)",
    "rel_volume_diff": "(Vp - Vr) / Vr",
    "ref_lesions": "26-connected components of the reference",
    "pred_lesions": "26-connected components of the prediction",
    "detected_lesions": "reference components overlapped by any predicted voxel",
    "matched_pred_lesions": "predicted components overlapping any reference voxel",
    "lesion_recall": "detected_lesions / ref_lesions",
    "lesion_precision": "matched_pred_lesions / pred_lesions",
}
COUNT_METRICS = ("ref_lesions", "pred_lesions", "detected_lesions", "matched_pred_lesions")
#: Measurements that stay defined (0) for a class absent from both masks; every other metric is a score.
MEASUREMENTS = ("volume_ref_ml", "volume_pred_ml", "abs_volume_diff_ml", *COUNT_METRICS)
CONVENTIONS: dict[str, str] = {
    "background": "label 0 is never scored or averaged in",
    "absent": "a class absent from both reference and prediction of a case is not scored there (every score "
              "null; volumes and lesion counts 0) and that case is left out of the class's mean, median and "
              "interval (n_absent counts them), as nnU-Net and MONAI do",
    "ratios": "where only one mask is empty, a zero denominator gives 0 (a miss or a false alarm scores zero)",
    "hd95_mm": "undefined (null, left out of means, counted) when exactly one mask is empty",
    "rel_volume_diff": "undefined (null, left out of means, counted) when only the reference is empty",
    "surface": "surface elements on the corners of the voxel grid weighted by their marching-cubes area in mm2 "
               "(Nikolov et al. 2021; DeepMind surface-distance, MONAI use_subvoxels); distances in mm",
    "lesions": "26-connected components per class; a reference lesion is detected if any predicted voxel "
               "overlaps it",
    "intervals": INTERVAL_METHOD,
}


# --- metrics of two binary masks ------------------------------------------------------------------

def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices around the non-zero voxels of ``mask`` grown by ``margin``; None when it is empty."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def distance_scores(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float],
                    tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict[str, float]:
    """``hd95_mm`` and ``nsd`` of two binary masks, with the empty-mask conventions of this module."""
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not (has_pred or has_ref):
        return {"hd95_mm": math.nan, "nsd": math.nan}
    if not (has_pred and has_ref):
        return {"hd95_mm": math.nan, "nsd": 0.0}
    distances = surface.surface_distances(pred, ref, spacing)
    return {"hd95_mm": surface.hd95(distances), "nsd": surface.nsd(distances, tolerance_mm)}


def hausdorff95(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float]) -> float:
    """95th-percentile Hausdorff distance in mm, area-weighted (NaN if either mask is empty).

    >>> a = np.zeros((7, 7, 7), bool); a[2:5, 2:5, 2:5] = True
    >>> hausdorff95(a, np.roll(a, 1, axis=0), (2.0, 3.0, 3.0))
    2.0
    """
    return distance_scores(pred.astype(bool), ref.astype(bool), spacing)["hd95_mm"]


def normalised_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float],
                            tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (NaN if both masks are empty, 0 if one is)."""
    return distance_scores(pred.astype(bool), ref.astype(bool), spacing, tolerance_mm)["nsd"]


def overlap_scores(pred: np.ndarray, ref: np.ndarray, total_voxels: int | None = None) -> dict[str, float]:
    """Dice, IoU, precision, recall and accuracy; ``total_voxels`` when the masks are a crop."""
    total = pred.size if total_voxels is None else total_voxels
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    absent = tp + fp + fn == 0
    return {"dice": dice_from_counts(tp, fp, fn), "iou": ratio(tp, tp + fp + fn, absent),
            "precision": ratio(tp, tp + fp, absent), "recall": ratio(tp, tp + fn, absent),
            "accuracy": ratio(total - fp - fn, total, absent)}


def volume_scores(pred: np.ndarray, ref: np.ndarray, voxel_ml: float) -> dict[str, float]:
    v_pred = int(np.count_nonzero(pred)) * voxel_ml
    v_ref = int(np.count_nonzero(ref)) * voxel_ml
    return {"volume_ref_ml": v_ref, "volume_pred_ml": v_pred, "abs_volume_diff_ml": abs(v_pred - v_ref),
            "rel_volume_diff": (v_pred - v_ref) / v_ref if v_ref > 0 else math.nan}


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary mask and their count (the lesions of :func:`lesion_scores`)."""
    import cc3d

    if not mask.any():
        return np.zeros(mask.shape, np.uint8), 0
    labelled, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    return labelled, int(n)


def lesion_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Lesion-wise detection from 26-connected components of two binary masks."""
    ref_cc, n_ref = components(ref)
    pred_cc, n_pred = components(pred)
    detected = int(np.count_nonzero(np.unique(ref_cc[pred]))) if n_ref else 0
    matched = int(np.count_nonzero(np.unique(pred_cc[ref]))) if n_pred else 0
    absent = n_ref == 0 and n_pred == 0
    return {"ref_lesions": n_ref, "pred_lesions": n_pred, "detected_lesions": detected,
            "matched_pred_lesions": matched, "lesion_recall": ratio(detected, n_ref, absent),
            "lesion_precision": ratio(matched, n_pred, absent)}


def score_masks(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float],
                tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict[str, float]:
    """Every metric of :data:`METRICS` for two binary masks on one grid with ``spacing`` (mm).

    Works on the bounding box of both masks, so the cost follows the structures, not the image.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    box = bounding_box(pred | ref, margin=1) or tuple(slice(0, 0) for _ in pred.shape)
    p, r = pred[box], ref[box]
    scores = overlap_scores(p, r, total_voxels=pred.size)
    scores.update(distance_scores(p, r, spacing, tolerance_mm))
    scores.update(volume_scores(p, r, float(np.prod(spacing)) / 1000.0))
    scores.update(lesion_scores(p, r))
    return {name: scores[name] for name in METRICS}


def absent_scores() -> dict[str, float]:
    """The row of a class absent from both reference and prediction: every score undefined, the
    volumes and lesion counts 0."""
    none = np.zeros((1, 1, 1), bool)
    return score_masks(none, none, (1.0, 1.0, 1.0))


def is_absent(row: dict[str, float]) -> bool:
    """Whether a case's row of a class is one of a class absent from reference and prediction."""
    return row["volume_ref_ml"] == 0 and row["volume_pred_ml"] == 0


def labels_present(labels: np.ndarray) -> set[int]:
    """Non-zero label values of a label map."""
    if labels.size == 0:
        return set()
    if labels.min() >= 0:
        return {int(v) for v in np.flatnonzero(np.bincount(labels.ravel())) if v != 0}
    return {int(v) for v in np.unique(labels) if v != 0}


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float], labels: Iterable[int],
                  tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                  space: LabelSpace | None = None) -> dict[int, dict[str, float]]:
    """Scores of each foreground label of two label maps on one grid. With a ``space`` holding
    partial labels (a merged dataset's references), each class is scored on the masks
    :meth:`LabelSpace.masks` gives, and a class the reference does not annotate is left out (scored
    as absent)."""
    spacing = tuple(spacing)
    if space is None or not space.is_partial:
        return {lab: score_masks(pred == lab, ref == lab, spacing, tolerance_mm) for lab in labels if lab != 0}
    present, ok = labels_present(ref), space.allowed_lookup(pred, ref)  # 0 annotates nothing: left out
    out = {}
    for lab in labels:
        found = space.masks(pred, ref, lab, present, ok) if lab != 0 else None
        if found is not None:
            out[lab] = score_masks(*found, spacing, tolerance_mm)
    return out


# --- aggregation -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassSummary:
    """One class over the cases in which it is scored: ``mean`` (with ``n_cases``, ``n_absent``, the
    ``undefined`` counts and the pooled lesion counts), ``median`` and ``ci95`` of each metric."""

    mean: dict[str, Any]
    median: dict[str, float]
    ci95: dict[str, tuple[float, float] | None]


def class_summary(rows: list[dict[str, float]], seed: int = DEFAULT_SEED) -> ClassSummary:
    """Mean, median and bootstrap interval (:func:`autoseg.metrics.bootstrap_interval`, ``seed``)
    of each metric over the cases in which the class is scored: cases where it is absent from both
    masks are left out (``n_absent``), undefined values too (counted in ``undefined``). Lesion
    counts are summed over the cases, with the recall and precision of the sums."""
    present = [row for row in rows if not is_absent(row)]
    mean: dict[str, Any] = {"n_cases": len(present), "n_absent": len(rows) - len(present)}
    median: dict[str, float] = {}
    ci95: dict[str, tuple[float, float] | None] = {}
    undefined: dict[str, int] = {}
    for name in METRICS:
        if name in COUNT_METRICS:
            continue
        values = scored([row[name] for row in present])
        mean[name] = float(np.mean(values)) if values else math.nan
        median[name] = float(np.median(values)) if values else math.nan
        ci95[name] = bootstrap_interval(values, seed)
        if len(values) < len(present):
            undefined[name] = len(present) - len(values)
    mean["undefined"] = undefined
    totals: dict[str, float] = {name: int(sum(row[name] for row in rows)) for name in COUNT_METRICS}
    absent = totals["ref_lesions"] == 0 and totals["pred_lesions"] == 0
    totals["lesion_recall"] = ratio(totals["detected_lesions"], totals["ref_lesions"], absent)
    totals["lesion_precision"] = ratio(totals["matched_pred_lesions"], totals["pred_lesions"], absent)
    mean["lesions_pooled"] = totals
    return ClassSummary(mean, median, ci95)


# --- folders of label maps -------------------------------------------------------------------------

@dataclass(frozen=True)
class CasePair:
    case: str
    prediction: Path
    reference: Path


@dataclass
class EvaluationResult:
    """Scores of every case and class; ``names`` maps label id to the key used in the outputs."""

    names: dict[int, str]
    tolerance_mm: float
    pairs: list[CasePair]
    scores: dict[str, dict[int, dict[str, float]]]
    spacings: dict[str, tuple[float, ...]] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    label_source: str = ""
    #: The seed of the bootstrap intervals.
    seed: int = DEFAULT_SEED

    @functools.cached_property
    def summaries(self) -> dict[int, ClassSummary]:
        """Each class's :class:`ClassSummary` over the cases (computed once)."""
        return {lab: class_summary([self.scores[c][lab] for c in self.scores], self.seed) for lab in self.names}

    def means(self) -> dict[int, dict[str, Any]]:
        return {lab: summary.mean for lab, summary in self.summaries.items()}

    def mean_foreground_dice(self) -> float:
        """The mean of the classes' mean Dice (a class scored in no case left out)."""
        values = [m["dice"] for m in self.means().values() if not math.isnan(m["dice"])]
        return float(np.mean(values)) if values else math.nan


def label_files(folder: Path) -> dict[str, Path]:
    """Case name -> label map file of a folder; other files (reports, JSON, PNG) are ignored."""
    if not folder.is_dir():
        raise EvaluationError("is not a folder", folder, "pass a folder of label maps (NIfTI, NRRD or MHA)")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not is_image_file(path):
            continue
        case = strip_image_suffix(path.name)
        if case in found:
            raise EvaluationError(f"two files for case '{case}': {found[case].name} and {path.name}", folder,
                                  "keep one label map per case")
        found[case] = path
    if not found:
        raise EvaluationError("folder holds no label maps (.nii.gz, .nii, .nrrd, .mha)", folder,
                              "point -p at the predictions and -r at the reference labels")
    return found


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_cases(pred_dir: Path, ref_dir: Path,
                allow_unmatched: bool = False) -> tuple[list[CasePair], dict[str, list[str]]]:
    """Pair predictions with references by case name (the file name without its image suffix)."""
    preds, refs = label_files(pred_dir), label_files(ref_dir)
    unmatched = {"missing_prediction": sorted(set(refs) - set(preds)),
                 "missing_reference": sorted(set(preds) - set(refs))}
    pairs = [CasePair(c, preds[c], refs[c]) for c in sorted(set(preds) & set(refs))]
    problems = [f"no prediction for {len(v)} reference case(s): {_listing(v)}" if k == "missing_prediction"
                else f"no reference for {len(v)} predicted case(s): {_listing(v)}"
                for k, v in unmatched.items() if v]
    if not pairs:
        raise EvaluationError(f"no case is in both {pred_dir} and {ref_dir}", pred_dir,
                              "name each prediction like its reference label file (case.nii.gz)")
    if problems and not allow_unmatched:
        raise EvaluationError("; ".join(problems), pred_dir,
                              f"add the missing files, or pass --allow-unmatched to evaluate only the "
                              f"{len(pairs)} case(s) in both folders (e.g. one fold's validation "
                              f"predictions against all of labelsTr)")
    for problem in problems:
        log.warning("%s; evaluating the %d case(s) in both folders", problem, len(pairs))
    return pairs, unmatched


def load_pair(pair: CasePair) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Prediction and reference arrays on one grid; a different grid is an error naming both files."""
    from autoseg.io import read_label_on

    ref, ref_geom = read_label(pair.reference)
    pred, pred_geom = read_label_on(pair.prediction, ref_geom)  # exact reordering of flipped axes only
    if not pred_geom.same_grid(ref_geom):
        raise EvaluationError(
            f"prediction and reference {pair.reference} are on different grids (size {pred_geom.size} vs "
            f"{ref_geom.size}, spacing {_fmt(pred_geom.spacing)} vs {_fmt(ref_geom.spacing)}, origin "
            f"{_fmt(pred_geom.origin)} vs {_fmt(ref_geom.origin)}, direction {_fmt(pred_geom.direction)} vs "
            f"{_fmt(ref_geom.direction)})", pair.prediction,
            "compare a prediction with the label map of the image it was predicted from (autoseg predict "
            "and fold validation write on the input's grid), or resample it onto the reference grid")
    return pred, ref, ref_geom


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def evaluate_pairs(pairs: list[CasePair], labels: list[int] | None = None,
                   tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                   space: LabelSpace | None = None) -> tuple[dict, dict, list[int]]:
    """Score every pair; with ``labels`` None, every non-zero label found in the references (with a
    partial ``space``, every class some reference annotates).

    Returns per-case scores, per-case spacings and the labels scored.
    """
    from tqdm import tqdm

    scores: dict[str, dict[int, dict[str, float]]] = {}
    spacings: dict[str, tuple[float, ...]] = {}
    found: set[int] = set()
    partial = space if space is not None and space.is_partial else None
    for pair in tqdm(pairs, desc="evaluate", unit="case", disable=None):
        pred, ref, geometry = load_pair(pair)
        in_ref = labels_present(ref) if partial is None else \
            set(range(1, partial.num_classes)) - partial.unannotated(labels_present(ref))
        found |= in_ref
        wanted = labels if labels is not None else sorted(in_ref | labels_present(pred))
        scores[pair.case] = evaluate_case(pred, ref, geometry.spacing_zyx, wanted, tolerance_mm, space)
        spacings[pair.case] = geometry.spacing_zyx
    final = sorted(labels if labels is not None else found)
    for case_scores in scores.values():  # a label scored nowhere in a case was absent from both
        for lab in final:
            case_scores.setdefault(lab, absent_scores())
        for lab in set(case_scores) - set(final):
            del case_scores[lab]
    return scores, spacings, final


def metadata_labels(ref_dir: Path) -> tuple[dict[int, str], Path, LabelSpace] | None:
    """Label ids and names from a ``dataset.json`` in ``ref_dir`` or its parent (``labelsTr/``), and
    the label space its ``partial_labels`` declare (a merged dataset's; else plain classes).

    Reads MSD (``{"0": "background"}``) and nnU-Net v2 (``{"background": 0}``) label tables; a file
    that holds neither is ignored with a warning.
    """
    import json

    for meta_path in (RawDataset(ref_dir).metadata, RawDataset(ref_dir.parent).metadata):
        if not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
            raw = meta.get("labels")
            by_id = all(isinstance(v, str) for v in raw.values())
            labels = {int(k): str(v) for k, v in raw.items()} if by_id else {int(v): str(k) for k, v in raw.items()}
            space = LabelSpace(max(labels) + 1, partial_labels_of(meta, labels, meta_path))
            return labels, meta_path, space
        except (ValueError, TypeError, AttributeError):
            log.warning("%s: no usable 'labels' table; scoring the labels found in the references", meta_path)
    return None


def class_keys(labels: list[int], names: dict[int, str] | None) -> dict[int, str]:
    """Unique output keys: the dataset's label names where known, else ``label_<id>``."""
    keys: dict[int, str] = {}
    for lab in labels:
        key = (names or {}).get(lab) or f"label_{lab}"
        keys[lab] = f"{key}_{lab}" if key in keys.values() else key
    return keys


def evaluate_folders(pred_dir: Path, ref_dir: Path, labels: list[int] | None = None,
                     names: dict[int, str] | None = None, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                     allow_unmatched: bool = False, label_source: str = "",
                     seed: int = DEFAULT_SEED, space: LabelSpace | None = None) -> EvaluationResult:
    """Score the label maps of ``pred_dir`` against those of ``ref_dir`` with the same names;
    ``seed``: of the bootstrap intervals; ``space``: the references' partial labels, if any."""
    if tolerance_mm < 0:
        raise EvaluationError(f"--tolerance-mm must be >= 0, got {tolerance_mm}", fix="pass a distance in mm")
    pairs, unmatched = match_cases(pred_dir, ref_dir, allow_unmatched)
    scores, spacings, final = evaluate_pairs(pairs, labels, tolerance_mm, space)
    if not final:
        raise EvaluationError("the references hold no foreground label", ref_dir,
                              "pass the labels to score with --labels, e.g. --labels 1 2")
    return EvaluationResult(class_keys(final, names), tolerance_mm, pairs, scores, spacings, unmatched,
                            label_source or "labels found in the references", seed)


# --- output files ----------------------------------------------------------------------------------

def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def result_to_dict(result: EvaluationResult) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    cases = {}
    for pair in result.pairs:
        rows = result.scores[pair.case]
        cases[pair.case] = {"prediction": pair.prediction.name, "reference": pair.reference.name,
                            "spacing_zyx_mm": list(result.spacings.get(pair.case, ())),
                            "classes": {result.names[lab]: rows[lab] for lab in result.names},
                            "absent": [result.names[lab] for lab in result.names if is_absent(rows[lab])]}
    summaries = {result.names[lab]: summary for lab, summary in result.summaries.items()}
    return _clean({
        "prediction_folder": str(result.pairs[0].prediction.parent),
        "reference_folder": str(result.pairs[0].reference.parent),
        "tolerance_mm": result.tolerance_mm, "labels": {str(k): v for k, v in result.names.items()},
        "label_source": result.label_source, "conventions": CONVENTIONS, "metric_definitions": METRICS,
        "mean": {name: s.mean for name, s in summaries.items()},
        "median": {name: s.median for name, s in summaries.items()},
        "ci95": {name: s.ci95 for name, s in summaries.items()},
        "bootstrap": {"method": INTERVAL_METHOD, "level": INTERVAL_LEVEL, "resamples": BOOTSTRAP_RESAMPLES,
                      "seed": result.seed},
        "mean_foreground_dice": result.mean_foreground_dice(), "cases": cases,
        "unmatched": result.unmatched})


def write_metrics_csv(path: Path, result: EvaluationResult) -> None:
    """One row per case and class; undefined values are empty cells."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "label", "name", *METRICS])
        for case, per_label in result.scores.items():
            for lab, name in result.names.items():
                values = [_clean(per_label[lab][m]) for m in METRICS]
                writer.writerow([case, lab, name, *("" if v is None else v for v in values)])


def write_outputs(result: EvaluationResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` into ``out_dir`` (atomically)."""
    files = EvaluationFiles(out_dir)
    json_path, csv_path = files.json, files.csv
    write_json(json_path, result_to_dict(result))
    write_metrics_csv(csv_path, result)
    return json_path, csv_path


def _cell(value: float | None, width: int) -> str:
    return f"{'-' if value is None or math.isnan(value) else f'{value:.3f}':>{width}}"


def format_table(result: EvaluationResult) -> str:
    """A text table: per class and main metric, the cases scored, mean, median and 95 % interval."""
    shown = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 mm", "nsd": f"NSD@{result.tolerance_mm:g}mm"}
    head = f"{'class':<16}{'metric':<12}{'cases':>6}{'mean':>8}{'median':>8}   95% CI of the mean"
    lines = [head, "-" * len(head)]
    for lab, summary in result.summaries.items():
        m = summary.mean
        for i, (key, label) in enumerate(shown.items()):
            ci = summary.ci95[key]
            interval = "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            cases = m["n_cases"] - m["undefined"].get(key, 0)
            lines.append(f"{result.names[lab] if i == 0 else '':<16}{label:<12}{cases:>6}{_cell(m[key], 8)}"
                         f"{_cell(summary.median[key], 8)}   {interval}")
        pooled = m["lesions_pooled"]
        notes = [f"lesions found {pooled['detected_lesions']}/{pooled['ref_lesions']}, predicted lesions "
                 f"matched {pooled['matched_pred_lesions']}/{pooled['pred_lesions']}"]
        if m["n_absent"]:
            notes.append(f"absent from reference and prediction in {m['n_absent']} case(s), left out")
        if m["undefined"].get("hd95_mm"):
            notes.append(f"HD95 undefined in {m['undefined']['hd95_mm']} case(s) (one mask empty)")
        lines.append(f"{'':<16}" + "; ".join(notes))
    lines.append(f"mean foreground Dice: {_cell(result.mean_foreground_dice(), 0).strip()} (the mean of the "
                 f"classes' means; intervals: {BOOTSTRAP_RESAMPLES} bootstrap resamples of the cases, seed "
                 f"{result.seed})")
    return "\n".join(lines)

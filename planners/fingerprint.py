"""Dataset fingerprint: spacings, shapes, slice counts, intensities and class fractions.

The fingerprint is everything the planner needs to know about a dataset, written as
``fingerprint.json`` (:class:`autoseg.artefacts.Fingerprint`, version checked on read) so a person can
read it and the planner can be re-run without touching the images again.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from autoseg.orientation import Reorientation
from autoseg.artefacts import Fingerprint
from autoseg.cropping import crop_bbox
from autoseg.datasets import Case, Dataset
from autoseg.errors import DatasetError
from autoseg.io import read_case_images, read_label_on
from autoseg.layout import PreprocessedDataset
from autoseg.partial_labels import LabelSpace
from autoseg.processes import die_with_parent
from autoseg.regions import nesting_from_shells
from autoseg.validation import validate_case

log = logging.getLogger(__name__)

SAMPLES_PER_CLASS = 10_000
TINY_CLASS_FRACTION = 0.01  # below 1 % of the body voxels a class is called tiny
FINGERPRINT_VERSION = Fingerprint.VERSION
SPACING_OUTLIER_FACTOR = 4.0  # a case this many times off the median spacing along an axis is warned about


@dataclass(frozen=True)
class CaseFingerprint:
    """What one case contributes: geometry, crop size, voxel counts and intensity samples."""

    identifier: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    cropped_shape: tuple[int, int, int]
    body_voxels: int
    class_voxels: dict[int, int]
    samples: dict[int, np.ndarray]  # label -> (channels, n) intensity samples; 0 = whole foreground
    intensity_min: float
    intensity_max: float
    #: Per foreground class, the labels of the voxels just outside it and how many (``label_shells``).
    shells: dict[int, dict[int, int]] = dataclasses.field(default_factory=dict)
    #: Per foreground class present, where its centre of mass lies in the body's box along each LPS
    #: axis (z, y, x), 0 at the box's start and 1 at its end (``centre_in_box``).
    centres: dict[int, tuple[float, float, float]] = dataclasses.field(default_factory=dict)


def centre_in_box(mask: np.ndarray, bbox: Sequence[tuple[int, int]],
                  reo: Reorientation) -> tuple[float, float, float]:
    """The centre of mass of a non-empty file-order ``mask`` as fractions of ``bbox`` (file order)
    along each LPS axis: where a class lies in the body, for
    :func:`autoseg.planners.planner.mirror_axes`. From the mask's projections on each axis (no
    coordinate arrays as long as the class)."""
    total = float(np.count_nonzero(mask))
    mean = []
    for axis in range(3):
        profile = mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
        mean.append(float(np.dot(profile, np.arange(profile.size) + 0.5)) / total)
    file_order = [(m - lo) / max(hi - lo, 1) for m, (lo, hi) in zip(mean, bbox)]
    out = [1.0 - file_order[reo.perm[k]] if reo.flips[k] else file_order[reo.perm[k]] for k in range(3)]
    return (round(out[0], 4), round(out[1], 4), round(out[2], 4))


def label_shells(label: np.ndarray, classes: list[int]) -> dict[int, dict[int, int]]:
    """For each of ``classes`` present in ``label``: the labels of the voxels that touch it from outside
    (6-neighbours) and their counts. Which class lies inside which (:mod:`autoseg.regions`)."""
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(3, 1)
    out: dict[int, dict[int, int]] = {}
    for lab in classes:
        where = np.nonzero(label == lab)
        if not where[0].size:
            continue
        box = tuple(slice(max(int(w.min()) - 1, 0), int(w.max()) + 2) for w in where)
        part = label[box]
        mask = part == lab
        shell = ndimage.binary_dilation(mask, cross) & ~mask
        counts = np.bincount(part[shell].ravel(), minlength=1)
        out[lab] = {int(a): int(n) for a, n in enumerate(counts) if n}
    return out


def fingerprint_case(case: Case, dataset: Dataset, seed: int) -> CaseFingerprint:
    """Read, validate and summarise one case."""
    image, geometry = read_case_images(case.images)
    label, label_geometry = read_label_on(case.label, geometry) if case.label else (None, None)
    validate_case(case, image, geometry, label, label_geometry, dataset.stored_labels, len(dataset.channel_names))
    bbox = crop_bbox(image, ct_channel=0 if dataset.is_ct else None)
    reo = Reorientation.of(geometry)  # sizes in the LPS axis order the plans' networks see
    cropped = reo.shape([int(hi - lo) for lo, hi in bbox])
    rng = np.random.default_rng([seed, _stable_hash(case.identifier)])
    class_voxels: dict[int, int] = {}
    samples: dict[int, np.ndarray] = {}
    centres: dict[int, tuple[float, float, float]] = {}
    if label is not None:
        flat_label = label.ravel()
        flat_image = image.reshape(image.shape[0], -1)
        space = dataset.label_space
        certain = np.zeros(256, dtype=bool)  # values that are foreground whatever class they are
        certain[space.foreground_values()] = True
        foreground = np.flatnonzero(certain[flat_label])
        samples[0] = flat_image[:, _subsample(foreground, rng)]
        counted = np.zeros(256, dtype=np.int64)  # a partial value counts as its class (LabelSpace.counted_as)
        counted[:space.num_values] = space.counted_as
        counted[space.num_values:] = -1
        flat_class = counted[flat_label] if dataset.partial else flat_label
        for lab in dataset.foreground_labels:
            in_class = flat_class == lab
            where = np.flatnonzero(in_class)
            class_voxels[lab] = int(where.size)
            samples[lab] = flat_image[:, _subsample(where, rng)]
            if where.size:
                centres[lab] = centre_in_box(in_class.reshape(label.shape), bbox, reo)
    return CaseFingerprint(
        identifier=case.identifier,
        spacing=reo.spacing(geometry.spacing_zyx),
        shape=reo.shape(geometry.shape_zyx),
        cropped_shape=cropped,
        body_voxels=int(np.prod(cropped)),
        class_voxels=class_voxels,
        samples=samples,
        intensity_min=float(image.min()),
        intensity_max=float(image.max()),
        shells=label_shells(label, dataset.foreground_labels) if label is not None else {},
        centres=centres,
    )


def _subsample(indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if indices.size <= SAMPLES_PER_CLASS:
        return indices
    return np.sort(rng.choice(indices, SAMPLES_PER_CLASS, replace=False))


def _stable_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0}
    p = np.percentile(values, [0.5, 50, 99.5])
    return {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max()),
            "percentile_00_5": float(p[0]), "median": float(p[1]), "percentile_99_5": float(p[2]),
            "quantiles": np.percentile(values, np.linspace(0, 100, 101)).round(2).tolist()}


def _distribution(values: np.ndarray) -> dict[str, list[float]]:
    return {"median": np.median(values, 0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist(), "percentile_10": np.percentile(values, 10, 0).tolist(),
            "percentile_90": np.percentile(values, 90, 0).tolist()}


def _worker(args: tuple[Case, Dataset, int]) -> CaseFingerprint:
    return fingerprint_case(*args)


def fingerprint_dataset(dataset: Dataset, num_workers: int = 2, seed: int = 12345,
                        max_slices: int | None = None, inputs_key: str | None = None) -> Fingerprint:
    """Fingerprint every case (in parallel) and aggregate the dataset statistics. ``inputs_key``:
    what the fingerprint was made from (recorded, so that a re-run can tell it is current)."""
    jobs = [(case, dataset, seed) for case in dataset.cases]
    if num_workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(num_workers, len(jobs)), initializer=die_with_parent) as pool:
            cases = list(tqdm(pool.imap(_worker, jobs), total=len(jobs), desc="fingerprint"))
    else:
        cases = [_worker(j) for j in tqdm(jobs, desc="fingerprint")]
    data = aggregate(dataset, cases, max_slices)
    if inputs_key is not None:
        data["inputs_key"] = inputs_key
    return Fingerprint.from_dict(data)


def aggregate(dataset: Dataset, cases: list[CaseFingerprint], max_slices: int | None) -> dict[str, Any]:
    """Dataset-level statistics from per-case fingerprints, applying the slice-count filter, in the
    JSON form of :class:`~autoseg.artefacts.Fingerprint`."""
    excluded = []
    if max_slices is not None:
        excluded = [{"case": c.identifier, "slices": c.shape[0],
                     "reason": f"{c.shape[0]} slices > --max-slices {max_slices}"}
                    for c in cases if c.shape[0] > max_slices]
        for e in excluded:
            log.warning("excluding case %s: %s", e["case"], e["reason"])
        cases = [c for c in cases if c.shape[0] <= max_slices]
        if not cases:
            raise DatasetError(f"all cases have more than {max_slices} slices", dataset.root,
                               "raise --max-slices or drop the option")
    spacings = np.array([c.spacing for c in cases], dtype=float)
    shapes = np.array([c.shape for c in cases], dtype=float)
    cropped = np.array([c.cropped_shape for c in cases], dtype=float)
    slices = np.array([c.shape[0] for c in cases])
    counts, edges = np.histogram(slices, bins=min(20, max(1, len(np.unique(slices)))))
    body_total = sum(c.body_voxels for c in cases)
    fractions, warnings = _class_fractions(dataset, cases, body_total)
    intensity = _intensity(dataset, cases)
    warnings += _ct_warnings(dataset, cases, intensity)
    warnings += spacing_outliers(cases, spacings)
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset_name": dataset.name,
        "format": dataset.format,
        "channel_names": list(dataset.channel_names),
        "labels": {str(k): v for k, v in sorted(dataset.labels.items())},
        **({"partial_labels": [dataclasses.asdict(p) for p in dataset.partial]} if dataset.partial else {}),
        "is_ct": dataset.is_ct,
        "num_cases": len(cases),
        "excluded": excluded,
        "axis_order": "z, y, x",
        "spacing": _distribution(spacings),
        "shape": _distribution(shapes),
        "shape_after_crop": _distribution(cropped),
        "slices": {"min": int(slices.min()), "median": float(np.median(slices)),
                   "max": int(slices.max()),
                   "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}},
        "intensity": intensity,
        "class_fractions": fractions,
        "label_nesting": {str(k): v for k, v in _nesting(cases, dataset.label_space).items()},
        "class_positions": class_positions(cases, dataset.foreground_labels),
        "warnings": warnings,
        "cases": [{"case": c.identifier, "spacing": list(c.spacing), "shape": list(c.shape),
                   "shape_after_crop": list(c.cropped_shape),
                   "class_voxels": {str(k): v for k, v in c.class_voxels.items()},
                   "intensity_range": [c.intensity_min, c.intensity_max]} for c in cases],
    }


def class_positions(cases: list[CaseFingerprint], classes: Sequence[int]) -> dict[str, Any]:
    """Per class, where its centre lies in the body along each LPS axis (z, y, x) over the cases
    that hold it: the median fraction of the body's box, and the share of those cases whose centre
    lies on the median's side of the box's middle (1.0: every case on one side)."""
    out: dict[str, Any] = {}
    for lab in classes:
        pos = np.array([c.centres[lab] for c in cases if lab in c.centres], dtype=float).reshape(-1, 3)
        if not len(pos):
            continue
        median = np.median(pos, 0)
        same = ((pos - 0.5) * np.sign(median - 0.5) > 0).mean(0)
        out[str(lab)] = {"cases": int(len(pos)), "median": [round(float(m), 4) for m in median],
                         "same_side_share": [round(float(v), 4) for v in same]}
    return out


def _nesting(cases: list[CaseFingerprint], space: LabelSpace) -> dict[int, int]:
    """Which class lies inside which, from the outer shells of all cases together (partial label
    values read through ``space``: :func:`~autoseg.regions.nesting_from_shells`)."""
    total: dict[int, dict[int, int]] = {}
    for c in cases:
        for inner, around in c.shells.items():
            into = total.setdefault(inner, {})
            for a, n in around.items():
                into[a] = into.get(a, 0) + n
    return nesting_from_shells(total, space)


def spacing_outliers(cases: list[CaseFingerprint], spacings: np.ndarray) -> list[str]:
    """Warnings (also logged) for cases whose spacing along an axis is more than
    ``SPACING_OUTLIER_FACTOR`` times off the dataset median: usually a wrong header (z = 450 mm
    would resample one case to thousands of slices), which the target spacing then hides."""
    median = np.median(spacings, axis=0)
    warnings = []
    for case, spacing in zip(cases, spacings):
        ratio = spacing / median
        for axis, r, s, m in zip("zyx", ratio, spacing, median):
            if r > SPACING_OUTLIER_FACTOR or r < 1 / SPACING_OUTLIER_FACTOR:
                text = (f"case {case.identifier}: spacing along {axis} is {s:.4g} mm, {r:.3g}x the dataset "
                        f"median {m:.4g} mm; check its header (it is resampled to the target spacing)")
                log.warning("%s", text)
                warnings.append(text)
    return warnings


def _class_fractions(dataset: Dataset, cases: list[CaseFingerprint],
                     body_total: int) -> tuple[dict[str, Any], list[str]]:
    fractions: dict[str, Any] = {}
    warnings = []
    total_voxels = sum(int(np.prod(c.shape)) for c in cases)
    for lab in dataset.foreground_labels:
        n = sum(c.class_voxels.get(lab, 0) for c in cases)
        present = sum(1 for c in cases if c.class_voxels.get(lab, 0) > 0)
        frac_body = n / max(body_total, 1)
        fractions[str(lab)] = {"name": dataset.labels[lab], "voxels": n,
                               "fraction_of_volume": n / max(total_voxels, 1),
                               "fraction_of_body": frac_body, "cases_present": present}
        if frac_body < TINY_CLASS_FRACTION:
            warnings.append(f"class {lab} '{dataset.labels[lab]}' is tiny: {100 * frac_body:.3f}% of the "
                            f"body voxels; training oversamples it and uses a Dice term")
        if present < len(cases):
            warnings.append(f"class {lab} '{dataset.labels[lab]}' is absent from "
                            f"{len(cases) - present} of {len(cases)} cases")
    return fractions, warnings


def _intensity(dataset: Dataset, cases: list[CaseFingerprint]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ch, name in enumerate(dataset.channel_names):
        per_class = {}
        for lab in [0] + dataset.foreground_labels:
            pooled = [c.samples[lab][ch] for c in cases if lab in c.samples]
            values = np.concatenate(pooled) if pooled else np.zeros(0)
            per_class["foreground" if lab == 0 else str(lab)] = _stats(values)
        out[str(ch)] = {"name": name, **per_class}
    return out


def _ct_warnings(dataset: Dataset, cases: list[CaseFingerprint], intensity: dict[str, Any]) -> list[str]:
    if not dataset.is_ct:
        return [f"channels {list(dataset.channel_names)} are not CT: the HU window is not applied, "
                "intensities are z-scored per image"]
    low = min(c.intensity_min for c in cases)
    if low > -500:
        return [f"dataset.json says CT but the lowest intensity is {low:.0f}; CT in Hounsfield units "
                "has air near -1000. Check that the images are in HU (rescale slope/intercept applied)"]
    return []


def save_fingerprint(fingerprint: Fingerprint | dict[str, Any], out_dir: Path) -> Path:
    """Write the fingerprint and the slice-count histogram into the preprocessed folder ``out_dir``
    (a dict is checked as a :class:`~autoseg.artefacts.Fingerprint` first)."""
    if not isinstance(fingerprint, Fingerprint):
        fingerprint = Fingerprint.from_dict(fingerprint)
    out = PreprocessedDataset(Path(out_dir))
    fingerprint.save(out.fingerprint)
    plot_slice_histogram(fingerprint, out.slices_plot)
    return out.fingerprint


def load_fingerprint(path: Path) -> Fingerprint:
    """The fingerprint at ``path``, checked: a missing, damaged, hand-broken, older or newer file is a
    PlansError naming it, with the fix (fingerprint again with ``plan_and_preprocess --force``)."""
    return Fingerprint.load(path)


def plot_slice_histogram(fingerprint: Fingerprint, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoseg.io import atomic_path

    slices = [c.shape[0] for c in fingerprint.cases]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(slices, bins=list(fingerprint.slices.histogram.edges), color="#4c72b0", edgecolor="white")
    ax.set_xlabel("slices per case")
    ax.set_ylabel("cases")
    ax.set_title(f"{fingerprint.dataset_name}: slice counts (n={len(slices)})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

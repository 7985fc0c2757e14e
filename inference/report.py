"""Clinical read-outs of a label map: volumes per class, tumour count and sizes, overlays.

:func:`measure_case` makes the measurements of a case report (:class:`autoseg.artefacts.CaseReport`);
prediction adds how the case was predicted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.artefacts import CaseReport, Lesion, TumourTable
from autoseg.io import Geometry, atomic_path
from autoseg.layout import CaseOutputs

#: Lesions listed one by one in a report (largest first); all are counted. A poorly trained model
#: can predict hundreds of thousands of specks, and listing each made report.json hundreds of MB.
MAX_LISTED_LESIONS = 100


def lesion_table(mask: np.ndarray, spacing_zyx: tuple[float, ...],
                 limit: int | None = MAX_LISTED_LESIONS) -> tuple[int, list[Lesion]]:
    """Number of 26-connected components of ``mask`` and the ``limit`` largest, each with its volume
    (mL), voxel count and bounding-box extent (mm)."""
    import cc3d

    labelled = cc3d.connected_components(mask.astype(np.uint8, copy=False), connectivity=26)
    stats = cc3d.statistics(labelled)
    counts = np.asarray(stats["voxel_counts"])[1:]
    boxes = stats["bounding_boxes"][1:]
    order = np.argsort(-counts, kind="stable")[:limit]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    table = []
    for idx in order:
        extent = [(s.stop - s.start) * sp for s, sp in zip(boxes[idx], spacing_zyx)]
        table.append(Lesion(volume_ml=round(int(counts[idx]) * voxel_ml, 4), voxels=int(counts[idx]),
                            extent_mm=tuple(round(float(e), 1) for e in extent)))
    return int(np.count_nonzero(counts)), table


def measure_case(labels: np.ndarray, geometry: Geometry, class_names: dict[int, str],
                 seconds: float, folds: list[int] | tuple[int, ...]) -> CaseReport:
    """Volumes in mL per class, tumour count and sizes, vessel volume, time taken."""
    spacing = geometry.spacing_zyx
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(class_names) + 1)
    volumes = {name: round(float(counts[k]) * voxel_ml, 3) for k, name in sorted(class_names.items())}
    tumours, vessel_ml = None, None
    for k, name in class_names.items():
        if "tumo" in name.lower() or "lesion" in name.lower() or "cancer" in name.lower():
            count, lesions = lesion_table(labels == k, spacing)
            tumours = TumourTable(count=count, lesions=tuple(lesions),
                                  listed=f"the {len(lesions)} largest" if count > len(lesions) else "all")
        if "vessel" in name.lower():
            vessel_ml = volumes[name]
    return CaseReport(volumes_ml=volumes, voxel_volume_ml=voxel_ml, shape_zyx=tuple(int(n) for n in labels.shape),
                      spacing_zyx=tuple(float(s) for s in spacing), folds=tuple(int(f) for f in folds),
                      seconds=round(seconds, 2), tumours=tumours, vessel_volume_ml=vessel_ml)


COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80], [60, 120, 240], [240, 200, 40]], np.float32) / 255


def write_overlays(outputs: CaseOutputs, image: np.ndarray, labels: np.ndarray,
                   window: tuple[float, float] = (-160, 240), n_slices: int = 3) -> list[Path]:
    """PNG axial slices (through the largest foreground extent) with the labels over the CT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_slice = (labels > 0).reshape(labels.shape[0], -1).sum(1)
    order = np.argsort(per_slice)[::-1][:n_slices] if per_slice.any() else [labels.shape[0] // 2]
    paths = []
    for z in sorted(int(i) for i in order):
        ct = np.clip((image[z] - window[0]) / (window[1] - window[0]), 0, 1)
        rgb = np.repeat(ct[..., None], 3, axis=-1)
        lab = labels[z]
        colour = COLOURS[np.minimum(lab, len(COLOURS) - 1)]
        alpha = (lab > 0)[..., None] * 0.5
        rgb = rgb * (1 - alpha) + colour * alpha
        path = outputs.overlay(z)
        with atomic_path(path) as tmp:
            plt.imsave(tmp, rgb, format="png")
        paths.append(path)
    return paths

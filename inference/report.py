"""Clinical read-outs of a label map: volumes per class, tumour count and sizes, overlays.

:func:`measure_case` makes the measurements of a case report (:class:`autoseg.artefacts.CaseReport`);
prediction adds how the case was predicted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoseg.artefacts import CaseReport, Lesion, TumourTable
from autoseg.io import Geometry, atomic_path
from autoseg.layout import CaseOutputs

#: Lesions listed one by one in a report (largest first); all are counted. A poorly trained model
#: can predict hundreds of thousands of specks, and listing each made report.json hundreds of MB.
MAX_LISTED_LESIONS = 100
#: Lesions smaller than this (mL) are counted but not listed: 0.01 mL = 10 mm³, a sphere 2.7 mm across,
#: below what a radiologist measures (RECIST's smallest measurable lesion is 10 mm across).
MIN_LESION_ML = 0.01
#: Class names (lower case) taken for tumours, and for the organ whose volume the tumour burden divides by.
TUMOUR_WORDS = ("tumo", "lesion", "cancer")
LIVER_NAME = "liver"


def index_to_mm(geometry: Geometry, index_zyx: np.ndarray) -> np.ndarray:
    """Patient coordinates (x, y, z) in mm (SimpleITK's physical space: DICOM's LPS) of continuous voxel
    indices ``(..., 3)`` in numpy (z, y, x) order: origin + direction @ (spacing * (x, y, z))."""
    xyz = np.asarray(index_zyx, np.float64)[..., ::-1] * np.asarray(geometry.spacing, np.float64)
    direction = np.asarray(geometry.direction, np.float64).reshape(3, 3)
    return np.asarray(geometry.origin, np.float64) + xyz @ direction.T


def longest_axial_diameter(mask: np.ndarray, spacing_yx: tuple[float, float]) -> float:
    """The longest in-plane distance (mm) within a lesion ``mask (z, y, x)`` on any axial slice.

    Measured between pixel edges (each boundary pixel contributes the midpoints of its four edges),
    so a lesion one voxel wide measures one voxel, on the convex hull of those points per slice: the
    cost follows the lesion's outline, not the square of its voxel count. Anisotropic in-plane
    spacing is measured in mm. ``axial`` is the label map's slice axis (axis 0)."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    sy, sx = (float(s) for s in spacing_yx)
    offsets = np.array([[-sy / 2, 0], [sy / 2, 0], [0, -sx / 2], [0, sx / 2]])
    best = 0.0
    for plane in mask:
        if not plane.any():
            continue
        edge = plane & ~ndimage.binary_erosion(plane)
        centres = np.argwhere(edge) * np.array([sy, sx])
        points = (centres[:, None, :] + offsets[None]).reshape(-1, 2)
        if len(points) > 8:
            try:
                points = points[ConvexHull(points).vertices]
            except QhullError:  # degenerate: all on a line; its two ends are the lexicographic extremes
                order = np.lexsort((points[:, 1], points[:, 0]))
                points = points[[order[0], order[-1]]]
        best = max(best, float(pdist(points).max()))
    return best


def lesion_table(mask: np.ndarray, spacing_zyx: tuple[float, ...],
                 limit: int | None = MAX_LISTED_LESIONS, geometry: Geometry | None = None,
                 min_ml: float = 0.0) -> tuple[int, list[Lesion]]:
    """Number of 26-connected components of ``mask`` and the ``limit`` largest of at least ``min_ml``
    (see :func:`lesion_census`)."""
    count, _, table = lesion_census(mask, spacing_zyx, limit, geometry, min_ml)
    return count, table


def lesion_census(mask: np.ndarray, spacing_zyx: tuple[float, ...], limit: int | None = MAX_LISTED_LESIONS,
                  geometry: Geometry | None = None, min_ml: float = 0.0) -> tuple[int, int, list[Lesion]]:
    """The 26-connected components of ``mask``: how many, how many are under ``min_ml`` mL, and the
    ``limit`` largest of the others, largest first, each with its volume (mL), voxel count,
    bounding-box extent (mm), centroid (voxel (z, y, x), and patient mm when ``geometry`` is given)
    and longest axial diameter (mm, :func:`longest_axial_diameter`)."""
    import cc3d

    labelled = cc3d.connected_components(mask.astype(np.uint8, copy=False), connectivity=26)
    stats = cc3d.statistics(labelled)
    counts = np.asarray(stats["voxel_counts"])[1:]
    boxes = stats["bounding_boxes"][1:]
    centroids = np.asarray(stats["centroids"], np.float64).reshape(-1, 3)[1:]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    present = counts > 0
    small = present & (counts * voxel_ml < min_ml)
    order = [int(i) for i in np.argsort(-counts, kind="stable") if present[i] and not small[i]][:limit]
    table = []
    for idx in order:
        extent = [(s.stop - s.start) * sp for s, sp in zip(boxes[idx], spacing_zyx)]
        lesion = labelled[boxes[idx]] == idx + 1
        centroid_mm = (tuple(round(float(c), 2) for c in index_to_mm(geometry, centroids[idx]))
                       if geometry is not None else None)
        diameter = longest_axial_diameter(lesion, (spacing_zyx[1], spacing_zyx[2]))
        table.append(Lesion(volume_ml=round(int(counts[idx]) * voxel_ml, 4), voxels=int(counts[idx]),
                            extent_mm=tuple(round(float(e), 1) for e in extent),
                            centroid_zyx=tuple(round(float(c), 2) for c in centroids[idx]),
                            centroid_mm=centroid_mm, axial_diameter_mm=round(diameter, 1)))
    return int(np.count_nonzero(present)), int(np.count_nonzero(small)), table


def is_tumour(name: str) -> bool:
    return any(word in name.lower() for word in TUMOUR_WORDS)


def measure_case(labels: np.ndarray, geometry: Geometry, class_names: dict[int, str],
                 seconds: float, folds: list[int] | tuple[int, ...]) -> CaseReport:
    """Volumes in mL per class, tumours (count, and per lesion of at least :data:`MIN_LESION_ML` the
    volume, centroid and longest axial diameter, largest first), vessel volume, liver volume and
    tumour burden when a class is the liver, time taken."""
    spacing = geometry.spacing_zyx
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(class_names) + 1)
    volumes = {name: round(float(counts[k]) * voxel_ml, 3) for k, name in sorted(class_names.items())}
    tumours, vessel_ml = None, None
    for k, name in class_names.items():
        if is_tumour(name):
            count, small, lesions = lesion_census(labels == k, spacing, geometry=geometry, min_ml=MIN_LESION_ML)
            at_least = f"of at least {MIN_LESION_ML} mL"
            listed = ("all" if len(lesions) == count else f"the {len(lesions)} {at_least}"
                      if len(lesions) == count - small else f"the {len(lesions)} largest {at_least}")
            tumours = TumourTable(count=count, lesions=tuple(lesions), listed=listed,
                                  min_listed_ml=MIN_LESION_ML, below_minimum=small)
        if "vessel" in name.lower():
            vessel_ml = volumes[name]
    liver_ml, burden = None, None
    liver = [k for k, name in class_names.items() if name.lower() == LIVER_NAME]
    if liver and any(counts[k] for k in liver):  # a liver found: its volume and the tumours' share of it
        tumour_ml = sum(float(counts[k]) * voxel_ml for k, name in class_names.items() if is_tumour(name))
        liver_ml = round(sum(float(counts[k]) * voxel_ml for k in liver) + tumour_ml, 3)
        burden = round(tumour_ml / liver_ml, 4)
    return CaseReport(volumes_ml=volumes, voxel_volume_ml=voxel_ml, shape_zyx=tuple(int(n) for n in labels.shape),
                      spacing_zyx=tuple(float(s) for s in spacing), folds=tuple(int(f) for f in folds),
                      seconds=round(seconds, 2), tumours=tumours, vessel_volume_ml=vessel_ml,
                      liver_volume_ml=liver_ml, tumour_burden=burden)


#: The long side of an overlay PNG in pixels, at least (slices are drawn in square millimetres).
OVERLAY_SIDE = 512


def write_overlays(outputs: CaseOutputs, image: np.ndarray, labels: np.ndarray, geometry: Geometry,
                   class_names: dict[int, str], window: tuple[float, float] = (-160, 240),
                   n_slices: int = 3) -> list[Path]:
    """PNG axial slices (the ``n_slices`` with the most foreground) with the labels over the CT, in
    radiological orientation (:mod:`autoseg.inference.display`, as the web viewer: anterior at the
    top, the patient's right on the image's left), pixels square in mm, at least
    :data:`OVERLAY_SIDE` pixels on the long side (labels scaled nearest-neighbour), the orientation
    letters at the edges and a legend naming each class in its colour. A file's ``zNNN`` is the
    slice's index counted from the patient's feet (the radiological volume's axial index)."""
    from autoseg.inference.display import radiological

    ct, spacing = radiological(image.astype(np.float32, copy=False), geometry)
    lab, _ = radiological(labels, geometry)
    per_slice = (lab > 0).reshape(lab.shape[0], -1).sum(1)
    order = np.argsort(per_slice)[::-1][:n_slices] if per_slice.any() else [lab.shape[0] // 2]
    names = {int(k): str(v) for k, v in class_names.items() if int(k) != 0}
    paths = []
    for z in sorted(int(i) for i in order):
        path = outputs.overlay(z)
        with atomic_path(path) as tmp:
            render_overlay(ct[z], lab[z], (spacing[1], spacing[2]), names, window).save(tmp, format="PNG")
        paths.append(path)
    return paths


def render_overlay(ct: np.ndarray, labels: np.ndarray, spacing_yx: tuple[float, float], names: dict[int, str],
                   window: tuple[float, float]) -> Any:
    """One radiological axial slice as a PIL image: CT in ``window``, labels blended and outlined,
    orientation letters, legend below."""
    from PIL import Image, ImageDraw, ImageFont
    from scipy import ndimage

    from autoseg.inference.display import colour_of

    rows_mm, cols_mm = ct.shape[0] * spacing_yx[0], ct.shape[1] * spacing_yx[1]
    scale = max(OVERLAY_SIDE, *ct.shape) / max(rows_mm, cols_mm)
    size = (max(1, round(cols_mm * scale)), max(1, round(rows_mm * scale)))
    grey = np.clip((ct.astype(np.float32) - window[0]) / (window[1] - window[0]), 0, 1)
    grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
    big = np.asarray(Image.fromarray(np.ascontiguousarray(labels)).resize(size, Image.Resampling.NEAREST))
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    for k in (int(v) for v in np.unique(big) if v):
        mask = big == k
        tint = np.array(colour_of(k), np.float32)
        rgb[mask] = rgb[mask] * 0.5 + tint * 0.5
        rgb[mask & ~ndimage.binary_erosion(mask)] = tint
    font = ImageFont.load_default(size=18)
    line = 26
    legend_rows = max(1, len(names))
    canvas = Image.new("RGB", (size[0], size[1] + 12 + line * legend_rows), (0, 0, 0))
    canvas.paste(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    w, h = size
    for text, (x, y), anchor in (("A", (w // 2, 4), "mt"), ("P", (w // 2, h - 4), "mb"),
                                 ("R", (4, h // 2), "lm"), ("L", (w - 4, h // 2), "rm")):
        draw.text((x, y), text, fill=(255, 255, 255), font=font, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))
    y0 = h + 8
    for i, (k, name) in enumerate(sorted(names.items())):
        top = y0 + i * line
        draw.rectangle((8, top + 3, 26, top + 21), fill=colour_of(k))
        draw.text((34, top + 12), f"{k} {name}", fill=(255, 255, 255), font=font, anchor="lm")
    if not names:
        draw.text((8, y0 + 12), "no classes", fill=(255, 255, 255), font=font, anchor="lm")
    return canvas

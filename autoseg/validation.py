"""Checks on one case's arrays, shared by the fingerprint and preprocessing.

Every problem is a :class:`~autoseg.errors.DatasetError` that names the file(s), says what is wrong and
how to fix it, so a bad case stops the run before hours of training are spent on it. Non-finite voxels
are an :class:`~autoseg.errors.ImageReadError`, the same one image reading raises for a NIfTI file
whose NaN/inf ITK would have read as 0 (one policy for every format, training and prediction).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.datasets import Case
from autoseg.errors import DatasetError
from autoseg.io import Geometry, count_nonfinite, nonfinite_error

SPACING_RTOL = 1e-3  # relative; spacings of image and label written by different tools differ in rounding
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-3


def validate_case(case: Case, image: np.ndarray, image_geom: Geometry, label: np.ndarray | None,
                  label_geom: Geometry | None, labels: dict[int, str], num_channels: int) -> None:
    """Raise DatasetError if the case's image ``(C, z, y, x)`` or label ``(z, y, x)`` is unusable.

    Checks: the number of channels, non-finite voxels (ImageReadError), image and label on the same grid (shape,
    spacing, origin, direction within a small tolerance) and label values declared in dataset.json.
    """
    _check_channels(case, image, num_channels)
    _check_finite(case, image)
    if label is None:
        return
    label_path = case.label if case.label is not None else Path(case.identifier)
    _check_grid(case.images[0], image.shape[1:], image_geom, label_path, label.shape, label_geom)
    _check_label_values(label_path, label, labels)


def _check_channels(case: Case, image: np.ndarray, num_channels: int) -> None:
    if image.ndim != 4:
        raise DatasetError(f"image array has shape {image.shape}, expected (channels, z, y, x)",
                           case.images[0], "provide 3D volumes, one per channel")
    if image.shape[0] != num_channels:
        files = ", ".join(p.name for p in case.images)
        raise DatasetError(
            f"case '{case.identifier}' has {image.shape[0]} channel(s) ({files}), but {num_channels} are "
            "expected (the dataset's channels: dataset.json's for a raw dataset, the model's plans.json "
            "for predict)", case.images[0],
            "provide exactly those channels, in their order (one file per channel, or one 4D file)")


def _channel_file(case: Case, channel: int) -> Path:
    return case.images[channel] if len(case.images) > channel else case.images[0]


def _check_finite(case: Case, image: np.ndarray) -> None:
    for c in range(image.shape[0]):
        bad, nan = count_nonfinite(image[c])
        if bad:
            raise nonfinite_error(_channel_file(case, c), bad, nan, f"channel {c}: ")


def _check_grid(image_path: Path, image_shape: tuple[int, ...], image_geom: Geometry, label_path: Path,
                label_shape: tuple[int, ...], label_geom: Geometry | None) -> None:
    both = f"image {image_path} and label {label_path}"
    fix = "resample the label onto the image grid (same size, spacing, origin and direction)"
    if tuple(image_shape) != tuple(label_shape):
        raise DatasetError(f"{both} differ in shape (z, y, x): {tuple(image_shape)} vs {tuple(label_shape)}",
                           label_path, fix)
    if label_geom is None:
        return
    if not np.allclose(image_geom.spacing, label_geom.spacing, rtol=SPACING_RTOL, atol=1e-6):
        raise DatasetError(f"{both} differ in spacing (x, y, z): {_fmt(image_geom.spacing)} vs "
                           f"{_fmt(label_geom.spacing)}", label_path, fix)
    if not np.allclose(image_geom.origin, label_geom.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        raise DatasetError(f"{both} differ in origin: {_fmt(image_geom.origin)} vs "
                           f"{_fmt(label_geom.origin)}", label_path, fix)
    if not np.allclose(image_geom.direction, label_geom.direction, rtol=0, atol=DIRECTION_ATOL):
        raise DatasetError(f"{both} differ in direction: {_fmt(image_geom.direction)} vs "
                           f"{_fmt(label_geom.direction)}", label_path, fix)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def label_values(label: np.ndarray) -> list[int]:
    """The distinct values of an integer label map, without sorting the whole volume."""
    if label.size == 0:
        return []
    lo, hi = int(label.min()), int(label.max())
    if hi - lo < 16:  # the usual case: a few classes, one comparison pass per candidate value
        return [v for v in range(lo, hi + 1) if v in (lo, hi) or bool((label == v).any())]
    if hi - lo > 1_000_000:
        return [int(v) for v in np.unique(label)]
    counts = np.zeros(hi - lo + 1, dtype=np.int64)
    flat = label.reshape(-1)
    step = 1 << 22  # bounded temporaries: bincount converts each block to intp
    for start in range(0, flat.size, step):
        block = flat[start:start + step].astype(np.int64) - lo
        counts += np.bincount(block, minlength=counts.size)
    return [int(v) + lo for v in np.flatnonzero(counts)]


def _check_label_values(label_path: Path, label: np.ndarray, labels: dict[int, str]) -> None:
    unexpected = [v for v in label_values(label) if v not in labels]
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:20]) + (" ..." if len(unexpected) > 20 else "")
        declared = ", ".join(f"{k} ({v})" for k, v in sorted(labels.items()))
        raise DatasetError(f"label map holds value(s) {shown} not declared in dataset.json (declared: "
                           f"{declared})", label_path,
                           "fix the label map or add the missing labels to dataset.json")

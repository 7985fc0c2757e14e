"""Cropping to the body: drop the air (and the scanner table's surroundings) around the patient.

For CT the body is the largest connected component of voxels above -500 HU; for other images it is
every voxel that is nonzero in some channel. Only the bounding box is used for cropping, and a box is
unchanged by filling holes inside the component, so hole filling is done only where a mask itself is
needed (z-score normalisation over the body, :func:`fill_holes_per_slice`).
"""
from __future__ import annotations

import logging

import cc3d  # connected-components-3d, a dependency of acvl-utils
import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

BODY_HU_THRESHOLD = -500.0

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # half-open (start, stop) per z, y, x


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a 3D boolean mask (all False when the mask is empty)."""
    return np.asarray(cc3d.largest_k(mask, k=1, connectivity=6, binary_image=True) != 0)


def mask_bbox(mask: np.ndarray) -> BBox | None:
    """Bounding box of the nonzero voxels of a 3D mask, or None if it is empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def body_bbox(data: np.ndarray, ct_channel: int | None) -> BBox | None:
    """Bounding box of the body in ``data`` (C, z, y, x), None when nothing is found.

    ``ct_channel``: index of a CT channel (HU), or None for images whose background is 0.
    """
    if ct_channel is not None:
        return mask_bbox(largest_component(data[ct_channel] > BODY_HU_THRESHOLD))
    return mask_bbox(np.any(data != 0, axis=0))


def body_mask(data: np.ndarray, ct_channel: int | None) -> np.ndarray:
    """The body as a mask (z, y, x), holes filled per slice; used for statistics over the body."""
    if ct_channel is not None:
        mask = largest_component(data[ct_channel] > BODY_HU_THRESHOLD)
    else:
        mask = np.any(data != 0, axis=0)
    return fill_holes_per_slice(mask)


def grow_bbox(bbox: BBox, shape: tuple[int, ...], margin: int = 1) -> BBox:
    """``bbox`` widened by ``margin`` voxels on each side, clipped to ``shape``."""
    return tuple((max(0, a - margin), min(int(n), b + margin))  # type: ignore[return-value]
                 for (a, b), n in zip(bbox, shape))


def crop_bbox(data: np.ndarray, ct_channel: int | None, margin: int = 1) -> BBox:
    """The box to crop ``data`` (C, z, y, x) to: the body plus ``margin``; the whole image when empty."""
    shape = tuple(data.shape[1:])
    bbox = body_bbox(data, ct_channel)
    if bbox is None:
        log.warning("no body found (no voxel above %s HU / nonzero); keeping the whole image",
                    BODY_HU_THRESHOLD)
        return tuple((0, int(n)) for n in shape)  # type: ignore[return-value]
    return grow_bbox(bbox, shape, margin)


def bbox_slices(bbox: BBox) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in bbox)  # type: ignore[return-value]


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes slice by slice along z (cheaper than 3D filling, enough for a body mask)."""
    out = np.empty_like(mask, dtype=bool)
    for z in range(mask.shape[0]):
        out[z] = ndimage.binary_fill_holes(mask[z]) if mask[z].any() else False
    return out

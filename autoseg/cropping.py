"""Body cropping, shared by the fingerprint (crop sizes) and preprocessing (the crop itself)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_THRESHOLD_HU = -500.0

BBox = tuple[tuple[int, int], ...]


def body_mask(image: np.ndarray, is_ct: bool) -> np.ndarray:
    """Voxels of the body: the largest connected region above -500 HU for CT, nonzero otherwise."""
    mask = image > BODY_THRESHOLD_HU if is_ct else image != 0
    if not mask.any():
        return mask
    if is_ct:
        labelled, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(labelled.ravel())
            sizes[0] = 0
            mask = labelled == int(sizes.argmax())
    return mask


def body_bbox(image: np.ndarray, is_ct: bool, margin: int = 1) -> BBox:
    """Bounding box ``((lo, hi), ...)`` of the body, half-open, in voxel indices; whole image if empty."""
    mask = body_mask(image, is_ct)
    if not mask.any():
        return tuple((0, s) for s in image.shape)
    bbox = []
    for axis in range(image.ndim):
        other = tuple(a for a in range(image.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bbox.append((max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, image.shape[axis])))
    return tuple(bbox)


def crop(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """Crop the last ``len(bbox)`` axes of ``array`` to ``bbox``."""
    lead = (slice(None),) * (array.ndim - len(bbox))
    return array[lead + tuple(slice(lo, hi) for lo, hi in bbox)]

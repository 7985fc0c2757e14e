"""Intensity normalisation per channel, as the plans say.

``ct``: clip to the plans' HU window, then ``(x - mean) / std`` with the dataset-wide statistics the
planner measured, so every case is on the same scale. ``zscore``: per-image mean and std over the body
mask (non-CT images, whose intensities have no absolute meaning); voxels outside the body become 0.
An unknown scheme raises, listing the known ones.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoseg.plans import Normalisation
from autoseg.registry import Registry


def normalise_ct(channel: np.ndarray, norm: Normalisation, out: np.ndarray) -> None:
    """Clip to ``norm.window`` and standardise with the dataset statistics, into ``out``."""
    if norm.window is None:
        raise ValueError("ct normalisation needs a window")  # Plans validation prevents this
    np.clip(channel, norm.window[0], norm.window[1], out=out)
    out -= np.float32(norm.mean)
    out /= np.float32(norm.std)


def normalise_zscore(channel: np.ndarray, mask: np.ndarray | None, out: np.ndarray) -> None:
    """Standardise with this image's mean and std over ``mask`` (all voxels when None), into ``out``."""
    values = channel if mask is None or not mask.any() else channel[mask]
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    out[...] = channel
    out -= np.float32(mean)
    out /= np.float32(max(std, 1e-8))
    if mask is not None and mask.any():
        out[~mask] = 0.0


#: One channel's normalisation step: (channel, its plans entry, body mask or None, output array).
Step = Callable[[np.ndarray, Normalisation, np.ndarray | None, np.ndarray], None]

#: Normalisation schemes by name (``Normalisation.scheme`` in plans.json).
SCHEMES: Registry[Step] = Registry("normalisation", {
    "ct": lambda channel, norm, _mask, out: normalise_ct(channel, norm, out),
    "zscore": lambda channel, _norm, mask, out: normalise_zscore(channel, mask, out),
})


def needs_mask(schemes: Sequence[Normalisation]) -> bool:
    """Whether any channel needs the body mask."""
    return any(n.scheme == "zscore" for n in schemes)


def normalise(data: np.ndarray, schemes: Sequence[Normalisation], mask: np.ndarray | None = None,
              inplace: bool = False) -> np.ndarray:
    """Normalise ``data`` (C, z, y, x) channel by channel; returns float32.

    ``mask``: the body mask (z, y, x) for z-score channels. ``inplace`` reuses ``data``'s memory when it
    is float32 (preprocessing owns the array it read); otherwise the input is left unchanged.
    """
    if data.shape[0] != len(schemes):
        raise ValueError(f"{data.shape[0]} channels but {len(schemes)} normalisation entries")
    if inplace and data.dtype == np.float32:
        out = data
    else:
        out = np.empty(data.shape, dtype=np.float32)
    for c, norm in enumerate(schemes):
        SCHEMES[norm.scheme](data[c], norm, mask, out[c])
    return out

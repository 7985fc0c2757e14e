"""One anatomical orientation for the network, whatever order the file stores its voxels in.

A CT can store its voxels in any axis order: DICOM and most NIfTI writers put the patient's left at
increasing x and posterior at increasing y (LPS), others (nibabel's canonical RAS, the
TotalSegmentator example CT) the other way round, and a reformatted series may even list sagittal
slices first. A network sees only the array: trained on one order and shown another, it meets an
upside-down, mirrored patient and fails quietly (the liver looked for on the patient's left). Plans
with ``orientation: "LPS"`` therefore turn every image, in preprocessing and in prediction, into
SimpleITK's LPS axis order (array ``(z, y, x)`` with x to the patient's left, y to posterior, z to the
head) by transposing and flipping axes only (exact, no interpolation), and put predictions back
into the file's own order before they are written. An oblique grid takes the axis order nearest to
it, as nibabel's ``as_closest_canonical`` does. Plans written before the field (``orientation``
absent) keep the file's order, as their models were trained.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autoseg.io import Geometry

#: The orientation plans ask for; the only one there is.
CANONICAL = "LPS"


@dataclass(frozen=True)
class Reorientation:
    """How an array ``(..., z, y, x)`` in a file's voxel order becomes LPS order.

    Canonical axis ``k`` (of z, y, x) is the file array's axis ``perm[k]``, reversed where
    ``flips[k]``.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def of(cls, geometry: Geometry) -> "Reorientation":
        """The reorientation of a grid: its direction's index axes matched to the nearest patient axes."""
        d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)  # column c: index axis c (x, y, z)
        best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[c], c]) for c in range(3)))
        # index axis c points along patient axis best[c]; array axis 2 - c holds index axis c
        perm = [0, 0, 0]
        flips = [False, False, False]
        for c in range(3):
            k = 2 - best[c]  # the canonical array axis of that patient axis
            perm[k] = 2 - c
            flips[k] = bool(d[best[c], c] < 0)
        return cls((perm[0], perm[1], perm[2]), (flips[0], flips[1], flips[2]))

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` ``(..., z, y, x)`` in the file's order, in LPS order (a view where possible)."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        flip_axes = tuple(lead + k for k in range(3) if self.flips[k])
        return np.flip(out, flip_axes) if flip_axes else out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """``array`` ``(..., z, y, x)`` in LPS order, back in the file's order (a contiguous copy)."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        flip_axes = tuple(lead + k for k in range(3) if self.flips[k])
        out = np.flip(array, flip_axes) if flip_axes else array
        inverse = np.argsort(self.perm)
        return np.ascontiguousarray(np.transpose(out, tuple(range(lead)) + tuple(lead + int(i) for i in inverse)))

    def shape(self, shape_zyx: Sequence[int]) -> tuple[int, int, int]:
        """The LPS-order shape of a file-order ``(z, y, x)`` shape."""
        return (int(shape_zyx[self.perm[0]]), int(shape_zyx[self.perm[1]]), int(shape_zyx[self.perm[2]]))

    def spacing(self, spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
        """The LPS-order spacing of a file-order ``(z, y, x)`` spacing."""
        return (float(spacing_zyx[self.perm[0]]), float(spacing_zyx[self.perm[1]]), float(spacing_zyx[self.perm[2]]))

    def box(self, bbox: Sequence[tuple[int, int]], shape_zyx: Sequence[int]
            ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """A file-order box ``((z0, z1), (y0, y1), (x0, x1))`` on a grid of ``shape_zyx``, in LPS order."""
        out = []
        for k in range(3):
            lo, hi = bbox[self.perm[k]]
            n = int(shape_zyx[self.perm[k]])
            out.append((n - int(hi), n - int(lo)) if self.flips[k] else (int(lo), int(hi)))
        return (out[0], out[1], out[2])


def reorientation_for(orientation: str | None, geometry: Geometry) -> Reorientation:
    """The reorientation plans with ``orientation`` ask for on ``geometry`` (None: the file's order)."""
    if orientation is None:
        return Reorientation()
    if orientation != CANONICAL:
        raise ValueError(f"unknown orientation {orientation!r}; plans know {CANONICAL!r} or none")
    return Reorientation.of(geometry)

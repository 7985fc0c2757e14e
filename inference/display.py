"""How volumes are shown to people: radiological orientation and the class colours.

One implementation for the ``--overlays`` PNGs (:mod:`autoseg.inference.report`) and the web viewer
(:mod:`autoseg.serve.slices`). A volume is turned to SimpleITK's ``LPS`` orientation (identity
direction: array axes (z, y, x) run to the patient's head, posterior and left), so that an axial
slice drawn with row 0 at the top and column 0 on the left is in radiological convention: the
patient's anterior at the top and the patient's right on the image's left, seen from the feet.
Coronal and sagittal slices are drawn head up by reversing axis 0. A direction matrix that is not a
pure permutation of the axes (an oblique scan) is turned to the closest such orientation, as
SimpleITK's ``DICOMOrient`` does.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from autoseg.io import Geometry, image_from_array

#: SimpleITK's orientation code for radiological display (see the module docstring).
RADIOLOGICAL = "LPS"
#: Class colours (RGB): class k takes entry (k - 1) modulo the length; the viewer and the overlays share them.
PALETTE = ((230, 60, 60), (60, 200, 80), (60, 120, 240), (240, 200, 40), (200, 80, 220), (40, 210, 210))


def colour_of(label: int) -> tuple[int, int, int]:
    r, g, b = PALETTE[(label - 1) % len(PALETTE)]
    return (r, g, b)


def radiological_image(image: sitk.Image) -> sitk.Image:
    """``image`` turned to the radiological (LPS) orientation."""
    return sitk.DICOMOrient(image, RADIOLOGICAL)


def radiological_array(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The voxels ``(z, y, x)`` of ``image`` in radiological orientation and their spacing ``(z, y, x)``."""
    image = radiological_image(image)
    sx, sy, sz = image.GetSpacing()
    return sitk.GetArrayFromImage(image), (sz, sy, sx)


def radiological(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A ``(z, y, x)`` array on ``geometry``'s grid in radiological orientation, and its spacing."""
    return radiological_array(image_from_array(array, geometry))

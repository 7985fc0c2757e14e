"""Server-rendered PNG slices: a CT slice in an HU window with the label map blended over it.

Volumes are turned to the LPS orientation once when loaded, so every image is shown the radiological
way whatever the file's direction matrix: axial with the patient's left on the right and anterior at
the top, coronal and sagittal with the head at the top. Pixels are resampled to square millimetres.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from autoseg.inference.display import PALETTE as DISPLAY_PALETTE, radiological_array
from autoseg.io import read_sitk
from autoseg.serve.security import UploadError

PLANES = ("axial", "coronal", "sagittal")
#: HU windows (low, high): abdomen W400/L40, liver W150/L30, lung W1500/L-600, bone W1800/L400.
WINDOWS: dict[str, tuple[float, float]] = {"abdomen": (-160.0, 240.0), "liver": (-45.0, 105.0),
                                           "lung": (-1350.0, 150.0), "bone": (-500.0, 1300.0)}
#: Class colours (RGB), class k takes entry (k - 1) modulo the length (shared with the overlays).
PALETTE = DISPLAY_PALETTE
IMAGE_SIDE = 512


def colour(label: int) -> str:
    r, g, b = PALETTE[(label - 1) % len(PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class Volume:
    """A CT (int16 HU) and its labels (uint8), both ``(z, y, x)`` in LPS, and the spacing in mm."""

    ct: np.ndarray
    labels: np.ndarray
    spacing_zyx: tuple[float, float, float]

    def count(self, plane: str) -> int:
        return int(self.ct.shape[PLANES.index(plane)])


def _lps_array(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    return radiological_array(image)  # the one reorientation, shared with the --overlays PNGs


def load_volume(image_path: Path, labels_path: Path) -> Volume:
    ct, spacing = _lps_array(read_sitk(image_path))
    labels, _ = _lps_array(sitk.ReadImage(str(labels_path)))
    ct16 = np.clip(ct, -32768, 32767).astype(np.int16)
    return Volume(ct16, labels.astype(np.uint8), spacing)


def default_view(labels_path: Path) -> dict[str, Any]:
    """Slice count per plane and the slice through the centre of the foreground (or the middle)."""
    labels, _ = _lps_array(sitk.ReadImage(str(labels_path)))
    centre = (ndimage.center_of_mass(labels > 0) if labels.any()
              else tuple((s - 1) / 2 for s in labels.shape))
    return {"view": {plane: {"count": int(labels.shape[axis]), "index": round(centre[axis])}
                     for axis, plane in enumerate(PLANES)}}


def _plane_arrays(volume: Volume, plane: str, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(CT, labels, (row, column) spacing) of one slice, head up for coronal and sagittal."""
    z, y, x = volume.spacing_zyx
    if plane == "axial":
        return volume.ct[index], volume.labels[index], (y, x)
    if plane == "coronal":
        return volume.ct[::-1, index, :], volume.labels[::-1, index, :], (z, x)
    return volume.ct[::-1, :, index], volume.labels[::-1, :, index], (z, y)


def render_slice(volume: Volume, plane: str, index: int, window: str, opacity: float,
                 classes: tuple[int, ...]) -> bytes:
    """PNG bytes of one slice with the chosen classes blended at ``opacity`` and outlined."""
    if plane not in PLANES:
        raise UploadError(f"unknown plane '{plane[:20]}'", 400, f"use one of {', '.join(PLANES)}")
    if window not in WINDOWS:
        raise UploadError(f"unknown window '{window[:20]}'", 400, f"use one of {', '.join(WINDOWS)}")
    if not 0 <= index < volume.count(plane):
        raise UploadError(f"slice {index} is outside 0..{volume.count(plane) - 1}", 400, "pick a slice in range")
    if not 0.0 <= opacity <= 1.0:
        raise UploadError("opacity must be between 0 and 1", 400, "pass e.g. opacity=0.5")
    ct, labels, (sr, sc) = _plane_arrays(volume, plane, index)
    scale = IMAGE_SIDE / max(ct.shape[0] * sr, ct.shape[1] * sc)
    size = (max(1, round(ct.shape[1] * sc * scale)), max(1, round(ct.shape[0] * sr * scale)))
    lo, hi = WINDOWS[window]
    grey = np.clip((ct.astype(np.float32) - lo) / (hi - lo), 0, 1)
    grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
    labels = np.asarray(Image.fromarray(np.ascontiguousarray(labels)).resize(size, Image.Resampling.NEAREST))
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    for k in classes:
        mask = labels == k
        if not mask.any():
            continue
        tint = np.array(PALETTE[(k - 1) % len(PALETTE)], np.float32)
        rgb[mask] = rgb[mask] * (1 - opacity) + tint * opacity
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = tint
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, format="PNG", compress_level=3)
    return out.getvalue()


class VolumeCache:
    """The last few volumes opened, so moving a slider does not read the files again."""

    def __init__(self, size: int = 2):
        self.size = size
        self.items: OrderedDict[str, Volume] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str, image_path: Path, labels_path: Path) -> Volume:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            volume = load_volume(image_path, labels_path)
            self.items[key] = volume
            while len(self.items) > self.size:
                self.items.popitem(last=False)
            return volume

    def drop(self, key: str) -> None:
        with self.lock:
            self.items.pop(key, None)

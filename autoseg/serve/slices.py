"""Server-rendered PNG slices: a CT slice in an HU window with the label map blended over it, or the
uncertainty map (normalised predictive entropy, 0..1) as a heat map.

Volumes are turned to the LPS orientation once when loaded, so every image is shown the radiological
way whatever the file's direction matrix: axial with the patient's left on the right and anterior at
the top, coronal and sagittal with the head at the top. Pixels are resampled to square millimetres.
"""
from __future__ import annotations

import io
import dataclasses
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
#: What is drawn over the CT: the label map, or the uncertainty map as a heat map.
LAYERS = ("labels", "uncertainty")
#: The uncertainty heat map: (entropy, RGB) stops, linearly interpolated (dark violet, red, orange, pale
#: yellow). A pixel is tinted at ``opacity * min(1, entropy / UNCERTAINTY_FULL)``, so certain voxels
#: (entropy 0) leave the CT as it is and every entropy from UNCERTAINTY_FULL up is drawn at full opacity.
HEAT_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (60, 0, 140)), (0.33, (210, 40, 80)), (0.66, (250, 150, 20)), (1.0, (255, 255, 170)))
UNCERTAINTY_FULL = 0.25
UNCERTAINTY_LEGEND = "entropy 0 = certain, 1 = all classes equally likely"
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
    """A CT (int16 HU), its labels (uint8) and, once asked for, its uncertainty map (entropy 0..1
    quantised to uint8 0..255, one byte a voxel like the labels), all ``(z, y, x)`` in LPS, and the
    spacing in mm."""

    ct: np.ndarray
    labels: np.ndarray
    spacing_zyx: tuple[float, float, float]
    uncertainty: np.ndarray | None = None

    def count(self, plane: str) -> int:
        return int(self.ct.shape[PLANES.index(plane)])


def _lps_array(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    return radiological_array(image)  # the one reorientation, shared with the --overlays PNGs


def load_volume(image_path: Path, labels_path: Path) -> Volume:
    ct, spacing = _lps_array(read_sitk(image_path))
    labels, _ = _lps_array(sitk.ReadImage(str(labels_path)))
    ct16 = np.clip(ct, -32768, 32767).astype(np.int16)
    return Volume(ct16, labels.astype(np.uint8), spacing)


def load_uncertainty(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The uncertainty map in LPS, quantised to uint8 (0..255 for entropy 0..1)."""
    entropy, _ = _lps_array(sitk.ReadImage(str(path), sitk.sitkFloat32))
    if entropy.shape != shape:
        raise UploadError("the uncertainty map is not on the grid of the label map", 500,
                          "predict the image again")
    return np.round(np.clip(np.nan_to_num(entropy), 0.0, 1.0) * 255.0).astype(np.uint8)


def heat_colours(entropy: np.ndarray) -> np.ndarray:
    """RGB (float32, ``entropy.shape + (3,)``) of entropies 0..1 on the :data:`HEAT_STOPS` ramp."""
    xs = [x for x, _ in HEAT_STOPS]
    return np.stack([np.interp(entropy, xs, [c[i] for _, c in HEAT_STOPS]) for i in range(3)],
                    axis=-1).astype(np.float32)


def default_view(labels_path: Path) -> dict[str, Any]:
    """Slice count per plane and the slice through the centre of the foreground (or the middle)."""
    labels, _ = _lps_array(sitk.ReadImage(str(labels_path)))
    centre = (ndimage.center_of_mass(labels > 0) if labels.any()
              else tuple((s - 1) / 2 for s in labels.shape))
    return {"view": {plane: {"count": int(labels.shape[axis]), "index": round(centre[axis])}
                     for axis, plane in enumerate(PLANES)}}


def _plane(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a ``(z, y, x)`` LPS array, head up for coronal and sagittal."""
    if plane == "axial":
        return array[index]
    if plane == "coronal":
        return array[::-1, index, :]
    return array[::-1, :, index]


def _plane_arrays(volume: Volume, plane: str, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(CT, labels, (row, column) spacing) of one slice, head up for coronal and sagittal."""
    z, y, x = volume.spacing_zyx
    spacing = {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}[plane]
    return _plane(volume.ct, plane, index), _plane(volume.labels, plane, index), spacing


def check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise UploadError(f"unknown layer '{layer[:20]}'", 400, f"use one of {', '.join(LAYERS)}")


def render_slice(volume: Volume, plane: str, index: int, window: str, opacity: float,
                 classes: tuple[int, ...], layer: str = "labels") -> bytes:
    """PNG bytes of one slice with the chosen classes blended at ``opacity`` and outlined; with
    ``layer="uncertainty"`` the entropy heat map is blended instead (the classes' outlines stay)."""
    check_layer(layer)
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
    if layer == "uncertainty":
        if volume.uncertainty is None:
            raise UploadError("this result has no uncertainty map", 404,
                              "predict the image again (results made before the viewer wrote one have none)")
        entropy = np.ascontiguousarray(_plane(volume.uncertainty, plane, index)).astype(np.float32) / 255.0
        entropy = np.asarray(Image.fromarray(entropy).resize(size, Image.Resampling.BILINEAR))
        alpha = (opacity * np.clip(entropy / UNCERTAINTY_FULL, 0.0, 1.0))[..., None]
        rgb = rgb * (1 - alpha) + heat_colours(entropy) * alpha
    for k in classes:
        mask = labels == k
        if not mask.any():
            continue
        tint = np.array(PALETTE[(k - 1) % len(PALETTE)], np.float32)
        if layer == "labels":
            rgb[mask] = rgb[mask] * (1 - opacity) + tint * opacity
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = tint
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, format="PNG", compress_level=3)
    return out.getvalue()


class VolumeCache:
    """The last few volumes opened, so moving a slider does not read the files again. A volume's
    uncertainty map is read the first time it is asked for, and kept with the volume (one byte a
    voxel), so the cache holds at most ``size`` volumes of CT, labels and uncertainty."""

    def __init__(self, size: int = 2):
        self.size = size
        self.items: OrderedDict[str, Volume] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str, image_path: Path, labels_path: Path, uncertainty_path: Path | None = None) -> Volume:
        """The volume of ``key``; with ``uncertainty_path`` (a file that may be missing) also its
        uncertainty map where the file exists."""
        with self.lock:
            volume = self.items.get(key)
            if volume is None:
                volume = load_volume(image_path, labels_path)
            else:
                self.items.move_to_end(key)
            if uncertainty_path is not None and volume.uncertainty is None and uncertainty_path.is_file():
                volume = dataclasses.replace(volume, uncertainty=load_uncertainty(uncertainty_path,
                                                                                  volume.labels.shape))
            self.items[key] = volume
            while len(self.items) > self.size:
                self.items.popitem(last=False)
            return volume

    def drop(self, key: str) -> None:
        with self.lock:
            self.items.pop(key, None)

"""Image and file I/O: SimpleITK images with exact geometry, atomic writes of JSON and arrays.

Arrays are in numpy order ``(z, y, x)`` (channels first when there are several); spacings in
autoseg are in the same order. SimpleITK's own geometry (origin, direction, spacing in ``x, y, z``)
is kept untouched in :class:`Geometry` so that a prediction can be written back on the input grid.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.errors import ImageReadError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """The physical grid of a 3D image, in SimpleITK's ``(x, y, z)`` convention."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in numpy axis order, as used by plans and preprocessing."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        return cls(
            size=tuple(int(v) for v in d["size"]),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in d["spacing"]),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in d["origin"]),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in d["direction"]),
        )

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        """Geometry of a 3D image, or of the spatial part of a 4D (channel-stacked) image."""
        dim = image.GetDimension()
        if dim == 3:
            return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                       tuple(image.GetDirection()))
        if dim == 4:
            d4 = np.array(image.GetDirection()).reshape(4, 4)
            return cls(tuple(image.GetSize()[:3]), tuple(image.GetSpacing()[:3]),
                       tuple(image.GetOrigin()[:3]), tuple(d4[:3, :3].ravel().tolist()))
        raise ValueError(f"expected a 3D or 4D image, got {dim}D")

    def same_grid(self, other: "Geometry", tol: float = 1e-3) -> bool:
        """True when both describe the same voxel grid (size exact, the rest within ``tol``)."""
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
                and np.allclose(self.origin, other.origin, rtol=tol, atol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_dicom_folder(path: Path) -> bool:
    """True for a folder holding a DICOM series (asking ITK quietly: a folder of NIfTI files is a
    normal answer here, not something to warn about)."""
    if not path.is_dir():
        return False
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_sitk(path: str | Path) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder; any failure names the file."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError("file does not exist", path, "check the path")
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ImageReadError("folder holds no DICOM series", path,
                                     "pass an image file or a folder of DICOM slices of one series")
            if len(series) > 1:
                raise ImageReadError(f"folder holds {len(series)} DICOM series ({', '.join(series)})",
                                     path, "put each series in a folder of its own")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        _check_nifti_complete(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else "unknown error"
        raise ImageReadError(f"cannot be read as an image ({first})", path,
                             "check that the file is complete and a NIfTI, NRRD, MHA or DICOM image; "
                             "re-export or re-download it") from None


def _nifti1_expected_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1 file holds (header + voxels), from its header; None if not NIfTI-1."""
    for order in ("<", ">"):
        if len(header) >= 348 and int(np.frombuffer(header[:4], order + "i4")[0]) == 348:
            dims = np.frombuffer(header[40:56], order + "i2")
            bitpix = int(np.frombuffer(header[72:74], order + "i2")[0])
            offset = int(np.frombuffer(header[108:112], order + "f4")[0])
            ndim = int(dims[0])
            if not 1 <= ndim <= 7:
                return None
            voxels = int(np.prod([max(int(d), 1) for d in dims[1:ndim + 1]]))
            return max(offset, 348) + voxels * bitpix // 8
    return None


def _check_nifti_complete(path: Path) -> None:
    """Refuse truncated NIfTI files: ITK reads them silently and fills the missing voxels with 0."""
    import gzip
    import zlib

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    truncated = ImageReadError("file is truncated (fewer voxels stored than its header declares)", path,
                               "re-export or re-download the file; a partial copy cannot be used")
    if name.endswith(".nii"):
        expected = _nifti1_expected_bytes(path.read_bytes()[:352])
        if expected is not None and path.stat().st_size < expected:
            raise truncated
        return
    try:
        with gzip.open(path, "rb") as fh:
            header = fh.read(352)
        expected = _nifti1_expected_bytes(header)
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            stored = int.from_bytes(fh.read(4), "little")
        if expected is not None and stored == expected % 2**32:
            return
        with gzip.open(path, "rb") as fh:  # trailer disagrees or unknown header: decompress fully
            total = 0
            while chunk := fh.read(1 << 24):
                total += len(chunk)
        if expected is not None and total < expected:
            raise truncated
    except (EOFError, OSError, zlib.error):
        raise truncated from None


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read an image as a float32 array ``(C, z, y, x)`` and its 3D geometry.

    A 4D MSD-style NIfTI gives one channel per volume, a vector image one per component.
    """
    image = read_sitk(path)
    geometry = _geometry_or_error(image, path)
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    elif image.GetDimension() == 3:
        array = array[None]
    return array.astype(np.float32, copy=False), geometry


def read_case_images(paths: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    """The channels of a case as one float32 ``(C, z, y, x)`` array, checking they share one grid."""
    arrays, geometry = [], None
    for path in paths:
        array, geom = read_image(path)
        if geometry is not None and not geom.same_grid(geometry):
            raise ImageReadError(f"channel file is not on the grid of {Path(paths[0]).name} (size "
                               f"{geom.size} vs {geometry.size}, spacing {geom.spacing} vs "
                               f"{geometry.spacing})", path, "resample all channels of a case onto one grid")
        geometry = geom
        arrays.append(array)
    if geometry is None:
        raise ValueError("a case needs at least one image file")
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)), geometry


def read_label(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a label map as an integer array ``(z, y, x)`` and its geometry."""
    image = read_sitk(path)
    geometry = _geometry_or_error(image, path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError("a label map must be a single-channel 3D image", path,
                             "save the segmentation as one 3D integer volume")
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.allclose(rounded, array):
            raise ImageReadError("label map holds non-integer values", path,
                                 "save labels as integers (0 background, 1.. classes)")
        array = rounded
    return array.astype(np.int16, copy=False), geometry


def _corner_points(geometry: Geometry) -> np.ndarray:
    """Physical positions of the 8 corner voxel centres, sorted, to compare grids up to axis order."""
    direction = np.array(geometry.direction).reshape(3, 3)
    corners = np.array([[i, j, k] for i in (0, geometry.size[0] - 1) for j in (0, geometry.size[1] - 1)
                        for k in (0, geometry.size[2] - 1)], dtype=float)
    points = np.array(geometry.origin) + (corners * np.array(geometry.spacing)) @ direction.T
    return np.array(sorted(map(tuple, points.round(2))))


def same_voxels_reordered(a: Geometry, b: Geometry, tol: float = 1e-2) -> bool:
    """True when ``a`` and ``b`` hold the same voxel centres with flipped or permuted axes."""
    return (sorted(a.size) == sorted(b.size)
            and np.allclose(sorted(a.spacing), sorted(b.spacing), rtol=1e-3, atol=1e-3)
            and np.allclose(_corner_points(a), _corner_points(b), atol=max(tol, 1e-3 * max(a.spacing))))


def read_label_on(path: str | Path, reference: Geometry) -> tuple[np.ndarray, Geometry]:
    """Read a label map; if it holds the image's voxels in another axis order, reorder it exactly.

    Some tools save segmentations flipped relative to their CT (e.g. LPS vs RAS row order). The
    voxels are the same, so a nearest-neighbour resampling onto the image grid is exact. Any other
    mismatch is left for validation to report.
    """
    array, geometry = read_label(path)
    if geometry.same_grid(reference) or not same_voxels_reordered(geometry, reference):
        return array, geometry
    log.warning("%s: label grid is a reordering of the image grid; reordering it to match", path)
    moving = image_from_array(array, geometry)
    ref = image_from_array(np.zeros(reference.shape_zyx, np.uint8), reference)
    out = sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
    return sitk.GetArrayFromImage(out), reference


def _geometry_or_error(image: sitk.Image, path: str | Path) -> Geometry:
    if image.GetDimension() not in (3, 4):
        raise ImageReadError(f"image is {image.GetDimension()}D, autoseg works on 3D volumes", path,
                             "provide a 3D volume (a 2D slice cannot be used in a 3D task)")
    return Geometry.of(image)


def image_from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A 3D SimpleITK image with the given geometry; ``array`` is ``(z, y, x)``."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


# --- atomic writes -------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = True) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image_from_array(array, geometry), str(tmp), compress)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")

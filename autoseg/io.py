"""Image and file I/O: SimpleITK images with exact geometry, atomic writes of JSON and arrays.

Arrays are in numpy order ``(z, y, x)`` (channels first when there are several); spacings in
autoseg are in the same order. SimpleITK's own geometry (origin, direction, spacing in ``x, y, z``)
is kept untouched in :class:`Geometry` so that a prediction can be written back on the input grid.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, cast

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError, ImageReadError

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
            check_dicom_is_image(Path(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])[0]), path)
            return _read_dicom_series(path, series[0])
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            check_dicom_is_image(path, path)
        _check_nifti_complete(path)
        _check_nifti_header(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else "unknown error"
        raise ImageReadError(f"cannot be read as an image ({first})", path,
                             "check that the file is complete and a NIfTI, NRRD, MHA or DICOM image; "
                             "re-export or re-download it") from None


#: DICOM objects that hold no image to segment, by SOP Class UID
NOT_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a DICOM Segmentation object (SEG)",
    "1.2.840.10008.5.1.4.1.1.66.7": "a DICOM Label Map Segmentation object",
    "1.2.840.10008.5.1.4.1.1.481.3": "a DICOM RT Structure Set (RTSTRUCT)",
}


def check_dicom_is_image(file: Path, given: Path) -> None:
    """Refuse a DICOM file whose SOP Class (0008,0016, else the file meta's 0002,0002) is a
    segmentation or structure set, not an image: it would otherwise be read as an 8-bit picture.
    A file that is not DICOM, or has no SOP Class, passes (its reader decides)."""
    try:
        with open(file, "rb") as fh:
            if fh.read(132)[128:] != b"DICM":
                return
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(file))
        reader.ReadImageInformation()
    except (OSError, RuntimeError):
        return
    sop = next((reader.GetMetaData(k).strip(" \x00") for k in ("0008|0016", "0002|0002")
                if reader.HasMetaDataKey(k) and reader.GetMetaData(k).strip(" \x00")), "")
    if sop in NOT_IMAGE_SOP_CLASSES:
        where = "" if file == given else f" ({file.name})"
        raise ImageReadError(f"is {NOT_IMAGE_SOP_CLASSES[sop]}{where}, a segmentation rather than an image to "
                             "segment", given, "pass the CT series it was made on (the folder of its image "
                             "slices), not the segmentation")


#: a step between DICOM slices further than this from the series' median step is a gap or uneven
#: spacing: ITK would still stack the slices on a uniform grid, misplacing every slice past it
SLICE_STEP_TOLERANCE = 0.10


def _read_dicom_series(folder: Path, series_id: str) -> sitk.Image:
    """Read one DICOM series after checking that its slices are evenly spaced (see
    :func:`check_slice_positions`)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))
    reader.MetaDataDictionaryArrayUpdateOn()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "missing slices" warning: ours says more
    try:
        image = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    tags = [(reader.GetMetaData(i, "0020|0032") if reader.HasMetaDataKey(i, "0020|0032") else None,
             reader.GetMetaData(i, "0020|0037") if reader.HasMetaDataKey(i, "0020|0037") else None)
            for i in range(len(reader.GetFileNames()))]
    check_slice_positions(folder, tags)
    return cast(sitk.Image, image)


def check_slice_positions(folder: Path, tags: Sequence[tuple[str | None, str | None]]) -> None:
    """Refuse a DICOM series whose slices, by ImagePositionPatient (0020,0032) projected on the
    slice normal from ImageOrientationPatient (0020,0037), are not evenly spaced: a missing slice or
    uneven steps would be stacked on a uniform grid that no longer matches the patient. Series with
    fewer than 3 slices or without these tags cannot be checked and pass."""
    if len(tags) < 3 or any(pos is None or orient is None for pos, orient in tags):
        return
    try:
        orient = np.array([float(v) for v in str(tags[0][1]).split("\\")])
        normal = np.cross(orient[:3], orient[3:6])
        positions = np.array([[float(v) for v in str(pos).split("\\")] for pos, _ in tags])
        depth = np.sort(positions @ normal)
    except (ValueError, IndexError):
        return
    _check_not_tilted(folder, positions, normal)
    steps = np.diff(depth)
    median = float(np.median(steps))
    if median <= 0:
        raise ImageReadError(f"DICOM series has {len(tags)} slices at only {len(np.unique(depth))} "
                             "distinct positions", folder, _SLICE_FIX)
    bad = np.flatnonzero(np.abs(steps - median) > SLICE_STEP_TOLERANCE * median)
    if not len(bad):
        return
    k = int(bad[0])
    raise ImageReadError(
        f"DICOM slices are not evenly spaced: {len(bad)} step(s) differ from the usual "
        f"{median:.3g} mm by more than {SLICE_STEP_TOLERANCE:.0%}, the first {steps[k]:.3g} mm between "
        f"slice positions {depth[k]:.2f} and {depth[k + 1]:.2f} mm along the slice normal "
        f"(after slice {k + 1} of {len(depth)}): a slice is missing or the series is uneven", folder,
        _SLICE_FIX)


#: How far (mm) the last slice of a series may sit beside the first one's normal: positions are
#: written to 0.01 mm or better, and an untilted stack has none at all.
TILT_TOLERANCE_MM = 0.1


def _check_not_tilted(folder: Path, positions: np.ndarray, normal: np.ndarray) -> None:
    """Refuse slices that are not stacked along their own normal (a gantry tilt): ITK stacks them on
    an orthogonal grid, which would put the anatomy of the far slices millimetres off in patient
    space, a plausible-looking image on a wrong grid."""
    order = np.argsort(positions @ normal)
    span = positions[order[-1]] - positions[order[0]]
    along = float(span @ normal)
    lateral = float(np.linalg.norm(span - along * normal))
    if lateral <= TILT_TOLERANCE_MM or along <= 0:
        return
    angle = float(np.degrees(np.arctan2(lateral, along)))
    raise ImageReadError(
        f"DICOM slices are not stacked along their normal (a gantry tilt of about {angle:.1f} degrees): "
        f"the last slice sits {lateral:.1f} mm beside the first one's normal, so an orthogonal voxel grid "
        "would misplace the anatomy", folder,
        "resample the series to an untilted grid first (e.g. dcm2niix, which corrects gantry tilt) and pass "
        "the resulting NIfTI")


_SLICE_FIX = ("export the complete series (every slice, one position each) from the PACS or scanner, or "
              "resample it to a uniform grid and pass the resulting NIfTI")


@dataclass(frozen=True)
class Nifti1Header:
    """The fields of a NIfTI-1 header that ITK does not pass on faithfully."""

    order: str  # "<" or ">"
    dims: tuple[int, ...]  # dim[1..ndim]
    datatype: int
    bitpix: int
    vox_offset: int
    pixdim: tuple[float, ...]  # pixdim[1..ndim]

    @property
    def voxels(self) -> int:
        return math.prod(max(d, 1) for d in self.dims)  # Python ints: no overflow on a bad header

    @property
    def expected_bytes(self) -> int:
        """Bytes a single-file NIfTI-1 holds: header (and extensions) plus voxels."""
        return max(self.vox_offset, 348) + self.voxels * self.bitpix // 8


#: NIfTI datatype codes of floating-point voxels (float32, float64), the ones that can hold NaN/inf.
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _parse_nifti1(header: bytes) -> Nifti1Header | None:
    """The NIfTI-1 header in ``header``'s first 348 bytes; None if it is not one."""
    for order in ("<", ">"):
        if len(header) >= 348 and int(np.frombuffer(header[:4], order + "i4")[0]) == 348:
            dims = np.frombuffer(header[40:56], order + "i2")
            ndim = int(dims[0])
            if not 1 <= ndim <= 7:
                return None
            pixdim = np.frombuffer(header[76:108], order + "f4")
            return Nifti1Header(
                order, tuple(int(d) for d in dims[1:ndim + 1]),
                int(np.frombuffer(header[70:72], order + "i2")[0]),
                int(np.frombuffer(header[72:74], order + "i2")[0]),
                int(np.frombuffer(header[108:112], order + "f4")[0]),
                tuple(float(v) for v in pixdim[1:ndim + 1]))
    return None


def _nifti1_expected_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1 file holds (header + voxels), from its header; None if not NIfTI-1."""
    parsed = _parse_nifti1(header)
    return parsed.expected_bytes if parsed is not None else None


def _open_nifti(path: Path) -> Any:
    """A binary file object of the NIfTI stream, decompressing ``.nii.gz``."""
    import gzip

    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_nifti1_header(path: Path) -> Nifti1Header | None:
    """The NIfTI-1 header of a ``.nii``/``.nii.gz`` file; None for other formats or NIfTI-2."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    with _open_nifti(path) as fh:
        return _parse_nifti1(fh.read(352))


def count_nonfinite_nifti(path: Path, header: Nifti1Header, chunk_bytes: int = 1 << 24) -> tuple[int, int]:
    """(non-finite, NaN) voxel counts of a float NIfTI, read from the file's own bytes.

    ITK's NIfTI reader turns NaN and inf into 0, so the array it returns cannot show them. The voxel
    block is scanned in chunks of ``chunk_bytes``: memory stays bounded whatever the image size.
    """
    dtype = np.dtype(header.order + NIFTI_FLOAT_TYPES[header.datatype])
    step = max(dtype.itemsize, chunk_bytes - chunk_bytes % dtype.itemsize)
    left, bad, nan = header.voxels * dtype.itemsize, 0, 0
    with _open_nifti(path) as fh:
        fh.seek(max(header.vox_offset, 348))
        while left > 0 and (chunk := fh.read(min(step, left))):
            usable = len(chunk) - len(chunk) % dtype.itemsize
            values = np.frombuffer(chunk[:usable], dtype)
            finite = np.isfinite(values)
            if not finite.all():
                bad += int(values.size - np.count_nonzero(finite))
                nan += int(np.count_nonzero(np.isnan(values)))
            left -= usable
    return bad, nan


def count_nonfinite(array: np.ndarray) -> tuple[int, int]:
    """(non-finite, NaN) voxel counts of an array; one float64 sum when all are finite (the usual)."""
    if not np.issubdtype(array.dtype, np.floating) or np.isfinite(np.sum(array, dtype=np.float64)):
        return 0, 0  # a sum is finite only if every voxel is
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))  # 0 when only the sum overflowed
    return bad, int(np.count_nonzero(np.isnan(array))) if bad else 0


def nonfinite_error(path: str | Path, bad: int, nan: int, where: str = "") -> ImageReadError:
    """The one error for NaN/inf voxels, whatever the format (see docs/preprocessing.md)."""
    return ImageReadError(f"{where}{bad} non-finite voxel(s) ({nan} NaN, {bad - nan} infinite)", path,
                          "re-export the image without NaN/inf (e.g. replace them with the background "
                          "value, -1024 for CT)")


def check_spacing(spacing_xyz: Sequence[float], path: str | Path) -> None:
    """Refuse a spacing that is zero, negative or not finite, naming the axis."""
    for axis, value in zip("xyz", spacing_xyz):
        if not np.isfinite(value) or value <= 0:
            raise ImageReadError(f"voxel spacing along {axis} is {value} mm; it must be a positive number",
                                 path, "fix the spacing in the file's header (e.g. NIfTI pixdim, NRRD "
                                 "space directions) to the scanner's voxel size and re-export it")


def _check_nifti_header(path: Path) -> None:
    """Checks ITK hides: pixdim 0 (read as 1 mm) or negative, and NaN/inf voxels (read as 0)."""
    header = read_nifti1_header(path)
    if header is None:
        return
    check_spacing(header.pixdim[:3], path)
    if header.datatype in NIFTI_FLOAT_TYPES:
        bad, nan = count_nonfinite_nifti(path, header)
        if bad:
            raise nonfinite_error(path, bad, nan)


def _check_nifti_complete(path: Path) -> None:
    """Refuse truncated NIfTI files: ITK reads them silently and fills the missing voxels with 0."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    if path.name.lower().endswith(".gz"):
        _check_gzip_magic(path)
    if not nifti_is_complete(path, required=False):
        raise ImageReadError("file is truncated (fewer voxels stored than its header declares)", path,
                             "re-export or re-download the file; a partial copy cannot be used")


def _check_gzip_magic(path: Path) -> None:
    """Refuse a ``.nii.gz`` that is not gzip data (else it would be called truncated), saying
    whether it is an uncompressed NIfTI misnamed or something else."""
    with open(path, "rb") as fh:
        head = fh.read(352)
    if head[:2] == b"\x1f\x8b":
        return
    if _nifti1_expected_bytes(head) is not None:
        raise ImageReadError("file is named .nii.gz but is not gzip-compressed: it is an uncompressed NIfTI",
                             path, f"rename it to {path.name[:-3]} (or gzip it)")
    raise ImageReadError("file is named .nii.gz but is not gzip-compressed NIfTI (no gzip signature)", path,
                         "check what the file is (e.g. with `file`); re-export the image as NIfTI")


def nifti_is_complete(path: Path, required: bool = True) -> bool:
    """Whether a ``.nii``/``.nii.gz`` file holds every byte its header declares (for ``.nii.gz`` the
    gzip trailer's size first, a full decompression when it disagrees). ``required``: a file without
    a readable NIfTI-1 header counts as incomplete, else as not checkable (complete)."""
    import gzip
    import zlib

    try:
        if not path.name.lower().endswith(".gz"):
            with open(path, "rb") as fh:
                expected = _nifti1_expected_bytes(fh.read(352))
            return (expected is None and not required) or (
                expected is not None and path.stat().st_size >= expected)
        with gzip.open(path, "rb") as fh:
            expected = _nifti1_expected_bytes(fh.read(352))
        if expected is None and required:
            return False
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            stored = int.from_bytes(fh.read(4), "little")
        if expected is not None and stored == expected % 2**32:
            return True
        with gzip.open(path, "rb") as fh:  # trailer disagrees or unknown header: decompress fully
            total = 0
            while chunk := fh.read(1 << 24):
                total += len(chunk)
        return expected is None or total >= expected
    except (EOFError, OSError, zlib.error):
        return False


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
    bad, nan = count_nonfinite(array)  # NRRD, MHA, DICOM: ITK keeps NaN/inf (NIfTI: checked on read)
    if bad:
        raise nonfinite_error(path, bad, nan)
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
    geometry = Geometry.of(image)
    check_spacing(geometry.spacing, path)
    return geometry


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

#: OS errors a user can fix (no space or quota left, no permission, read-only file system).
_WRITE_FIXES = {errno.ENOSPC: "free space on that disk or write elsewhere",
                errno.EDQUOT: "free space within your quota or write elsewhere",
                errno.EACCES: "make the folder writable for this user or write elsewhere",
                errno.EPERM: "make the folder writable for this user or write elsewhere",
                errno.EROFS: "the file system is read-only: write elsewhere",
                errno.EFBIG: ("the file is larger than this file system (FAT32 holds at most 4 GiB a file) or "
                              "your file-size limit (`ulimit -f`) allows: write to another disk or raise the limit")}
_TMP_RE = re.compile(r"^\.tmp-(\d+)-")
STALE_TEMP_AGE_S = 600.0  # a dead process's temporary is removed once it is this old


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The file gets the permissions any new file gets under the umask (not mkstemp's 0600). A full
    disk, a read-only folder or a missing permission is an :class:`AutosegError` naming the folder.
    Temporary files that dead processes left in the folder are removed first.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=f"-{path.name}", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        if not tmp_path.is_symlink():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno not in _WRITE_FIXES:
            raise
        raise AutosegError(f"cannot write {path.name} here ({os.strerror(exc.errno)}); nothing was written",
                           path.parent, _WRITE_FIXES[exc.errno]) from exc
    finally:
        if tmp_path is not None and (tmp_path.exists() or tmp_path.is_symlink()):
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status``):
    setting and restoring it would race with other threads creating files."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: Path, min_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove ``.tmp-<pid>-*`` files in ``folder`` whose process is no longer alive (left by a
    killed run); those of live processes, this one included, are left alone. A pid names a process
    of this host only, so a temporary modified in the last ``min_age_s`` seconds is also kept: it may
    be another machine's write in progress on a shared disk."""
    removed = []
    now = time.time()
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            m = _TMP_RE.match(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False) or _pid_alive(int(m.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):  # another process may remove it first
                if now - entry.stat(follow_symlinks=False).st_mtime >= min_age_s:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                    log.info("removed %s, left by a process that no longer runs", entry.path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists but another user's (or not a pid we can judge): keep its files
    return True


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = True) -> None:
    """Write an image atomically, checking what was written before it gets its final name.

    SimpleITK's writers return normally when the disk fills up mid-file (ENOSPC), so a NIfTI is
    checked against its header's size and any other format is read back and compared.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image_from_array(array, geometry), str(tmp), compress)
        if not _written_whole(tmp, array):
            raise AutosegError(f"the image writer stopped short ({tmp.stat().st_size} bytes on disk); "
                               "the disk is probably full; nothing was written", path,
                               f"free space on the disk holding {path.parent} (or write elsewhere) and "
                               "run again")


def _written_whole(tmp: Path, array: np.ndarray) -> bool:
    """Whether the image file ``tmp`` holds all of ``array``."""
    if tmp.name.lower().endswith((".nii", ".nii.gz")):
        return nifti_is_complete(tmp)
    try:
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp)))
    except RuntimeError:
        return False
    return back.shape == array.shape and bool(np.array_equal(back, array))


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

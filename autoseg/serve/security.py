"""Checks on uploads before anything reads them as an image.

An upload is identified by its bytes (magic numbers), never by its name, and is stored under a fixed
name chosen here. Compressed uploads are decompressed as a stream with a byte budget, so a
decompression bomb is refused after reading at most the budget. Headers that point at other files
(NRRD ``data file``, MetaImage ``ElementDataFile``, NIfTI pairs) are refused, so an upload can never
make the server read a file it did not receive.

Memory: a prediction needs several times the voxels of its input (:class:`MemoryModel`), so the size
and spacing an image header declares are checked against this machine's memory before any voxel is
decompressed or read.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, BinaryIO

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.layout import JobFolder

CHUNK = 1 << 20
ACCEPTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) or a .zip of one DICOM series"
DICOM_FOLDER = "input_dicom"


class UploadError(AutosegError):
    """An upload the server refuses; ``status`` is the HTTP status code to answer with."""

    def __init__(self, message: str, status: int = 400, fix: str | None = None, path: str | None = None):
        super().__init__(message, path, fix)
        self.status = status


def machine_memory() -> int:
    """Bytes of memory this server may use: the physical memory, or its cgroup's limit when lower."""
    total = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        cgroup = ""
    return min(total, int(cgroup)) if cgroup.isdigit() else total


@dataclass(frozen=True)
class Limits:
    """What the server accepts. Sizes in bytes."""

    max_upload: int = 1 << 30              # 1 GiB as sent
    max_decompressed: int = 2 << 30        # 2 GiB after gzip/zip decompression, and of the voxel data
    max_zip_members: int = 5000
    max_queue: int = 16                    # jobs waiting; more uploads are refused until some finish
    max_memory: int = field(default_factory=machine_memory)  # what one prediction may use at its peak


@dataclass(frozen=True)
class MemoryModel:
    """Peak memory of one prediction, from the voxels of the input grid and of the grid the network
    sees (the input resampled to the model's target spacing: a coarse image of few voxels can become
    a large one).

    Measured for the serve runner with a 3-class model on the CPU (peak RSS above a warmed-up
    process, int16 CT, at 1x, 0.5x and 2x the target spacing; docs/viewer.md): the envelope of the
    three is ``PER_INPUT_VOXEL`` bytes per input voxel (the image as float32, its crop and normalised
    copy, the labels) plus ``PER_NETWORK_VOXEL`` per voxel of the resampled grid (the resampled image,
    the class probabilities of the sliding window, their restoration to the input grid). At the target
    spacing that is 47 bytes a voxel, 23.5 times an int16 image's voxel data. Both grow with the
    class count, taken as proportional.
    """

    target_spacing_zyx: tuple[float, ...]
    num_classes: int = 3
    PER_INPUT_VOXEL = 21.0
    PER_NETWORK_VOXEL = 26.0
    MEASURED_CLASSES = 3

    def peak_bytes(self, size_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> float:
        """Expected peak bytes for an input of this size and spacing."""
        voxels = math.prod(int(n) for n in size_zyx)
        target = self.target_spacing_zyx
        if len(target) == 2:  # a 2D plan keeps the slice spacing
            target = (float(spacing_zyx[0]), *target)
        scale = math.prod(max(float(s), 1e-6) / t for s, t in zip(spacing_zyx, target))
        per_class = max(1.0, self.num_classes / self.MEASURED_CLASSES)
        return per_class * voxels * (self.PER_INPUT_VOXEL + self.PER_NETWORK_VOXEL * scale)

    def check(self, size_zyx: Sequence[int], spacing_zyx: Sequence[float], limit: int) -> None:
        """Refuse (413) an image whose prediction would need more than ``limit`` bytes."""
        need = self.peak_bytes(size_zyx, spacing_zyx)
        if need > limit:
            spacing = " x ".join(f"{s:g}" for s in spacing_zyx)
            raise UploadError(f"predicting this image ({' x '.join(map(str, size_zyx))} voxels of {spacing} mm) "
                              f"would need about {need / 2**30:.1f} GiB of memory, more than the "
                              f"{limit / 2**30:.1f} GiB of this server", 413,
                              "upload a smaller image (and check the voxel spacing in its header), or serve "
                              "on a machine with more memory")


@dataclass(frozen=True)
class StoredInput:
    """A checked upload: where it lies in the job folder and what it is."""

    path: Path
    kind: str                              # nifti, nifti-gz, nrrd, mha, dicom-zip
    size_zyx: tuple[int, int, int]


def display_name(filename: str | None) -> str:
    """The upload's name for display only: its last path part, printable, at most 120 characters."""
    raw = filename or "upload"
    base = PureWindowsPath(PurePosixPath(raw).name).name
    clean = re.sub(r"[^\w.\- ()+,]", "_", base).strip(" .") or "upload"
    return clean[:120]


def copy_limited(src: BinaryIO, dest: Path, limit: int) -> int:
    """Copy a stream to ``dest``; refuse it once more than ``limit`` bytes arrive."""
    total = 0
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_large(limit)
            out.write(chunk)
    return total


def too_large(limit: int) -> UploadError:
    return UploadError(f"upload is larger than the server's limit of {limit / 2**20:.0f} MiB", 413,
                       "upload a smaller file, or start the server with a larger --max-upload-mb")


def sniff(head: bytes) -> str | None:
    """The format of a file from its first bytes; None when it is none of the accepted ones."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:8].startswith(b"NRRD000"):
        return "nrrd"
    if _nifti_magic(head):
        return "nifti"
    if re.match(rb"(ObjectType|NDims|Comment|ObjectSubType|TransformType)\s*=", head):
        return "mha"
    return None


def _nifti_magic(head: bytes) -> str | None:
    """'n+1'/'n+2' for a single-file NIfTI header, 'pair' for a header-only one, else None."""
    for order in ("<", ">"):
        if len(head) >= 348 and int(np.frombuffer(head[:4], order + "i4")[0]) == 348:
            magic = head[344:348]
        elif len(head) >= 12 and int(np.frombuffer(head[:4], order + "i4")[0]) == 540:
            magic = head[4:8]
        else:
            continue
        if magic in (b"n+1\x00", b"n+2\x00"):
            return magic[:3].decode()
        if magic in (b"ni1\x00", b"ni2\x00"):
            return "pair"
    return None


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI-1/2 header declares about its voxels (zyx order)."""

    size_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    data_bytes: int
    vox_offset: int


def parse_nifti_header(head: bytes) -> NiftiHeader:
    """Size, spacing and voxel bytes from the first bytes of a NIfTI file, without reading voxels."""
    version = _nifti_magic(head)
    order = "<" if np.frombuffer(head[:4], "<i4")[0] in (348, 540) else ">"
    if version == "n+2" and len(head) >= 540:
        dim = np.frombuffer(head[16:80], order + "i8")
        pixdim = np.frombuffer(head[104:168], order + "f8")
        bitpix = int(np.frombuffer(head[14:16], order + "i2")[0])
        offset = float(np.frombuffer(head[168:176], order + "i8")[0])
    else:
        dim = np.frombuffer(head[40:56], order + "i2").astype(np.int64)
        pixdim = np.frombuffer(head[76:108], order + "f4").astype(np.float64)
        bitpix = int(np.frombuffer(head[72:74], order + "i2")[0])
        offset = float(np.frombuffer(head[108:112], order + "f4")[0])
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or any(int(d) < 1 for d in dim[1:ndim + 1]) or bitpix <= 0 or bitpix % 8:
        raise UploadError(f"image header cannot be read (dim[0] {ndim}, bitpix {bitpix})", 400,
                          "check that the file is a complete NIfTI image")
    shape = [int(d) for d in dim[1:ndim + 1]]
    if ndim < 3 or math.prod(shape[3:]) != 1:
        raise UploadError(f"image is {ndim}D with size {tuple(shape)}; the server segments 3D CT volumes", 400,
                          "upload one 3D CT volume")
    size = (int(dim[3]), int(dim[2]), int(dim[1]))
    spacing = tuple(abs(float(x)) if math.isfinite(x) and x else 1.0 for x in (pixdim[3], pixdim[2], pixdim[1]))
    offset = int(offset) if math.isfinite(offset) and 0 <= offset < 2**31 else 0
    return NiftiHeader(size, spacing, math.prod(size) * bitpix // 8, offset)  # type: ignore[arg-type]


def store_upload(upload: Path, job_dir: Path, limits: Limits, memory: MemoryModel | None = None) -> StoredInput:
    """Check the raw upload and move it into ``job_dir`` under a fixed name; raise UploadError.

    ``memory``: refuse images whose prediction would not fit ``limits.max_memory`` (None: no such check).
    """
    with open(upload, "rb") as fh:
        head = fh.read(1024)
    kind = sniff(head)
    if kind is None:
        raise UploadError(f"not an image the server accepts: {ACCEPTED}", 415,
                          "upload the CT itself; PNG, JPEG, PDF and other files are refused")
    if kind == "zip":
        folder = job_dir / DICOM_FOLDER
        extract_dicom_zip(upload, folder, limits)
        upload.unlink()
        return StoredInput(folder, "dicom-zip", _check_dicom_series(folder, limits, memory))
    if kind == "gzip":
        kind = "nifti-gz"
        raw_size = check_gzip(upload, limits, memory)
    elif kind == "nifti":
        raw_size = upload.stat().st_size
        _check_nifti_head(head)
    else:
        raw_size = upload.stat().st_size
        _check_header_is_self_contained(_read_text_header(upload), kind)
    dest = JobFolder(job_dir).input(kind)
    upload.replace(dest)
    size = check_header(dest, limits, memory, raw_size if kind.startswith("nifti") else None)
    return StoredInput(dest, kind, size)


def check_gzip(path: Path, limits: Limits, memory: MemoryModel | None = None) -> int:
    """The decompressed size of a gzipped NIfTI, read as a stream. Its header is checked first (before
    any voxel is decompressed), then no more bytes are decompressed than the header declares."""
    try:
        with gzip.open(path, "rb") as fh:
            head = fh.read(1024)
            _check_nifti_head(head)
            header = parse_nifti_header(head)
            check_declared(header.size_zyx, header.spacing_zyx, header.data_bytes, limits, memory)
            declared = max(header.vox_offset, 348) + header.data_bytes + CHUNK
            limit = min(limits.max_decompressed, declared)
            total = len(head)
            while chunk := fh.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise _bomb(limit, by_header=limit == declared)
    except (OSError, EOFError, zlib.error) as exc:
        raise UploadError(f"gzip data is damaged or incomplete ({exc})", 400,
                          "upload the complete .nii.gz file again") from None
    return total


def _bomb(limit: int, by_header: bool) -> UploadError:
    where = "more bytes than its image header declares" if by_header else \
        f"more than the server's limit of {limit / 2**20:.0f} MiB"
    return UploadError(f"decompresses to {where} (refused as a possible decompression bomb)", 413,
                       "upload the complete, unmodified image" if by_header else
                       "upload a smaller image, or raise --max-decompressed-mb")


def check_declared(size_zyx: Sequence[int], spacing_zyx: Sequence[float], data_bytes: int, limits: Limits,
                   memory: MemoryModel | None) -> None:
    """Refuse (413) what a header declares: voxel data over the decompressed limit, or an image whose
    prediction would need more memory than the server has."""
    if data_bytes > limits.max_decompressed:
        raise UploadError(f"voxel data of {data_bytes / 2**20:.0f} MiB is over the server's limit of "
                          f"{limits.max_decompressed / 2**20:.0f} MiB", 413,
                          "upload a smaller image, or raise --max-decompressed-mb")
    if memory is not None:
        memory.check(size_zyx, spacing_zyx, limits.max_memory)


def _check_nifti_head(head: bytes) -> None:
    magic = _nifti_magic(head)
    if magic == "pair":
        raise UploadError("a NIfTI header without its voxels (.hdr/.img pair)", 415,
                          "convert it to a single .nii or .nii.gz file")
    if magic is None:
        raise UploadError(f"compressed file is not a NIfTI image; accepted: {ACCEPTED}", 415,
                          "only .nii.gz is accepted in gzip form")


def _read_text_header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(64 * 1024)


def _check_header_is_self_contained(header: bytes, kind: str) -> None:
    """Refuse NRRD and MetaImage headers whose voxels live in another file."""
    text = header.split(b"\n\n", 1)[0] if kind == "nrrd" else header
    if kind == "nrrd" and re.search(rb"^data ?file\s*:", text, re.IGNORECASE | re.MULTILINE):
        raise UploadError("NRRD header refers to a separate data file (.nhdr style)", 415,
                          "save the image as a single .nrrd file with attached data")
    if kind == "mha":
        match = re.search(rb"^ElementDataFile\s*=\s*(\S+)", text, re.MULTILINE)
        if match is None or match.group(1) != b"LOCAL":
            raise UploadError("MetaImage header refers to a separate data file (.mhd/.raw style)", 415,
                              "save the image as a single .mha file")


def _bytes_per_voxel(reader: sitk.ImageFileReader) -> int:
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    return int(sitk.GetArrayViewFromImage(probe).itemsize) * max(1, reader.GetNumberOfComponents())


def read_header(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float], int]:
    """Size and spacing (zyx) and voxel bytes of a 3D image, from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "unreadable header"
        raise UploadError(f"image header cannot be read ({detail})", 400,
                          "check that the file is a complete NIfTI, NRRD or MetaImage file") from None
    size = tuple(int(s) for s in reader.GetSize())
    if reader.GetDimension() != 3 or min(size) < 1:
        raise UploadError(f"image is {reader.GetDimension()}D with size {size}; the server segments 3D CT "
                          "volumes", 400, "upload one 3D CT volume")
    spacing = tuple(float(s) for s in reader.GetSpacing())
    return (size[2], size[1], size[0]), (spacing[2], spacing[1], spacing[0]), \
        math.prod(size) * _bytes_per_voxel(reader)


def check_header(path: Path, limits: Limits, memory: MemoryModel | None = None,
                 stored_bytes: int | None = None) -> tuple[int, int, int]:
    """Read only the header: a 3D volume whose voxels fit the limits (and the file); its size (zyx)."""
    size, spacing, data_bytes = read_header(path)
    check_declared(size, spacing, data_bytes, limits, memory)
    if stored_bytes is not None and stored_bytes < data_bytes + 348:
        raise UploadError(f"file is truncated: it holds {stored_bytes} bytes but its header declares "
                          f"{data_bytes} bytes of voxels", 400, "upload the complete file again")
    return size


def extract_dicom_zip(path: Path, folder: Path, limits: Limits) -> int:
    """Extract the DICOM files of a zip under numbered names; returns how many were kept."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"zip archive cannot be opened ({exc})", 400, "upload the complete zip again") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        _check_zip_directory(members, limits)
        folder.mkdir()
        budget, kept = limits.max_decompressed, 0
        for member in members:
            dest = folder / f"{kept:05d}.dcm"
            try:
                with archive.open(member) as src:
                    budget -= _copy_budget(src, dest, budget)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                raise UploadError(f"zip member cannot be extracted ({exc})", 400,
                                  "create the zip again with plain deflate compression and no password") from None
            if _is_dicom(dest):
                kept += 1
            else:
                dest.unlink()
    if kept == 0:
        raise UploadError("zip holds no DICOM files", 415, "zip the folder of one DICOM series")
    return kept


def _check_zip_directory(members: list[zipfile.ZipInfo], limits: Limits) -> None:
    if len(members) > limits.max_zip_members:
        raise UploadError(f"zip holds {len(members)} files, more than the limit of {limits.max_zip_members}",
                          413, "zip one DICOM series only")
    if any(m.flag_bits & 0x1 for m in members):
        raise UploadError("zip is encrypted", 415, "zip the series without a password")
    declared = sum(m.file_size for m in members)
    if declared > limits.max_decompressed:
        raise UploadError(f"zip declares {declared / 2**20:.0f} MiB of contents, over the server's limit of "
                          f"{limits.max_decompressed / 2**20:.0f} MiB (refused as a possible decompression "
                          "bomb)", 413, "upload a smaller series, or raise --max-decompressed-mb")


def _copy_budget(src: IO[bytes], dest: Path, budget: int) -> int:
    """Copy one zip member, counting the bytes really decompressed (declared sizes can lie)."""
    total = 0
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            total += len(chunk)
            if total > budget:
                raise UploadError("zip contents decompress to more than the server's limit (refused as a "
                                  "possible decompression bomb)", 413,
                                  "upload a smaller series, or raise --max-decompressed-mb")
            out.write(chunk)
    return total


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


def _check_dicom_series(folder: Path, limits: Limits, memory: MemoryModel | None) -> tuple[int, int, int]:
    """One series, every file's header readable, and its voxels within the limits."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UploadError("zip holds DICOM files but no image series", 415, "zip the folder of one CT series")
    if len(series) > 1:
        raise UploadError(f"zip holds {len(series)} DICOM series", 400, "zip one series per upload")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    for extra in set(map(str, folder.iterdir())) - set(files):
        Path(extra).unlink()
    headers = [read_header(Path(name)) for name in files]
    (_, rows, columns), spacing, _ = headers[0]
    check_declared((len(files), rows, columns), spacing, sum(h[2] for h in headers), limits, memory)
    return len(files), rows, columns


def remove_quietly(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

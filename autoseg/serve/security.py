"""Checks on uploads before anything reads them as an image.

An upload is identified by its bytes (magic numbers), never by its name, and is stored under a fixed
name chosen here. Compressed uploads are decompressed as a stream with a byte budget, so a
decompression bomb is refused after reading at most the budget. Headers that point at other files
(NRRD ``data file``, MetaImage ``ElementDataFile``, NIfTI pairs) are refused, so an upload can never
make the server read a file it did not receive.
"""
from __future__ import annotations

import gzip
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, BinaryIO

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError

CHUNK = 1 << 20
ACCEPTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) or a .zip of one DICOM series"
DICOM_FOLDER = "input_dicom"


class UploadError(AutosegError):
    """An upload the server refuses; ``status`` is the HTTP status code to answer with."""

    def __init__(self, message: str, status: int = 400, fix: str | None = None, path: str | None = None):
        super().__init__(message, path, fix)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What the server accepts. Sizes in bytes."""

    max_upload: int = 1 << 30              # 1 GiB as sent
    max_decompressed: int = 2 << 30        # 2 GiB after gzip/zip decompression, and of the voxel data
    max_zip_members: int = 5000
    max_queue: int = 16                    # jobs waiting; more uploads are refused until some finish


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


def store_upload(upload: Path, job_dir: Path, limits: Limits) -> StoredInput:
    """Check the raw upload and move it into ``job_dir`` under a fixed name; raise UploadError."""
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
        return StoredInput(folder, "dicom-zip", _check_dicom_series(folder, limits))
    if kind == "gzip":
        kind = "nifti-gz"
        raw_size, inner = check_gzip(upload, limits.max_decompressed)
        _check_nifti_head(inner)
    elif kind == "nifti":
        raw_size = upload.stat().st_size
        _check_nifti_head(head)
    else:
        raw_size = upload.stat().st_size
        _check_header_is_self_contained(_read_text_header(upload), kind)
    name = {"nifti-gz": "input.nii.gz", "nifti": "input.nii", "nrrd": "input.nrrd", "mha": "input.mha"}[kind]
    dest = job_dir / name
    upload.replace(dest)
    size = check_header(dest, limits, raw_size if kind.startswith("nifti") else None)
    return StoredInput(dest, kind, size)


def check_gzip(path: Path, limit: int) -> tuple[int, bytes]:
    """(decompressed size, first bytes) of a gzip file, read as a stream; refuse more than ``limit``."""
    total, head = 0, b""
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                if not head:
                    head = chunk[:1024]
                total += len(chunk)
                if total > limit:
                    raise UploadError(f"decompresses to more than the server's limit of {limit / 2**20:.0f} MiB "
                                      "(refused as a possible decompression bomb)", 413,
                                      "upload a smaller image, or raise --max-decompressed-mb")
    except (OSError, EOFError, zlib.error) as exc:
        raise UploadError(f"gzip data is damaged or incomplete ({exc})", 400,
                          "upload the complete .nii.gz file again") from None
    return total, head


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


def check_header(path: Path, limits: Limits, stored_bytes: int | None = None) -> tuple[int, int, int]:
    """Read only the header: a 3D volume whose voxels fit the decompressed limit (and the file)."""
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
    data_bytes = int(np.prod(size)) * _bytes_per_voxel(reader)
    if data_bytes > limits.max_decompressed:
        raise UploadError(f"voxel data of {data_bytes / 2**20:.0f} MiB is over the server's limit of "
                          f"{limits.max_decompressed / 2**20:.0f} MiB", 413,
                          "upload a smaller image, or raise --max-decompressed-mb")
    if stored_bytes is not None and stored_bytes < data_bytes + 348:
        raise UploadError(f"file is truncated: it holds {stored_bytes} bytes but its header declares "
                          f"{data_bytes} bytes of voxels", 400, "upload the complete file again")
    return size[2], size[1], size[0]


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


def _check_dicom_series(folder: Path, limits: Limits) -> tuple[int, int, int]:
    """One series, every file's header readable, and its voxels within the decompressed limit."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UploadError("zip holds DICOM files but no image series", 415, "zip the folder of one CT series")
    if len(series) > 1:
        raise UploadError(f"zip holds {len(series)} DICOM series", 400, "zip one series per upload")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    for extra in set(map(str, folder.iterdir())) - set(files):
        Path(extra).unlink()
    sizes = [check_header(Path(name), limits) for name in files]
    if sum(int(np.prod(s)) for s in sizes) * 2 > limits.max_decompressed:
        raise UploadError("DICOM series holds more voxels than the server's decompressed limit", 413,
                          "upload a smaller series, or raise --max-decompressed-mb")
    return len(files), sizes[0][1], sizes[0][2]


def remove_quietly(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

"""Bad image files and writes that cannot complete: each is refused with an error naming the file
and the fix, and nothing is changed or left behind (issue 20)."""
from __future__ import annotations

import gzip
import json
import logging
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.datasets import load_dataset
from autoseg.errors import AutosegError, DatasetError, ImageReadError
from autoseg.io import Geometry, atomic_path, read_image, read_label, save_npy, write_image
from autoseg.planners.fingerprint import fingerprint_dataset
from autoseg.preprocessing import preprocess_case
from tests.synthetic import make_msd_task, tiny_ct
from tests.test_preprocessing import make_plans

GEOM = Geometry((6, 5, 4), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _float_image(path: Path) -> Path:
    """A float32 image with 3 NaN and 2 infinite voxels, written by SimpleITK."""
    array = np.full((4, 5, 6), -1000.0, np.float32)
    array[1, 2, 3] = array[2, 2, 2] = array[3, 4, 5] = np.nan
    array[0, 0, 0], array[1, 1, 1] = np.inf, -np.inf
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(path), path.name.endswith(".gz"))
    return path


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha"])
def test_non_finite_voxels_are_refused_in_every_format(tmp_path: Path, name: str) -> None:
    path = _float_image(tmp_path / name)
    if name.startswith("ct.nii"):  # the reason for the raw scan: ITK itself reads NaN/inf as 0
        assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()
    before = _snapshot(tmp_path)
    with pytest.raises(ImageReadError, match=r"5 non-finite voxel\(s\) \(3 NaN, 2 infinite\)") as err:
        read_image(path)
    assert err.value.path == path and "re-export the image without NaN" in str(err.value)
    with pytest.raises(ImageReadError, match="5 non-finite"):  # the predict/preprocess path
        preprocess_case([path], None, make_plans(), case_id="ct")
    assert _snapshot(tmp_path) == before


def test_non_finite_scan_reads_big_endian_and_finds_one_voxel_among_chunks(tmp_path: Path) -> None:
    """A big-endian float64 NIfTI (written by hand: ITK writes native order) with one NaN in its
    last chunk: the chunked raw scan must honour the byte order, datatype and vox_offset."""
    from autoseg.io import count_nonfinite_nifti, read_nifti1_header

    data = np.zeros((3, 4, 5), ">f8")
    data.flat[-1] = np.nan
    header = bytearray(352)
    header[0:4] = struct.pack(">i", 348)
    header[40:56] = struct.pack(">8h", 3, 5, 4, 3, 1, 1, 1, 1)
    header[70:74] = struct.pack(">hh", 64, 64)
    header[76:108] = struct.pack(">8f", 1, 1, 1, 1, 0, 0, 0, 0)
    header[108:112] = struct.pack(">f", 352.0)
    header[344:348] = b"n+1\0"
    path = tmp_path / "be.nii.gz"
    path.write_bytes(gzip.compress(bytes(header) + data.tobytes()))
    parsed = read_nifti1_header(path)
    assert parsed is not None and parsed.order == ">" and parsed.datatype == 64
    assert count_nonfinite_nifti(path, parsed, chunk_bytes=64) == (1, 1)
    with pytest.raises(ImageReadError, match=r"1 non-finite voxel\(s\) \(1 NaN"):
        read_image(path)


def _patched_pixdim(src: Path, dst: Path, z: float) -> Path:
    """Copy of a NIfTI with pixdim[3] (the z spacing) set to ``z`` in its header."""
    raw = bytearray(gzip.decompress(src.read_bytes()))
    raw[88:92] = struct.pack("<f", z)
    dst.write_bytes(gzip.compress(bytes(raw)))
    return dst


@pytest.mark.parametrize("z", [0.0, -2.5, float("nan")])
def test_zero_negative_or_nan_spacing_is_refused_naming_file_and_axis(tmp_path: Path, z: float) -> None:
    good = tmp_path / "good.nii.gz"
    write_image(good, np.zeros((4, 5, 6), np.int16), GEOM)
    bad = _patched_pixdim(good, tmp_path / "bad.nii.gz", z)
    if z == 0.0:  # what made this silent: ITK replaces a zero pixdim by 1 mm
        assert sitk.ReadImage(str(bad)).GetSpacing()[2] == 1.0
    before = _snapshot(tmp_path)
    for read in (read_image, read_label):
        with pytest.raises(ImageReadError, match=r"spacing along z is .* must be a positive number") as err:
            read(bad)
        assert err.value.path == bad and "fix the spacing in the file's header" in str(err.value)
    assert np.allclose(read_image(good)[1].spacing, GEOM.spacing)
    assert _snapshot(tmp_path) == before


def test_resampling_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path: Path) -> None:
    """A slice thickness of 1e12 mm would resample to ~4e11 slices: refused with the size in GiB."""
    image, _ = tiny_ct(0, shape=(4, 24, 24))
    path = tmp_path / "ct.nii.gz"
    write_image(path, image, Geometry((24, 24, 4), (1.6, 1.6, 1e12), (0, 0, 0), GEOM.direction))
    before = _snapshot(tmp_path)
    with pytest.raises(ImageReadError, match=r"GiB, more than the .* GiB allowed \(half of") as err:
        preprocess_case([path], None, make_plans(), case_id="ct")
    assert err.value.path == path and "check the voxel spacing in the file's header" in str(err.value)
    assert _snapshot(tmp_path) == before


def test_fingerprint_warns_about_a_case_far_from_the_median_spacing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    task = make_msd_task(tmp_path / "raw", n=3, spacings=[(2.5, 0.8, 0.8), (2.5, 0.8, 0.8), (450.0, 0.8, 0.8)])
    with caplog.at_level(logging.WARNING):
        fingerprint = fingerprint_dataset(load_dataset(task), num_workers=1)
    wanted = [w for w in fingerprint.warnings if "hepaticvessel_002" in w and "along z is 450 mm" in w]
    assert len(wanted) == 1 and "180x the dataset median 2.5 mm" in wanted[0]
    assert wanted[0] in caplog.text
    assert not any("hepaticvessel_000" in w or "hepaticvessel_001" in w for w in fingerprint.warnings)


def test_two_raw_images_with_one_case_id_are_refused_naming_both(tmp_path: Path) -> None:
    task = make_msd_task(tmp_path / "raw", n=2)
    image, _ = tiny_ct(5)
    second = tmp_path / "raw" / "Task08_HepaticVessel" / "imagesTr" / "hepaticvessel_001.nrrd"
    write_image(second, image, Geometry((48, 40, 12), (0.8, 0.8, 2.5), (0, 0, 0), GEOM.direction))
    before = _snapshot(task)
    with pytest.raises(DatasetError, match="hepaticvessel_001.nii.gz and hepaticvessel_001.nrrd are both "
                                           "case 'hepaticvessel_001'") as err:
        load_dataset(task)
    assert err.value.path == second.parent and "keep one file per case" in str(err.value)
    assert _snapshot(task) == before


def test_nnunet_raw_channel_files_with_one_id_are_refused(nnunet_dataset: Path) -> None:
    first = nnunet_dataset / "imagesTr" / "hv_000_0000.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(first)), str(first.with_name("hv_000_0000.mha")))
    with pytest.raises(DatasetError, match="hv_000_0000.mha and hv_000_0000.nii.gz are both case"):
        load_dataset(nnunet_dataset)


# --- writing ------------------------------------------------------------------------------------

def _truncating_writer(real, fraction: float):
    """SimpleITK's real writer, then the file cut to ``fraction`` of its length: what a writer that
    ran out of disk space mid-file leaves (SimpleITK returns normally on ENOSPC)."""
    def write(image, path, *args):
        real(image, path, *args)
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.truncate(int(size * fraction))
    return write


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nii", "labels.nrrd"])
def test_a_partially_written_image_never_gets_its_final_name(tmp_path: Path, name: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: the real SimpleITK writer writes the temporary file, which is then truncated to
    60 % before the check (as a full disk leaves it). The existing output must stay as it was."""
    out = tmp_path / "out"
    target = out / name
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6)).astype(np.uint8)
    write_image(target, labels, GEOM)
    before = _snapshot(out)
    monkeypatch.setattr(sitk, "WriteImage", _truncating_writer(sitk.WriteImage, 0.6))
    with pytest.raises(AutosegError, match="the image writer stopped short") as err:
        write_image(target, np.zeros_like(labels), GEOM)
    assert err.value.path == target and f"free space on the disk holding {out}" in str(err.value)
    assert _snapshot(out) == before  # old file intact, no .tmp-* left


def test_a_write_to_a_full_device_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real ENOSPC from the kernel: the temporary file is replaced by a link to /dev/full, so the
    real SimpleITK writer's writes fail as on a full disk (and it still returns normally)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real = sitk.WriteImage

    def to_full_device(image, path, *args):
        os.unlink(path)
        os.symlink("/dev/full", path)
        real(image, path, *args)
    monkeypatch.setattr(sitk, "WriteImage", to_full_device)
    with pytest.raises(AutosegError, match="the image writer stopped short"):
        write_image(tmp_path / "labels.nii.gz", np.zeros((4, 5, 6), np.uint8), GEOM)
    assert list(tmp_path.iterdir()) == [] and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_no_space_while_saving_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    """Real ENOSPC: numpy writes through the temporary name into /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with pytest.raises(AutosegError, match="No space left on device") as err:
        with atomic_path(tmp_path / "data.npy") as tmp:
            tmp.unlink()
            tmp.symlink_to("/dev/full")
            with open(tmp, "wb") as fh:
                np.save(fh, np.zeros(100_000))
    assert err.value.path == tmp_path and "free space on that disk" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_write_permission_is_an_error_naming_it(tmp_path: Path) -> None:
    """Real EACCES: a folder made read-only, or (root ignores that) sysfs, which refuses new files
    even to root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        folder = Path("/sys")
        if not folder.is_dir() or os.access(folder, os.W_OK) and _can_create(folder):
            pytest.skip("no folder that refuses root's writes")
    before = sorted(p.name for p in folder.iterdir())
    try:
        with pytest.raises(AutosegError, match="Permission denied") as err:
            save_npy(folder / "autoseg-probe.npy", np.zeros(3))
        assert err.value.path == folder and "writable" in str(err.value)
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == before


def _can_create(folder: Path) -> bool:
    try:
        os.close(os.open(folder / ".autoseg-probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return False
    os.unlink(folder / ".autoseg-probe")
    return True


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_image(tmp_path / "l.nii.gz", np.zeros((4, 5, 6), np.uint8), GEOM)
        save_npy(tmp_path / "a.npy", np.zeros(3))
        (tmp_path / "plain.txt").write_text("x")  # what an ordinary new file gets
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"l.nii.gz": 0o666 & ~umask, "a.npy": 0o666 & ~umask, "plain.txt": 0o666 & ~umask}


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".tmp-{dead_pid}-abc-case.nii.gz"
    live = tmp_path / f".tmp-{os.getppid()}-def-case.nii.gz"  # the parent (pytest's runner) is alive
    mine = tmp_path / f".tmp-{os.getpid()}-ghi-case.nii.gz"
    recent = tmp_path / f".tmp-{dead_pid}-jkl-other.nii.gz"  # maybe another host's write in progress
    other = tmp_path / ".tmp-notapid-x"
    for p in (stale, live, mine, recent, other):
        p.write_bytes(b"partial")
        if p != recent:
            os.utime(p, (p.stat().st_atime - 3600, p.stat().st_mtime - 3600))
    with atomic_path(tmp_path / "report.json") as tmp:
        tmp.write_text(json.dumps({"ok": True}))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([live.name, mine.name, recent.name, other.name, "report.json"])

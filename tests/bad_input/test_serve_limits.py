"""`autoseg serve` refuses what would leak or exhaust it: results open only with their own token,
the queue limit holds under concurrent uploads, headers declaring more than the machine's memory are
refused before any voxel is decompressed, images that are not CT fail before preprocessing, and old
results are deleted by the retention limits. Every refusal leaves no job folder and no thread."""
from __future__ import annotations

import gzip
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.serve import security
from autoseg.serve.jobs import Retention
from autoseg.serve.security import Limits, MemoryModel, machine_memory
from tests.serve_fixtures import PAGE, auth, client, gzip_declaring, mine, nifti_bytes, upload, wait

pytest_plugins = ["tests.serve_fixtures"]  # the trained model, shared with tests/test_serve.py


def no_worker_left() -> bool:
    return not any(t.name == "autoseg-predict" and t.is_alive() for t in threading.enumerate())


def job_folders(workdir: Path) -> set[str]:
    return {p.name for p in (workdir / "jobs").iterdir()}


# --- tokens ----------------------------------------------------------------------------------------------

def test_results_open_only_with_their_own_token(trained: dict[str, Path], tmp_path: Path) -> None:
    image = trained["image"].read_bytes()
    with client(trained, tmp_path / "serve") as c:
        a, b = (upload(c, f"{n}.nii.gz", image).json() for n in "ab")
        assert len(a["token"]) >= 43 and a["token"] != b["token"]  # 256 random bits, URL-safe
        wait(c, a), wait(c, b)
        assert c.get("/api/jobs").status_code == 405  # no list of everybody's jobs
        urls = [f"/api/jobs/{a['id']}", f"/api/jobs/{a['id']}/report", f"/api/jobs/{a['id']}/files/labels.nii.gz",
                f"/api/jobs/{a['id']}/files/report.json", f"/api/jobs/{a['id']}/slices/axial/0.png",
                f"/api/jobs/{a['id']}/slices/axial/0.png?layer=uncertainty",
                f"/api/jobs/{a['id']}/files/labels_uncertainty.nii.gz"]
        for url in urls:
            for headers in ({}, auth(b), {"X-Autoseg-Token": a["token"][:-1] + "x"}):
                response = c.get(url, headers=headers)
                assert response.status_code == 404 and "token" in response.json()["error"], (url, headers)
            assert c.get(url, headers=auth(a)).status_code == 200, url
            assert c.get(url, params={"token": a["token"]}).status_code == 200, url
        assert c.delete(f"/api/jobs/{a['id']}", headers=PAGE | auth(b)).status_code == 404
        assert [j["id"] for j in mine(c, b)["jobs"]] == [b["id"]]  # b's page does not see a
        assert mine(c, {"id": a["id"], "token": b["token"]}) == {"jobs": [], "gone": [a["id"]]}
    status = (tmp_path / "serve" / "jobs" / a["id"] / "status.json").read_text()
    assert a["token"] not in status  # only its hash is kept
    assert no_worker_left()


# --- the queue limit -------------------------------------------------------------------------------------

def test_concurrent_uploads_cannot_overfill_the_queue(trained: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """All uploads arrive before any is stored: only ``max_queue`` may be read, the rest are refused."""
    sent, max_queue = 8, 3
    storing, answered, lock = [], [], threading.Lock()
    everyone_in, gate = threading.Event(), threading.Event()
    real_store = security.store_upload

    def note(kind: list) -> None:
        with lock:
            kind.append(1)
            if len(storing) + len(answered) == sent:
                everyone_in.set()

    def held_store(*args: Any) -> Any:
        note(storing)
        assert everyone_in.wait(60), "not every upload arrived"
        return real_store(*args)

    def refused_or_done(response: Any) -> Any:
        if response.status_code != 202:
            note(answered)
        return response

    monkeypatch.setattr("autoseg.serve.app.store_upload", held_store)
    image = trained["image"].read_bytes()
    with client(trained, tmp_path / "serve", Limits(max_queue=max_queue), runner=lambda *a: gate.wait(60) and {}) as c:
        with ThreadPoolExecutor(sent) as pool:
            responses = list(pool.map(lambda i: refused_or_done(upload(c, f"{i}.nii.gz", image)), range(sent)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [202] * max_queue + [429] * (sent - max_queue)
        assert all("already waiting" in r.json()["error"] for r in responses if r.status_code == 429)
        accepted = {r.json()["id"] for r in responses if r.status_code == 202}
        assert job_folders(tmp_path / "serve") == accepted  # nothing kept of a refused upload
        gate.set()
    assert no_worker_left()


# --- memory ----------------------------------------------------------------------------------------------

class CountingGzip:
    """``gzip.open`` that counts the decompressed bytes read."""

    def __init__(self) -> None:
        self.read = 0

    def open(self, path: Any, mode: str = "rb") -> Any:
        outer, handle = self, gzip.open(path, mode)

        class Counted:
            def __enter__(self) -> Counted:
                return self

            def __exit__(self, *exc: Any) -> None:
                handle.close()

            def read(self, n: int = -1) -> bytes:
                data = handle.read(n)
                outer.read += len(data)
                return data
        return Counted()


def test_headers_declaring_more_than_memory_are_refused_before_decompressing(
        trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingGzip()
    monkeypatch.setattr(security, "gzip", counting)
    limits = Limits(max_decompressed=4 << 30, max_memory=4 << 30)
    # 1024 x 1024 x 600 int16 voxels (1.26 GB) in a small file: about 44 GiB to predict
    declared = gzip_declaring((1024, 1024, 600), (0.8, 0.8, 1.5), zero_megabytes=16)
    # 64^3 voxels of 100 mm: few voxels, but billions once resampled to the model's spacing
    coarse = nifti_bytes(np.full((64, 64, 64), -500, np.int16), spacing=(100.0, 100.0, 100.0))
    nrrd = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1200 1200 1200\nspacings: 1 1 1\nendian: little\n"
            b"encoding: gzip\n\n" + gzip.compress(bytes(1 << 20)))
    with client(trained, tmp_path / "serve", limits, runner=lambda *a: {}) as c:
        for name, data in (("declared.nii.gz", declared), ("coarse.nii.gz", coarse), ("big.nrrd", nrrd)):
            counting.read = 0
            response = upload(c, name, data)
            assert response.status_code == 413, (name, response.text)
            assert "GiB of memory" in response.json()["error"] and response.json()["fix"], name
            assert counting.read <= 1024, name  # the header only, not the voxels
    assert job_folders(tmp_path / "serve") == set() and no_worker_left()


def test_the_memory_limit_comes_from_this_machine() -> None:
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < Limits().max_memory == machine_memory() <= physical
    model = MemoryModel((2.5, 0.8, 0.8), num_classes=3)
    at_target = model.peak_bytes((100, 512, 512), (2.5, 0.8, 0.8))
    assert at_target == pytest.approx(100 * 512 * 512 * 47)
    upsampled = model.peak_bytes((100, 512, 512), (5.0, 1.6, 1.6))  # 8x the voxels once resampled
    assert upsampled == pytest.approx(100 * 512 * 512 * (21 + 26 * 8))
    assert MemoryModel((2.5, 0.8, 0.8), num_classes=6).peak_bytes((100, 512, 512), (2.5, 0.8, 0.8)) == 2 * at_target


# --- the CT check ----------------------------------------------------------------------------------------

def test_a_picture_fails_before_it_is_preprocessed(trained: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    predicted: list[Path] = []
    monkeypatch.setattr("autoseg.serve.app.predict_case", lambda model, name, image, *a: predicted.append(image))
    picture = nifti_bytes(np.random.default_rng(0).integers(0, 255, (20, 32, 32)).astype(np.uint8))
    with client(trained, tmp_path / "serve") as c:
        job = upload(c, "photo.nii.gz", picture).json()
        failed = wait(c, job)
    assert failed["state"] == "failed" and "8-bit picture" in failed["message"]
    assert "photo.nii.gz" in failed["message"] and str(tmp_path) not in failed["message"]
    assert predicted == []  # never preprocessed
    assert {p.name for p in (tmp_path / "serve" / "jobs" / job["id"]).iterdir()} == {"input.nii.gz", "status.json"}
    assert no_worker_left()


# --- retention -------------------------------------------------------------------------------------------

def test_the_oldest_finished_jobs_are_deleted(trained: dict[str, Path], tmp_path: Path) -> None:
    small = nifti_bytes(np.full((8, 8, 8), -1000, np.int16))
    workdir = tmp_path / "serve"
    with client(trained, workdir, runner=lambda *a: {}, retention=Retention(keep=2, ttl_s=None)) as c:
        jobs = []
        for i in range(4):
            jobs.append(upload(c, f"{i}.nii.gz", small).json())
            wait(c, jobs[-1])
    assert job_folders(workdir) == {jobs[2]["id"], jobs[3]["id"]}  # the newest two (stopping waits for the worker)
    status = workdir / "jobs" / jobs[2]["id"] / "status.json"
    status.write_text(status.read_text().replace('"finished": ', '"finished": 1000.0, "was": '))
    with client(trained, workdir, runner=lambda *a: {}, retention=Retention(keep=None, ttl_s=3600)) as c:
        # a restart applies the limits: finished in 1970, older than an hour
        assert mine(c, *jobs)["gone"] == [j["id"] for j in jobs[:3]]
    assert job_folders(workdir) == {jobs[3]["id"]} and no_worker_left()


def test_waiting_and_running_jobs_are_never_deleted(trained: dict[str, Path], tmp_path: Path) -> None:
    small = nifti_bytes(np.full((8, 8, 8), -1000, np.int16))
    gate = threading.Event()
    with client(trained, tmp_path / "serve", runner=lambda *a: gate.wait(60) and {},
                retention=Retention(keep=0, ttl_s=0)) as c:
        running, waiting = upload(c, "r.nii.gz", small).json(), upload(c, "w.nii.gz", small).json()
        wait(c, running, ("running",))
        c.app.state.ctx.worker.prune()  # type: ignore[attr-defined]
        assert job_folders(tmp_path / "serve") == {running["id"], waiting["id"]}
        gate.set()
    assert running["id"] not in job_folders(tmp_path / "serve") and no_worker_left()


def test_sitk_reads_the_test_headers(tmp_path: Path) -> None:
    """The tests' hand-written NIfTI header is one SimpleITK reads, so the refusals above are about
    the sizes it declares, not a malformed header."""
    path = tmp_path / "declared.nii.gz"
    path.write_bytes(gzip_declaring((4, 5, 6), (0.5, 0.5, 2.0)))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetSize() == (4, 5, 6) and reader.GetSpacing() == (0.5, 0.5, 2.0)

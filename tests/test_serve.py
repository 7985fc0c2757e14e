"""`autoseg serve`: uploads checked before they are read (names, sizes, bombs, formats), the one-job-at-a-time
queue, results that stay until deleted, and the page in a real headless Chromium with the real example CT."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh
from autoseg.inference.model import open_model
from autoseg.inference.predictor import PredictOptions

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.io import read_label
from autoseg.serve.app import ServeConfig, create_app, prediction_runner
from autoseg.serve.security import Limits
from fastapi.testclient import TestClient
from tests.optional import requires_extra
from tests.serve_fixtures import PAGE, auth, client, files_under, gzip_declaring, mine, nifti_bytes, upload, wait

pytest_plugins = ["tests.serve_fixtures"]  # the trained model, shared with tests/bad_input/test_serve_limits.py

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "totalsegmentator_example"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


# --- the whole path through the API ----------------------------------------------------------------------

def test_upload_predict_browse_download(trained: dict[str, Path], tmp_path: Path) -> None:
    with client(trained, tmp_path / "serve") as c:
        info = c.get("/api/info").json()
        assert [k["name"] for k in info["classes"]] == ["liver", "tumour"] and info["folds"] == [0]
        response = upload(c, "../../../outside.nii.gz", trained["image"].read_bytes())
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["name"] == "outside.nii.gz" and job["state"] == "queued"
        status = wait(c, job)
        assert status["state"] == "done", status["message"]
        report = c.get(f"/api/jobs/{job['id']}/report", headers=auth(job)).json()
        assert report["volumes_ml"]["liver"] > 0 and report["input"] == "outside.nii.gz"
        for plane, view in status["view"].items():
            png = c.get(f"/api/jobs/{job['id']}/slices/{plane}/{view['index']}.png",
                        params={"window": "liver", "opacity": 0.4, "classes": "1,2", "token": job["token"]})
            assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
            assert max(png_size(png.content)) == 512
            # the uncertainty layer: the entropy heat map on the same reoriented slice, same size
            heat = c.get(f"/api/jobs/{job['id']}/slices/{plane}/{view['index']}.png",
                         params={"window": "liver", "opacity": 0.4, "classes": "1,2", "layer": "uncertainty",
                                 "token": job["token"]})
            assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
            assert png_size(heat.content) == png_size(png.content) and heat.content != png.content
        for layer in ("probabilities", "", "../labels", "LABELS"):
            refused = c.get(f"/api/jobs/{job['id']}/slices/axial/0.png", params={"layer": layer}, headers=auth(job))
            assert refused.status_code == 400 and "unknown layer" in refused.json()["error"], layer
        labels = c.get(f"/api/jobs/{job['id']}/files/labels.nii.gz", params={"token": job["token"]})
        assert labels.headers["content-disposition"].startswith("attachment")
        (tmp_path / "labels.nii.gz").write_bytes(labels.content)
        pred, geometry = read_label(tmp_path / "labels.nii.gz")
        _, input_geometry = read_label(trained["image"])
        assert geometry.same_grid(input_geometry) and set(np.unique(pred)) <= {0, 1, 2} and (pred == 1).any()
        assert c.get(f"/api/jobs/{job['id']}/files/report.json",
                     headers=auth(job)).json()["volumes_ml"] == report["volumes_ml"]
        # a surface mesh per structure present, in patient mm: the liver's lies on the label map's liver
        assert report["meshes"]["liver"] == "labels_liver.stl" and set(report["meshes"]) <= {"liver", "tumour"}
        stl = c.get(f"/api/jobs/{job['id']}/files/labels_liver.stl", headers=auth(job))
        assert stl.status_code == 200 and stl.headers["content-type"] == "model/stl"
        assert "outside_labels_liver.stl" in stl.headers["content-disposition"]
        mesh = trimesh.load(io.BytesIO(stl.content), file_type="stl")
        zyx = np.argwhere(pred == 1)[:, ::-1] @ (np.reshape(geometry.direction, (3, 3)) @ np.diag(geometry.spacing)).T
        lo, hi = zyx.min(0) + geometry.origin, zyx.max(0) + geometry.origin
        # within a voxel and a half: the surface lies half a voxel beyond the outer voxels' centres, and
        # Taubin smoothing (non-shrinking) pushes a flat cap, where the liver touches the scan's first
        # slice, out a little further (CI beside two trainings: 1.09 voxels at the first slice)
        assert np.allclose(mesh.bounds, [lo, hi], atol=1.5 * max(geometry.spacing))
        # the uncertainty map (normalised predictive entropy, T = 1: this model has no calibration.json)
        assert report["uncertainty"]["file"] == "labels_uncertainty.nii.gz"
        assert report["uncertainty"]["calibrated"] is False
        nii = c.get(f"/api/jobs/{job['id']}/files/labels_uncertainty.nii.gz", params={"token": job["token"]})
        assert nii.status_code == 200 and nii.headers["content-type"] == "application/gzip"
        assert "outside_labels_uncertainty.nii.gz" in nii.headers["content-disposition"]
        (tmp_path / "uncertainty.nii.gz").write_bytes(nii.content)
        entropy = sitk.ReadImage(str(tmp_path / "uncertainty.nii.gz"))
        assert entropy.GetSize() == sitk.ReadImage(str(trained["image"])).GetSize()
        values = sitk.GetArrayViewFromImage(entropy)
        assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0
        for absent in ("labels_vessel.stl", "..%2Flabels_liver.stl", "labels.stl", "labels_uncertainty.nii",
                       "labels_probabilities.npz", "input.nii.gz", "status.json", "..%2Flabels_uncertainty.nii.gz"):
            assert c.get(f"/api/jobs/{job['id']}/files/{absent}", headers=auth(job)).status_code == 404, absent
    folder = tmp_path / "serve" / "jobs" / job["id"]
    assert files_under(folder) == {"input.nii.gz", "status.json", "labels.nii.gz", "report.json",
                                   "labels_uncertainty.nii.gz", *report["meshes"].values()}
    assert files_under(tmp_path) == {"serve", "serve/.lock", "serve/jobs", f"serve/jobs/{job['id']}",
                                     "labels.nii.gz", "uncertainty.nii.gz"} | {
        f"serve/jobs/{job['id']}/{n}" for n in files_under(folder)}


def png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


def test_uncertainty_layer_heat_map_and_a_result_without_one() -> None:
    """Entropy 0 leaves the CT as it is; a high entropy is tinted; no map (an older result): 404."""
    from autoseg.serve.slices import Volume, render_slice
    from autoseg.serve.security import UploadError
    from PIL import Image

    ct = np.zeros((4, 8, 8), np.int16)
    labels = np.zeros((4, 8, 8), np.uint8)
    entropy = np.zeros((4, 8, 8), np.uint8)
    entropy[:, :, 4:] = 255  # right half: all classes equally likely
    volume = Volume(ct, labels, (2.0, 1.0, 1.0), entropy)
    rgb = np.asarray(Image.open(io.BytesIO(render_slice(volume, "axial", 1, "abdomen", 1.0, (), "uncertainty"))))
    grey = np.asarray(Image.open(io.BytesIO(render_slice(volume, "axial", 1, "abdomen", 1.0, (), "labels"))))
    assert rgb.shape == grey.shape
    assert np.array_equal(rgb[:, :100], grey[:, :100])  # certain: the CT unchanged
    assert np.abs(rgb[:, -100:].astype(int) - grey[:, -100:]).max() > 100  # uncertain: the heat map
    with pytest.raises(UploadError) as refused:
        render_slice(Volume(ct, labels, (2.0, 1.0, 1.0)), "axial", 1, "abdomen", 0.5, (), "uncertainty")
    assert refused.value.status == 404 and "no uncertainty map" in refused.value._message


def test_linked_models_show_one_liver_vessel_tumour_map(trained: dict[str, Path], tmp_path: Path) -> None:
    """`serve --roi-model`: the viewer predicts a linked run's one map and lists its combined table.

    The ROI model is the trained liver phantom model; the main model is a copy of it whose plans name
    its classes "vessel" and "tumour" (same network and weights, Task08's class names). That is enough
    for what this tests at the API level (the class table, the linked prediction path, the report's
    table); that a liver model and a vessel/tumour model link well is tests/test_cascade.py's business."""
    main_model = tmp_path / "task08_like"
    shutil.copytree(trained["model"], main_model)
    plans = json.loads((main_model / "plans.json").read_text())
    plans["labels"] = {"0": "background", "1": "vessel", "2": "tumour"}
    (main_model / "plans.json").write_text(json.dumps(plans))
    config = ServeConfig(main_model, tmp_path / "serve", roi_model_folder=trained["model"])
    with TestClient(create_app(config), base_url="http://127.0.0.1") as c:
        info = c.get("/api/info").json()
        assert [(k["id"], k["name"]) for k in info["classes"]] == [(1, "liver"), (2, "vessel"), (3, "tumour")]
        assert info["roi_model"] == "Task03_Liver" and info["layers"] == ["labels", "uncertainty"]
        job = upload(c, "ct.nii.gz", trained["image"].read_bytes()).json()
        status = wait(c, job)
        assert status["state"] == "done", status["message"]
        report = c.get(f"/api/jobs/{job['id']}/report", headers=auth(job)).json()
        assert report["label_table"] == {str(k["id"]): k["name"] for k in info["classes"]} | {"0": "background"}
        # the copy finds the same liver as the ROI model, named "vessel" (2 in the one map), and its
        # classes are drawn over the organ (tumour over vessel over liver): here the liver is all "vessel"
        assert report["roi"] is not None and set(report["volumes_ml"]) == {"liver", "vessel", "tumour"}
        assert report["volumes_ml"]["vessel"] > 0
        labels = c.get(f"/api/jobs/{job['id']}/files/labels.nii.gz", headers=auth(job))
        (tmp_path / "linked.nii.gz").write_bytes(labels.content)
        pred, _ = read_label(tmp_path / "linked.nii.gz")
        assert set(np.unique(pred)) <= {0, 1, 2, 3} and (pred == 2).any()
        view = status["view"]["axial"]
        png = c.get(f"/api/jobs/{job['id']}/slices/axial/{view['index']}.png", params={"classes": "1,2,3"},
                    headers=auth(job))
        heat = c.get(f"/api/jobs/{job['id']}/slices/axial/{view['index']}.png",
                     params={"classes": "1,2,3", "layer": "uncertainty"}, headers=auth(job))
        assert png.status_code == heat.status_code == 200 and png_size(png.content) == png_size(heat.content)


def test_cli_serve_takes_a_roi_model(trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`autoseg serve --roi-model PATH` opens the ROI model and hands it to the server (not started here)."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr("autoseg.cpu_share.configure_threads", lambda *a, **k: None)  # keep the runner's threads
    monkeypatch.setattr("autoseg.serve.app.serve", lambda config, model, roi: seen.update(config=config, roi=roi))
    assert main(["serve", "-m", str(trained["model"]), "--roi-model", str(trained["model"]),
                 "--workdir", str(trained["root"] / "unused")]) == 0
    assert seen["roi"] is not None and seen["config"].roi_model_folder == trained["model"]
    assert main(["serve", "-m", str(trained["model"]), "--roi-model", "Task99"]) == 2
    assert "Task99" in capsys.readouterr().err


# --- security --------------------------------------------------------------------------------------------

def test_file_names_and_ids_are_never_paths(trained: dict[str, Path], tmp_path: Path) -> None:
    image = trained["image"].read_bytes()
    gate = threading.Event()
    with client(trained, tmp_path / "serve", runner=lambda *a: gate.wait(30) and {}) as c:
        names = {"../../evil.nii.gz": "evil.nii.gz", "..\\..\\win.nii.gz": "win.nii.gz",
                 "/etc/passwd": "passwd", "a/b/<script>x.nii.gz": "_script_x.nii.gz", "..": "upload"}
        for sent, shown in names.items():
            response = upload(c, sent, image)
            assert response.status_code == 202 and response.json()["name"] == shown, response.text
        for bad in ("..%2F..%2Fetc", "0123456789abcdef", "../status.json"):
            assert c.get(f"/api/jobs/{bad}").status_code == 404
        some = response.json()
        assert c.get(f"/api/jobs/{some['id']}/files/..%2Fstatus.json", headers=auth(some)).status_code == 404
        assert c.get(f"/api/jobs/{some['id']}/files/status.json", headers=auth(some)).status_code in (404, 409)
        gate.set()
    jobs = tmp_path / "serve" / "jobs"
    assert {p.name for p in tmp_path.iterdir()} == {"serve"} and len(list(jobs.iterdir())) == len(names)
    for folder in jobs.iterdir():
        assert {p.name for p in folder.iterdir()} <= {"input.nii.gz", "status.json", "labels.nii.gz", "report.json"}


def test_oversize_uploads_are_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    with client(trained, tmp_path / "serve", Limits(max_upload=1 << 20)) as c:
        big = b"\x1f\x8b" + os.urandom(3 << 20)
        response = upload(c, "big.nii.gz", big)
        assert response.status_code == 413 and "larger than the server's limit of 1 MiB" in response.json()["error"]
        boundary = "autoseg-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.nii.gz\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: streamed
        response = c.post("/api/jobs", content=chunks,
                          headers={**PAGE, "content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413
        assert c.get("/api/info").status_code == 200
    assert list((tmp_path / "serve" / "jobs").iterdir()) == []


def test_decompression_bombs_are_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    limits = Limits(max_decompressed=16 << 20, max_zip_members=10)
    with client(trained, tmp_path / "serve", limits) as c:
        bomb = gzip_declaring((8, 8, 8), zero_megabytes=64)  # 1 KiB of voxels declared, 64 MiB sent
        assert len(bomb) < 200_000
        response = upload(c, "ct.nii.gz", bomb)
        assert response.status_code == 413 and "decompression bomb" in response.json()["error"]
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("slice.dcm", bytes(64 << 20))
        response = upload(c, "series.zip", zipped.getvalue())
        assert response.status_code == 413 and "decompression bomb" in response.json()["error"]
        many = io.BytesIO()
        with zipfile.ZipFile(many, "w") as zf:
            for i in range(20):
                zf.writestr(f"{i}.dcm", b"x")
        response = upload(c, "series.zip", many.getvalue())
        assert response.status_code == 413 and "20 files" in response.json()["error"]
    assert list((tmp_path / "serve" / "jobs").iterdir()) == []


def test_only_self_contained_images_are_accepted(trained: dict[str, Path], tmp_path: Path) -> None:
    pair = bytearray(348)
    pair[0:4] = struct.pack("<i", 348)
    pair[344:348] = b"ni1\x00"
    refused = {
        "scan.png": b"\x89PNG\r\n\x1a\n" + bytes(100), "report.pdf": b"%PDF-1.7\n" + bytes(100),
        "notes.nii.gz": b"just some text pretending to be an image",
        "outside.mha": b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
                       b"ElementDataFile = /etc/passwd\n",
        "outside.nrrd": b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
                        b"data file: /etc/passwd\n\n",
        "pair.nii": bytes(pair), "text.zip": zip_of({"readme.txt": b"hello"}),
    }
    with client(trained, tmp_path / "serve") as c:
        for name, data in refused.items():
            response = upload(c, name, data)
            assert response.status_code == 415, (name, response.text)
            assert response.json()["error"] and response.json()["fix"]
        assert upload(c, "empty.nii.gz", b"").json()["error"] == "the uploaded file is empty"
    assert list((tmp_path / "serve" / "jobs").iterdir()) == []


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_malformed_images_get_clear_messages_and_the_server_keeps_running(trained: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    good = trained["image"].read_bytes()
    plain = nifti_bytes(np.zeros((8, 8, 8), np.int16), compress=False)
    garbage_dims = bytearray(plain)
    garbage_dims[40:42] = struct.pack("<h", 9)  # dim[0] = 9: not a NIfTI dimension count
    cases = {"cut.nii.gz": (good[: len(good) // 2], "damaged or incomplete"),
             "short.nii": (plain[:-100], "truncated"),
             "dims.nii": (bytes(garbage_dims), "header cannot be read"),
             "flat.nii.gz": (nifti_bytes(np.zeros((4, 4), np.int16)), "3D")}
    with client(trained, tmp_path / "serve") as c:
        for name, (data, expected) in cases.items():
            response = upload(c, name, data)
            assert response.status_code == 400 and expected in response.json()["error"], (name, response.text)
        picture = nifti_bytes(np.random.default_rng(0).integers(0, 255, (20, 32, 32)).astype(np.uint8))
        failed_job = upload(c, "photo.nii.gz", picture).json()
        failed = wait(c, failed_job)
        assert failed["state"] == "failed" and "8-bit picture" in failed["message"]
        assert "photo.nii.gz" in failed["message"] and str(tmp_path) not in failed["message"]
        assert c.get(f"/api/jobs/{failed['id']}/report", headers=auth(failed_job)).status_code == 409
        assert wait(c, upload(c, "good.nii.gz", good).json())["state"] == "done"


def test_requests_from_elsewhere_are_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    with client(trained, tmp_path / "serve") as c:
        response = upload(c, "ct.nii.gz", trained["image"].read_bytes(), headers={})
        assert response.status_code == 403 and "autoseg page" in response.json()["error"]
        assert c.get("/api/info", headers={"host": "attacker.example"}).status_code == 400
        page = c.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"


# --- queue, delete, list, restart ------------------------------------------------------------------------

def test_jobs_run_one_at_a_time_in_upload_order(trained: dict[str, Path], tmp_path: Path) -> None:
    real = prediction_runner(open_model(trained["model"]), PredictOptions())
    gate, running, finished = threading.Event(), [], []

    def held(folder: Path, image: Path, name: str) -> dict:
        running.append(name)
        assert len(running) - len(finished) == 1, "two predictions at once"
        if name == "first.nii.gz":
            gate.wait(60)
        try:
            return real(folder, image, name)
        finally:
            finished.append(name)

    image = trained["image"].read_bytes()
    with client(trained, tmp_path / "serve", runner=held) as c:
        jobs = [upload(c, f"{n}.nii.gz", image).json() for n in ("first", "second", "third")]
        wait(c, jobs[0], ("running",))
        assert [c.get(f"/api/jobs/{j['id']}", headers=auth(j)).json()["position"] for j in jobs] == [None, 1, 2]
        assert c.delete(f"/api/jobs/{jobs[0]['id']}", headers=PAGE | auth(jobs[0])).status_code == 409  # predicted
        assert c.delete(f"/api/jobs/{jobs[2]['id']}", headers=PAGE | auth(jobs[2])).status_code == 200  # leaves queue
        assert c.get("/api/info").status_code == 200  # answers while a job runs
        gate.set()
        first, second = wait(c, jobs[0]), wait(c, jobs[1])
    assert first["state"] == second["state"] == "done"
    assert running == ["first.nii.gz", "second.nii.gz"] == finished
    assert second["started"] >= first["finished"]


def test_results_are_listed_until_deleted_and_survive_a_restart(trained: dict[str, Path], tmp_path: Path) -> None:
    """The page lists the jobs whose tokens it holds (there is no list of every job), also after a restart."""
    image = trained["image"].read_bytes()
    with client(trained, tmp_path / "serve") as c:
        a = upload(c, "a.nii.gz", image).json()
        b = upload(c, "b.nii.gz", image).json()
        wait(c, a), wait(c, b)
        assert [j["id"] for j in mine(c, a, b)["jobs"]] == [b["id"], a["id"]]  # newest first
        assert "token" not in mine(c, a)["jobs"][0] and "token_sha256" not in mine(c, a)["jobs"][0]
    status_file = tmp_path / "serve" / "jobs" / a["id"] / "status.json"
    status_file.write_text(status_file.read_text().replace('"done"', '"running"'))  # as if stopped mid-job
    with client(trained, tmp_path / "serve") as c:
        with pytest.raises(AutosegError, match="another `autoseg serve`"):
            create_app(ServeConfig(trained["model"], tmp_path / "serve"))
        assert {j["id"] for j in mine(c, a, b)["jobs"]} == {a["id"], b["id"]}
        assert wait(c, a)["state"] == "done"  # an interrupted job runs again
        assert c.delete(f"/api/jobs/{b['id']}", headers=auth(b)).status_code == 403  # not from the page
        assert c.delete(f"/api/jobs/{b['id']}", headers=PAGE).status_code == 404  # no token
        assert c.delete(f"/api/jobs/{b['id']}", headers=PAGE | auth(b)).json() == {"deleted": b["id"]}
        assert c.delete(f"/api/jobs/{b['id']}", headers=PAGE | auth(b)).status_code == 404
        assert c.get(f"/api/jobs/{b['id']}", headers=auth(b)).status_code == 404
        assert mine(c, a, b) == {"jobs": [mine(c, a)["jobs"][0]], "gone": [b["id"]]}
    assert not (tmp_path / "serve" / "jobs" / b["id"]).exists()


def test_a_zipped_dicom_series_is_stored_under_numbered_names(trained: dict[str, Path], tmp_path: Path) -> None:
    series = REAL / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip(f"{series} is missing (see ../shared/data/real)")
    members = {f"../../{p.name}": p.read_bytes() for p in sorted(series.iterdir())}
    members["notes/readme.txt"] = b"not DICOM"
    gate = threading.Event()
    with client(trained, tmp_path / "serve", runner=lambda *a: gate.wait(30) and {}) as c:
        response = upload(c, "series.zip", zip_of(members))
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["input"]["kind"] == "dicom-zip" and job["input"]["size_zyx"] == [20, 512, 512]
        gate.set()
    folder = tmp_path / "serve" / "jobs" / job["id"] / "input_dicom"
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}.dcm" for i in range(20)]


def test_cli_refuses_bad_serve_arguments(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "-m", str(trained["model"]), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["serve", "-m", str(trained["root"]), "--port", "8123"]) == 2
    assert "plans.json" in capsys.readouterr().err


# --- the page in a real browser -------------------------------------------------------------------------

def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(trained: dict[str, Path], workdir: Path) -> Iterator[str]:
    """`autoseg serve` as a user starts it, in its own process, on a free port."""
    port, log_path = free_port(), workdir.parent / "serve.log"
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "autoseg", "serve", "-m", str(trained["model"]),
                                 "--port", str(port), "--workdir", str(workdir)], stdout=log, stderr=log)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "api/info", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise AssertionError(log_path.read_text()) from None
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(20)


COUNT_COLOURED = """img => {
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (Math.max(px[i], px[i + 1], px[i + 2]) - Math.min(px[i], px[i + 1], px[i + 2]) > 30) coloured++;
  }
  return coloured;
}"""


@requires_extra("viewer-test")
@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_page_in_chromium_segments_an_uploaded_ct(trained: dict[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    # the real TotalSegmentator CT from ../shared; a checkout without ../shared uploads the phantom
    # test CT instead, so the browser path is still tested end to end
    ct = REAL / "example_ct.nii.gz"
    if not ct.is_file():
        ct = trained["image"]
    ARTIFACTS.mkdir(exist_ok=True)
    with running_server(trained, tmp_path / "serve") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("#model:has-text('Task03_Liver')")
        page.set_input_files("#file", str(ct))
        page.wait_for_selector("#progress-panel", state="visible", timeout=30_000)  # the progress indicator
        liver = page.wait_for_selector("#volumes tbody tr:has-text('liver')", timeout=120_000)
        assert float(liver.query_selector("td.num").inner_text()) > 0
        assert page.is_hidden("#table-warning")  # the result's class table is the served one
        page.wait_for_function("() => [...document.querySelectorAll('#planes img')].length === 3 && "
                               "[...document.querySelectorAll('#planes img')].every(i => i.dataset.loaded === '1')")
        axial = page.query_selector("figure[data-plane=axial] img")
        assert axial.evaluate(COUNT_COLOURED) > 500  # the overlay is drawn over the grey CT
        page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
        assert page.query_selector("#jobs li .name").inner_text() == ct.name
        for box in page.query_selector_all("#classes input"):
            box.uncheck()
        page.wait_for_function("() => (img => new URL(img.src).searchParams.get('classes') === '' && img.dataset"
                               ".loaded === '1')(document.querySelector('figure[data-plane=axial] img'))")
        assert axial.evaluate(COUNT_COLOURED) == 0  # classes toggled off: CT only
        assert page.is_hidden("#uncertainty-legend")
        page.check("#uncertainty")  # the uncertainty layer: the entropy heat map, with its legend
        page.wait_for_function("() => [...document.querySelectorAll('#planes img')].every(img => "
                               "new URL(img.src).searchParams.get('layer') === 'uncertainty' && "
                               "img.dataset.loaded === '1')")
        assert "entropy 0 = certain" in page.inner_text("#uncertainty-legend")
        assert page.is_visible("#dl-uncertainty")
        page.screenshot(path=str(ARTIFACTS / "viewer_uncertainty.png"), full_page=True)
        page.uncheck("#uncertainty")
        job_id = page.evaluate("() => Object.keys(JSON.parse(localStorage.getItem('autoseg.tokens')))[0]")
        page.reload()  # the page keeps its tokens: the result is still listed
        page.wait_for_selector(f"#jobs li[data-id='{job_id}'] .name:has-text('{ct.name}')")
        other = browser.new_page()  # another browser profile: no token, no result
        other.goto(url)
        assert other.evaluate("() => localStorage.getItem('autoseg.tokens')") is None
        assert other.evaluate(f"() => fetch('/api/jobs/{job_id}').then(r => r.status)") == 404
        browser.close()
    assert errors == []
    assert (ARTIFACTS / "viewer.png").read_bytes()[:4] == b"\x89PNG"

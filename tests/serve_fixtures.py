"""What the `autoseg serve` tests share: a phantom model trained for seconds, a test client, uploads
and waiting for a job. Test modules load it with ``pytest_plugins``, so the model is trained once
(and import its helpers first, hence PYTEST_DONT_REWRITE: its asserts are plain)."""
from __future__ import annotations

import gzip
import io
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from autoseg.cli import main
from autoseg.phantom import write_task
from tests.workspaces import autoseg_env
from autoseg.serve.app import ServeConfig, create_app
from autoseg.serve.jobs import Retention
from autoseg.serve.security import Limits

PAGE = {"X-Autoseg": "1"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Task03-like phantom model (liver, tumour), fold 0 trained for 30 steps: it predicts a liver."""
    root = tmp_path_factory.mktemp("serve_ws")
    write_task(root / "raw", task="Task03", num_training=4, num_test=1, seed=3,
               spacing_range=((4.0, 3.5, 3.5), (5.0, 4.0, 4.0)))
    env = autoseg_env(root)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setattr("autoseg.cpu_share.configure_threads", lambda *a, **k: None)  # keep the runner's threads
        assert main(["plan_and_preprocess", "-d", "3", "--cpu-gflops", "20", "-j", "1", "--step-time", "0.3"]) == 0
        assert main(["train", "-d", "3", "-f", "0", "--epochs", "1", "--iterations", "30", "-j", "0"]) == 0
    test_image = next((root / "raw" / "Task03_Liver" / "imagesTs").iterdir())
    return {"model": root / "res" / "Task03_Liver" / "arunet", "image": test_image, "root": root}


@contextmanager
def client(trained: dict[str, Path], workdir: Path, limits: Limits | None = None, runner: Any = None,
           retention: Retention | None = None) -> Iterator[TestClient]:
    config = ServeConfig(trained["model"], workdir, limits=limits or Limits(), retention=retention or Retention())
    app = create_app(config, runner=runner)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def upload(c: TestClient, name: str, data: bytes, headers: dict[str, str] = PAGE) -> Any:
    return c.post("/api/jobs", files={"file": (name, data)}, headers=headers)


def auth(job: dict[str, Any]) -> dict[str, str]:
    """The header that opens a job: its token, as the upload returned it."""
    return {"X-Autoseg-Token": job["token"]}


def wait(c: TestClient, job: dict[str, Any], states: tuple[str, ...] = ("done", "failed"),
         timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = c.get(f"/api/jobs/{job['id']}", headers=auth(job)).json()
        if status["state"] in states:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job['id']} did not reach {states}: {status}")


def mine(c: TestClient, *jobs: dict[str, Any]) -> dict[str, Any]:
    """What the page lists: the jobs whose tokens it holds."""
    response = c.post("/api/jobs/mine", json={"tokens": {j["id"]: j["token"] for j in jobs}}, headers=PAGE)
    assert response.status_code == 200, response.text
    return response.json()


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def nifti_bytes(array: np.ndarray, compress: bool = True, spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
                ) -> bytes:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"autoseg-test-{os.getpid()}.nii"
    sitk.WriteImage(image, str(tmp))
    raw = tmp.read_bytes()
    tmp.unlink()
    return gzip.compress(raw, 1) if compress else raw


def gzip_declaring(size_xyz: tuple[int, int, int], spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0),
                   zero_megabytes: int = 0) -> bytes:
    """A gzipped NIfTI-1 header declaring int16 voxels of this size and spacing, followed by
    ``zero_megabytes`` MiB of zeros (not the voxels it declares: a bomb or a lying header)."""
    header = bytearray(352)
    header[0:4] = struct.pack("<i", 348)
    header[40:56] = struct.pack("<8h", 3, *size_xyz, 1, 1, 1, 1)
    header[70:74] = struct.pack("<hh", 4, 16)  # datatype int16, bitpix
    header[76:108] = struct.pack("<8f", 1.0, *spacing_xyz, 1.0, 1.0, 1.0, 1.0)
    header[108:112] = struct.pack("<f", 352.0)
    header[344:348] = b"n+1\x00"
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as fh:
        fh.write(bytes(header))
        zeros = bytes(1 << 20)
        for _ in range(zero_megabytes):
            fh.write(zeros)
    return out.getvalue()

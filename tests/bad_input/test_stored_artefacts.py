"""Stored artefacts that are damaged or foreign, and workers whose parent is killed: checkpoints with
flipped bits, truncated preprocessed arrays, oversized or malformed exported models, stale ONNX
files. Each is refused with an error naming the file and the fix, and nothing is written or left
running (issue 20)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.inference.export import MAX_MEMBER_BYTES, export_archive, export_onnx, read_archive
from autoseg.inference.model import ArchiveModel, OnnxModel, TrainedModel, open_model
from autoseg.networks import build_network, default_network_kwargs
from autoseg.planners.planner import PlannerOptions
from autoseg.plans import NetworkPlan, Plans
from autoseg.preprocessing.storage import (case_files, case_ids, is_up_to_date, load_case, load_labels, plans_key,
                                           write_case)
from autoseg.pipeline import plan_and_preprocess
from autoseg.settings import Settings
from autoseg.sliding_window import predict_sliding_window
from autoseg.checkpoint import DIGEST_KEY, load_checkpoint, save_checkpoint
from tests.optional import require_extra
from tests.synthetic import make_msd_task
from tests.test_plans import make_plans
from tests.test_schema import make_properties

PATCH = (16, 32, 32)
KWARGS = default_network_kwargs("arunet", n_stages=3, features_per_stage=[4, 8, 16],
                                strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], kernel_sizes=[[3, 3, 3]] * 3,
                                deep_supervision=False)


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network("arunet", KWARGS, 1, 3).eval()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. checkpoints and non-finite outputs ---------------------------------------------------------

def _flip_bytes_in_largest_tensor(path: Path) -> None:
    """Flip 4 bytes in the middle of the largest tensor record of a torch zip, leaving the zip
    structure (and its now wrong CRC, which torch does not check) intact."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[start:start + 4] = bytes(b ^ 0xFF for b in raw[start:start + 4])
    path.write_bytes(bytes(raw))


def test_checkpoint_round_trip_keeps_everything(tmp_path: Path) -> None:
    net, path = _net(), tmp_path / "checkpoint_final.pt"
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.zeros(1, 1, *PATCH)).sum().backward()
    opt.step()
    payload = {"network": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
               "log": [{"epoch": 0, "loss": 0.5, "dice": [0.1, float("nan")]}], "rng": torch.get_rng_state()}
    save_checkpoint(path, payload)
    assert DIGEST_KEY in torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    assert DIGEST_KEY not in loaded and loaded["epoch"] == 3
    assert all(torch.equal(loaded["network"][k], v) for k, v in net.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_final.pt"]  # no sidecar, no temporary


def test_flipped_bits_in_a_weight_tensor_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "fold_0" / "checkpoint_final.pt"
    save_checkpoint(path, {"network": _net().state_dict(), "epoch": 1})
    _flip_bytes_in_largest_tensor(path)
    torch.load(path, weights_only=True)  # torch itself loads the damaged weights without complaint
    before = _snapshot(tmp_path)
    with pytest.raises(AutosegError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "damaged" in message
    assert "retrain the fold" in message and "backup" in message
    assert _snapshot(tmp_path) == before  # nothing rewritten or deleted


def test_checkpoint_without_digest_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"network": _net().state_dict()}, path)  # as autoseg wrote them before the digest
    with caplog.at_level(logging.WARNING, logger="autoseg.checkpoint"):
        loaded = load_checkpoint(path)
    assert set(loaded) == {"network"}
    assert any(str(path) in r.getMessage() and "no SHA-256" in r.getMessage() for r in caplog.records)


def test_network_with_nan_weights_gives_the_non_finite_error(tmp_path: Path) -> None:
    net = _net()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    data = np.random.default_rng(0).normal(size=(1, *PATCH)).astype(np.float32)
    source = tmp_path / "fold_0" / "checkpoint_final.pt"
    with pytest.raises(AutosegError) as err:
        predict_sliding_window(net, data, PATCH, 3, precision="fp32", source=source)
    message = str(err.value)
    assert str(source) in message and "NaN or Inf" in message
    assert "weights are damaged" in message and "extreme values" in message
    assert "retrain the fold" in message
    assert not any(tmp_path.iterdir())  # nothing written
    finite = predict_sliding_window(_net(), data, PATCH, 3, precision="fp32")  # a sound network still predicts
    assert np.isfinite(finite).all() and np.allclose(finite.sum(0), 1, atol=1e-4)


# --- 2. truncated preprocessed arrays --------------------------------------------------------------

@pytest.mark.parametrize("which", ["labels", "image"])
def test_truncated_preprocessed_array_is_not_up_to_date_and_refused(tmp_path: Path, which: str) -> None:
    data = np.random.default_rng(0).normal(size=(1, 6, 8, 10)).astype(np.float32)
    seg = np.zeros((6, 8, 10), np.uint8)
    seg[2:4, 3:5, 4:6] = 2
    write_case(tmp_path, "case_0", data, seg, make_properties("case_0", (6, 8, 10)))
    assert is_up_to_date(tmp_path, "case_0", "k")
    image, labels, _ = case_files(tmp_path, "case_0")
    damaged = labels if which == "labels" else image
    with open(damaged, "r+b") as fh:  # a copy cut short: the header still says the full shape
        fh.truncate(damaged.stat().st_size - 7)
    assert not is_up_to_date(tmp_path, "case_0", "k")
    before = _snapshot(tmp_path)
    loaders: list[Callable[[], Any]] = [lambda: load_case(tmp_path, "case_0"),
                                        lambda: load_case(tmp_path, "case_0", lazy=False)]
    if which == "labels":
        loaders.append(lambda: load_labels(tmp_path / "data", "case_0"))
    for load in loaders:
        with pytest.raises(AutosegError) as err:
            load()
        assert str(damaged) in str(err.value) and "incomplete" in str(err.value)
        assert "autoseg plan_and_preprocess" in str(err.value)
    assert _snapshot(tmp_path) == before


# --- 3. exported models ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training folder with one fold of a tiny network (randomly initialised)."""
    folder = tmp_path_factory.mktemp("model")
    plans = make_plans(patch_size=PATCH, network=NetworkPlan("arunet", dict(KWARGS)))
    plans.save(folder / "plans.json")
    kwargs = dict(KWARGS, deep_supervision=plans.recipe.deep_supervision)
    torch.manual_seed(0)
    net = build_network("arunet", kwargs, 1, 3)
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pt", {"network": net.state_dict()})
    return folder


@pytest.fixture(scope="module")
def archive(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_archive(TrainedModel.open(model_folder, folds=(0,)),
                          tmp_path_factory.mktemp("archive") / "model.zip")


@pytest.fixture(scope="module")
def onnx_folder(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_extra("export")
    return export_onnx(TrainedModel.open(model_folder, folds=(0,)), tmp_path_factory.mktemp("onnx") / "export")


def _set_declared_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size the zip's central directory declares for ``member``."""
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack("<H", raw[pos + 28:pos + 30])[0]
        if raw[pos + 46:pos + 46 + name_len] == member.encode():
            raw[pos + 24:pos + 28] = struct.pack("<I", size)
            path.write_bytes(bytes(raw))
            return
        pos = raw.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(f"{member} not in {path}")


@pytest.mark.parametrize("declared, expected", [(3 * 2**30, "more than the"), (None, "manifest.json says")])
def test_oversized_archive_member_is_refused_before_reading(archive: Path, tmp_path: Path, declared: int | None,
                                                            expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.zip"
    shutil.copy(archive, path)
    true_size = zipfile.ZipFile(path).getinfo("fold_0.pt").file_size
    assert json.loads(zipfile.ZipFile(path).read("manifest.json"))["size"]["fold_0.pt"] == true_size
    _set_declared_size(path, "fold_0.pt", declared if declared is not None else true_size + 1)
    assert 3 * 2**30 > MAX_MEMBER_BYTES
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(AutosegError) as err:
        ArchiveModel.open(path)
    assert str(path) in str(err.value) and "fold_0.pt" in str(err.value) and expected in str(err.value)
    assert "export the model again" in str(err.value)
    assert "fold_0.pt" not in opened  # refused from the zip directory, not after reading 3 GiB


def _rewrite_manifest(archive: Path, out: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "manifest.json":
                data = json.dumps(change(json.loads(data))).encode()
            dst.writestr(info.filename, data)
    return out


MALFORMED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "list": lambda m: [m],
    "no folds": lambda m: {k: v for k, v in m.items() if k != "folds"},
    "fold names": lambda m: {**m, "folds": ["zero"]},
    "fold without digest": lambda m: {**m, "folds": [0, 1]},
    "no sha256": lambda m: {k: v for k, v in m.items() if k != "sha256"},
    "sha256 not hex": lambda m: {**m, "sha256": {k: "x" for k in m["sha256"]}},
    "no plans digest": lambda m: {**m, "sha256": {k: v for k, v in m["sha256"].items() if k != "plans.json"}},
    "sizes": lambda m: {**m, "size": {"fold_0.pt": "big"}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_archive_manifest_is_refused(archive: Path, tmp_path: Path, case: str) -> None:
    path = _rewrite_manifest(archive, tmp_path / "model.zip", MALFORMED[case])
    for open_it in (read_archive, ArchiveModel.open):
        with pytest.raises(AutosegError) as err:  # not a KeyError, TypeError or ValueError traceback
            open_it(path)
        assert str(path) in str(err.value) and "manifest.json" in str(err.value)
        assert "export the model again" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]


def test_sound_archive_still_opens(archive: Path) -> None:
    model = ArchiveModel.open(archive)
    assert sorted(model.checkpoints) == [0] and isinstance(model.network(0), torch.nn.Module)


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def test_onnx_folds_come_from_the_manifest_only(onnx_folder: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    folder = _copy(onnx_folder, tmp_path / "onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["folds"] == [0] and len(manifest["sha256"]["fold_0.onnx"]) == 64
    shutil.copy(folder / "fold_0.onnx", folder / "fold_1.onnx")  # stale, from an earlier export
    (folder / "fold_old.onnx").write_bytes(b"old")
    with caplog.at_level(logging.WARNING, logger="autoseg.inference.model"):
        model = open_model(folder)
    assert isinstance(model, OnnxModel) and model.checkpoints == {0: folder / "fold_0.onnx"}
    assert any("fold_1.onnx" in r.getMessage() and "fold_old.onnx" in r.getMessage() for r in caplog.records)
    with pytest.raises(AutosegError, match="none of the folds"):
        OnnxModel.open(folder, folds=(1,))


def test_onnx_folder_without_manifest_is_refused(onnx_folder: Path, tmp_path: Path) -> None:
    folder = _copy(onnx_folder, tmp_path / "onnx")
    (folder / "manifest.json").unlink()
    before = _snapshot(folder)
    with pytest.raises(AutosegError) as err:
        open_model(folder)
    assert str(folder) in str(err.value) and "manifest.json" in str(err.value)
    assert "re-export" in str(err.value) and "autoseg export --onnx" in str(err.value)
    assert _snapshot(folder) == before


@pytest.mark.parametrize("case", ["not json", "version 1 without digests", "fold names", "no digest for fold"])
def test_malformed_onnx_manifest_is_refused(onnx_folder: Path, tmp_path: Path, case: str) -> None:
    folder = _copy(onnx_folder, tmp_path / "onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    v1 = {k: v for k, v in manifest.items() if k not in ("sha256", "size")}
    text = {"not json": "{folds: [0",
            "version 1 without digests": json.dumps({**v1, "format_version": 1}),
            "fold names": json.dumps({**manifest, "folds": "0"}),
            "no digest for fold": json.dumps({**manifest, "folds": [0, 1]})}[case]
    (folder / "manifest.json").write_text(text)
    with pytest.raises(AutosegError) as err:
        OnnxModel.open(folder)
    assert str(folder / "manifest.json") in str(err.value) and "export the model again" in str(err.value)


def test_replaced_onnx_fold_is_refused(onnx_folder: Path, tmp_path: Path) -> None:
    folder = _copy(onnx_folder, tmp_path / "onnx")
    raw = bytearray((folder / "fold_0.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / "fold_0.onnx").write_bytes(bytes(raw))
    with pytest.raises(AutosegError) as err:
        OnnxModel.open(folder)
    assert str(folder / "fold_0.onnx") in str(err.value) and "SHA-256" in str(err.value)
    assert "export the model again" in str(err.value)


def test_damaged_checkpoint_in_a_model_folder_stops_prediction(model_folder: Path, tmp_path: Path) -> None:
    folder = _copy(model_folder, tmp_path / "model")
    _flip_bytes_in_largest_tensor(folder / "fold_0" / "checkpoint_final.pt")
    with pytest.raises(AutosegError, match="retrain the fold"):
        TrainedModel.open(folder, folds=(0,)).network(0)


# --- 4. worker processes die with a killed parent --------------------------------------------------

MARKER_VAR = "AUTOSEG_TEST_PROCESS_MARKER"


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Eight tiny cases, fingerprinted and planned (not preprocessed)."""
    root = tmp_path_factory.mktemp("planned")
    make_msd_task(root / "raw", n=8)
    settings = Settings(raw=root / "raw", preprocessed=root / "pre", results=root / "res")
    plan_and_preprocess("8", settings, PlannerOptions(cpu_gflops=20.0), stages=("fingerprint", "plan"), workers=1)
    return settings


def _marked_processes(marker: str) -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process whose environment holds ``marker``."""
    found = {}
    needle = f"{MARKER_VAR}={marker}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes():
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            found[int(entry.name)] = int(fields[1])
    return found


def _signal_all(pids: Any, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_preprocessing_workers_die_when_their_parent_is_killed(planned: Settings, tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    shutil.copytree(planned.preprocessed, pre)
    marker = uuid.uuid4().hex
    env = {**os.environ, "AUTOSEG_RAW": str(planned.raw), "AUTOSEG_PREPROCESSED": str(pre),
           "AUTOSEG_RESULTS": str(tmp_path / "res"), MARKER_VAR: marker}
    code = ("import sys\nfrom autoseg.cli import main\n"
            "sys.exit(main(['plan_and_preprocess', '-d', '8', '--only', 'preprocess', '-j', '2']))")
    with open(tmp_path / "child.log", "wb") as log_file:
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log_file, stderr=log_file,
                                 cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 300  # generous: interpreter and fork-server start on a busy machine
        while True:  # a pool worker: a marked process whose parent is a marked process other than the child
            procs = _marked_processes(marker)
            if any(ppid != child.pid and ppid in procs for ppid in procs.values()):
                break
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no pool worker seen (child exit {child.poll()}): "
                            f"{(tmp_path / 'child.log').read_text()[-2000:]}")
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGSTOP)  # freeze everything so no worker finishes before the kill
        descendants = [p for p in _marked_processes(marker) if p != child.pid]
        _signal_all(descendants, signal.SIGSTOP)
        child.kill()
        child.wait()
        _signal_all(descendants, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while _marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _marked_processes(marker) == {}, "worker processes outlived their killed parent"
    finally:
        _signal_all(_marked_processes(marker), signal.SIGKILL)
        _signal_all(_marked_processes(marker), signal.SIGCONT)
        if child.poll() is None:
            child.kill()
            child.wait()
    out = pre / "Task08_HepaticVessel"
    key = plans_key(Plans.load(out / "plans.json"))
    assert all(is_up_to_date(out, c, key) for c in case_ids(out))  # what the workers wrote is whole
    settings = Settings(raw=planned.raw, preprocessed=pre, results=tmp_path / "res")
    plan_and_preprocess("8", settings, PlannerOptions(cpu_gflops=20.0), stages=("preprocess",), workers=1)
    assert len(case_ids(out)) == 8 and all(is_up_to_date(out, c, key) for c in case_ids(out))

"""Share and deploy a trained model: one archive file, or ONNX networks.

``autoseg export -d Task08 -o model.zip`` writes a single zip a user can send to someone else:
``manifest.json`` (format version, folds, the SHA-256 of every member), ``plans.json`` and
``fold_K.pt`` holding only the network weights of each fold (no optimiser state, so it is a third
of a training checkpoint). ``autoseg export ... --onnx -o folder/`` writes ``plans.json``,
``manifest.json`` and ``fold_K.onnx`` (input ``image`` of shape (batch, channels, *patch), output
``logits``; the batch axis is dynamic) for runtimes without PyTorch; each exported network is run
once with ONNX Runtime against PyTorch and the largest difference is recorded in the manifest.

``autoseg predict -m`` takes a training folder, an archive or an ONNX folder alike (see
:func:`autoseg.inference.model.open_model`). Weights are always loaded with
``torch.load(weights_only=True)``; a damaged archive is detected by the checksums.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import AutosegError, ConfigurationError
from autoseg.io import atomic_path, write_json
from autoseg.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ONNX_OPSET = 17


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weights_bytes(checkpoint: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"network": load_checkpoint(checkpoint)["network"]}, buffer)
    return buffer.getvalue()


def export_archive(model, out: Path) -> Path:
    """Write ``model`` (a :class:`~autoseg.inference.model.TrainedModel`) as one zip file."""
    if out.suffix != ".zip":
        raise ConfigurationError(f"the archive name must end in .zip, got {out.name}",
                                 fix=f"use -o {out.with_suffix('.zip')}")
    members = {"plans.json": json.dumps(model.plans.to_dict(), indent=2).encode()}
    for fold, path in sorted(model.checkpoints.items()):
        members[f"fold_{fold}.pt"] = _weights_bytes(path)
    if (model.folder / "postprocessing.json").is_file():
        members["postprocessing.json"] = (model.folder / "postprocessing.json").read_bytes()
    manifest = {"format": "autoseg-model", "format_version": FORMAT_VERSION, "folds": sorted(model.checkpoints),
                "network": model.plans.network.name, "dataset": model.plans.dataset_name,
                "sha256": {name: _sha256(data) for name, data in members.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))
            for name, data in members.items():
                zf.writestr(name, data)
    log.info("wrote %s (%d folds, %.1f MB)", out, len(model.checkpoints), out.stat().st_size / 1e6)
    return out


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and verified members of an archive written by :func:`export_archive`."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            members = {name: zf.read(name) for name in manifest["sha256"]}
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise AutosegError(f"not a readable autoseg model archive ({type(exc).__name__}: {exc})", path,
                           "export it again with `autoseg export`") from None
    if manifest.get("format") != "autoseg-model" or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise AutosegError(f"unsupported archive format {manifest.get('format')} "
                           f"v{manifest.get('format_version')}", path, "update autoseg or export it again")
    bad = [n for n, data in members.items() if _sha256(data) != manifest["sha256"][n]]
    if bad:
        raise AutosegError(f"archive members {bad} are damaged (checksum mismatch)", path,
                           "download or copy the archive again")
    return manifest, members


def load_weights(data: bytes, source: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["network"]
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise AutosegError(f"weights cannot be loaded ({type(exc).__name__})", source,
                           "export the model again") from None


def export_onnx(model, out_dir: Path) -> Path:
    """Write ``plans.json``, ``fold_K.onnx`` and ``manifest.json`` into ``out_dir``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigurationError("ONNX export needs the onnx and onnxruntime packages",
                                 fix="pip install onnx onnxruntime") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = model.plans
    x = torch.randn(1, plans.num_channels, *plans.patch_size, generator=torch.Generator().manual_seed(0))
    checks = {}
    for fold in sorted(model.checkpoints):
        net = model.network(fold, "cpu")
        target = out_dir / f"fold_{fold}.onnx"
        with atomic_path(target) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant per patch
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        with torch.no_grad():
            expected = net(x).numpy()
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": x.numpy()})[0]
        checks[f"fold_{fold}.onnx"] = float(np.abs(got - expected).max())
    plans.save(out_dir / "plans.json")
    if (model.folder / "postprocessing.json").is_file():
        (out_dir / "postprocessing.json").write_bytes((model.folder / "postprocessing.json").read_bytes())
    write_json(out_dir / "manifest.json", {"format": "autoseg-onnx", "format_version": FORMAT_VERSION,
                                           "folds": sorted(model.checkpoints), "opset": ONNX_OPSET,
                                           "max_abs_diff_vs_pytorch": checks})
    log.info("wrote %d ONNX networks to %s (max |ONNX - PyTorch| %.2g)", len(checks), out_dir,
             max(checks.values()))
    return out_dir

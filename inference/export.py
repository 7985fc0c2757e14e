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

Models come from elsewhere, so reading trusts nothing: the manifest is checked field by field
(:func:`check_manifest`), no member larger than :data:`MAX_MEMBER_BYTES` is read (its size is taken
from the zip directory before reading, and compared with the manifest's ``size`` when present), and
an ONNX folder's folds are the manifest's, each verified by its SHA-256, never whatever
``fold_*.onnx`` files lie in the folder.
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
from autoseg.layout import ExportNames, ModelFolder
from autoseg.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # archives; a manifest's "size" table is optional, so v1 readers still read them
ONNX_FORMAT_VERSION = 2  # v2 added the SHA-256 of every fold_K.onnx; v1 folders are refused (re-export)
ONNX_OPSET = 17
MANIFEST = ExportNames.MANIFEST
#: The largest member (weights, ONNX graph) autoseg reads: 1 GiB is 268 M float32 parameters, several
#: times any network autoseg plans; a larger declared size is a damaged or foreign file, refused
#: before its bytes are read into memory.
MAX_MEMBER_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 1 << 20
_EXPORT_AGAIN = "export the model again with `autoseg export` and use the new file"


def _sha256(data: bytes | Path) -> str:
    """Hex SHA-256 of bytes, or of a file's contents read in chunks."""
    if isinstance(data, Path):
        with open(data, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    return hashlib.sha256(data).hexdigest()


def _weights_bytes(checkpoint: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"network": load_checkpoint(checkpoint)["network"]}, buffer)
    return buffer.getvalue()


def check_export_target(out: Path, onnx: bool, overwrite: bool) -> None:
    """Refuse, before any work, an export that would replace an existing archive or write into a
    non-empty folder (the files found there would be mixed with or replaced by this export's)."""
    if onnx and out.exists() and not out.is_dir():
        raise ConfigurationError("an ONNX export is a folder, but this is a file", out,
                                 "give -o a new or empty folder")
    if not onnx and out.is_dir():
        raise ConfigurationError("an archive is one file, but this is a folder", out,
                                 "give -o a file name ending in .zip")
    if overwrite:
        return
    if not onnx and out.exists():
        raise ConfigurationError("the archive already exists; nothing was written", out,
                                 "give -o a new file name, or add --overwrite to replace it")
    if onnx and out.is_dir() and any(out.iterdir()):
        raise ConfigurationError("the ONNX export folder is not empty; nothing was written", out,
                                 "give -o a new or empty folder, or add --overwrite to write into it "
                                 "(its manifest then names the new model; other files are ignored)")


def export_archive(model, out: Path, overwrite: bool = False) -> Path:
    """Write ``model`` (a :class:`~autoseg.inference.model.TrainedModel`) as one zip file; an
    existing ``out`` is replaced only with ``overwrite``."""
    if out.suffix != ExportNames.ARCHIVE_ENDING:
        raise ConfigurationError(f"the archive name must end in .zip, got {out.name}",
                                 fix=f"use -o {out.with_suffix(ExportNames.ARCHIVE_ENDING)}")
    check_export_target(out, onnx=False, overwrite=overwrite)
    members = {ExportNames.PLANS: json.dumps(model.plans.to_dict(), indent=2).encode()}
    for fold, path in sorted(model.checkpoints.items()):
        members[ExportNames.weights(fold)] = _weights_bytes(path)
    for name, extra in ((ExportNames.POSTPROCESSING, ModelFolder(model.folder).postprocessing),
                        (ExportNames.CALIBRATION, ModelFolder(model.folder).calibration)):
        if extra.is_file():
            members[name] = extra.read_bytes()
    manifest = {"format": "autoseg-model", "format_version": FORMAT_VERSION, "folds": sorted(model.checkpoints),
                "network": model.plans.configuration, "dataset": model.plans.dataset_name,
                "sha256": {name: _sha256(data) for name, data in members.items()},
                "size": {name: len(data) for name, data in members.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for name, data in members.items():
                zf.writestr(name, data)
    log.info("wrote %s (%d folds, %.1f MB)", out, len(model.checkpoints), out.stat().st_size / 1e6)
    return out


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and verified members of an archive written by :func:`export_archive`."""
    try:
        with zipfile.ZipFile(path) as zf:
            raw = _read_member(zf, MANIFEST, MAX_MANIFEST_BYTES, None, path)
            manifest = _parse_manifest(raw, path)
            check_manifest(manifest, path, "autoseg-model", FORMAT_VERSION, ExportNames.WEIGHTS_ENDING,
                           (ExportNames.PLANS,))
            sizes = manifest.get("size", {})
            members = {name: _read_member(zf, name, MAX_MEMBER_BYTES, sizes.get(name), path)
                       for name in manifest["sha256"]}
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise AutosegError(f"not a readable autoseg model archive ({type(exc).__name__}: {exc})", path,
                           _EXPORT_AGAIN) from None
    bad = [n for n, data in members.items() if _sha256(data) != manifest["sha256"][n]]
    if bad:
        raise AutosegError(f"archive members {bad} are damaged (checksum mismatch)", path,
                           "download or copy the archive again")
    return manifest, members


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, expected: int | None, path: Path) -> bytes:
    """A member's bytes, after checking the size the zip directory declares (which bounds what
    zipfile will decompress) against ``limit`` and the manifest's ``expected`` size."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise AutosegError(f"the archive has no member {name}", path, _EXPORT_AGAIN) from None
    _check_size(name, info.file_size, limit, expected, path)
    return zf.read(name)


def _check_size(name: str, size: int, limit: int, expected: int | None, source: Path) -> None:
    """Refuse a member over ``limit`` bytes or of another size than the manifest's ``expected``."""
    if size > limit:
        raise AutosegError(f"{name} declares {size:,} bytes, more than the {limit:,} bytes autoseg reads "
                           "from a model (a damaged or foreign file); nothing was read", source, _EXPORT_AGAIN)
    if expected is not None and size != expected:
        raise AutosegError(f"{name} has {size:,} bytes but {MANIFEST} says {expected:,}", source, _EXPORT_AGAIN)


def _parse_manifest(raw: bytes, source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AutosegError(f"{MANIFEST} is not valid JSON ({exc})", source, _EXPORT_AGAIN) from None
    if not isinstance(manifest, dict):
        raise AutosegError(f"{MANIFEST} must hold a JSON object", source, _EXPORT_AGAIN)
    return manifest


def check_manifest(manifest: dict[str, Any], source: Path, kind: str, version: int, suffix: str,
                   required: tuple[str, ...] = ()) -> None:
    """Refuse a manifest that is not of ``kind`` up to ``version``, or whose ``folds``, ``sha256``
    or ``size`` fields are malformed or miss a member (``fold_K<suffix>`` and ``required``)."""
    def bad(what: str) -> AutosegError:
        return AutosegError(f"{MANIFEST} is malformed: {what}", source, _EXPORT_AGAIN)

    if manifest.get("format") != kind:
        raise bad(f"format is {manifest.get('format')!r}, expected {kind!r}")
    found = manifest.get("format_version")
    if type(found) is not int or not 1 <= found <= version:
        raise AutosegError(f"unsupported {kind} format version {found!r} (this autoseg reads 1 to {version})",
                           source, "update autoseg, or export the model again with this version")
    folds = manifest.get("folds")
    if (not isinstance(folds, list) or not folds or len(set(map(repr, folds))) != len(folds)
            or any(type(f) is not int or f < 0 for f in folds)):
        raise bad(f"'folds' must be a non-empty list of distinct fold numbers, got {folds!r}")
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef")
            for k, v in digests.items()):
        raise bad("'sha256' must map each member name to its 64-digit hex SHA-256")
    missing = [n for n in (*required, *(ExportNames.fold_file(f, suffix) for f in folds)) if n not in digests]
    if missing:
        raise bad(f"no SHA-256 for {missing}")
    sizes = manifest.get("size", {})
    if not isinstance(sizes, dict) or any(type(v) is not int or v < 0 for v in sizes.values()):
        raise bad("'size' must map member names to byte counts")


def read_onnx_manifest(folder: Path) -> dict[str, Any]:
    """The checked manifest of a folder written by :func:`export_onnx`; its folds are the model's."""
    path = folder / MANIFEST
    if not path.is_file():
        raise AutosegError(f"ONNX model folder has no {MANIFEST}, so which ONNX files belong to the "
                           "model is unknown", folder, "re-export it with `autoseg export --onnx`")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise AutosegError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES:,} bytes", path, _EXPORT_AGAIN)
    manifest = _parse_manifest(path.read_bytes(), path)
    check_manifest(manifest, path, "autoseg-onnx", ONNX_FORMAT_VERSION, ExportNames.ONNX_ENDING)
    return manifest


def verify_onnx_file(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    """``folder/name`` after checking it exists, is within :data:`MAX_MEMBER_BYTES` and the
    manifest's size, and has the manifest's SHA-256."""
    path = folder / name
    if not path.is_file():
        raise AutosegError(f"{name} is listed in {MANIFEST} but missing", path, _EXPORT_AGAIN)
    _check_size(name, path.stat().st_size, MAX_MEMBER_BYTES, manifest.get("size", {}).get(name), path)
    if _sha256(path) != manifest["sha256"][name]:
        raise AutosegError(f"{name} does not match its SHA-256 in {MANIFEST} (damaged, or replaced after "
                           "the export)", path, _EXPORT_AGAIN)
    return path


def load_weights(data: bytes, source: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["network"]
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise AutosegError(f"weights cannot be loaded ({type(exc).__name__})", source,
                           "export the model again") from None


def export_onnx(model, out_dir: Path, overwrite: bool = False) -> Path:
    """Write ``plans.json``, ``fold_K.onnx`` and, last, ``manifest.json`` into ``out_dir``, which
    must be new or empty unless ``overwrite``; the manifest (folds, SHA-256 and size of each
    ``.onnx``) is what defines the model, so ONNX files left in the folder by an earlier export are
    ignored when predicting."""
    check_export_target(out_dir, onnx=True, overwrite=overwrite)
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigurationError("ONNX export needs the onnx and onnxruntime packages",
                                 fix="install the export extra: pip install -e '.[export]' in the autoseg "
                                     "checkout (or pip install onnx onnxruntime)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = model.plans
    x = torch.randn(1, plans.num_channels, *plans.patch_size, generator=torch.Generator().manual_seed(0))
    checks = {}
    for fold in sorted(model.checkpoints):
        net = model.network(fold, "cpu")
        target = out_dir / ExportNames.onnx(fold)
        with atomic_path(target) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant per patch
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        with torch.no_grad():
            expected = net(x).numpy()
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": x.numpy()})[0]
        checks[target.name] = float(np.abs(got - expected).max())
    plans.save(out_dir / ExportNames.PLANS)
    for name, extra in ((ExportNames.POSTPROCESSING, ModelFolder(model.folder).postprocessing),
                        (ExportNames.CALIBRATION, ModelFolder(model.folder).calibration)):
        if extra.is_file():
            with atomic_path(out_dir / name) as tmp:
                tmp.write_bytes(extra.read_bytes())
    names = sorted(checks)
    write_json(out_dir / MANIFEST, {"format": "autoseg-onnx", "format_version": ONNX_FORMAT_VERSION,
                                    "folds": sorted(model.checkpoints), "opset": ONNX_OPSET,
                                    "sha256": {n: _sha256(out_dir / n) for n in names},
                                    "size": {n: (out_dir / n).stat().st_size for n in names},
                                    "max_abs_diff_vs_pytorch": checks})
    log.info("wrote %d ONNX networks to %s (max |ONNX - PyTorch| %.2g)", len(checks), out_dir,
             max(checks.values()))
    return out_dir

"""Trained models to predict with: a training folder (``plans.json`` and ``fold_K/checkpoint_final.pt``),
an exported archive, or an ONNX export; :func:`open_model` tells them apart."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from autoseg.errors import AutosegError
from autoseg.networks import build_network
from autoseg.plans import Plans
from autoseg.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("checkpoint_final.pt", "checkpoint_best.pt")


@dataclass(frozen=True)
class TrainedModel:
    """The plans of a model folder and the checkpoint file of each usable fold."""

    folder: Path
    plans: Plans
    checkpoints: dict[int, Path]

    @classmethod
    def open(cls, folder: Path, folds: tuple[int, ...] | None = None, checkpoint: str = "final") -> "TrainedModel":
        if not (folder / "plans.json").is_file():
            raise AutosegError("no plans.json in the model folder", folder,
                               "pass a folder written by `autoseg train` (results/<dataset>/<network>)")
        plans = Plans.load(folder / "plans.json")
        wanted = folds if folds is not None else tuple(range(5))
        name = f"checkpoint_{checkpoint}.pt"
        found = {f: folder / f"fold_{f}" / name for f in wanted if (folder / f"fold_{f}" / name).is_file()}
        missing = [f for f in wanted if f not in found]
        if not found:
            raise AutosegError(f"none of the folds {list(wanted)} has a {name}", folder,
                               "train the folds first (autoseg train), or pick folds that exist with -f")
        if missing:
            log.warning("folds %s have no %s in %s; predicting with folds %s", missing, name, folder,
                        sorted(found))
        return cls(folder, plans, found)

    def network(self, fold: int, device: str = "cpu") -> torch.nn.Module:
        """The network of one fold, weights loaded safely, in eval mode without deep supervision."""
        return _build(self.plans, device, load_checkpoint(self.checkpoints[fold])["network"],
                      self.checkpoints[fold])


def _build(plans: Plans, device: str, weights: dict[str, torch.Tensor], source: Path | str) -> torch.nn.Module:
    kwargs = dict(plans.network.kwargs, deep_supervision=plans.recipe.deep_supervision)
    net = build_network(plans.network.name, kwargs, plans.num_channels, plans.num_classes)
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        raise AutosegError(f"weights do not match the planned network ({str(exc)[:200]})", source,
                           "the plans.json beside the weights was changed after training; restore it") from None
    net.deep_supervision = False
    return net.to(device).eval()


def _select_folds(available: list[int], folds: tuple[int, ...] | None, source: Path) -> list[int]:
    wanted = list(folds) if folds is not None else available
    present = [f for f in wanted if f in available]
    if not present:
        raise AutosegError(f"none of the folds {wanted} is in the model (it has {available})", source,
                           "pick folds that exist with -f")
    if len(present) < len(wanted):
        log.warning("folds %s are not in %s; predicting with folds %s",
                    sorted(set(wanted) - set(present)), source, present)
    return present


@dataclass(frozen=True)
class ArchiveModel:
    """A model exported with ``autoseg export`` as one zip file (weights only, verified by checksums)."""

    folder: Path
    plans: Plans
    checkpoints: dict[int, str]
    members: dict[str, bytes]

    @classmethod
    def open(cls, path: Path, folds: tuple[int, ...] | None = None) -> "ArchiveModel":
        from autoseg.inference.export import read_archive

        manifest, members = read_archive(path)  # checks the manifest: folds and plans.json are present
        try:
            plans_data = json.loads(members["plans.json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AutosegError(f"the archive's plans.json is not valid JSON ({exc})", path,
                               "export the model again with `autoseg export`") from None
        plans = Plans.from_dict(plans_data, path)
        chosen = _select_folds(manifest["folds"], folds, path)
        return cls(path, plans, {f: f"fold_{f}.pt" for f in chosen}, members)

    def network(self, fold: int, device: str = "cpu") -> torch.nn.Module:
        from autoseg.inference.export import load_weights

        name = self.checkpoints[fold]
        return _build(self.plans, device, load_weights(self.members[name], f"{self.folder}:{name}"), self.folder)


class OnnxNetwork(torch.nn.Module):
    """An ONNX Runtime session behind the ``forward`` the sliding window calls (CPU execution)."""

    deep_supervision = False

    def __init__(self, path: Path, threads: int):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


@dataclass(frozen=True)
class OnnxModel:
    """A folder written by ``autoseg export --onnx``: plans.json, fold_K.onnx and manifest.json, which
    alone says which folds belong to the model (each checked against its SHA-256 on opening)."""

    folder: Path
    plans: Plans
    checkpoints: dict[int, Path]
    #: ONNX Runtime computes in the exported graph's fp32 whatever autocast is asked for.
    fixed_precision = "fp32"

    @classmethod
    def open(cls, folder: Path, folds: tuple[int, ...] | None = None) -> "OnnxModel":
        from autoseg.inference.export import read_onnx_manifest, verify_onnx_file

        manifest = read_onnx_manifest(folder)
        chosen = _select_folds(sorted(manifest["folds"]), folds, folder)
        ignored = sorted(p.name for p in folder.glob("*.onnx") if p.name not in manifest["sha256"])
        if ignored:
            log.warning("%s: ignoring %s, not part of the exported model (manifest.json lists folds %s)",
                        folder, ignored, sorted(manifest["folds"]))
        files = {f: verify_onnx_file(folder, manifest, f"fold_{f}.onnx") for f in chosen}
        return cls(folder, Plans.load(folder / "plans.json"), files)

    def network(self, fold: int, device: str = "cpu") -> torch.nn.Module:
        try:
            return OnnxNetwork(self.checkpoints[fold], torch.get_num_threads())
        except ImportError:
            raise AutosegError("this is an ONNX model and onnxruntime is not installed", self.folder,
                               "pip install onnxruntime, or predict with the PyTorch model folder") from None


def open_model(path: Path, folds: tuple[int, ...] | None = None, checkpoint: str = "final"):
    """A training folder, an exported archive (``.zip``), an ONNX export folder or an ensemble folder
    written by ``find_best``, by what ``path`` holds."""
    from autoseg.inference.ensembles import EnsembleModel, is_ensemble_folder

    if path.is_dir() and is_ensemble_folder(path):
        return EnsembleModel.open(path, folds, checkpoint)
    if path.is_file():
        return ArchiveModel.open(path, folds)
    if path.is_dir() and (any(path.glob("*.onnx")) or (path / "manifest.json").is_file()):
        return OnnxModel.open(path, folds)  # refuses a folder without a valid manifest
    return TrainedModel.open(path, folds, checkpoint)


#: Anything :func:`open_model` returns: each has ``folder``, ``plans``, ``checkpoints`` and ``network()``.
AnyModel = TrainedModel | ArchiveModel | OnnxModel

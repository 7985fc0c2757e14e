"""Trained models to predict with: a training folder (its plans and every fold's final checkpoint),
an exported archive, an ONNX export or an ensemble of networks; :func:`open_model` tells them apart.

All of them are a :class:`Model`: plans, folds, a fixed precision (ONNX computes in fp32) and
``probabilities(data, options)``, the fold-averaged softmax on the preprocessed grid.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import torch

from autoseg.checkpoint import load_checkpoint
from autoseg.errors import AutosegError
from autoseg.layout import NUM_FOLDS, CheckpointKind, ExportNames, ModelFolder, ResultsDataset
from autoseg.networks import SegmentationNetwork, build_network
from autoseg.plans import Plans
from autoseg.schema import Artefact
from autoseg.precision import Resolved
from autoseg.settings import Settings
from autoseg.sliding_window import WindowOptions, inference_network, slide

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Artefact)


class Model(Protocol):
    """What prediction needs of a model, whatever it is stored as."""

    @property
    def folder(self) -> Path: ...

    @property
    def plans(self) -> Plans: ...

    @property
    def folds(self) -> tuple[int, ...]: ...

    @property
    def fixed_precision(self) -> Resolved | None:
        """The precision the model computes in whatever autocast is asked for (None: as asked)."""

    def probabilities(self, data: np.ndarray, options: WindowOptions,
                      timings: dict[str, float] | None = None, where: np.ndarray | None = None) -> np.ndarray:
        """Softmax ``(K, *spatial)`` float32 for preprocessed ``data``, averaged over the folds; with
        ``where``, only the tiles holding a voxel of that mask are predicted
        (:func:`~autoseg.sliding_window.predict_sliding_window`)."""

    def scout(self, data: np.ndarray, options: WindowOptions,
              timings: dict[str, float] | None = None, keep_network: bool = False) -> np.ndarray:
        """A quick look: the softmax of the model's first network alone, as ``options`` slide it
        (:mod:`autoseg.inference.localise` asks for tiles without overlap). ``keep_network``: the
        caller's next call is :meth:`probabilities`, which may start with that network."""


class _FoldNetworks:
    """The part the single-network models share: one fold's network at a time, averaged."""

    plans: Plans
    checkpoints: dict[int, Path] | dict[int, str]
    fixed_precision: Resolved | None = None

    def network(self, fold: int, device: str = "cpu") -> torch.nn.Module:
        raise NotImplementedError

    def weights_source(self, fold: int) -> str:
        """Where a fold's weights are, for errors (a damaged network names its file)."""
        return str(self.checkpoints[fold])

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(sorted(self.checkpoints))

    def probabilities(self, data: np.ndarray, options: WindowOptions,
                      timings: dict[str, float] | None = None, where: np.ndarray | None = None) -> np.ndarray:
        # the folds' mean, added fold by fold into one array (no array of each fold's own)
        total = np.zeros((self.plans.num_classes, *data.shape[1:]), dtype=np.float32)
        after_scout = self._take_scout_network()
        for fold in self.folds:
            net = (after_scout[1] if after_scout is not None and after_scout[0] == _network_key(fold, options)
                   else self.network(fold, options.device))
            after_scout = None
            slide(net, data, self.plans, options, timings, source=self.weights_source(fold), where=where,
                  owned=True, out=total, scale=1 / len(self.folds))
            del net
        return total

    def scout(self, data: np.ndarray, options: WindowOptions,
              timings: dict[str, float] | None = None, keep_network: bool = False) -> np.ndarray:
        """The first fold's pass. With ``keep_network`` its network, as slid (compiled by OpenVINO,
        or channels-last), is kept for the folds' pass that follows, which starts with that fold
        (loading, building and compiling it again cost about half a second a case); without it
        (a localiser's look, after which no folds' pass of its own follows) nothing is held."""
        fold = self.folds[0]
        net = inference_network(self.network(fold, options.device), options, owned=True)
        object.__setattr__(self, "_scout_network", (_network_key(fold, options), net) if keep_network else None)
        return slide(net, data, self.plans, options, timings, source=self.weights_source(fold), owned=True)

    def _take_scout_network(self) -> tuple[tuple[Any, ...], torch.nn.Module] | None:
        kept = getattr(self, "_scout_network", None)
        object.__setattr__(self, "_scout_network", None)  # held until the folds' pass only
        return kept


def _network_key(fold: int, options: WindowOptions) -> tuple[Any, ...]:
    """What a fold's network as slid depends on (not the overlap or mirroring of the window)."""
    return fold, options.device, options.precision, options.channels_last, options.runtime, torch.get_num_threads()


@dataclass(frozen=True)
class TrainedModel(_FoldNetworks):
    """The plans of a model folder and the checkpoint file of each usable fold."""

    folder: Path
    plans: Plans
    checkpoints: dict[int, Path]

    @classmethod
    def open(cls, folder: Path, folds: tuple[int, ...] | None = None,
             checkpoint: CheckpointKind = "final") -> "TrainedModel":
        layout = ModelFolder(folder)
        if not layout.plans.is_file():
            raise AutosegError(f"no {layout.plans.name} in the model folder", folder,
                               "pass a folder written by `autoseg train` (results/<dataset>/<network>)")
        plans = Plans.load(layout.plans)
        wanted = folds if folds is not None else tuple(range(NUM_FOLDS))
        found = {f: layout.fold(f).checkpoint(checkpoint) for f in wanted
                 if layout.fold(f).checkpoint(checkpoint).is_file()}
        name = layout.fold(0).checkpoint(checkpoint).name
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
    net = build_network(plans.network.name, kwargs, plans.num_channels, plans.num_outputs)
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        raise AutosegError(f"weights do not match the planned network ({str(exc)[:200]})", source,
                           "the plans.json beside the weights was changed after training; restore it") from None
    cast(SegmentationNetwork, net).deep_supervision = False  # every registered network has the switch
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
class ArchiveModel(_FoldNetworks):
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
            plans_data = json.loads(members[ExportNames.PLANS])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AutosegError(f"the archive's {ExportNames.PLANS} is not valid JSON ({exc})", path,
                               "export the model again with `autoseg export`") from None
        plans = Plans.from_dict(plans_data, path)
        chosen = _select_folds(manifest["folds"], folds, path)
        return cls(path, plans, {f: ExportNames.weights(f) for f in chosen}, members)

    def weights_source(self, fold: int) -> str:
        return f"{self.folder}:{self.checkpoints[fold]}"

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
class OnnxModel(_FoldNetworks):
    """A folder written by ``autoseg export --onnx``: the plans, one ONNX graph per fold and the
    manifest, which alone says which folds belong to the model (each checked against its SHA-256 on
    opening)."""

    folder: Path
    plans: Plans
    checkpoints: dict[int, Path]
    #: ONNX Runtime computes in the exported graph's fp32 whatever autocast is asked for.
    fixed_precision: Resolved | None = "fp32"

    @classmethod
    def open(cls, folder: Path, folds: tuple[int, ...] | None = None) -> "OnnxModel":
        from autoseg.inference.export import read_onnx_manifest, verify_onnx_file

        manifest = read_onnx_manifest(folder)
        chosen = _select_folds(sorted(manifest["folds"]), folds, folder)
        ignored = sorted(p.name for p in folder.glob(f"*{ExportNames.ONNX_ENDING}") if p.name not in manifest["sha256"])
        if ignored:
            log.warning("%s: ignoring %s, not part of the exported model (its %s lists folds %s)",
                        folder, ignored, ExportNames.MANIFEST, sorted(manifest["folds"]))
        files = {f: verify_onnx_file(folder, manifest, ExportNames.onnx(f)) for f in chosen}
        return cls(folder, Plans.load(folder / ExportNames.PLANS), files)

    def network(self, fold: int, device: str = "cpu") -> torch.nn.Module:
        try:
            return OnnxNetwork(self.checkpoints[fold], torch.get_num_threads())
        except ImportError:
            raise AutosegError("this is an ONNX model and onnxruntime is not installed", self.folder,
                               "pip install -e '.[export]' in the autoseg checkout (or pip install onnxruntime), or "
                               "predict with the PyTorch model folder") from None


def open_model(path: Path, folds: tuple[int, ...] | None = None, checkpoint: CheckpointKind = "final") -> Model:
    """A training folder, an exported archive (``.zip``), an ONNX export folder or an ensemble folder
    written by ``find_best``, by what ``path`` holds."""
    from autoseg.inference.ensembles import EnsembleModel

    if path.is_dir() and ModelFolder(path).is_ensemble:
        return EnsembleModel.open(path, folds, checkpoint)
    if path.is_file():
        return ArchiveModel.open(path, folds)
    if path.is_dir() and (any(path.glob(f"*{ExportNames.ONNX_ENDING}")) or (path / ExportNames.MANIFEST).is_file()):
        return OnnxModel.open(path, folds)  # refuses a folder without a valid manifest
    return TrainedModel.open(path, folds, checkpoint)


def stored_artefact(model: Any, kind: type[A], name: str) -> A | None:
    """An artefact stored with a model (``name``: its file in a model folder or an ONNX export, its
    member in an exported archive), checked; None when the model has none."""
    members = getattr(model, "members", None)
    if members is not None:
        if name not in members:
            return None
        source = f"{model.folder}:{name}"
        try:
            data = json.loads(members[name])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise kind.ERROR(f"not valid JSON ({exc})", source, kind.FIX) from None
        return kind.from_dict(data, source)
    path = Path(model.folder) / name  # a model folder and an ONNX export use the same name
    return kind.load(path) if path.is_file() else None


def trained_model_folder(dataset: str, network: str | None, settings: Settings) -> Path:
    """The model folder of a trained dataset (``predict -d``): ``network``, else the one
    ``find_best`` chose, else the planned one."""
    from autoseg.datasets import find_preprocessed
    from autoseg.inference.crossval import choose_network

    plans = Plans.load(find_preprocessed(dataset, settings.raw, settings.preprocessed).plans)
    results = ResultsDataset(settings.results / plans.dataset_name)
    chosen = results.model(choose_network(results.root, plans.network.name, network))
    if network is None and not chosen.plans.is_file():
        trained = sorted(p.parent.name for p in results.root.glob(f"*/{chosen.plans.name}")
                         if p.parent != results.localiser.root)
        if trained:  # e.g. only `train --regions` has run: its folder is not the planned network's
            raise AutosegError(f"no model {chosen.root.name} is trained for {dataset}; trained: "
                               f"{', '.join(trained)}", chosen.root,
                               f"name one (predict, export and serve take --network {trained[0]}), or run "
                               f"`autoseg find_best -d {dataset}` to choose")
    return chosen.root

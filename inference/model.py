"""A trained model folder: ``plans.json`` and ``fold_K/checkpoint_final.pt`` for the folds present."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from autoseg.errors import AutosegError
from autoseg.networks import build_network
from autoseg.plans import Plans
from autoseg.training.checkpoint import load_checkpoint

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
        state = load_checkpoint(self.checkpoints[fold])
        recipe_ds = self.plans.recipe.deep_supervision
        kwargs = dict(self.plans.network.kwargs, deep_supervision=recipe_ds)
        net = build_network(self.plans.network.name, kwargs, self.plans.num_channels, self.plans.num_classes)
        try:
            net.load_state_dict(state["network"])
        except RuntimeError as exc:
            raise AutosegError(f"checkpoint does not match the planned network ({str(exc)[:200]})",
                               self.checkpoints[fold],
                               "the model folder's plans.json was changed after training; restore it") from None
        net.deep_supervision = False
        return net.to(device).eval()

"""Training recipes by name, and the learning-rate schedule as a function of training progress.

The schedule is a pure function of progress in [0, 1] (steps done over steps planned, or training
seconds over the time budget), so a resumed run continues exactly where the interrupted one was.
"""
from __future__ import annotations

import dataclasses

import torch

from autoseg.errors import ConfigurationError, unknown_name
from autoseg.plans import RECIPES, Recipe

def recipe_named(name: str, base: Recipe | None = None) -> Recipe:
    """The named recipe, keeping ``base``'s epochs, iterations, loss and sampling."""
    if name not in RECIPES:
        raise unknown_name("recipe", name, list(RECIPES))
    preset = RECIPES[name]
    if base is None:
        return preset
    keep = {f: getattr(base, f) for f in ("epochs", "iterations_per_epoch", "loss", "oversample_foreground",
                                          "deep_supervision", "time_budget_s", "precision")}
    return dataclasses.replace(preset, **keep)


def build_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.initial_lr, momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.AdamW(params, lr=recipe.initial_lr, weight_decay=recipe.weight_decay)
    raise ConfigurationError(f"unknown optimizer '{recipe.optimizer}' (known: adam, sgd)")


def poly_lr(initial: float, progress: float, exponent: float = 0.9) -> float:
    return initial * max(0.0, 1.0 - min(progress, 1.0)) ** exponent


@dataclasses.dataclass
class PlateauState:
    """Reduce-on-plateau bookkeeping (checkpointed)."""

    lr: float
    best: float = -1.0
    bad_epochs: int = 0
    since_improvement: int = 0

    def update(self, score: float, recipe: Recipe) -> bool:
        """Record an epoch's validation score; return True when training should stop early."""
        if score > self.best + 1e-4:
            self.best, self.bad_epochs, self.since_improvement = score, 0, 0
            return False
        self.bad_epochs += 1
        self.since_improvement += 1
        if self.bad_epochs >= recipe.plateau_patience:
            self.lr *= 0.5
            self.bad_epochs = 0
        return bool(recipe.early_stop_patience) and self.since_improvement >= recipe.early_stop_patience


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

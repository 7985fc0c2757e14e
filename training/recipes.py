"""Training recipes by name, the optimizers and schedules they name, and the learning-rate schedule as
a function of training progress.

The schedule is a pure function of progress in [0, 1] (steps done over steps planned, or training
seconds over the time budget), so a resumed run continues exactly where the interrupted one was.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch

from autoseg.plans import RECIPES, Recipe
from autoseg.registry import Registry
from autoseg.training.losses import LOSSES, REGION_LOSSES

#: What a named recipe defines: the optimizer and its schedule. Every other ``Recipe`` field (budget,
#: loss, sampling, deep supervision, precision, and any field added later) belongs to the plan or the
#: user and is kept when another recipe is chosen.
PRESET_FIELDS = ("name", "optimizer", "initial_lr", "weight_decay", "momentum", "schedule",
                 "plateau_patience", "early_stop_patience")


def kept_fields() -> tuple[str, ...]:
    """The ``Recipe`` fields that :func:`recipe_named` keeps from the base recipe."""
    return tuple(f.name for f in dataclasses.fields(Recipe) if f.name not in PRESET_FIELDS)


def recipe_named(name: str, base: Recipe | None = None) -> Recipe:
    """The named recipe; with ``base``, only its optimizer and schedule (:data:`PRESET_FIELDS`)
    replace ``base``'s, so the planned budget, loss, sampling and precision stay."""
    preset = RECIPES[name]
    if base is None:
        return preset
    return dataclasses.replace(preset, **{f: getattr(base, f) for f in kept_fields()})


def _sgd(recipe: Recipe, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=recipe.initial_lr, momentum=recipe.momentum, nesterov=True,
                           weight_decay=recipe.weight_decay)


def _adam(recipe: Recipe, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=recipe.initial_lr, weight_decay=recipe.weight_decay)


#: Optimizers by name (``recipe.optimizer``): SGD with Nesterov momentum, or AdamW.
OPTIMIZERS: Registry[Callable[[Recipe, Iterable[torch.nn.Parameter]], torch.optim.Optimizer]] = Registry(
    "optimizer", {"sgd": _sgd, "adam": _adam})

#: Learning-rate schedules by name (``recipe.schedule``), with what each does.
SCHEDULES: Registry[str] = Registry("schedule", {
    "poly": "initial_lr * (1 - progress) ** 0.9 (poly_lr)",
    "plateau": "halve the rate after plateau_patience epochs without improvement, stop after "
               "early_stop_patience (PlateauState)",
})


def check_recipe(recipe: Recipe, regions: bool = False) -> None:
    """Raise, naming the field's known values, unless every name in ``recipe`` is implemented (its
    optimizer, schedule and loss, for region outputs when ``regions``): call it before anything is written."""
    OPTIMIZERS.check(recipe.optimizer)
    SCHEDULES.check(recipe.schedule)
    (REGION_LOSSES if regions else LOSSES).check(recipe.loss)


def build_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params``; an unknown name raises with the known ones."""
    return OPTIMIZERS[recipe.optimizer](recipe, params)


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

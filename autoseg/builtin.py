"""Built-in models: ``autoseg predict -m synthetic`` on day one, without any labelled data.

This module names them and finds their archives; :mod:`autoseg.pretrain` makes them.

The ``synthetic`` model (liver, hepatic vessels, liver tumours) is trained only on trunk phantoms
(:mod:`autoseg.phantom_trunk`). ``autoseg pretrain synthetic`` makes it from nothing but the
generator, a seed and a step count: it writes the phantoms, plans and preprocesses them, trains
the recipe's folds (each validated on the fifth of the phantoms it does not train on), decides the
post-processing on those validation phantoms and exports the model, the folds' ensemble, as one archive
into the machine's cache. An archive
placed in ``autoseg/models/`` would ship with the package; none is shipped yet (the model card,
``docs/synthetic_model.md``, says why, how the model is made, what it was measured on and what it
has never seen).

``-m NAME`` resolves a path first: a folder or file called ``synthetic`` in the working directory
wins over the built-in model of that name.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.errors import ConfigurationError
from autoseg.plans import Plans
from autoseg.settings import Settings

if TYPE_CHECKING:
    from autoseg.phantom import SpacingRange

log = logging.getLogger(__name__)

#: Where shipped model archives lie (package data).
SHIPPED_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class Recipe:
    """How a built-in model is made: every choice that fixes its network and weights (the plan too,
    through ``plan_args``; the weights also depend on the CPU's rounding and torch build)."""

    name: str
    task: str
    cases: int
    seed: int
    steps: int
    features: int
    threads: int
    #: The folds trained (each on the phantoms the others validate); the model predicts with their ensemble.
    folds: tuple[int, ...] = (0,)
    #: Extra ``train`` flags (e.g. ``--edge-context 0.25``).
    train_args: tuple[str, ...] = ()
    #: The trunk generator's version that draws the phantoms (:data:`autoseg.phantom_trunk.TRUNK_VERSIONS`).
    trunk_version: int = 3
    #: Phantom spacing range (None: the trunk generator's; tests give a coarse one).
    spacing_range: "SpacingRange | None" = None
    #: Extra ``plan_and_preprocess`` flags: the built-in models pin their plan's throughput with them.
    plan_args: tuple[str, ...] = ()
    #: Keep only the largest component of all foreground classes whatever the validation phantoms
    #: decide: the liver is one organ, its vessels and tumours inside it. The phantoms hold none of the
    #: organs real CT confuses with liver, so their decision cannot see what the rule removes there
    #: (docs/synthetic_model.md, "One organ, what it costs": on a 3-slice slab it keeps one piece).
    one_organ: bool = True
    #: ``predict --edge-context`` when this model is named (``-m NAME``, and the viewer's default) and the
    #: user gives none. For ``synthetic`` 0: a quarter patch won on the held-out phantoms of two trainings,
    #: but on the real example CT both models then called a mirrored bladder liver (docs/inference.md,
    #: "Context at the ends of the field of view"); a share picked on that CT would be tuned to a test case.
    #: A model whose folds were trained with edge context (``train_args``) predicts with that share instead.
    edge_context: float = 0.0

    @property
    def archive_name(self) -> str:
        return f"{self.name}.zip"

    @property
    def dataset(self) -> str:
        """The phantom task folder's name (what ``-d`` takes)."""
        from autoseg.phantom import task_spec

        return task_spec(self.task).folder


#: The throughput the built-in models are planned for, in place of the training machine's calibration:
#: a plan that follows the CPU made a different model on each machine (an AMD EPYC's calibration gave a
#: 48 x 48 x 80 patch where a Xeon's gave 64 x 64 x 80, and the smaller patch lost 0.34 liver Dice on the
#: real example CT; docs/synthetic_model.md). On the trunk phantoms 120 GFLOP/s plans 64 x 64 x 80.
PLANNED_GFLOPS = 120.0

#: The recipes of the built-in models.
RECIPES: dict[str, Recipe] = {
    # Two folds, each trained with the field of view's ends mirrored, predicted as their ensemble (since
    # 2026-12-07, night): the rule written before the second fold was measured held on the development
    # phantoms and the other families (docs/synthetic_model.md, "Two folds trained with edge context").
    "synthetic": Recipe("synthetic", "LiverVesselTumour", cases=100, seed=0, steps=5000, features=8, threads=2,
                        plan_args=("--cpu-gflops", str(PLANNED_GFLOPS)), folds=(0, 1),
                        train_args=("--edge-context", "0.25")),
}


def default_edge_context(model: Path | None, plans: Plans | Sequence[Plans]) -> float:
    """The edge context a prediction with ``-m model`` (None: a dataset's trained model) gets when none
    is given, ``plans`` being its own or its members' (an ensemble): the share it was trained with
    (``train --edge-context``); else the built-in recipe's where ``model`` names a built-in model (and
    no path of that name exists); else none. Members trained with different shares are refused: the
    ensemble's validations were predicted each with its own, so no one share reproduces them."""
    members = (plans,) if isinstance(plans, Plans) else tuple(plans)
    trained = {p.recipe.edge_context or 0.0 for p in members}
    if len(trained) > 1:
        raise ConfigurationError(f"the ensemble's members were trained with different edge contexts "
                                 f"({', '.join(str(t) for t in sorted(trained))}), so none is its default",
                                 fix="give --edge-context F (0 for none) to predict them all with one share")
    if trained != {0.0}:
        return trained.pop()
    if model is None or model.exists() or str(model) not in RECIPES:
        return 0.0
    return RECIPES[str(model)].edge_context


def installed_path(name: str, settings: Settings) -> Path | None:
    """The archive of built-in model ``name``: pretrained on this machine (the cache) first, else
    shipped with the package; None when neither exists."""
    recipe = RECIPES[name]
    for path in (settings.cache / "models" / recipe.archive_name, SHIPPED_DIR / recipe.archive_name):
        if path.is_file():
            return path
    return None


def resolve_model(arg: Path, settings: Settings) -> Path:
    """What ``-m`` names: a path that exists, else a built-in model (error with the fix when it is
    not installed), else the path as given (its loader reports it missing)."""
    name = str(arg)
    if arg.exists() or name not in RECIPES:
        return arg
    found = installed_path(name, settings)
    if found is None:
        raise ConfigurationError(
            f"the built-in model '{name}' is not installed here (neither shipped in {SHIPPED_DIR} nor in "
            f"{settings.cache / 'models'})",
            fix=f"make it with `autoseg pretrain {name}` (about 3 h on 2 CPU cores; docs/synthetic_model.md)")
    log.info("built-in model '%s': %s", name, found)
    return found

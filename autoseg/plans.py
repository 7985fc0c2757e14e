"""The plans contract: everything preprocessing, training and inference need to know.

``plans.json`` is the only hand-over from planning to the later stages. It is a frozen dataclass
that round-trips to JSON, carries a ``plans_version`` and is validated on load, so a hand-edited
file either works or fails with a message that says which field is wrong.
Spatial tuples are in numpy order ``(z, y, x)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoseg.errors import PlansError
from autoseg.io import write_json
from autoseg.precision import PRECISIONS
from autoseg.registry import Registry

PLANS_VERSION = 1
LABEL_VOLUME_MODES = ("keep", "argmax")
SCHEDULES = ("poly", "plateau")
OPTIMIZERS = ("sgd", "adam")


#: The abdominal window of the published liver work, in Hounsfield units: CT windows are fitted
#: inside it (the planner, docs/planning.md "The HU window") and overlays are drawn in it.
HU_BOUNDS = (-160.0, 240.0)


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation of one input channel.

    ``ct``: clip to ``window`` (Hounsfield units), then subtract ``mean`` and divide by ``std``
    (dataset-wide foreground statistics). ``zscore``: per-image mean and std (non-CT data).
    """

    scheme: str
    window: tuple[float, float] | None = None
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Resampling:
    """How images and labels are brought to the target spacing.

    When the spacing is anisotropic beyond ``anisotropy_threshold`` (ratio of largest to smallest
    spacing), the low-resolution axis is resampled separately with ``order_z`` to avoid ringing.
    """

    order_image: int = 3
    order_z: int = 0
    anisotropy_threshold: float = 3.0
    #: "keep": label maps (and predictions brought back to the input grid) keep each class's volume,
    #: so structures about a voxel wide survive resampling; "argmax": plain linear + arg-max.
    label_volume: str = "keep"

    @property
    def keeps_label_volume(self) -> bool:
        return self.label_volume == "keep"


@dataclass(frozen=True)
class NetworkPlan:
    """A network from the registry by name, with every constructor argument spelled out."""

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Estimates:
    """What the planner predicted for this configuration, and the budget it had to fit."""

    device: str
    memory_budget_bytes: int
    memory_estimate_bytes: int
    training_flops: int = 0
    step_time_target_s: float | None = None
    step_time_estimate_s: float | None = None
    step_time_measured_s: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """The training recipe: optimiser, schedule, loss and sampling, chosen by name."""

    name: str = "sgd_poly"
    optimizer: str = "sgd"
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    schedule: str = "poly"
    epochs: int = 100
    iterations_per_epoch: int = 50
    loss: str = "dice_ce"
    oversample_foreground: float = 0.67
    deep_supervision: bool = True
    plateau_patience: int = 3
    early_stop_patience: int = 0  # 0: never stop early
    time_budget_s: float | None = None  # when set, the schedule follows wall time, not epochs
    #: When set (and no time budget), the schedule is this many training steps whatever the
    #: epochs: ``--steps`` and ``--compute-budget`` (a budget that a busy machine takes longer to
    #: spend but that trains the same model).
    steps: int | None = None
    #: Autocast of the network's arithmetic (autoseg.precision): the planner writes what it timed,
    #: fp16 for CUDA plans, bf16 on CPUs with native bf16 instructions, else fp32.
    precision: str = "auto"


#: Named training recipes (``recipe.name``, ``--recipe``); see ``training.recipes.recipe_named``.
RECIPES: Registry[Recipe] = Registry("recipe", {
    # nnU-Net-style: SGD with Nesterov momentum, polynomial decay to zero.
    "sgd_poly": Recipe(name="sgd_poly", optimizer="sgd", initial_lr=1e-2, momentum=0.99,
                       weight_decay=3e-5, schedule="poly"),
    # The seed paper's recipe: Adam 1e-4, halve after 3 epochs without improvement, stop after 5.
    "adam_plateau": Recipe(name="adam_plateau", optimizer="adam", initial_lr=1e-4, weight_decay=0.0,
                           momentum=0.0, schedule="plateau", plateau_patience=3, early_stop_patience=5),
    # Adam (3e-3) with the poly schedule: learns within the few hundred steps of a CPU budget.
    "adam_poly": Recipe(name="adam_poly", optimizer="adam", initial_lr=3e-3, weight_decay=1e-5,
                        momentum=0.0, schedule="poly", loss="dice_wce_anneal"),
})
# Measured on the demo phantom task, fold 0, same plan (32x48x64, batch 2), 300 steps each, whole
# held-out cases (benchmarks/learning.py): Adam 3e-4 tumour Dice 0.00, 1e-3 0.29, 3e-3 0.34,
# 1e-2 0.24, vessels 0.00 to 0.01 throughout; Adam 3e-3 with the rarity-weighted CE (dice_wce)
# vessel 0.29, tumour 0.39. An earlier 3-minute run gave sgd_poly 0.00. CPU plans default to adam_poly.
# Its rarity weights are annealed to 1 over the schedule (dice_wce_anneal): in the race against
# nnU-Net (benchmarks/race.py, 20 min, 6 test phantoms) constant weights over-segmented tumours
# (vessel 0.524, tumour 0.568), annealed 0.482 / 0.691, plain dice_ce 0.470 / 0.657; at 300 steps
# (learning.py) annealed 0.314 / 0.498 against constant 0.259 / 0.479.
CPU_DEFAULT_RECIPE = "adam_poly"
GPU_DEFAULT_RECIPE = "sgd_poly"


@dataclass(frozen=True)
class Plans:
    """The versioned plan for one dataset. See docs/planning.md ("plans.json") for every field."""

    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[int, str]
    is_ct: bool
    target_spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    normalisation: tuple[Normalisation, ...]
    network: NetworkPlan
    estimates: Estimates
    resampling: Resampling = field(default_factory=Resampling)
    recipe: Recipe = field(default_factory=Recipe)
    crop_to_body: bool = True
    seed: int = 12345
    plans_version: int = PLANS_VERSION

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise PlansError("invalid plans: " + "; ".join(problems),
                             fix="correct the listed fields or re-run `autoseg plan_and_preprocess`")

    def problems(self) -> list[str]:
        out = []
        if self.plans_version != PLANS_VERSION:
            out.append(f"plans_version {self.plans_version} is not {PLANS_VERSION}")
        if len(self.patch_size) != len(self.target_spacing):
            out.append(f"patch_size {self.patch_size} and target_spacing {self.target_spacing} differ in dims")
        if any(int(p) < 1 for p in self.patch_size):
            out.append(f"patch_size {self.patch_size} must be positive")
        if any(float(s) <= 0 for s in self.target_spacing):
            out.append(f"target_spacing {self.target_spacing} must be positive")
        if self.batch_size < 1:
            out.append(f"batch_size {self.batch_size} must be at least 1")
        if len(self.normalisation) != len(self.channel_names):
            out.append(f"{len(self.normalisation)} normalisation entries for {len(self.channel_names)} channels")
        for n in self.normalisation:
            if n.scheme not in ("ct", "zscore"):
                out.append(f"unknown normalisation scheme '{n.scheme}' (known: ct, zscore)")
            if n.scheme == "ct" and (n.window is None or n.window[0] >= n.window[1] or n.std <= 0):
                out.append(f"ct normalisation needs window low < high and std > 0, got {n}")
        if self.resampling.label_volume not in LABEL_VOLUME_MODES:
            out.append(f"resampling.label_volume '{self.resampling.label_volume}' is not one of "
                       f"{', '.join(LABEL_VOLUME_MODES)}")
        if 0 not in self.labels:
            out.append("labels must include 0 (background)")
        out.extend(self.recipe_problems())
        if self.recipe.precision not in PRECISIONS:
            out.append(f"recipe.precision '{self.recipe.precision}' is not one of {', '.join(PRECISIONS)}")
        return out

    def recipe_problems(self) -> list[str]:
        """What makes the recipe unusable: a schedule that never ends or a name nothing implements."""
        r, out = self.recipe, []
        if r.epochs < 1 or r.iterations_per_epoch < 1:
            out.append(f"recipe.epochs ({r.epochs}) and recipe.iterations_per_epoch ({r.iterations_per_epoch}) "
                       "must be at least 1")
        if r.time_budget_s is not None and r.time_budget_s <= 0:
            out.append(f"recipe.time_budget_s {r.time_budget_s} must be positive (or null: no time budget)")
        if r.steps is not None and r.steps < 1:
            out.append(f"recipe.steps {r.steps} must be at least 1 (or null: epochs x iterations)")
        for name, value, known in (("schedule", r.schedule, SCHEDULES), ("optimizer", r.optimizer, OPTIMIZERS)):
            if value not in known:
                out.append(f"recipe.{name} '{value}' is not one of {', '.join(known)}")
        return out

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        return d

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    def replace(self, **changes: Any) -> "Plans":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "plans.json") -> "Plans":
        if not isinstance(data, dict):
            raise PlansError("plans must be a JSON object", source, "re-run `autoseg plan_and_preprocess`")
        version = data.get("plans_version")
        if version != PLANS_VERSION:
            raise PlansError(f"plans_version is {version!r}, this autoseg reads version {PLANS_VERSION}",
                             source, "re-run `autoseg plan_and_preprocess` to write current plans")
        try:
            return _build(cls, data, "")
        except PlansError as exc:
            raise PlansError(str(exc).split("\nFix:")[0], source,
                             "correct the field or re-run `autoseg plan_and_preprocess`") from None

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        path = Path(path)
        if not path.is_file():
            raise PlansError("plans file not found", path,
                             "run `autoseg plan_and_preprocess -d DATASET` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PlansError(f"not valid JSON ({exc})", path, "repair the file or re-plan") from None
        return cls.from_dict(data, path)


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert JSON data to ``tp`` (dataclasses, tuples, dicts, optionals), naming bad fields."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PlansError(f"'{where or 'plans'}' must be an object")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise PlansError(f"unknown field(s) {unknown} in '{where or 'plans'}'")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}".lstrip("."))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PlansError(f"missing field '{where}.{f.name}'".replace("'.", "'"))
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise PlansError(f"'{where or 'plans'}': {exc}") from None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise PlansError(f"'{where}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise PlansError(f"'{where}' must have {len(args)} entries, got {len(value)}")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise PlansError(f"'{where}' must be an object")
        kt, vt = args
        try:
            return {_build(kt, k, where): (v if vt is Any else _build(vt, v, f"{where}.{k}"))
                    for k, v in value.items()}
        except ValueError:
            raise PlansError(f"'{where}' has a key of the wrong type") from None
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise PlansError(f"'{where}' must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise PlansError(f"'{where}' must be a number, got {value!r}")
        try:
            number = tp(value)
        except (ValueError, OverflowError):
            raise PlansError(f"'{where}' must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise PlansError(f"'{where}' must be a finite number, got {value!r}")
        if tp is int and float(value) != number:
            raise PlansError(f"'{where}' must be a whole number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise PlansError(f"'{where}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp} at {where}")
